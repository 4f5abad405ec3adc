"""Native format = SAELens' format: `cfg.json` + `sae_weights.safetensors`.

Keys and orientation are SAELens': `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
`W_dec [d_sae, d_in]`, `b_dec [d_in]`, `threshold [d_sae]` (jumprelu). Architectures map
`standard <-> relu`, `topk`, `batchtopk`, `jumprelu`. A SAELens directory with
`apply_b_dec_to_input: false` is loaded by folding `b_dec @ W_enc` into `b_enc`, which is
exact; runtime input normalisations and decoder-norm rescaling are refused, not ignored.

Transcoders are SAELens's `transcoder` (relu), `skip_transcoder`, `jumprelu_transcoder` and
`jumprelu_skip_transcoder`: `d_out`, `b_dec [d_out]`, `W_dec [d_sae, d_out]`, `W_skip
[d_out, d_in]`, never `apply_b_dec_to_input`; the target hook is `metadata.hook_name_out`.
Transcoders of the other architectures are written under the same pattern
(`topk_transcoder`, ...), which sae_fast reads and SAELens has no class for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import architectures
from .._version import __version__
from ..config import SAEConfig, dtype_from_name, dtype_name
from ..errors import ConfigError, FormatError
from ..files import (
    atomic_directory,
    read_json,
    read_safetensors,
    require_dir,
    write_json,
    write_safetensors,
)
from ..sae import SparseAutoencoder
from ._io import build_sae, cfg_get
from .saelens_folds import (
    check_finetuning_scale,
    fold_decoder_norm,
    fold_scale,
    fold_whitening,
    normalisation,
    scaling_factor,
    whitening,
)
from .transformer_lens import (
    TL_HOOK_KEY,
    TL_HOOK_OUT_KEY,
    hook_from_transformer_lens,
    hook_to_transformer_lens,
    is_transformer_lens_name,
)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# SAELens inference architectures sae_fast does not run, and why
UNSUPPORTED = {
    "temporal": " (its code attends over the context's earlier tokens: not a per-token SAE)",
    "matching_pursuit": " (its encoder is an iterative greedy pursuit on the decoder)",
}
# cfg keys SAELens keeps under "metadata" (its loaders' LLM_METADATA_KEYS)
LLM_METADATA_KEYS = frozenset(
    "model_name hook_name model_class_name hook_head_index model_from_pretrained_kwargs "
    "prepend_bos exclude_special_tokens neuronpedia_id context_size seqpos_slice "
    "dataset_path sae_lens_version sae_lens_training_version hook_name_out "
    "hook_head_index_out hf_hook_name hf_hook_name_out".split()
)


def holds(path: Path) -> bool:
    """Whether directory `path` has this format's files (sparsify also writes a cfg.json)."""
    return (path / WEIGHTS_FILENAME).exists() or (
        (path / CFG_FILENAME).exists() and not (path / "sae.safetensors").exists()
    )


def transcoder_architecture(base: str, skip: bool) -> str:
    """SAELens's name of a transcoder whose SAE architecture is `base` ("standard" ->
    "transcoder", "jumprelu" + skip -> "jumprelu_skip_transcoder")."""
    name = "skip_transcoder" if skip else "transcoder"
    return name if base == "standard" else f"{base}_{name}"


def split_transcoder(architecture: str) -> tuple[str, bool, bool]:
    """(SAE architecture, transcoder?, skip?) of a SAELens `architecture` value."""
    for suffix, skip in (("skip_transcoder", True), ("transcoder", False)):
        if architecture == suffix:
            return "standard", True, skip
        if architecture.endswith("_" + suffix):
            return architecture.removesuffix("_" + suffix), True, skip
    return architecture, False, False


def _saved_normalisation(steps: tuple[str, ...]) -> str:
    """SAELens's `normalize_activations` for sae_fast's runtime steps ("center" is
    TransformerLens's processing, recorded in the metadata, not a SAELens mode)."""
    modes = [s for s in steps if s != "center"]
    if len(modes) > 1:
        raise ConfigError(f"SAELens runs one input normalisation, this SAE has {modes}")
    return modes[0] if modes else "none"


