"""Reconstruction and sparsity metrics of an SAE over an evaluation set, in one streaming pass.

With x the activations, x̂ the reconstructions and N the number of tokens:

    mse                 (1/N) Σ_t ||x_t - x̂_t||²         (squared error summed over d_in, as
                                                         in the training loss; torch's
                                                         mse_loss is this / d_in)
    fvu                 Σ_t ||x_t - x̂_t||² / Σ_t ||x_t - μ||²,  μ = the per-dimension mean
                        over the whole evaluation set (not per batch, and not the raw
                        second moment Σ||x||², which some tools divide by)
    explained_variance  1 - fvu
    cosine              (1/N) Σ_t cos(x_t, x̂_t)
    l2_ratio            (1/N) Σ_t ||x̂_t|| / ||x_t||       (< 1: shrinkage)
    l0                  (1/N) Σ_t #{f : a_f(x_t) ≠ 0}
    density_f           #{t : a_f(x_t) ≠ 0} / N
    dead_fraction       share of features with density 0 over the window
    dense_fraction      share of features with density > 0.1

For a transcoder, x in every formula above is its target (e.g. the MLP's output, of width
d_out) and x̂ its prediction from the input activations; the code is the input's.

Sums run in float64; the variance uses data shifted by the first chunk's mean, so a large
common offset does not cancel catastrophically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, FormatError
from ..files import atomic_file, read_safetensors
from ..sae import SAEOutput, SparseAutoencoder

SPARSITY_FILE = "sparsity.safetensors"
SPARSITY_KEY = "sparsity"
DENSE_THRESHOLD = 0.1
# log10-density histogram bin edges: 1e-7 .. 1, half a decade per bin.
HIST_EDGES = tuple(x / 2 for x in range(-14, 1))


@dataclass
class ReconstructionMetrics:
    """The metrics of the module docstring, plus per-feature density `[d_sae]`."""

    n_tokens: int
    mse: float
    fvu: float
    explained_variance: float
    cosine: float
    l2_ratio: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    density: Tensor = field(repr=False)

    def histogram(self) -> dict[str, list]:
        """log10-density histogram: see `density_histogram`."""
        return density_histogram(self.density)


def code_counts(out: SAEOutput) -> tuple[Tensor, Tensor]:
    """(active latents per row `[n]`, rows each feature is active on `[d_sae]`), int64, on
    the CPU (`SAEOutput.counts`)."""
    per_row, per_feature = out.counts()
    return per_row.cpu(), per_feature.cpu()


class ReconstructionStats:
    """Accumulates `ReconstructionMetrics` over chunks: `update(x, out)`, then `result()`."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        """`d_in`: the width of what is compared with the output (d_out for a transcoder)."""
        self.n = 0
        self.sse = 0.0
        self.cos = 0.0
        self.ratio = 0.0
        self.l0 = 0
        self.shift: Tensor | None = None
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(d_in, dtype=torch.float64)
        self.fires = torch.zeros(d_sae, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: Tensor, out: SAEOutput) -> None:
        """Add a chunk: activations `x [n, d_in]` and the SAE's output on them (for a
        transcoder, `x` is the target its output predicts)."""
        x = x.reshape(-1, x.shape[-1]).double().cpu()
        xh = out.reconstruction.reshape(x.shape).double().cpu()
        if self.shift is None:
            self.shift = x.mean(0)
        xs = x - self.shift
        self.sum_x += xs.sum(0)
        self.sum_x2 += xs.pow(2).sum(0)
        self.sse += float((x - xh).pow(2).sum())
        xn, hn = x.norm(dim=1), xh.norm(dim=1)
        self.cos += float(((x * xh).sum(1) / (xn * hn).clamp_min(1e-30)).sum())
        self.ratio += float((hn / xn.clamp_min(1e-30)).sum())
        per_row, per_feature = code_counts(out)
        self.l0 += int(per_row.sum())
        self.fires += per_feature
        self.n += x.shape[0]

    def result(self) -> ReconstructionMetrics:
        """The metrics so far; ValueError if no token was added."""
        if self.n == 0:
            raise ValueError("no tokens were evaluated")
        n = self.n
        total_var = float((self.sum_x2 - self.sum_x.pow(2) / n).sum())
        fvu = self.sse / total_var if total_var > 0 else math.inf
        density = self.fires.double() / n
        return ReconstructionMetrics(
            n_tokens=n,
            mse=self.sse / n,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            cosine=self.cos / n,
            l2_ratio=self.ratio / n,
            l0=self.l0 / n,
            dead_fraction=float((self.fires == 0).double().mean()),
            dense_fraction=float((density > DENSE_THRESHOLD).double().mean()),
            density=density,
        )


@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder, acts: Tensor, chunk: int = 4096, targets: Tensor | None = None
) -> ReconstructionMetrics:
    """Metrics of `sae` on activations `acts [N, d_in]`, `chunk` rows at a time; a
    transcoder's output is compared with `targets [N, d_out]` (required for one)."""
    if acts.dim() != 2 or acts.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, d_in] activation matrix, got {tuple(acts.shape)}")
    if targets is None:
        if sae.cfg.transcoder:
            raise ConfigError(
                "a transcoder predicts another hook's activations: pass its targets "
                "[N, d_out] (the activations at its target_hook_name) to compare with"
            )
        targets = acts
    elif tuple(targets.shape) != (acts.shape[0], sae.d_out):
        raise ValueError(
            f"targets must be [N, d_out] = [{acts.shape[0]}, {sae.d_out}] (one row per "
            f"activation row), got {tuple(targets.shape)}"
        )
    stats = ReconstructionStats(sae.d_out, sae.d_sae)
    was_training = sae.training
    sae.eval()
    try:
        for r0 in range(0, acts.shape[0], chunk):
            x = acts[r0 : r0 + chunk].to(device=sae.device, dtype=sae.dtype)
            y = targets[r0 : r0 + chunk].to(device=sae.device, dtype=sae.dtype)
            stats.update(y, sae(x))
    finally:
        sae.train(was_training)
    return stats.result()


