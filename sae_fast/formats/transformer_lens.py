"""TransformerLens hook names and activations, in terms of sae_fast's Hugging Face hooks.

SAELens SAEs name the TransformerLens (`HookedTransformer`) hook they were trained on, and
TransformerLens may have processed the model's weights first, so the activations there are
not always Hugging Face's. This module is the one place that knows both.

Names (`hook_from_transformer_lens`, `hook_to_transformer_lens`): where the activation is
read. sae_fast hooks are those of `sae_fast.data.hooks`.

    TransformerLens                     sae_fast
    blocks.0.hook_resid_pre             embeddings
    blocks.{i}.hook_resid_pre, i > 0    layers.{i-1}.residual
    blocks.{i}.hook_resid_post          layers.{i}.residual
    blocks.{i}.hook_attn_out            layers.{i}.attn_out
    blocks.{i}.hook_mlp_out             layers.{i}.mlp_out
    blocks.{i}.mlp.hook_in              layers.{i}.mlp_in   (SAELens's hook on the MLP input)
    blocks.{i}.ln2.hook_normalized      layers.{i}.mlp_in   (value differs, see below)
    hook_embed                          embeddings          (models without position embeddings)

The way back gives each sae_fast hook its first name above (`layers.{i}.residual` is
`blocks.{i}.hook_resid_post`, `embeddings` is `blocks.0.hook_resid_pre`, `layers.{i}.mlp_in`
is `blocks.{i}.mlp.hook_in`). Refused, with the reason: `hook_resid_mid` and `hook_mlp_in`
(the residual stream between attention and MLP: in HookedTransformer `hook_mlp_in` is taken
before ln2, not after it), everything inside attention (`attn.hook_z`, `hook_q`, `hook_k`,
`hook_v`, `hook_pattern`, `hook_attn_scores`, `hook_result`: per head), inside the MLP
(`mlp.hook_pre`, `mlp.hook_post`), the norms' own hooks other than `ln2.hook_normalized`,
`hook_pos_embed`, `ln_final.*` and the split attention inputs.

Values (`activation_transform`): what turns a Hugging Face activation at the sae_fast hook
into the TransformerLens activation the SAE saw, given the SAE's metadata (which
`Processing` TransformerLens applied) and the model (`ModelTraits`). Established from
TransformerLens 3.9's code (`ProcessWeights.process_weights`, `LayerNorm`, `RMSNorm`,
`TransformerBlock`) and checked against it by tests/formats/transformer_lens_check.py:

- `center_writing_weights` subtracts the d_model mean from every weight and bias that writes
  the residual stream (W_E, W_pos, W_O, b_O, W_out, b_out), so the residual stream, attention
  and MLP outputs become x - mean(x): "center". TransformerLens does it only for LayerNorm
  models (normalization "LN", not RMSNorm: Llama, Gemma, Mistral, Qwen keep theirs).
- `fold_ln` moves the norms' weights and biases into the next layer's weights: nothing that
  is written to the residual stream changes, but the MLP then reads the bare normalised
  residual, so `mlp.hook_in` becomes (x - bias) / weight of the MLP's norm: "affine".
- `ln2.hook_normalized` is taken before that norm's weight and bias whatever the processing
  (TransformerLens's LayerNorm/RMSNorm hook `x / scale`, then apply `* w + b`): "affine"
  always, from the model's norm.
- `fold_value_biases` moves sum_h b_V[h] @ W_O[h] into b_O: since attention patterns sum to
  1 the attention output is the same, so nothing (`hook_z`/`hook_v` would change; they are
  refused names anyway). `center_unembed` and `refactor_factored_attn_matrices` (which keeps
  W_V @ W_O and moves b_V into b_O the same way) change no mapped hook either.
- Models whose attention/MLP outputs are normalised again before the residual add (Gemma 2
  and 3, OLMo 2 and 3): TransformerLens's `hook_attn_out` / `hook_mlp_out` are after that
  norm, sae_fast's before it: refused (FormatError). So is `hook_embed` on a model that adds
  position embeddings (GPT-2): sae_fast has no hook for the token embedding alone.

Which processing (`processing_from_metadata`): SAELens (since 3.19.2) loads the model with
`HookedTransformer.from_pretrained_no_processing(name, **model_from_pretrained_kwargs)`,
all processing off unless those kwargs turn it on, and records the kwargs in the SAE's
metadata. Before 3.19.2 it loaded `HookedTransformer.from_pretrained(name)` with
TransformerLens's default processing (fold_ln, center_writing_weights, center_unembed,
fold_value_biases) and recorded no kwargs: an SAE with `sae_lens_training_version` < 3.19.2
and no `model_from_pretrained_kwargs` gets that legacy processing. Without either key (SAEs
from before SAELens recorded versions, and every non-SAELens file) no processing, as SAELens
itself assumes; its registry sets `model_from_pretrained_kwargs` for the SAEs where it knows
better (gpt2-small-res-jb: `center_writing_weights: true`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from torch import Tensor, nn

from ..data.hooks import _HOOK_RE as _SAE_FAST_HOOK
from ..data.hooks import _blocks
from ..errors import ConfigError, FormatError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# a Hugging Face model, its config, or its config's model_type
ModelLike = Union[nn.Module, "PretrainedConfig", str]

# TransformerLens hook-point grammar: optional `blocks.{i}.`, module path, `hook_...`
_TL_NAME = re.compile(r"^(?:blocks\.\d+\.)?(?:[a-z_][a-z0-9_]*\.)*hook_[a-z0-9_]+$")
_TL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

# TransformerLens block hook -> sae_fast hook kind (the layer is the block's)
_BLOCK_HOOKS = {
    "hook_resid_post": "residual",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
}
# sae_fast hook kind -> its TransformerLens name (the way back)
_TO_TL = {
    "residual": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "mlp.hook_in",
}
SUPPORTED = (
    "hook_embed, blocks.{i}.hook_resid_pre, blocks.{i}.hook_resid_post, "
    "blocks.{i}.hook_attn_out, blocks.{i}.hook_mlp_out, blocks.{i}.mlp.hook_in, "
    "blocks.{i}.ln2.hook_normalized"
)
# why a TransformerLens hook (the part after `blocks.{i}.`) has no sae_fast equivalent
_REFUSED = [
    (re.compile(r"^hook_resid_mid$"), "the residual stream between attention and MLP"),
    (re.compile(r"^hook_mlp_in$"), "HookedTransformer's hook_mlp_in is the residual stream "
     "before ln2 (= hook_resid_mid), not the MLP's input after its norm (that is mlp.hook_in)"),
    (re.compile(r"^attn\.hook_(z|q|k|v|result|rot_q|rot_k)$"), "a per-head activation inside "
     "attention"),
    (re.compile(r"^attn\.hook_(pattern|attn_scores)$"), "attention scores, not a d_model "
     "activation"),
    (re.compile(r"^mlp\.hook_(pre|post|pre_linear)$"), "the MLP's hidden layer"),
    (re.compile(r"^hook_(attn_in|q_input|k_input|v_input)$"), "per-head copies of the "
     "residual stream"),
    (re.compile(r"^(ln1|ln2|ln1_post|ln2_post)\.hook_scale$"), "a norm's scale, not a d_model "
     "activation"),
    (re.compile(r"^ln1\.hook_normalized$"), "the attention's normalised input, which sae_fast "
     "does not hook"),
    (re.compile(r"^ln(1|2)_post\.hook_normalized$"), "inside the norm after a sublayer"),
]  # fmt: skip


def is_transformer_lens_name(name: str) -> bool:
    """Whether `name` has the form of a TransformerLens hook point (`hook_embed`,
    `blocks.3.hook_resid_post`, `blocks.0.attn.hook_z`, ...), supported here or not. sae_fast
    hooks (`layers.3.residual`) and Hugging Face module paths are not."""
    return isinstance(name, str) and _TL_NAME.match(name) is not None


def _refusal(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"TransformerLens hook {name!r} has no sae_fast (Hugging Face) equivalent: {why}; "
        f"supported: {SUPPORTED}"
    )


def hook_from_transformer_lens(name: str) -> str:
    """The sae_fast hook reading the activation TransformerLens hooks at `name` (module
    docstring table); a sae_fast hook is returned unchanged. ConfigError naming the hook, why
    it has no equivalent and what is supported otherwise. The value there may still differ
    (TransformerLens's weight processing, the norm's weight): see `activation_transform`."""
    if isinstance(name, str) and _SAE_FAST_HOOK.match(name):
        return name
    if not is_transformer_lens_name(name):
        raise ConfigError(
            f"hook {name!r} is neither a TransformerLens hook point (blocks.{{i}}.hook_...) nor "
            "a sae_fast hook (embeddings, layers.{i}.residual|attn_out|mlp_in|mlp_out)"
        )
    if name == "hook_embed":
        return "embeddings"
    m = _TL_BLOCK.match(name)
    if m is None:
        why = {
            "hook_pos_embed": "the position embedding alone",
            "hook_tokens": "token ids, not an activation",
        }.get(name, "not a block's activation")
        raise _refusal(name, why)
    layer, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_pre":
        return "embeddings" if layer == 0 else f"layers.{layer - 1}.residual"
    if rest in _BLOCK_HOOKS:
        return f"layers.{layer}.{_BLOCK_HOOKS[rest]}"
    why = next((why for pattern, why in _REFUSED if pattern.match(rest)), "not mapped")
    raise _refusal(name, why)


def hook_to_transformer_lens(hook: str) -> str:
    """The TransformerLens hook name of sae_fast hook `hook` (module docstring table: the
    first name of each); a supported TransformerLens name is returned unchanged. ConfigError
    for anything else."""
    if is_transformer_lens_name(hook):
        hook_from_transformer_lens(hook)  # refuses the unsupported ones
        return hook
    m = _SAE_FAST_HOOK.match(hook) if isinstance(hook, str) else None
    if m is None:
        raise ConfigError(
            f"hook {hook!r} is not a sae_fast hook (embeddings, layers.{{i}}.residual|attn_out|"
            "mlp_in|mlp_out), so it has no TransformerLens name"
        )
    if hook == "embeddings":
        return "blocks.0.hook_resid_pre"
    return f"blocks.{m.group(2)}.{_TO_TL[m.group(3)]}"


# ---------------------------------------------------------------- which processing


@dataclass(frozen=True)
class Processing:
    """TransformerLens's weight processing of the model an SAE was trained on (the flags of
    `HookedTransformer.from_pretrained`), and where that was read (`source`)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False
    refactor_factored_attn_matrices: bool = False
    source: str = "no processing (SAELens's from_pretrained_no_processing)"