def _tl_name(hook: str | None, original: str | None) -> str | None:
    """The TransformerLens name SAELens reads for sae_fast hook `hook`: the name the SAE came
    with when it still names that hook, else the mapped one, else `hook` as it is."""
    if hook is None:
        return None
    if original is not None and _from_tl(original) == hook:
        return original
    try:
        return hook_to_transformer_lens(hook)
    except ConfigError:
        return hook


def _from_tl(name: str) -> str | None:
    """sae_fast's hook for TransformerLens hook `name` (None: no equivalent here)."""
    try:
        return hook_from_transformer_lens(name)
    except ConfigError:
        return None


def save_saelens(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write `sae` to directory `path` (atomically: temp dir, then rename)."""
    cfg = sae.cfg
    meta: dict[str, Any] = dict(cfg.metadata)
    native = TL_HOOK_KEY not in meta  # trained on Hugging Face activations: no processing
    meta.pop(TL_HOOK_KEY, None)
    meta.pop(TL_HOOK_OUT_KEY, None)
    meta["model_name"] = cfg.model_name
    meta["hook_name"] = _tl_name(cfg.hook_name, cfg.metadata.get(TL_HOOK_KEY))
    if cfg.transcoder:
        meta["hook_name_out"] = _tl_name(cfg.target_hook_name, cfg.metadata.get(TL_HOOK_OUT_KEY))
    added = []  # metadata written for SAELens's sake only, dropped again on load
    if native and "model_from_pretrained_kwargs" not in meta:
        # SAELens loads the model as sae_fast read it: no weight processing
        meta["model_from_pretrained_kwargs"] = {"center_writing_weights": False}
        added.append("model_from_pretrained_kwargs")
    architecture = sae.arch.saelens_architecture(sae)
    if cfg.transcoder:
        architecture = transcoder_architecture(architecture, cfg.skip)
    out: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        **({"d_out": cfg.d_out} if cfg.transcoder else {}),
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.transcoder,
        "normalize_activations": _saved_normalisation(cfg.input_norm),
        "reshape_activations": "none",
        "metadata": meta,
        "sae_fast": {
            "version": __version__,
            "activation": cfg.activation,
            "hook_name": cfg.hook_name,
        },
    }
    if cfg.transcoder:
        out["sae_fast"]["hook_name_out"] = cfg.target_hook_name
    if added:
        out["sae_fast"]["added_metadata"] = added
    if not native:
        out["metadata"][TL_HOOK_KEY] = meta["hook_name"]
        if cfg.transcoder:
            out["metadata"][TL_HOOK_OUT_KEY] = meta["hook_name_out"]
    if cfg.options:
        out["sae_fast"]["options"] = cfg.options
    if cfg.k is not None:
        out["sae_fast"]["k"] = cfg.k
    out.update(sae.arch.saelens_fields(sae))
    if sae.batchtopk_threshold is not None:
        out["sae_fast"]["batchtopk_threshold"] = float(sae.batchtopk_threshold)
    tensors = sae.arch.saelens_tensors(sae)
    with atomic_directory(path) as tmp:
        write_safetensors(tensors, tmp / WEIGHTS_FILENAME, {"format": "pt"})
        write_json(tmp / CFG_FILENAME, out)
    return Path(path)


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` with SAELens-style `config_overrides` applied (metadata keys into metadata)."""
    if not overrides:
        return raw
    out = dict(raw)
    meta = dict(out.get("metadata") or {})
    for key, value in overrides.items():
        if key in LLM_METADATA_KEYS and "metadata" in out:
            meta[key] = value
        else:
            out[key] = value
    if "metadata" in out:
        out["metadata"] = meta
    ours = out.get("sae_fast")
    if isinstance(ours, dict) and ours.get("added_metadata"):  # an override is not our default
        added = [k for k in ours["added_metadata"] if k not in overrides]
        out["sae_fast"] = {**ours, "added_metadata": added}
    return out


@dataclass
class _Folds:
    """What the loader does to the tensors beyond renaming them (saelens_folds)."""

    apply_b_dec: bool
    rescale: bool
    normalisation: str


def _pre_6(raw: dict[str, Any]) -> dict[str, Any]:
    """A pre-6.0 SAELens cfg (flat keys) in the 6.x form, as SAELens's loader reads it."""
    out = {{"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}.get(k, k): v
           for k, v in raw.items()}  # fmt: skip
    if "metadata" not in out:
        out["metadata"] = {k: out[k] for k in LLM_METADATA_KEYS if k in out}
    return out


def _parse_cfg(raw: dict[str, Any], where: str) -> tuple[SAEConfig, _Folds, float | None]:
    """SAELens cfg dict -> (SAEConfig, the folds to apply, batchtopk_threshold)."""
    raw = _pre_6(raw)
    arch = cfg_get(raw, "architecture", str, where, default="standard")
    arch, transcoder, skip = split_transcoder(arch)
    d_in = cfg_get(raw, "d_in", int, where)
    d_sae = cfg_get(raw, "d_sae", int, where)
    d_out = cfg_get(raw, "d_out", int, where) if transcoder else None
    dtype = cfg_get(raw, "dtype", str, where, default="float32")
    try:
        dtype = dtype_name(dtype_from_name(dtype))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    apply_b_dec = cfg_get(raw, "apply_b_dec_to_input", bool, where, default=not transcoder)
    if transcoder and apply_b_dec:
        raise FormatError(f"{where}: a transcoder cannot have apply_b_dec_to_input=true")
    norm = normalisation(raw, where)
    if transcoder and norm == "covariance_whitening":
        raise FormatError(
            f"{where}: normalize_activations='covariance_whitening' on a transcoder: its "
            "output is not in the whitened space, so the whitening cannot be undone there"
        )
    reshape = cfg_get(raw, "reshape_activations", str, where, default="none")
    if reshape != "none":
        raise FormatError(
            f"{where}: reshape_activations={reshape!r} (per-head hook_z activations) is not "
            "supported: sae_fast hooks whole-width activations"
        )
    rescale = cfg_get(raw, "rescale_acts_by_decoder_norm", bool, where, default=False)

    # Older SAELens: architecture "standard" + activation_fn_str "topk" + kwargs {"k": ..}.
    act_fn = raw.get("activation_fn_str", raw.get("activation_fn", "relu"))
    if arch == "standard" and act_fn == "topk":
        arch = "topk"
        kwargs = cfg_get(raw, "activation_fn_kwargs", dict, where, default={})
        raw = {**raw, "k": kwargs.get("k", raw.get("k"))}
    ours = cfg_get(raw, "sae_fast", dict, where, default={})
    mine = ours.get("activation")
    if mine in architectures.names() and arch in architectures.get(mine).saelens_forms():
        arch = mine  # ours, saved in a form SAELens loads (matryoshka as jumprelu)
    try:
        architecture = architectures.get(arch)
    except ConfigError:
        why = UNSUPPORTED.get(arch, "")
        raise FormatError(
            f"{where}: architecture {arch!r} is not supported{why}; sae_fast loads "
            f"{sorted(architectures.names())} (SAELens 'standard' is relu)"
        ) from None
    fields = architecture.from_saelens(raw, where)

    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: 'metadata' must be an object, got {type(meta).__name__}")
    model_name = meta.get("model_name", raw.get("model_name"))
    hook_name = ours.get("hook_name", meta.get("hook_name", raw.get("hook_name")))
    hook_out = meta.get("hook_name_out", raw.get("hook_name_out")) if transcoder else None
    hook_out = ours.get("hook_name_out", hook_out) if transcoder else None
    named = ("model_name", "hook_name", "hook_name_out")
    added = ours.get("added_metadata", [])
    extra = {k2: v for k2, v in meta.items() if k2 not in named and k2 not in added}
    # a TransformerLens name (SAELens's): read at sae_fast's equivalent hook, remembered so
    # that the activations are matched to it (transformer_lens.bind) and saving writes it
    for key, name, ours_key in ((TL_HOOK_KEY, hook_name, "hook_name"),
                                (TL_HOOK_OUT_KEY, hook_out, "hook_name_out")):  # fmt: skip
        if ours_key in ours or not isinstance(name, str) or not is_transformer_lens_name(name):
            continue
        mapped = _from_tl(name)
        if mapped is not None:
            extra.setdefault(key, name)
            if key == TL_HOOK_KEY:
                hook_name = mapped
            else:
                hook_out = mapped
    options = fields.pop("options", ours.get("options", {}))
    thr = ours.get("batchtopk_threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))):
        raise ConfigError(f"{where}: sae_fast.batchtopk_threshold must be a number")
    steps = [norm] if norm in ("constant_norm_rescale", "layer_norm") else []
    try:
        cfg = SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            activation=architecture.name,
            dtype=dtype,
            **fields,
            model_name=model_name if isinstance(model_name, str) else None,
            hook_name=hook_name if isinstance(hook_name, str) else None,
            metadata=extra,
            options=options,
            transcoder=transcoder,
            d_out=d_out,
            skip=skip,
            target_hook_name=hook_out if isinstance(hook_out, str) and hook_out else None,
            input_norm=tuple(steps),
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    folds = _Folds(apply_b_dec, rescale and architecture.saelens_rescales, norm)
    return cfg, folds, None if thr is None else float(thr)


def _apply_folds(
    tensors: dict[str, Tensor],
    cfg: SAEConfig,
    folds: _Folds,
    path: Path,
    norm_scaling_factor: float | None,
    where: str,
) -> None:
    """The folds of `folds` on the sae_fast-named `tensors`, in place (module docstring of
    saelens_folds: decoder norms, the input bias, then the input normalisation)."""
    check_finetuning_scale(tensors, where)
    if not {"W_enc", "b_enc", "W_dec", "b_dec"} <= set(tensors):
        return  # build_sae names what is missing
    if not folds.apply_b_dec and not cfg.transcoder:
        architectures.get(cfg.activation).fold_input_bias(tensors)
    # SAELens's order: its from_pretrained folds the scale into the raw weights and then
    # rescales by the norms of the scaled decoder (the codes shrink by the factor); its
    # TopK whitening fold folds the norms first. Both are matched exactly.
    if folds.normalisation == "expected_average_only_in":
        fold_scale(tensors, scaling_factor(path, norm_scaling_factor, where))
    if folds.rescale:
        fold_decoder_norm(tensors)
    if folds.normalisation == "covariance_whitening":
        fold_whitening(tensors, *whitening(path, cfg.d_in, where))
    # float64 where folded: build_sae's cast to the SAE's dtype is the one rounding


def load_saelens(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
    cfg_overrides: dict[str, Any] | None = None,
    norm_scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """Load a directory written by sae_fast or SAELens. `cfg_overrides` are merged into
    its cfg.json as SAELens's registry `config_overrides` are (metadata keys into
    metadata); `norm_scaling_factor` is the registry's factor of an
    `expected_average_only_in` SAE, folded into the weights."""
    path = require_dir(path)
    raw = with_overrides(read_json(path / CFG_FILENAME), cfg_overrides)
    tensors = read_safetensors(path / WEIGHTS_FILENAME)
    return from_saelens_parts(
        raw, tensors, path, device=device, dtype=dtype, backend=backend,
        norm_scaling_factor=norm_scaling_factor,
        where=(str(path / CFG_FILENAME), str(path / WEIGHTS_FILENAME)),
    )  # fmt: skip


def from_saelens_parts(
    raw: dict[str, Any],
    tensors: dict[str, Tensor],
    path: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
    norm_scaling_factor: float | None = None,
    where: tuple[str, str] = ("cfg", "weights"),
) -> SparseAutoencoder:
    """An SAE from a SAELens cfg dict and its SAELens-named tensors (what SAELens's
    converters of other layouts produce); `path` holds any checkpoint statistics."""
    cfg, folds, thr = _parse_cfg(raw, where[0])
    tensors = architectures.get(cfg.activation).tensors_from_saelens(tensors)
    _apply_folds(tensors, cfg, folds, path, norm_scaling_factor, where[1])
    return build_sae(
        cfg,
        tensors,
        device=device,
        dtype=dtype,
        backend=backend,
        batchtopk_threshold=thr,
        where=where[1],
    )
