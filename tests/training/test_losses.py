"""Each architecture's loss terms against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from sae_fast.training import losses


def test_mse_and_mean_centred_fvu_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    recon = torch.tensor([[1.0, 3.0], [3.0, 4.0]])
    # errors: row0 (0, 1) -> 1; row1 (0, -2) -> 4; mse = mean(1, 4) = 2.5
    assert losses.mse(recon, x).item() == pytest.approx(2.5)
    # variance around the per-dim mean (2, 4): (1+1) + (4+4) = 10; FVU = 5 / 10
    assert losses.fvu(recon, x).item() == pytest.approx(0.5)


def test_l1_weights_by_decoder_norms():
    acts = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    W_dec = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])  # norms 5, 1, 1
    # row0: 1*5 + 2*1 = 7; row1: 3*1 = 3; mean 5
    assert losses.l1(acts, W_dec).item() == pytest.approx(5.0)


def test_auxk_by_hand():
    # d_in = 2 -> k_aux = 1; features 1 and 2 dead; feature 2 has the larger pre.
    x = torch.tensor([[1.0, 0.0]])
    recon = torch.tensor([[0.0, 0.0]])  # residual e = (1, 0)
    W_enc = torch.tensor([[0.0, 0.5, 2.0], [0.0, 0.0, 0.0]])
    b_enc = torch.zeros(3)
    b_dec = torch.zeros(2)
    W_dec = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dead = torch.tensor([False, True, True])
    # pre over dead = (0.5, 2.0) -> feature 2 chosen, e_hat = 2 * (0, 1) = (0, 2)
    # ||e_hat - e||^2 = 1 + 4 = 5; scale = min(2 / 1, 1) = 1
    got = losses.auxk(x, x, recon, W_enc, b_enc, W_dec, b_dec, dead)
    assert got.item() == pytest.approx(5.0)
    assert losses.auxk(x, x, recon, W_enc, b_enc, W_dec, b_dec, torch.zeros(3, dtype=bool)) == 0
    # one dead latent with d_in // 2 = 1: scale 1; with d_in = 4 (k_aux 2) scale would be 1/2
    x4 = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    W4 = torch.zeros(4, 3)
    W4[0, 2] = 1.0
    Wd4 = torch.zeros(3, 4)
    Wd4[2, 0] = 1.0
    got4 = losses.auxk(
        x4,
        x4,
        torch.zeros(1, 4),
        W4,
        b_enc,
        Wd4,
        torch.zeros(4),
        torch.tensor([False, False, True]),
    )
    # e = (1,0,0,0), e_hat = 1 * (1,0,0,0): loss 0 * scale
    assert got4.item() == pytest.approx(0.0)


def test_jumprelu_ste_forward_and_gradients_by_hand():
    pre = torch.tensor([[0.5, 0.1005, 0.09]], requires_grad=True)
    thr = torch.tensor([0.1, 0.1, 0.1], requires_grad=True)
    eps = 0.002
    acts = losses.JumpReLUSTE.apply(pre, thr, eps)
    assert acts[0].tolist() == pytest.approx([0.5, 0.1005, 0.0])
    acts.sum().backward()
    assert pre.grad.tolist() == [[1.0, 1.0, 0.0]]
    # d/dt: -(t/eps) * rect((pre - t)/eps): only feature 1 is within eps/2 of the jump
    assert thr.grad.tolist() == pytest.approx([0.0, -0.1 / 0.002, 0.0])


def test_step_l0_forward_and_threshold_gradient():
    pre = torch.tensor([[0.5, 0.1005], [0.0, 0.0999]])
    thr = torch.tensor([0.1, 0.1], requires_grad=True)
    l0 = losses.StepL0.apply(pre, thr, 0.002)
    assert l0.item() == pytest.approx((2 + 0) / 2)  # row0 two above, row1 none
    l0.backward()
    # feature 1: both rows inside the window: -(1/eps) * 2 / B(=2)
    assert thr.grad.tolist() == pytest.approx([0.0, -(1 / 0.002) * 2 / 2])


def test_jumprelu_ste_threshold_gradient_matches_a_smoothed_finite_difference():
    """The STE equals the derivative of E[a] when pre is spread uniformly around t."""
    torch.manual_seed(0)
    t0, eps = 0.3, 0.01
    pre = (t0 + (torch.rand(200_000) - 0.5) * 0.2).unsqueeze(0)  # density 5 around t0
    thr = torch.tensor([t0], requires_grad=True)
    losses.JumpReLUSTE.apply(pre.t(), thr, eps).sum().backward()
    ste = thr.grad.item() / pre.numel()
    h = 1e-3
    f = lambda t: (pre * (pre > t)).mean().item()  # noqa: E731
    fd = (f(t0 + h) - f(t0 - h)) / (2 * h)
    assert ste == pytest.approx(fd, rel=0.05)


@pytest.mark.parametrize("n_dead", [3, 5, 12, 30])  # all win; all win (k_aux); dense; sparse
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auxk_dense_decode_matches_the_sparse_one(monkeypatch, n_dead, dtype):
    from sae_fast.architectures import losses as arch_losses

    g = torch.Generator().manual_seed(n_dead)
    B, d_in, d_sae = 37, 10, 50  # k_aux = min(5, n_dead)

    def run(dense_share: int) -> list[torch.Tensor]:
        monkeypatch.setattr(arch_losses, "DENSE_SHARE", dense_share)
        g.manual_seed(n_dead)
        x = torch.randn(B, d_in, generator=g, dtype=dtype)
        recon = x + 0.3 * torch.randn(B, d_in, generator=g, dtype=dtype)
        params = [
            torch.randn(d_in, d_sae, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(d_sae, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(d_sae, d_in, generator=g, dtype=dtype).requires_grad_(),
            torch.randn(d_in, generator=g, dtype=dtype).requires_grad_(),
        ]
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[torch.randperm(d_sae, generator=g)[:n_dead]] = True
        W_enc, b_enc, W_dec, ib = params
        loss = losses.auxk(x, x, recon, W_enc, b_enc, W_dec, ib, dead)
        loss.backward()
        return [loss.detach(), *(p.grad for p in params)]

    sparse, dense = run(0), run(10**6)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    names = ("loss", "W_enc", "b_enc", "W_dec", "input_bias")
    for name, a, b in zip(names, sparse, dense, strict=True):
        assert (a - b).abs().max() <= tol * max(1.0, a.abs().max().item()), name
    assert dense[1].abs().sum() > 0  # the dead latents' encoder columns are trained


def test_topk_select_unordered_keeps_the_same_selection():
    from sae_fast.ops import reference as ref

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 40, generator=g).round(decimals=1)  # many ties, also at k
    for k in (1, 7, 40):
        _, idx = ref.topk_select(scores, k)
        uvals, uidx = ref.topk_select(scores, k, ordered=False)
        assert torch.equal(idx.sort(-1).values, uidx.sort(-1).values)
        assert torch.equal(torch.gather(scores, -1, uidx), uvals)


def test_auxk_of_one_whole_shard_is_the_unsharded_term(monkeypatch):
    from types import SimpleNamespace

    from sae_fast import SparseAutoencoder, TrainConfig
    from sae_fast.architectures import base
    from sae_fast.training.sharded import Shard

    g = torch.Generator().manual_seed(1)
    sae = SparseAutoencoder(8, 40, activation="topk", k=4, backend="torch")
    x = torch.randn(30, 8, generator=g)
    recon = x + 0.5 * torch.randn(30, 8, generator=g)
    since = torch.zeros(40, dtype=torch.int64)
    since[::3] = 10**6  # 14 dead latents, k_aux = 4: the dense branch with a selection
    run = SimpleNamespace(
        cfg=TrainConfig(d_sae=40, k=4), sae=sae, shard=Shard.whole(40), since_fired=since
    )
    args = (x, x, recon, sae.W_enc, sae.b_enc, sae.W_dec, sae.input_bias, since >= 10**6)
    want = losses.auxk(*args)
    assert torch.equal(losses.auxk(*args, Shard.whole(40)), want)
    assert torch.equal(base.auxk_term(run, x, x, recon)["auxk"], want * run.cfg.auxk_coefficient)
    # a batch larger than AUXK_ROWS: the term is that of its first rows
    monkeypatch.setattr(base, "AUXK_ROWS", 7)
    first = losses.auxk(*(a[:7] for a in args[:3]), *args[3:])
    assert torch.equal(base.auxk_term(run, x, x, recon)["auxk"], first * run.cfg.auxk_coefficient)
    assert not torch.equal(first, want)
