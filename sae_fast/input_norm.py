"""Runtime input normalisations: the per-row transforms an SAE applies to its input before
encoding and undoes on its output, because they cannot be folded into the weights.

    constant_norm_rescale  SAELens: x * sqrt(d_in) / |x|; the output is divided by the same
                           factor (Anthropic's February 2024 update)
    layer_norm             SAELens: (x - mean) / (std + 1e-5), std unbiased; the output is
                           y * std + mean
    center                 TransformerLens with center_writing_weights: the residual stream
                           less its mean over d_model; the output adds that mean back

Modes that are exact folds (SAELens's `expected_average_only_in` with its factor,
`covariance_whitening` with its statistics) never reach here: the loader folds them. A
transcoder normalises its input only (its output lives at another hook), as SAELens's
transcoders do. `steps` run in order on the way in and in reverse on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ConfigError

SAELENS_MODES = ("none", "constant_norm_rescale", "layer_norm")
MODES = (*SAELENS_MODES[1:], "center")
LAYER_NORM_EPS = 1e-5

# what each step keeps of the input to undo itself on the output
State = list[tuple[str, Tensor, Tensor | None]]


def check_steps(steps: Sequence[str]) -> tuple[str, ...]:
    """`steps` as a tuple, ConfigError naming an unknown or repeated mode."""
    if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
        raise ConfigError(f"input_norm must be a list of modes, got {steps!r}")
    for step in steps:
        if step not in MODES:
            raise ConfigError(f"input_norm step {step!r} is not one of {list(MODES)}")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"input_norm repeats a step: {list(steps)}")
    return tuple(steps)


def normalise(x: Tensor, steps: Sequence[str]) -> tuple[Tensor, State]:
    """(`x [B, d]` transformed by every step, what `denormalise` needs to undo them)."""
    state: State = []
    for step in steps:
        if step == "center":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            state.append((step, mu, None))
        elif step == "constant_norm_rescale":
            norm = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            coeff = math.sqrt(x.shape[-1]) / norm
            x = x * coeff
            state.append((step, coeff, None))
        elif step == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            x = x / (std + LAYER_NORM_EPS)
            state.append((step, mu, std))
        else:
            raise ConfigError(f"unknown input_norm step {step!r}")
    return x, state


def denormalise(y: Tensor, state: State) -> Tensor:
    """The output `y [B, d]` mapped back to the input's space (the steps in reverse)."""
    for step, a, b in reversed(state):
        if step == "center":
            y = y + a
        elif step == "constant_norm_rescale":
            y = y / a
        else:  # layer_norm
            y = y * b + a
    return y


def output_scale(state: State) -> Tensor | None:
    """`[B, 1]`: how much one unit along a decoder row moves the denormalised output
    (None: 1 for every row). Attribution and steering scale decoder directions by it."""
    scale = None
    for step, a, b in state:
        factor = 1 / a if step == "constant_norm_rescale" else b if step == "layer_norm" else None
        if factor is not None:
            scale = factor if scale is None else scale * factor
    return scale
