"""What a SAELens cfg.json asks beyond the weights, turned into sae_fast's form on load:
exact folds into the tensors where the math allows, runtime input normalisation
(`SAEConfig.input_norm`) where it does not, a FormatError naming the field otherwise.

    rescale_acts_by_decoder_norm  TopK-style: pre-activations times |W_dec row|, codes
                                  divided by it before decoding. Folded: W_enc, b_enc times
                                  the norms, W_dec rows divided (as SAELens's own save does).
    expected_average_only_in      the input times a scalar factor (the registry's
                                  norm_scaling_factor, or a checkpoint's
                                  activation_scaler.json). Folded (fold_scale).
    covariance_whitening          z = (x - mean) @ M, decoded z @ M^-1 + mean, from a
                                  checkpoint's activation_whitening.safetensors. Folded.
    constant_norm_rescale,        per-row statistics: cannot be folded, run at run time.
    layer_norm

Every fold runs in float64 on sae_fast-orientation tensors (after the input-bias fold, so
b_dec always centres the input), with one rounding at the final cast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import FormatError
from ..files import read_safetensors
from ..input_norm import SAELENS_MODES

SCALER_FILENAME = "activation_scaler.json"  # SAELens checkpoints: the scaling factor
WHITENING_FILENAME = "activation_whitening.safetensors"  # and the whitening statistics
NORMALISATIONS = ("none", "expected_average_only_in", "covariance_whitening", *SAELENS_MODES[1:])


def normalisation(raw: dict[str, Any], where: str) -> str:
    """The cfg's `normalize_activations` (pre-6.0 booleans mapped as SAELens maps them);
    FormatError for a mode SAELens does not define."""
    mode = raw.get("normalize_activations", "none")
    if mode is None or mode is False:
        return "none"
    if mode is True:
        return "expected_average_only_in"
    if mode not in NORMALISATIONS:
        raise FormatError(
            f"{where}: normalize_activations={mode!r} is not a SAELens mode; sae_fast runs "
            f"{list(NORMALISATIONS)}"
        )
    return mode


def scaling_factor(path: Path, given: float | None, where: str) -> float:
    """The factor of an `expected_average_only_in` SAE: `given` (the registry's), else its
    checkpoint's activation_scaler.json; FormatError naming the mode when neither has one."""
    if given is None:
        scaler = path / SCALER_FILENAME
        if scaler.exists():
            try:
                given = json.loads(scaler.read_text()).get("scaling_factor")
            except (OSError, ValueError, AttributeError) as err:
                raise FormatError(f"{scaler}: not a SAELens activation scaler ({err})") from None
    if given is None:
        raise FormatError(
            f"{where}: normalize_activations='expected_average_only_in' scales the input by a "
            f"factor this directory does not hold (no {SCALER_FILENAME} with a scaling_factor); "
            "pass norm_scaling_factor= (the registry's value for a pretrained release)"
        )
    if isinstance(given, bool) or not isinstance(given, (int, float)) or not given > 0:
        raise FormatError(f"{where}: norm scaling factor must be a positive number, got {given!r}")
    return float(given)


def whitening(path: Path, d_in: int, where: str) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, M, M^-1) of a `covariance_whitening` checkpoint, float64; FormatError naming the
    mode when the statistics file is absent or malformed."""
    file = path / WHITENING_FILENAME
    if not file.exists():
        raise FormatError(
            f"{where}: normalize_activations='covariance_whitening' needs the whitening "
            f"statistics ({WHITENING_FILENAME}, which SAELens writes next to a checkpoint) "
            "and this directory has none"
        )
    stats = read_safetensors(file)
    shapes = {"mean": (d_in,), "matrix": (d_in, d_in), "inverse_matrix": (d_in, d_in)}
    for name, shape in shapes.items():
        if name not in stats or tuple(stats[name].shape) != shape:
            got = tuple(stats[name].shape) if name in stats else "missing"
            raise FormatError(f"{file}: {name} must have shape {shape}, got {got}")
    return stats["mean"].double(), stats["matrix"].double(), stats["inverse_matrix"].double()


def fold_decoder_norm(t: dict[str, Tensor]) -> None:
    """SAELens's rescale_acts_by_decoder_norm folded: pre-activations `(.. @ W_enc + b_enc) * n`
    and the decode `(acts / n) @ W_dec`, n = |W_dec row| (clamped at 1e-8 as SAELens's fold),
    become plain ones. In place."""
    n = t["W_dec"].double().norm(dim=1).clamp_min(1e-8)
    t["W_enc"] = t["W_enc"].double() * n
    t["b_enc"] = t["b_enc"].double() * n
    t["W_dec"] = t["W_dec"].double() / n[:, None]


def fold_scale(t: dict[str, Tensor], scale: float) -> None:
    """An SAE trained on `scale * x` made to read `x` and output in x's units, as SAELens's
    fold_activation_norm_scaling_factor does (a skip transcoder's W_skip, which reads the raw
    input, is left as SAELens leaves it). Pre-activations are unchanged. In place."""
    t["W_enc"] = t["W_enc"].double() * scale
    t["W_dec"] = t["W_dec"].double() / scale
    t["b_dec"] = t["b_dec"].double() / scale


def fold_whitening(t: dict[str, Tensor], mean: Tensor, M: Tensor, M_inv: Tensor) -> None:
    """An SAE trained on `z = (x - mean) @ M` that decodes `z @ M^-1 + mean`, made to read and
    reconstruct `x`: W_enc <- M W_enc, W_dec <- W_dec M^-1, b_dec <- b_dec M^-1 + mean (b_dec
    centres the input, so the mean is subtracted through it). In place."""
    t["W_enc"] = M @ t["W_enc"].double()
    t["W_dec"] = t["W_dec"].double() @ M_inv
    t["b_dec"] = t["b_dec"].double() @ M_inv + mean


def check_finetuning_scale(t: dict[str, Tensor], where: str) -> None:
    """Pre-6.0 SAELens files may carry `scaling_factor` (finetuning): all ones is dropped, as
    SAELens drops it; anything else changes the code's meaning and is refused."""
    s = t.pop("scaling_factor", None)
    if s is not None and not torch.all(s == 1):
        raise FormatError(
            f"{where}: a finetuning scaling_factor that is not all ones scales every code "
            "before decoding; SAELens 6 no longer runs it and neither does sae_fast"
        )