_FLAGS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)
# from_pretrained keyword arguments that change no activation value (beyond precision)
_HARMLESS_KWARGS = frozenset(
    "device n_devices move_to_device dtype torch_dtype default_prepend_bos default_padding_side "
    "trust_remote_code revision cache_dir local_files_only token use_auth_token first_n_layers "
    "n_ctx checkpoint_index checkpoint_value checkpoint_label device_map low_cpu_mem_usage "
    "attn_implementation".split()
)
# SAELens 3.19.2 switched training to from_pretrained_no_processing (its PR #279)
_NO_PROCESSING_SINCE = (3, 19, 2)


def _meta_get(metadata: Mapping[str, Any], key: str) -> Any:
    """`metadata[key]`, also from a nested SAELens `metadata` object (a whole cfg.json)."""
    if metadata.get(key) is not None:
        return metadata[key]
    nested = metadata.get("metadata")
    return nested.get(key) if isinstance(nested, Mapping) else None


def _version(value: Any) -> tuple[int, int, int] | None:
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", value) if isinstance(value, str) else None
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def processing_from_metadata(metadata: Mapping[str, Any]) -> Processing:
    """The processing of the model an SAE was trained on, from its metadata (a sae_fast
    `cfg.metadata`, or a SAELens cfg.json with its `metadata` object): module docstring.
    FormatError for `model_from_pretrained_kwargs` that are not an object, whose flags are
    not booleans, or that hold keys which could change activations and are not known here."""
    if not isinstance(metadata, Mapping):
        raise FormatError(f"SAE metadata must be an object, got {type(metadata).__name__}")
    model_class = _meta_get(metadata, "model_class_name")
    if model_class is not None and model_class != "HookedTransformer":
        return Processing(source=f"model_class_name {model_class!r}: no TransformerLens weights")
    kwargs = _meta_get(metadata, "model_from_pretrained_kwargs")
    if kwargs is None:
        trained = _meta_get(metadata, "sae_lens_training_version")
        version = _version(trained)
        if version is not None and version < _NO_PROCESSING_SINCE:
            return Processing(
                fold_ln=True,
                center_writing_weights=True,
                center_unembed=True,
                fold_value_biases=True,
                source=f"SAELens {trained} trained on HookedTransformer.from_pretrained's "
                "default processing (before 3.19.2)",
            )
        return Processing()
    if not isinstance(kwargs, Mapping):
        raise FormatError(
            f"model_from_pretrained_kwargs must be an object, got {type(kwargs).__name__}"
        )
    unknown = sorted(k for k in kwargs if k not in _FLAGS and k not in _HARMLESS_KWARGS)
    if unknown:
        raise FormatError(
            f"model_from_pretrained_kwargs {unknown} may change the model's activations and "
            f"are not known to sae_fast (known: {', '.join(_FLAGS)} and loading options)"
        )
    flags = {}
    for flag in _FLAGS:
        value = kwargs.get(flag, False)
        if not isinstance(value, bool):
            raise FormatError(
                f"model_from_pretrained_kwargs.{flag} must be true or false, got {value!r}"
            )
        flags[flag] = value
    on = [f for f in _FLAGS if flags[f]]
    return Processing(
        **flags,
        source="from_pretrained_no_processing(**model_from_pretrained_kwargs)"
        + (f" with {', '.join(on)}" if on else ""),
    )


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelTraits:
    """What TransformerLens's processing and hooks depend on in a model family.

    `layer_norm`: TransformerLens normalization "LN" (else "RMS"), the condition of
    center_writing_weights. `absolute_positions`: a position embedding is added to the
    residual stream (so `hook_embed` is not the first block's input). `post_sublayer_norm`:
    attention/MLP outputs are normalised before the residual add (Gemma 2/3, OLMo 2/3).
    `mlp_norm`: the block attribute of the norm whose output the MLP reads (None: the MLP
    reads the residual stream). `norm_offset`: the norm multiplies by weight + offset
    (Gemma's 1 + weight)."""

    model_type: str
    layer_norm: bool
    absolute_positions: bool
    post_sublayer_norm: bool
    mlp_norm: str | None
    norm_offset: float = 0.0


