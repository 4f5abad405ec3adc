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

    def l0(self) -> Tensor:
        """Mean number of non-zero latents per row (a float tensor, no grad)."""
        if self.feature_acts is not None:
            return (self.feature_acts.detach() != 0).sum(-1).float().mean()
        if self.values is None:
            raise ValueError("SAEOutput holds neither a dense nor a sparse code")
        return (self.values.detach() != 0).sum(-1).float().mean()

    def fired(self) -> Tensor:
        """bool `[d_sae]`: which latents are non-zero in at least one row."""
        if self.feature_acts is not None:
            return (self.feature_acts.detach() != 0).reshape(-1, self.feature_acts.shape[-1]).any(0)
        if self.values is None or self.indices is None:
            raise ValueError("SAEOutput holds neither a dense nor a sparse code")
        out = torch.zeros(self.d_sae, dtype=torch.bool, device=self.values.device)
        out[self.indices[self.values.detach() != 0]] = True
        return out
