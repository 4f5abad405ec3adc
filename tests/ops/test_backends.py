"""Every kernel backend (triton, native) end to end through SparseAutoencoder: values and
every gradient against the reference (torch) backend, the low-precision rule, determinism,
torch.compile, and training. Each test runs for each backend this machine has."""

from __future__ import annotations

import pytest
import torch

import sae_fast
from sae_fast import SparseAutoencoder
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import assert_close, backend_device

BACKENDS = [
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            "triton" not in sae_fast.available_backends(DEVICE),
            reason="triton backend unavailable (no triton, or no CUDA and no TRITON_INTERPRET)",
        ),
    ),
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            "native" not in sae_fast.available_backends("cpu"),
            reason=f"native backend unavailable: {sae_fast.NATIVE_IMPORT_ERROR}",
        ),
    ),
]


PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
TOPK_SHAPES = [(1, 97, 1031, 1), (33, 97, 1031, 7), (33, 97, 1031, 64), (5, 7, 13, 13)]
DENSE_SHAPES = [(1, 97, 1031, 7), (33, 97, 1031, 7)]
if ON_GPU:
    TOPK_SHAPES += [(2048, 768, 24576, 64)]
    DENSE_SHAPES += [(1024, 768, 24576, 64)]


def _pair(backend, activation, d_in, d_sae, k, dtype=torch.float32, seed=0):
    """A kernel-backend SAE and an identical torch-backend SAE, non-trivial parameters."""
    torch.manual_seed(seed)
    dev = backend_device(backend)
    a = SparseAutoencoder(
        d_in, d_sae, activation=activation, k=k, backend=backend, dtype=dtype, device=dev
    )
    with torch.no_grad():
        a.b_enc.normal_(0, 0.1)
        a.b_dec.normal_(0, 0.1)
        if a.threshold is not None:
            a.threshold.uniform_(0.0, 0.1)
    b = SparseAutoencoder(
        d_in, d_sae, activation=activation, k=k, backend="torch", dtype=dtype, device=dev
    )
    b.load_state_dict(a.state_dict())
    return a, b


def _loss(sae, x, g_recon, g_code):
    """Reconstruction term plus a per-feature term on the code itself (as L1 / AuxK add);
    per feature, not per slot, so the order of tied features cannot change the loss."""
    out = sae(x)
    if out.values is not None:
        code_term = (out.values * g_code.gather(-1, out.indices)).sum()
    else:
        code_term = (out.feature_acts * g_code).sum()
    return (out.reconstruction * g_recon).sum() + code_term


def _run(sae, x, seed=1):
    g = torch.Generator().manual_seed(seed)
    g_recon = torch.randn(x.shape, generator=g).to(x)
    g_code = torch.randn(x.shape[0], sae.d_sae, generator=g).to(x)
    sae.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    _loss(sae, x, g_recon, g_code).backward()
    return sae(x.detach()), {n: getattr(sae, n).grad for n in PARAMS} | {"x": x.grad}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,d_in,d_sae,k", TOPK_SHAPES)
def test_topk_values_and_gradients_match_reference(backend, B, d_in, d_sae, k):
    if backend == "native" and d_sae > 4096:
        pytest.skip("GPU-sized shape")
    tri, ref_sae = _pair(backend, "topk", d_in, d_sae, k)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(B)).to(tri.device)
    out_t, grads_t = _run(tri, x)
    out_r, grads_r = _run(ref_sae, x)
    assert torch.equal(out_t.indices, out_r.indices)
    assert_close(out_t.values, out_r.values, "values", rtol=1e-4, atol=1e-5)
    assert_close(out_t.reconstruction, out_r.reconstruction, "recon", rtol=1e-4, atol=1e-5)
    for name, g in grads_r.items():
        assert_close(grads_t[name], g, f"{name}.grad", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("B,d_in,d_sae,k", DENSE_SHAPES)
def test_dense_codes_values_and_gradients_match_reference(backend, activation, B, d_in, d_sae, k):
    if backend == "native" and d_sae > 4096:
        pytest.skip("GPU-sized shape")
    tri, ref_sae = _pair(backend, activation, d_in, d_sae, k)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(B)).to(tri.device)
    out_t, grads_t = _run(tri, x)
    out_r, grads_r = _run(ref_sae, x)
    assert_close(out_t.feature_acts, out_r.feature_acts, "acts", rtol=1e-4, atol=1e-5)
    assert_close(out_t.reconstruction, out_r.reconstruction, "recon", rtol=1e-4, atol=1e-5)
    for name, g in grads_r.items():
        assert_close(grads_t[name], g, f"{activation} {name}.grad", rtol=1e-4, atol=1e-5)