def _traits(model_type, ln, positions, post, mlp_norm, offset=0.0) -> ModelTraits:
    return ModelTraits(model_type, ln, positions, post, mlp_norm, offset)


# Hugging Face model_type -> traits, from TransformerLens's loading_from_pretrained
# (normalization_type per architecture) and the Hugging Face blocks.
_MODEL_TRAITS = {
    t.model_type: t
    for t in (
        _traits("gpt2", True, True, False, "ln_2"),
        _traits("gpt_neo", True, True, False, "ln_2"),
        _traits("gptj", True, False, False, "ln_1"),  # attention and MLP share ln_1
        _traits("gpt_neox", True, False, False, "post_attention_layernorm"),
        _traits("phi", True, False, False, "input_layernorm"),  # shared, parallel
        _traits("olmo", True, False, False, "post_attention_layernorm"),  # LN without weights
        *(
            _traits(name, False, False, False, "post_attention_layernorm")
            for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3")
        ),
        _traits("gemma", False, False, False, "post_attention_layernorm", 1.0),
        *(
            _traits(name, False, False, True, "pre_feedforward_layernorm", 1.0)
            for name in ("gemma2", "gemma3", "gemma3_text")
        ),
        _traits("olmo2", False, False, True, None),
        _traits("olmo3", False, False, True, None),
    )
}


