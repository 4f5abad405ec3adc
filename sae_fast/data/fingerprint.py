"""Which model an SAE was trained on: a cheap fingerprint, and the check that refuses an SAE
on another model.

Features are directions in one model's activation space: an SAE read on another model's
activations (another checkpoint, a fine-tune, a different size) gives codes that look
plausible and mean nothing. Training records `model_fingerprint(model)` in the SAE's
metadata; steer, monitor, trace, eval and features call `check_model` before they use it.

The fingerprint is `{"architecture", "config", "weights"}`:
- architecture: the config's `architectures[0]` (else the class name);
- config: sha256 of the config's structural scalars (sizes, layer count, vocabulary,
  norm eps, rope...), without dtype, version, paths and runtime switches;
- weights: sha256 over every parameter's name, shape and up to `SAMPLES` evenly strided
  entries, each rounded to bfloat16 so that an fp32, bf16 or fp16 copy of the same
  weights matches (a few milliseconds for a 135M model).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

SAMPLES = 1024
FINGERPRINT_KEY = "model_fingerprint"
# Config keys that say how a model runs, not what it is.
_RUNTIME = {
    "torch_dtype", "dtype", "transformers_version", "name_or_path", "use_cache",
    "output_hidden_states", "output_attentions", "return_dict", "attn_implementation",
    "torchscript", "use_return_dict", "pruned_heads", "tie_encoder_decoder", "problem_type",
    "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class", "finetuning_task",
}  # fmt: skip


def _config_scalars(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    raw = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    return {
        k: v
        for k, v in sorted(raw.items())
        if not k.startswith("_")
        and k not in _RUNTIME
        and isinstance(v, (int, float, str, bool))
        and not k.endswith("_token_id")
    }


@torch.no_grad()
def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES)
        sample = flat[::step][:SAMPLES].to("cpu", torch.float32).to(torch.bfloat16)
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """The fingerprint of `model` (module docstring), computed once per model object."""
    cached = getattr(model, "_sae_fast_fingerprint", None)
    if cached is not None:
        return dict(cached)
    cfg = getattr(model, "config", None)
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    scalars = json.dumps(_config_scalars(model), sort_keys=True, default=str)
    out = {
        "architecture": str(archs[0]),
        "config": hashlib.sha256(scalars.encode()).hexdigest(),
        "weights": _weights_hash(model),
    }
    object.__setattr__(model, "_sae_fast_fingerprint", dict(out))
    return out


def mismatch(recorded: dict[str, Any] | None, model: nn.Module) -> str | None:
    """Why `model` is not the model of fingerprint `recorded` (None if it is, or if nothing
    was recorded: SAEs imported from other libraries carry no fingerprint)."""
    if not recorded:
        return None
    here = model_fingerprint(model)
    diff = [k for k in ("architecture", "config", "weights") if recorded.get(k) != here[k]]
    if not diff:
        return None
    parts = []
    if "architecture" in diff:
        parts.append(f"architecture {recorded.get('architecture')} vs {here['architecture']}")
    if "config" in diff:
        parts.append("a different config")
    if "weights" in diff:
        parts.append("different weights")
    return ", ".join(parts)


def check_model(sae: Any, model: nn.Module, allow_other_model: bool = False) -> None:
    """ConfigError if `sae` was trained on another model than `model` (by fingerprint),
    unless `allow_other_model`; then matches an SAE trained on TransformerLens activations
    to `model`'s (sae_fast.formats.transformer_lens.bind)."""
    why = mismatch(sae.cfg.metadata.get(FINGERPRINT_KEY), model)
    if why is None or allow_other_model:
        from ..formats.transformer_lens import bind

        bind(sae, model)  # an SAE of TransformerLens activations reads them from `model`
        return
    raise ConfigError(
        f"this SAE was trained on another model ({why}; trained on "
        f"{sae.cfg.model_name or 'an unnamed model'}): features are directions in one "
        "model's activations and mean nothing on another's. Use the model it was trained "
        "on, or pass --allow-other-model (allow_other_model=True) to use it anyway"
    )