def _rel_err(a, ref64):
    return float(
        (a.detach().double() - ref64.detach()).norm() / ref64.detach().norm().clamp_min(1e-30)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_torch(backend, dtype):
    B, d_in, d_sae, k = 33, 97, 1031, 7
    tri, _ = _pair(backend, "topk", d_in, d_sae, k, dtype=torch.float32)
    dev = tri.device
    exact = SparseAutoencoder(d_in, d_sae, k=k, backend="torch", dtype=torch.float64, device=dev)
    exact.load_state_dict({n: t.double() for n, t in tri.state_dict().items()})
    low_t = SparseAutoencoder(d_in, d_sae, k=k, backend=backend, dtype=dtype, device=dev)
    low_r = SparseAutoencoder(d_in, d_sae, k=k, backend="torch", dtype=dtype, device=dev)
    for m in (low_t, low_r):
        m.load_state_dict({n: t.to(dtype) for n, t in tri.state_dict().items()})
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(0)).to(dev)
    out_e, grads_e = _run(exact, x.double())
    out_t, grads_t = _run(low_t, x.to(dtype))
    out_r, grads_r = _run(low_r, x.to(dtype))
    pairs = [("recon", out_t.reconstruction, out_r.reconstruction, out_e.reconstruction)]
    pairs += [(n, grads_t[n], grads_r[n], grads_e[n]) for n in PARAMS]
    for name, ours, torch_impl, want in pairs:
        e_ours, e_torch = _rel_err(ours, want), _rel_err(torch_impl, want)
        assert e_ours <= 2 * e_torch + 1e-4, (
            f"{dtype} {name}: ours {e_ours:.2e} vs torch {e_torch:.2e}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_are_bitwise_deterministic(backend):
    tri, _ = _pair(backend, "topk", 97, 1031, 7)
    x = torch.randn(33, 97, generator=torch.Generator().manual_seed(5)).to(tri.device)
    out_a, grads_a = _run(tri, x)
    out_b, grads_b = _run(tri, x)
    assert torch.equal(out_a.indices, out_b.indices)
    assert torch.equal(out_a.reconstruction, out_b.reconstruction)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    tri, _ = _pair(backend, "topk", 16, 64, 4)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).to(tri.device)
    torch._dynamo.reset()
    compiled = torch.compile(tri, fullgraph=True)
    out_c = compiled(x)
    ((out_c.reconstruction - x) ** 2).sum().backward()
    grads_c = {n: getattr(tri, n).grad.clone() for n in PARAMS}
    tri.zero_grad(set_to_none=True)
    out_e = tri(x)
    ((out_e.reconstruction - x) ** 2).sum().backward()
    assert torch.equal(out_c.indices, out_e.indices)
    assert_close(out_c.reconstruction, out_e.reconstruction, "compiled recon", rtol=1e-5, atol=1e-6)
    for n in PARAMS:
        assert_close(grads_c[n], getattr(tri, n).grad, f"compiled {n}.grad", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_trains_like_the_reference(backend):
    from sae_fast.data.synthetic import ToySuperposition
    from sae_fast.training import fit

    toy = ToySuperposition.make(n_features=64, d=16, active_per_sample=2.0, seed=7)
    tri, ref_sae = _pair(backend, "topk", 16, 64, 3)
    losses = []
    for sae in (tri, ref_sae):
        gen = torch.Generator().manual_seed(0)
        losses.append(
            fit(
                sae,
                lambda b, gen=gen: toy.sample(b, gen).to(tri.device),
                steps=15,
                batch_size=64,
                lr=1e-2,
            )
        )
    assert losses[0][-1] < 0.7 * losses[0][0]
    assert_close(
        torch.tensor(losses[0]), torch.tensor(losses[1]), "loss curve", rtol=1e-3, atol=1e-4
    )
    assert_close(tri.W_dec, ref_sae.W_dec, "trained W_dec", rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("B,d_in,d_sae,k", [(1, 7, 13, 1), (5, 7, 13, 13), (33, 97, 1031, 7)])
def test_native_float64_gradients_are_tight(B, d_in, d_sae, k):
    if "native" not in sae_fast.available_backends("cpu"):
        pytest.skip(f"native backend unavailable: {sae_fast.NATIVE_IMPORT_ERROR}")
    nat, ref_sae = _pair("native", "topk", d_in, d_sae, k, dtype=torch.float64)
    x = torch.randn(B, d_in, generator=torch.Generator().manual_seed(B), dtype=torch.float64)
    out_n, grads_n = _run(nat, x)
    out_r, grads_r = _run(ref_sae, x)
    assert torch.equal(out_n.indices, out_r.indices)
    assert_close(out_n.reconstruction, out_r.reconstruction, "recon", rtol=1e-12, atol=1e-12)
    for name, g in grads_r.items():
        assert_close(grads_n[name], g, f"fp64 {name}.grad", rtol=1e-10, atol=1e-12)


def test_auto_picks_native_on_cpu():
    if "native" not in sae_fast.available_backends("cpu"):
        pytest.skip(f"native backend unavailable: {sae_fast.NATIVE_IMPORT_ERROR}")
    assert SparseAutoencoder(8, 16, k=2).active_backend == "native"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pre_activations_values_and_gradients_match_reference(backend, dtype):
    from sae_fast.ops import reference as ref
    from sae_fast.ops.dispatch import get_backend

    dev = backend_device(backend)
    ops = get_backend(backend, dev, dtype)
    g = torch.Generator().manual_seed(3)
    x, W, b, c = (
        torch.randn(*s, generator=g).to(dev, dtype) for s in ((9, 37), (37, 70), (70,), (37,))
    )
    grad = torch.randn(9, 70, generator=g).to(dev)
    outs = []
    for fn in (ops.pre_activations, ref.pre_activations):
        args = [t.clone().requires_grad_(True) for t in (x, W, b, c)]
        pre = fn(*args)
        assert pre.dtype == torch.float32  # fp32 for bf16 parameters too
        (pre * grad).sum().backward()
        outs.append((pre.detach(), [a.grad for a in args]))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert_close(outs[0][0], outs[1][0], "pre", **tol)
    for name, got, want in zip(
        ("x", "W_enc", "b_enc", "b_dec"), outs[0][1], outs[1][1], strict=True
    ):
        assert_close(got, want, f"d{name}", **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jumprelu_trains_through_the_backend_with_the_threshold_gradient(backend, tmp_path):
    from tests.architectures.helpers import synthetic_trainer

    cfg = dict(activation="jumprelu", device=backend_device(backend))
    cfg.update(jumprelu_init_threshold=0.3, jumprelu_bandwidth=0.5)
    runs = [synthetic_trainer(tmp_path / b, backend=b, **cfg) for b in (backend, "torch")]
    runs[1].sae.load_state_dict(runs[0].sae.state_dict())
    ops = runs[0].sae.ops()  # the backend class
    calls = []
    original = ops.pre_activations

    def counted(*args):
        calls.append(1)
        return original(*args)

    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(5)).to(runs[0].sae.device)
    for i, run in enumerate(runs):
        if i == 0:
            ops.pre_activations = staticmethod(counted)
        try:
            loss, *_ = run._loss(x, x)
        finally:
            ops.pre_activations = original
        loss.backward()
    assert calls == [1]  # one fused encoder call per step, on the backend under test
    want = dict(runs[1].sae.named_parameters())
    for name, p in runs[0].sae.named_parameters():
        assert_close(p.grad, want[name].grad, f"{name}.grad", rtol=1e-4, atol=1e-5)
    assert runs[0].sae.threshold.grad.abs().sum() > 0  # the STE reached the threshold