def model_traits(model: ModelLike) -> ModelTraits:
    """The `ModelTraits` of a Hugging Face model, its config (anything with `model_type`) or
    a model_type string; ConfigError for a family whose TransformerLens treatment is not
    known here (BERT, Bloom, OPT, ...)."""
    if isinstance(model, str):
        model_type = model
    else:
        config = getattr(model, "config", model)
        model_type = getattr(config, "model_type", None)
        if not isinstance(model_type, str):
            raise ConfigError(
                f"{type(model).__name__} has no Hugging Face config.model_type; pass the "
                "Hugging Face model, its config or its model_type"
            )
    if model_type not in _MODEL_TRAITS:
        raise ConfigError(
            f"how TransformerLens processes and hooks model type {model_type!r} is not known "
            f"to sae_fast; known: {', '.join(sorted(_MODEL_TRAITS))}"
        )
    return _MODEL_TRAITS[model_type]


def transformer_lens_centers(model: ModelLike) -> bool:
    """Whether TransformerLens's center_writing_weights changes this model's activations:
    True for LayerNorm models (GPT-2, GPT-Neo, GPT-J, Pythia, Phi-2, OLMo), False for RMSNorm
    ones (Llama, Mistral, Qwen, Gemma, OLMo 2), where TransformerLens skips it. `model` as
    for `model_traits`."""
    return model_traits(model).layer_norm


