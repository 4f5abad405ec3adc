"""Loss terms of the architectures, written once and tested against hand values (the
architecture modules combine them; `sae_fast.training.losses` re-exports them).

mse         mean_b ||x_hat - x||^2
auxk        TopK/BatchTopK (Gao et al.): the top k_aux dead latents (by pre-activation)
            reconstruct the residual e = y - y_hat (detached; y = x for an SAE);
            scale * mean_b ||e_hat - e||^2, scale = min(n_dead / (d_out // 2), 1),
            k_aux = min(d_out // 2, n_dead)
l1          ReLU: mean_b sum_f a_f * ||W_dec[f]||
l0 / STE    JumpReLU (Rajamanoharan et al.): a = pre * H(pre - t); the threshold's gradient
            uses a rectangle kernel of width `bandwidth` around the jump (ops.reference)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..ops import reference as ref

if TYPE_CHECKING:
    from ..training.sharded import Shard

# AuxK decodes its k_aux winners among n_dead candidates with one dense [B, n_dead] GEMM when
# k_aux * DENSE_SHARE >= n_dead, else with the sparse gather (embedding_bag). Forward and
# backward on this 2-core CPU, 1,024 rows (AUXK_ROWS), k_aux=192, d_in=384: dense 27 / 47 /
# 76 / 124 ms at 300 / 800 / 1,500 / 3,000 candidates, sparse 74 / 75 / 94 / 123; at 6,000
# sparse wins (214 against 276)
DENSE_SHARE = 16


def mse(recon: Tensor, x: Tensor) -> Tensor:
    """Mean over rows of the squared reconstruction error."""
    return (recon - x).pow(2).sum(-1).mean()


def fvu(recon: Tensor, x: Tensor) -> Tensor:
    """Fraction of variance unexplained of a batch (mean-centred per dimension)."""
    return (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)


def auxk(
    x: Tensor,
    target: Tensor,
    recon: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    input_bias: Tensor,
    dead: Tensor,
    shard: Shard | None = None,
) -> Tensor:
    """AuxK loss over the dead latents (`dead`: bool, one per latent the parameters hold);
    0 when none is dead. The dead latents encode `x` (centred by `input_bias`) and predict
    the residual `target - recon`. With `shard`, the parameters and `dead` are one shard's
    latents and the dead latents of every shard compete (see sharded.py)."""
    if shard is not None and shard.count == 1:
        shard = None  # one shard holds every latent
    n_dead = int(dead.sum()) if shard is None else int(shard.total(int(dead.sum())))
    if n_dead == 0:
        return x.new_zeros(())
    half = target.shape[-1] // 2
    k_aux = min(half, n_dead)
    scale = min(n_dead / max(half, 1), 1.0)
    idx = dead.nonzero(as_tuple=True)[0]  # [n_dead]
    pre = ref.pre_activations(x, W_enc[:, idx], b_enc[idx], input_bias)  # [B, n_dead] only
    no_bias = W_dec.new_zeros(W_dec.shape[1])
    if shard is None and k_aux * DENSE_SHARE >= len(idx):  # few candidates: dense is cheaper
        if k_aux == len(idx):  # every dead latent is selected
            acts = torch.relu(pre)
        else:
            vals, sel = ref.topk_select(pre, k_aux, ordered=False)
            acts = ref.densify(torch.relu(vals), sel, len(idx))
        e_hat = acts @ W_dec[idx]
    elif shard is None:
        vals, sel = ref.topk_act(pre, k_aux)
        e_hat = ref.decode_sparse(vals, sel, W_dec[idx], no_bias)
    else:
        vals, sel = shard.topk_act(pre, k_aux, idx + shard.lo)
        e_hat = shard.sum(ref.decode_sparse(vals, sel, W_dec[idx], no_bias))
    residual = (target - recon).detach()
    return scale * (e_hat - residual).pow(2).sum(-1).mean()


def l1(acts: Tensor, W_dec: Tensor) -> Tensor:
    """Decoder-norm-weighted L1 of a dense code, mean over rows."""
    return (acts * W_dec.norm(dim=1)).sum(-1).mean()


# The straight-through estimators are ops: `ops.reference` holds them (JumpReLU's training
# reads them there, through `ref.jumprelu_ste` and `ref.step_l0`).
JumpReLUSTE = ref.JumpReLUSTE
StepL0 = ref.StepL0
