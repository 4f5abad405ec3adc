"""SAEBench's custom-SAE interface over any sae_fast SAE: `SAEBenchSAE(sae)`.

SAEBench's evaluations read `encode(x)`, `decode(f)`, `forward(x)`, the parameters `W_enc
[d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`, the attributes `device` and `dtype`,
and a `cfg` with the fields of its `CustomSAEConfig` (model_name, d_in, d_sae, hook_layer,
hook_name, context_size, architecture, dtype, ...). When `sae_bench` is installed its own
`CustomSAEConfig` is used; otherwise a dataclass with the same fields.

SAEBench needs unit-norm decoder rows; a saved sae_fast SAE has its input scaling folded into
its weights, so its rows are not. With n = |W_dec[i]| the adapter exposes W_dec / n and
rescales each latent by n: `encode(x) = sae.encode(x) * n`, `decode(f) = sae.decode(f / n)`,
so reconstructions are the SAE's own, exactly, for every architecture (the selection of
TopK, the thresholds of JumpReLU, gates run unchanged inside `sae.encode`). The exposed
`W_enc * n` and `b_enc * n` are the matching encoder (exact for ReLU; for the others they
are what SAEBench's weight statistics read).

Hook names go to TransformerLens's (what SAEBench hooks): `layers.{i}.residual` is
`blocks.{i}.hook_resid_post`, `layers.{i}.mlp_out` `blocks.{i}.hook_mlp_out`,
`layers.{i}.attn_out` `blocks.{i}.hook_attn_out`, `embeddings` `blocks.0.hook_resid_pre`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..sae import SparseAutoencoder
from .transformer_lens import hook_to_transformer_lens


@dataclass
class SAEBenchConfig:
    """The fields of SAEBench's `CustomSAEConfig` (used when sae_bench is not installed)."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool | None = None
    finetuning_scaling_factor: bool | None = None
    activation_fn_str: str = ""
    activation_fn_kwargs: dict = field(default_factory=dict)
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = ""
    device: str = ""
    model_from_pretrained_kwargs: dict = field(default_factory=dict)
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None

    def to_dict(self) -> dict:
        """The fields as a dict."""
        return asdict(self)


def transformer_lens_hook(hook: str) -> tuple[int, str]:
    """(layer, TransformerLens hook name) of a sae_fast hook point (the one mapping:
    sae_fast.formats.transformer_lens)."""
    try:
        name = hook_to_transformer_lens(hook)
    except ConfigError as err:
        raise ConfigError(f"hook {hook!r} has no TransformerLens name SAEBench can hook") from err
    if name.endswith("mlp.hook_in"):  # SAELens's HookedSAETransformer has it, SAEBench's model not
        raise ConfigError(f"hook {hook!r} has no TransformerLens name SAEBench can hook")
    m = re.match(r"blocks\.(\d+)\.", name)
    return (int(m.group(1)) if m else 0), name


class SAEBenchSAE(nn.Module):
    """A sae_fast SAE with SAEBench's interface (module docstring)."""

    def __init__(self, sae: SparseAutoencoder, model_name: str | None = None) -> None:
        super().__init__()
        if sae.cfg.transcoder:
            raise ConfigError("SAEBench evaluates SAEs; this is a transcoder")
        if sae.cfg.input_norm:
            raise ConfigError(
                f"this SAE normalises its input at run time ({', '.join(sae.cfg.input_norm)}) "
                "and SAEBench's decode(f) has no input to denormalise by"
            )
        self.sae = sae
        layer, hook_name = transformer_lens_hook(sae.require_hook(None))
        with torch.no_grad():
            n = sae.W_dec.norm(dim=1).clamp_min(1e-12)
            self.register_buffer("norms", n.clone())
            self.W_enc = nn.Parameter(sae.W_enc * n, requires_grad=False)
            self.W_dec = nn.Parameter(sae.W_dec / n[:, None], requires_grad=False)
            self.b_enc = nn.Parameter(sae.b_enc * n, requires_grad=False)
            self.b_dec = nn.Parameter(sae.b_dec.clone(), requires_grad=False)
        self.device, self.dtype = sae.device, sae.dtype
        values: dict[str, Any] = dict(
            model_name=model_name or sae.cfg.model_name or "",
            d_in=sae.d_in,
            d_sae=sae.d_sae,
            hook_layer=layer,
            hook_name=hook_name,
        )
        try:
            from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig as Config
        except ImportError:
            Config = SAEBenchConfig
        self.cfg = Config(**values)
        self.cfg.context_size = int(sae.cfg.metadata.get("context_size", 128))
        self.cfg.architecture = sae.activation
        self.cfg.dtype = str(sae.dtype).split(".")[-1]
        self.cfg.device = str(sae.device)
        self.cfg.training_tokens = int(sae.cfg.metadata.get("train_tokens", -100_000))

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations `[..., d_sae]` of `x [..., d_in]`."""
        shape = x.shape
        f = self.sae.encode(x.reshape(-1, shape[-1])) * self.norms
        return f.reshape(*shape[:-1], self.sae.d_sae)

    def decode(self, feature_acts: Tensor) -> Tensor:
        """Reconstruction `[..., d_in]` of latents `[..., d_sae]`."""
        shape = feature_acts.shape
        out = self.sae.decode(feature_acts.reshape(-1, shape[-1]) / self.norms)
        return out.reshape(*shape[:-1], out.shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x))