# ---------------------------------------------------------------- the transform


@dataclass(frozen=True, eq=False)
class ActivationTransform:
    """How Hugging Face activations `x` at sae_fast hook `hook` become the TransformerLens
    activations an SAE was trained on, and back.

    kind "identity": equal as they are. "center": `x - x.mean(-1, keepdim=True)`, back
    `y + x.mean(-1, keepdim=True)` (x: the Hugging Face activation at that hook, the one the
    reconstruction replaces). "affine": `(x - shift) / scale`, back `y * scale + shift`
    (`scale`, `shift` [d_model] from the model's norm). `reason` says why, in one line."""

    kind: Literal["identity", "center", "affine"]
    hook: str
    reason: str
    scale: Tensor | None = field(default=None, repr=False)
    shift: Tensor | None = field(default=None, repr=False)

    def to_transformer_lens(self, x: Tensor) -> Tensor:
        """The TransformerLens activation of Hugging Face activation `x [..., d_model]`."""
        if self.kind == "center":
            return x - x.mean(-1, keepdim=True)
        if self.kind == "affine":
            scale, shift = self._affine(x)
            return (x - shift) / scale
        return x

    def from_transformer_lens(self, y: Tensor, x: Tensor | None = None) -> Tensor:
        """The Hugging Face activation of TransformerLens activation `y` (an SAE's output);
        "center" needs `x`, the Hugging Face activation at the hook, for its mean."""
        if self.kind == "center":
            if x is None:
                raise ValueError(
                    f"{self.hook}: undoing TransformerLens's centring needs the Hugging Face "
                    "activation whose mean was removed"
                )
            return y + x.mean(-1, keepdim=True)
        if self.kind == "affine":
            scale, shift = self._affine(y)
            return y * scale + shift
        return y

    def _affine(self, like: Tensor) -> tuple[Tensor, Tensor]:
        assert self.scale is not None and self.shift is not None
        return (
            self.scale.to(device=like.device, dtype=like.dtype),
            self.shift.to(device=like.device, dtype=like.dtype),
        )


def _needs_model(tl_hook: str, what: str, weights: bool = False) -> ConfigError:
    given = "the Hugging Face model" if weights else "the Hugging Face model or its config"
    return ConfigError(f"{tl_hook}: {what}; pass {given} to activation_transform")


