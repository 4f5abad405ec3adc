"""`SparseAutoencoder`: the module users hold. Thin: the math lives in `ops/`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import architectures
from .config import SAEConfig, dtype_from_name
from .errors import ConfigError
from .input_norm import State, denormalise, normalise, output_scale
from .ops.dispatch import check_backend_name, get_backend, resolve_backend
from .output import SAEOutput

__all__ = ["SAEOutput", "SparseAutoencoder"]


class SparseAutoencoder(nn.Module):
    """Sparse autoencoder with SAELens parameter names and orientation.

    `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`, plus what
    the architecture adds (`threshold [d_sae]` for jumprelu, the `topk_threshold` buffer for
    batchtopk). The architecture (`self.arch`, from `sae_fast.architectures`) does the
    encoding; inputs may have any leading batch dims.

    An SAE reconstructs its input (d_out = d_in) and centres it by b_dec. A transcoder
    (`transcoder=True`) reads its input at one hook and predicts the activation at another:
    d_out may differ, b_dec is the output bias only, and with `skip=True` the output adds
    `x @ W_skip.T` (`W_skip [d_out, d_in]`, zeros at init), as SAELens's transcoders.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        activation: str = "topk",
        k: int | None = 32,
        backend: str = "auto",
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        *,
        model_name: str | None = None,
        hook_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        transcoder: bool = False,
        d_out: int | None = None,
        skip: bool = False,
        target_hook_name: str | None = None,
        input_norm: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__()
        torch_dtype = dtype_from_name(dtype)
        self.cfg = SAEConfig(
            d_in=d_in, d_sae=d_sae, activation=activation, k=k,
            dtype=str(torch_dtype).removeprefix("torch."),
            model_name=model_name, hook_name=hook_name, metadata=dict(metadata or {}),
            options=dict(options or {}), transcoder=transcoder, d_out=d_out, skip=skip,
            target_hook_name=target_hook_name, input_norm=tuple(input_norm),
        )  # fmt: skip
        self.backend = check_backend_name(backend)
        device = torch.device(device)
        if backend != "auto":
            resolve_backend(backend, device, torch_dtype)  # fail now, not at the first forward

        # W_dec rows unit norm, W_enc = W_dec^T (independent unit columns when d_out != d_in),
        # biases and W_skip zero.
        d_out = self.cfg.d_out
        w = _unit_rows(d_sae, d_out, device)
        w_enc = w if d_out == d_in else _unit_rows(d_sae, d_in, device)
        self.W_dec = nn.Parameter(w.to(torch_dtype))  # [d_sae, d_out]
        self.W_enc = nn.Parameter(w_enc.t().contiguous().to(torch_dtype))  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=torch_dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=torch_dtype, device=device))
        if skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=torch_dtype, device=device))
        else:
            self.register_parameter("W_skip", None)
        self.register_parameter("threshold", None)  # jumprelu's init_state sets it
        self.arch = architectures.get(self.cfg.activation)
        self.arch.init_state(self)

    # ------------------------------------------------------------------ properties
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of the reconstruction: d_in for an SAE, the target's width for a transcoder."""
        return self.cfg.d_out

    @property
    def input_bias(self) -> Tensor:
        """What the encoder subtracts from its input: b_dec for an SAE, zeros for a
        transcoder (its b_dec lives in the output space). Every architecture encodes
        `(x - input_bias) @ W_enc + b_enc`."""
        if self.cfg.transcoder:
            return self.b_dec.new_zeros(self.d_in)
        return self.b_dec

    def skip_output(self, x: Tensor) -> Tensor | None:
        """A skip transcoder's `x @ W_skip.T` (2-D `x`), else None."""
        return None if self.W_skip is None else x @ self.W_skip.t()

    @property
    def activation(self) -> str:
        return self.cfg.activation

    @property
    def k(self) -> int | None:
        return self.cfg.k

    @property
    def batchtopk_threshold(self) -> float | None:
        """BatchTopK's inference threshold (None until estimated, and for the others)."""
        return self.arch.inference_threshold(self)

    @batchtopk_threshold.setter
    def batchtopk_threshold(self, value: float | None) -> None:
        self.arch.set_inference_threshold(self, value)

    @property
    def active_backend(self) -> str:
        """The backend that runs now (`"auto"` resolved for the current device)."""
        return resolve_backend(self.backend, self.device, self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def require_hook(self, hook: str | None = None) -> str:
        """`hook`, else the hook the SAE was trained at (cfg.hook_name); ConfigError if neither."""
        hook = hook or self.cfg.hook_name
        if hook is None:
            raise ConfigError("the SAE does not record its hook (cfg hook_name); pass the hook")
        return hook

    def require_model(self, model: str | None = None) -> str:
        """`model`, else the SAE's model (cfg.model_name); ConfigError if neither."""
        model = model or self.cfg.model_name
        if model is None:
            raise ConfigError("the SAE does not record its model (cfg model_name); pass the model")
        return model

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        tc = ""
        if self.cfg.transcoder:
            tc = f", transcoder, d_out={self.d_out}" + (", skip" if self.cfg.skip else "")
        return (
            f"d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation!r}{k}{tc}, "
            f"backend={self.backend!r}, dtype={self.dtype}"
        )

    # ------------------------------------------------------------------ checks
    def _flatten(self, x: Tensor, width: int, what: str) -> tuple[Tensor, tuple[int, ...]]:
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != width:
            raise ValueError(f"{what} must have last dim {width}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got {x.dtype}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{what} has dtype {x.dtype} but the SAE's parameters are {self.dtype}; "
                f"cast one of them (x.to({self.dtype}) or sae.to({x.dtype}))"
            )
        if x.device != self.device:
            raise ValueError(
                f"{what} is on {x.device} but the SAE is on {self.device}; move one of them"
            )
        lead = tuple(x.shape[:-1])
        if x.numel() == 0:
            raise ValueError(f"{what} is empty (shape {tuple(x.shape)}): nothing to encode")
        return x.reshape(-1, width), lead

    def ops(self):
        """The backend ops this SAE runs on now (see `sae_fast.ops.dispatch`)."""
        return get_backend(self.backend, self.device, self.dtype)

    # ------------------------------------------------------------------ API
    def forward(self, x: Tensor) -> SAEOutput:
        """Encode and decode `x [..., d_in]` (a skip transcoder adds `x @ W_skip.T` to the
        output); see SAEOutput for what is returned."""
        x2, lead = self._flatten(x, self.d_in, "x")
        xn, state = normalise(x2, self.cfg.input_norm)
        out = self.arch.forward(self, xn, self.ops())
        if state and not self.cfg.transcoder:
            out.reconstruction = denormalise(out.reconstruction, state)
        skip = self.skip_output(x2)
        if skip is not None:
            out.reconstruction = out.reconstruction + skip
        out.reconstruction = out.reconstruction.reshape(*lead, self.d_out)
        if out.values is not None:
            out.values = out.values.reshape(*lead, -1)
            out.indices = out.indices.reshape(*lead, -1)
        if out.feature_acts is not None:
            out.feature_acts = out.feature_acts.reshape(*lead, self.d_sae)
        return out

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes `[..., d_sae]`."""
        x2, lead = self._flatten(x, self.d_in, "x")
        xn, _ = normalise(x2, self.cfg.input_norm)
        return self.arch.encode(self, xn, self.ops()).reshape(*lead, self.d_sae)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(values, indices)`, each `[..., k]` for topk; for dense codes each row's
        non-zeros, zero-padded to the batch's largest L0."""
        x2, lead = self._flatten(x, self.d_in, "x")
        xn, _ = normalise(x2, self.cfg.input_norm)
        values, indices = self.arch.encode_sparse(self, xn, self.ops())
        return values.reshape(*lead, -1), indices.reshape(*lead, -1)

    def decode(self, acts: Tensor, like: Tensor | None = None) -> Tensor:
        """Output `[..., d_out]` from dense codes `[..., d_sae]` (without a skip term, which
        needs the input: as SAELens's decode). An SAE with a runtime input normalisation
        denormalises by the statistics of its input `like` (the x that was encoded)."""
        a2, lead = self._flatten(acts, self.d_sae, "acts")
        recon = self.ops().decode_dense(a2, self.W_dec, self.b_dec)
        return self._denormalise(recon, like, a2.shape[0]).reshape(*lead, self.d_out)

    def input_state(self, x: Tensor) -> State:
        """What the runtime input normalisation keeps of 2-D `x` to undo itself (empty when
        the SAE has none); `sae_fast.input_norm.output_scale` reads it."""
        return normalise(self._flatten(x, self.d_in, "x")[0], self.cfg.input_norm)[1]

    def decoder_scale(self, x: Tensor) -> Tensor | None:
        """`[B, 1]`: what one unit of a code moves the output along its decoder row, for the
        rows of 2-D `x` (None: 1; only a per-row runtime normalisation of an SAE's input
        rescales its output). Steering and attribution scale decoder rows by it."""
        if not self.cfg.input_norm or self.cfg.transcoder:
            return None
        return output_scale(self.input_state(x))

    def _denormalise(self, recon: Tensor, like: Tensor | None, rows: int) -> Tensor:
        if not self.cfg.input_norm or self.cfg.transcoder:
            return recon
        if like is None:
            raise ValueError(
                f"this SAE normalises its input at run time ({', '.join(self.cfg.input_norm)}): "
                "its output is mapped back by the input's own statistics; pass "
                "decode(acts, like=x) with the x that was encoded, or use forward(x)"
            )
        state = self.input_state(like)
        if state[0][1].shape[0] != rows:
            raise ValueError(f"like has {state[0][1].shape[0]} rows, the code has {rows}")
        return denormalise(recon, state)

    def decode_sparse(self, values: Tensor, indices: Tensor, like: Tensor | None = None) -> Tensor:
        """Output `[..., d_out]` from a sparse code `values, indices [..., k]` (no skip term;
        `like` as in `decode`)."""
        if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
            got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
            raise TypeError(f"indices must be an int64 tensor, got {got}")
        if not isinstance(values, Tensor) or values.shape != indices.shape:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"values and indices must have the same shape, got {got} and {tuple(indices.shape)}"
            )
        if values.dim() == 0:
            raise ValueError("values and indices need at least one dim ([..., k])")
        width = values.shape[-1]
        v2, lead = self._flatten(values, width, "values")
        i2 = indices.reshape(-1, width)
        if i2.device != self.device:
            raise ValueError(f"indices are on {i2.device} but the SAE is on {self.device}")
        lo, hi = int(i2.min()), int(i2.max())
        if lo < 0 or hi >= self.d_sae:
            raise IndexError(f"indices must be in [0, {self.d_sae}), got range [{lo}, {hi}]")
        recon = self.ops().decode_sparse(v2, i2, self.W_dec, self.b_dec)
        return self._denormalise(recon, like, v2.shape[0]).reshape(*lead, self.d_out)

    @torch.no_grad()
    def fold_input_scale(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on `scale * x` (and, for a transcoder, target `target_scale * y`;
        default `scale`) read `x` and predict `y` themselves, with the same code: the
        pre-activations `(s x - b_dec) @ W_enc` equal `(x - b_dec / s) @ (s W_enc)`, and the
        output is divided by the target's scale. In place; exact up to rounding."""
        if self.cfg.input_norm:
            raise ConfigError(
                f"this SAE normalises its input at run time ({', '.join(self.cfg.input_norm)}): "
                "an input scale is normalised away, there is nothing to fold"
            )
        out_scale = scale if target_scale is None else target_scale
        if not self.cfg.transcoder and out_scale != scale:
            raise ConfigError("an SAE's input is its target: it has one scale")
        self.W_enc.mul_(scale)
        self.W_dec.div_(out_scale)
        self.b_dec.div_(out_scale)
        if self.W_skip is not None:
            self.W_skip.mul_(scale / out_scale)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write `cfg.json` + `sae_weights.safetensors` (SAELens layout), atomically."""
        return _FORMAT["save"](self, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        backend: str = "auto",
    ) -> SparseAutoencoder:
        """Load a directory written by sae_fast, SAELens, sparsify or dictionary_learning."""
        return _FORMAT["load"](path, device=device, dtype=dtype, backend=backend)

    @classmethod
    def from_pretrained(
        cls,
        release: str,
        sae_id: str | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        backend: str = "auto",
    ) -> SparseAutoencoder:
        """A pretrained SAE: a SAELens registry release and its `sae_id`, or a Hugging Face
        repo id with an optional folder, downloaded through huggingface_hub (its cache
        serves offline, with HF_HUB_OFFLINE=1). See `sae_fast.formats.pretrained`."""
        if "pretrained" not in _FORMAT:
            raise ConfigError("no pretrained-release loader is registered (import sae_fast)")
        return _FORMAT["pretrained"](release, sae_id, device=device, dtype=dtype, backend=backend)

    @classmethod
    def from_config(cls, cfg: SAEConfig, **kwargs: Any) -> SparseAutoencoder:
        """Build (freshly initialised) from a config."""
        if not isinstance(cfg, SAEConfig):
            raise ConfigError(f"expected an SAEConfig, got {type(cfg).__name__}")
        # the constructor takes every config field under its own name
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **kwargs)


def _unit_rows(rows: int, width: int, device: torch.device) -> Tensor:
    w = torch.randn(rows, width, dtype=torch.float32, device=device)
    return w / w.norm(dim=1, keepdim=True)


# The file format, given by `sae_fast.formats` when it is imported (`import sae_fast` does):
# the formats depend on this module, never the reverse.
_FORMAT: dict[str, Callable[..., Any]] = {}


def use_format(
    save: Callable[..., Path],
    load: Callable[..., SparseAutoencoder],
    pretrained: Callable[..., SparseAutoencoder] | None = None,
) -> None:
    """Make `save`, `load` and `pretrained` what `SparseAutoencoder.save`, `.load` and
    `.from_pretrained` call."""
    _FORMAT.update(save=save, load=load)
    if pretrained is not None:
        _FORMAT["pretrained"] = pretrained
