"""`SAEOutput`: what an SAE's forward pass returns, and the statistics every consumer of
a code asks for (L0, which latents fired), computed here once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ops import reference as ref


@dataclass
class SAEOutput:
    """Result of `SparseAutoencoder.forward`.

    `values`/`indices` (`[..., k]`, indices int64) are set for sparse codes (topk);
    `feature_acts` (`[..., d_sae]`) for dense codes (relu, jumprelu, batchtopk).
    `dense_acts()` gives the dense code in every case.
    """

    reconstruction: Tensor
    values: Tensor | None = None
    indices: Tensor | None = None
    feature_acts: Tensor | None = None
    d_sae: int = 0

    def dense_acts(self) -> Tensor:
        """Dense code `[..., d_sae]` (materialised from values/indices for topk)."""
        if self.feature_acts is not None:
            return self.feature_acts
        if self.values is None or self.indices is None:
            raise ValueError("SAEOutput holds neither a dense nor a sparse code")
        return ref.densify(self.values, self.indices, self.d_sae)

    def counts(self) -> tuple[Tensor, Tensor]:
        """(active latents per row `[n]`, rows each latent is active on `[d_sae]`), int64,
        on the code's device: the one count behind L0, dead latents and densities."""
        if self.values is not None and self.indices is not None:
            vals = self.values.detach().reshape(-1, self.values.shape[-1])
            idx = self.indices.reshape(-1, self.indices.shape[-1])
            on = vals != 0
            return on.sum(-1), torch.bincount(idx[on], minlength=self.d_sae)
        if self.feature_acts is None:
            raise ValueError("SAEOutput holds neither a dense nor a sparse code")
        acts = self.feature_acts.detach()
        on = acts.reshape(-1, acts.shape[-1]) != 0
        return on.sum(-1), on.sum(0)

    def l0(self) -> Tensor:
        """Mean number of non-zero latents per row (a float tensor, no grad)."""
        return self.counts()[0].float().mean()

    def fired(self) -> Tensor:
        """bool `[d_sae]`: which latents are non-zero in at least one row."""
        return self.counts()[1] > 0