def _norm_affine(model: nn.Module, layer: int, traits: ModelTraits, tl_hook: str):
    """(scale, shift) [d_model] of the norm before block `layer`'s MLP: it computes
    normalise(x) * scale + shift (checked on random inputs). FormatError where it does not,
    or where a zero scale makes the normalised value unrecoverable."""
    if traits.mlp_norm is None:
        raise FormatError(
            f"{tl_hook}: {traits.model_type} has no norm before its MLP (post-norm), so "
            "TransformerLens's ln2 is not on the MLP's input"
        )
    blocks = _blocks(model)[0]
    if layer >= len(blocks):
        raise ConfigError(f"{tl_hook}: the model has {len(blocks)} blocks")
    norm = getattr(blocks[layer], traits.mlp_norm, None)
    if not isinstance(norm, nn.Module):
        raise FormatError(
            f"{tl_hook}: block {layer} of {type(model).__name__} has no {traits.mlp_norm}"
        )
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    ref = next((p for p in (weight, bias) if isinstance(p, Tensor)), None)
    d = ref.shape[-1] if ref is not None else int(getattr(norm, "normalized_shape", [0])[-1])
    if not d:
        raise FormatError(f"{tl_hook}: cannot tell the width of {type(norm).__name__}")
    kw = {"device": ref.device} if ref is not None else {}
    with torch.no_grad():
        scale = (
            weight.detach().float() + traits.norm_offset
            if isinstance(weight, Tensor)
            else torch.ones(d, **kw)
        )
        shift = bias.detach().float() if isinstance(bias, Tensor) else torch.zeros(d, **kw)
        x = torch.randn(8, d, generator=torch.Generator().manual_seed(0)).to(scale.device)
        dtype = ref.dtype if ref is not None else torch.float32
        got = norm(x.to(dtype)).float()
        eps = next(
            (
                float(v)
                for v in (getattr(norm, a, None) for a in ("eps", "variance_epsilon", "epsilon"))
                if isinstance(v, (int, float))
            ),
            1e-5,
        )
        c = x - x.mean(-1, keepdim=True) if traits.layer_norm else x
        want = c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + eps) * scale + shift
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    err = float((got - want).abs().max()) / (1.0 + float(want.abs().max()))
    if not math.isfinite(err) or err > tol:
        raise FormatError(
            f"{tl_hook}: block {layer}'s {traits.mlp_norm} ({type(norm).__name__}) does not "
            f"compute normalise(x) * (weight + {traits.norm_offset:g}) + bias as "
            f"TransformerLens's {'LayerNorm' if traits.layer_norm else 'RMSNorm'} (relative "
            f"error {err:.2g}), so its normalised input cannot be recovered"
        )
    if bool((scale == 0).any()):
        raise FormatError(
            f"{tl_hook}: block {layer}'s {traits.mlp_norm} has zero weights, so the normalised "
            "value TransformerLens hooks cannot be recovered from the MLP's input"
        )
    return scale, shift


def activation_transform(
    metadata: Mapping[str, Any], tl_hook: str, model: ModelLike | None = None
) -> ActivationTransform:
    """What makes Hugging Face activations at `hook_from_transformer_lens(tl_hook)` equal
    the TransformerLens activations an SAE with `metadata` was trained on at `tl_hook`.

    `model`: the Hugging Face model (needed where the answer depends on its family or, for
    "affine", on its norm weights), its config or model_type (enough for the family), or
    None (enough where neither matters). A sae_fast hook name is "identity" (the SAE was
    trained on Hugging Face activations). ConfigError for an unsupported hook or where the
    model is needed and missing; FormatError where TransformerLens's activation cannot be
    reproduced from sae_fast's hook (module docstring)."""
    hook = hook_from_transformer_lens(tl_hook)
    if not is_transformer_lens_name(tl_hook):
        return ActivationTransform("identity", hook, "a sae_fast hook: Hugging Face activations")
    head = _meta_get(metadata, "hook_head_index") if isinstance(metadata, Mapping) else None
    if head is not None:
        raise FormatError(f"{tl_hook}: hook_head_index {head!r}; this hook has no heads")
    proc = processing_from_metadata(metadata)

    def traits(what: str) -> ModelTraits:
        if model is None:
            raise _needs_model(tl_hook, f"{what} depends on the model family")
        return model_traits(model)

    m = _TL_BLOCK.match(tl_hook)
    part, layer = (m.group(2), int(m.group(1))) if m else (tl_hook, 0)

    if part in ("ln2.hook_normalized", "mlp.hook_in"):
        return _mlp_input(part, hook, tl_hook, layer, proc, model)
    if part == "hook_embed":
        t = traits("whether hook_embed is the first block's input")
        if t.absolute_positions:
            raise FormatError(
                f"{tl_hook}: {t.model_type} adds position embeddings to the token embedding "
                "before the first block; sae_fast hooks the sum (embeddings, TransformerLens's "
                "blocks.0.hook_resid_pre), not hook_embed alone"
            )
    if part in ("hook_attn_out", "hook_mlp_out"):
        t = traits(f"whether {part} is taken before or after a norm of the sublayer's output")
        if t.post_sublayer_norm:
            raise FormatError(
                f"{tl_hook}: {t.model_type} normalises the sublayer's output before the "
                f"residual add; TransformerLens's {part} is after that norm, sae_fast's "
                f"{hook} before it"
            )
    if not proc.center_writing_weights:
        return ActivationTransform("identity", hook, proc.source)
    t = traits("whether center_writing_weights applies (LayerNorm, not RMSNorm)")
    if not t.layer_norm:
        return ActivationTransform(
            "identity", hook, f"{proc.source}; TransformerLens does not centre RMSNorm models"
        )
    return ActivationTransform(
        "center", hook, f"{proc.source}: the residual stream's writers are centred"
    )