def density_histogram(density: Tensor) -> dict[str, list]:
    """Counts of features per half-decade of log10 density (`edges`, `counts`; the first
    bin also holds densities below 1e-7), and `dead`: features that never fired."""
    density = density.double().cpu()
    live = density[density > 0]
    logd = live.log10().clamp(min=HIST_EDGES[0], max=HIST_EDGES[-1])
    counts = [0] * (len(HIST_EDGES) - 1)
    for i in range(len(counts)):
        lo, hi = HIST_EDGES[i], HIST_EDGES[i + 1]
        last = i == len(counts) - 1
        counts[i] = int(((logd >= lo) & ((logd <= hi) if last else (logd < hi))).sum())
    return {"edges": list(HIST_EDGES), "counts": counts, "dead": int((density == 0).sum())}


def log_density(density: Tensor) -> Tensor:
    """log10(density + 1e-10): SAELens' `sparsity` values (dead features at -10)."""
    return (density.double() + 1e-10).log10().float()


def save_sparsity(sae_dir: str | Path, density: Tensor) -> Path:
    """Write `sparsity.safetensors` ({"sparsity": log10 density}) into `sae_dir`,
    through a temp file and a rename (a pretrained spec: its Hugging Face cache folder)."""
    from safetensors.torch import save_file

    from ..formats.pretrained import sae_directory

    path = sae_directory(sae_dir) / SPARSITY_FILE
    with atomic_file(path) as tmp:
        save_file({SPARSITY_KEY: log_density(density).contiguous()}, str(tmp))
    return path


def load_sparsity(sae_dir: str | Path) -> Tensor:
    """Feature densities (not logs) from `sae_dir`'s `sparsity.safetensors`."""
    from ..formats.pretrained import sae_directory

    tensors = read_safetensors(sae_directory(sae_dir) / SPARSITY_FILE)
    if SPARSITY_KEY not in tensors:
        raise FormatError(f"{sae_dir}/{SPARSITY_FILE} has no {SPARSITY_KEY!r} tensor")
    dens = torch.pow(10.0, tensors[SPARSITY_KEY].double()) - 1e-10
    return dens.clamp_min(0.0)