def _mlp_input(
    part: str, hook: str, tl_hook: str, layer: int, proc: Processing, model: ModelLike | None
) -> ActivationTransform:
    """`activation_transform` of the MLP-input hooks (`ln2.hook_normalized`, `mlp.hook_in`)."""
    if part == "mlp.hook_in" and not proc.fold_ln:
        return ActivationTransform("identity", hook, f"the MLP's input; {proc.source}")
    if not isinstance(model, nn.Module):
        raise _needs_model(tl_hook, "undoing the MLP norm's weight and bias needs it", True)
    traits = model_traits(model)
    if part == "mlp.hook_in" and traits.mlp_norm is None:
        return ActivationTransform(
            "identity", hook, "TransformerLens folds no norm of a post-norm model"
        )
    why = (
        "ln2.hook_normalized is taken before the norm's weight and bias"
        if part == "ln2.hook_normalized"
        else f"fold_ln moved the norm's weight and bias out of the MLP's input ({proc.source})"
    )
    scale, shift = _norm_affine(model, layer, traits, tl_hook)
    if bool((scale == 1).all()) and bool((shift == 0).all()):
        return ActivationTransform("identity", hook, why + "; the norm has none")
    return ActivationTransform("affine", hook, why, scale=scale, shift=shift)


# the metadata keys under which a loaded SAE keeps the TransformerLens hook names it came
# with (its cfg.hook_name / target_hook_name are sae_fast's equivalents)
TL_HOOK_KEY = "transformer_lens_hook_name"
TL_HOOK_OUT_KEY = "transformer_lens_hook_name_out"


def bind(sae: Any, model: nn.Module) -> ActivationTransform | None:
    """Make an SAE trained on TransformerLens activations (its metadata keeps the hook name)
    read `model`'s Hugging Face activations as TransformerLens would have given them: a
    "center" transform becomes the SAE's runtime centring (input_norm "center"). None for
    an SAE of Hugging Face activations; FormatError where it cannot be matched."""
    tl_hook = sae.cfg.metadata.get(TL_HOOK_KEY)
    if not isinstance(tl_hook, str):
        return None
    t = activation_transform(sae.cfg.metadata, tl_hook, model)
    out_hook = sae.cfg.metadata.get(TL_HOOK_OUT_KEY)
    if sae.cfg.transcoder and isinstance(out_hook, str):
        t_out = activation_transform(sae.cfg.metadata, out_hook, model)
        if "identity" not in (t.kind, t_out.kind) or t.kind != t_out.kind:
            raise FormatError(
                f"this transcoder was trained on TransformerLens activations that differ from "
                f"Hugging Face's ({tl_hook}: {t.kind}, {out_hook}: {t_out.kind}); sae_fast "
                "matches them for SAEs only"
            )
        return t
    if t.kind == "affine":
        raise FormatError(
            f"{tl_hook}: TransformerLens's activation here is the normalised input before the "
            f"norm's weights ({t.reason}); matching it needs those weights folded into the "
            "encoder, which sae_fast does not do"
        )
    if t.kind == "center" and "center" not in sae.cfg.input_norm:
        sae.cfg.input_norm = ("center", *sae.cfg.input_norm)
    return t
