"""Property-based checks (hypothesis) of every backend this machine has against the
reference ops: random shapes (1, primes, non-multiples of block sizes), k from 1 to d_sae,
tied and repeated pre-activations, non-contiguous and offset inputs, and each dtype the
backend supports. Values and every gradient must equal the reference's.

Ties are made exact by drawing small integers: every implementation then computes the same
pre-activations bit for bit, whatever its summation order, so the tie rule (lower index
wins) is what decides, not rounding. bf16/fp16 are checked on such inputs against float64,
within twice torch's own error. The examples are derandomised: CI runs the same cases.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sae_fast
from sae_fast.ops import reference as ref
from sae_fast.ops.dispatch import TorchBackend, get_backend
from tests.conftest import DEVICE
from tests.helpers import assert_close, backend_device

KERNEL_BACKENDS = [b for b in ("native", "triton") if b in sae_fast.available_backends(DEVICE)]
FULL = [torch.float32, torch.float64]
LOW = [torch.bfloat16, torch.float16]
DTYPES = {"native": FULL + LOW, "triton": [torch.float32, *LOW]}
# The Triton interpreter runs kernels in Python on the CPU: fewer, smaller cases there.
EXAMPLES = {"native": 60, "triton": 15}
D_IN = [1, 2, 3, 7, 16, 17, 31, 64, 97]
D_SAE = [1, 2, 5, 13, 31, 64, 127, 257, 1031]


def _settings(backend: str):
    return settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@st.composite
def cases(draw, backend: str) -> dict:
    """One random case: shapes, k, dtype, value style and memory layout."""
    small = backend == "triton"
    dtype = draw(st.sampled_from(DTYPES[backend]))
    d_in = draw(st.sampled_from([d for d in D_IN if d <= (16 if dtype in LOW else 97)]))
    d_sae = draw(st.sampled_from([d for d in D_SAE if d <= (257 if small else 1031)]))
    return {
        "B": draw(st.sampled_from([1, 2, 3, 5, 13, 31, 33, 64])),
        "d_in": d_in,
        "d_sae": d_sae,
        "k": draw(st.integers(1, d_sae)),
        "dtype": dtype,
        # integers: exact, heavily tied pre-activations; gauss: generic floats
        "values": "integers" if dtype in LOW else draw(st.sampled_from(["integers", "gauss"])),
        "repeat_rows": draw(st.booleans()),
        "layout": draw(st.sampled_from(["contiguous", "offset", "transposed"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _tensor(shape, case, g, lo=-2, hi=3) -> torch.Tensor:
    if case["values"] == "integers":
        t = torch.randint(lo, hi, shape, generator=g).double()
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    return t


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as a non-contiguous view with a storage offset, or transposed."""
    if layout == "offset" and t.dim() == 2:
        big = torch.zeros(t.shape[0] + 2, t.shape[1] + 3, dtype=t.dtype, device=t.device)
        big[1:-1, 2:-1] = t
        return big[1:-1, 2:-1]
    if layout == "offset":
        big = torch.zeros(t.shape[0] + 3, dtype=t.dtype, device=t.device)
        big[2:-1] = t
        return big[2:-1]
    if layout == "transposed" and t.dim() == 2:
        return t.t().contiguous().t()
    return t


def _inputs(case: dict) -> dict[str, torch.Tensor]:
    """x, the parameters and the upstream gradients of one case, in float64 on the CPU."""
    g = torch.Generator().manual_seed(case["seed"])
    B, d_in, d_sae = case["B"], case["d_in"], case["d_sae"]
    x = _tensor((B, d_in), case, g)
    if case["repeat_rows"] and B > 1:
        x[B // 2 :] = x[: B - B // 2].clone()
    return {
        "x": x,
        "W_enc": _tensor((d_in, d_sae), case, g),
        "b_enc": _tensor((d_sae,), case, g),
        "W_dec": _tensor((d_sae, d_in), case, g),
        "b_dec": _tensor((d_in,), case, g),
        "threshold": _tensor((d_sae,), case, g, 0, 3),
        "g_recon": _tensor((B, d_in), case, g),
        "g_code": _tensor((B, d_sae), case, g),
    }


def _step(ops, dev: str, case: dict, inputs: dict, dtype: torch.dtype, activation: str):
    """Code, reconstruction and every gradient of `(recon * g_recon).sum() + (code *
    g_code).sum()` (the code term per feature, so tied slots cannot reorder it)."""
    leaves = {
        n: _layout(inputs[n].to(dev, dtype, copy=True), case["layout"]).requires_grad_(True)
        for n in ("x", "W_enc", "b_enc", "W_dec", "b_dec")
    }
    x, W_enc, b_enc, W_dec, b_dec = leaves.values()
    g_recon, g_code = inputs["g_recon"].to(dev, dtype), inputs["g_code"].to(dev, dtype)
    if activation == "topk":
        values, indices = ops.encode_topk(x, W_enc, b_enc, b_dec, case["k"])
        recon = ops.decode_sparse(values, indices, W_dec, b_dec)
        code_term = (values * g_code.gather(-1, indices)).sum()
        code = (values, indices)
    else:
        thr = inputs["threshold"].to(dev, dtype) if activation == "jumprelu" else None
        acts = ops.encode_dense(x, W_enc, b_enc, b_dec, thr)
        if activation == "batchtopk":  # the batch-wide selection, as the architecture does it
            acts = ref.batchtopk_act(acts, case["k"])
        recon = ops.decode_dense(acts, W_dec, b_dec)
        code_term = (acts * g_code).sum()
        code = (acts,)
    ((recon * g_recon).sum() + code_term).backward()
    grads = {n: t.grad for n, t in leaves.items()}
    return code, recon, grads


def _check(backend: str, case: dict, activation: str) -> None:
    inputs = _inputs(case)
    dev = backend_device(backend)
    ops = get_backend(backend, dev, case["dtype"])
    code, recon, grads = _step(ops, dev, case, inputs, case["dtype"], activation)
    if case["dtype"] in FULL:
        r_code, r_recon, r_grads = _step(TorchBackend, dev, case, inputs, case["dtype"], activation)
        tol = dict(rtol=1e-4, atol=1e-4) if case["dtype"] == torch.float32 else {}
        if activation == "topk":
            assert torch.equal(code[1].cpu(), r_code[1].cpu()), "indices"
        assert_close(code[0], r_code[0], "code", **tol)
        assert_close(recon, r_recon, "recon", **tol)
        for name, g in r_grads.items():
            assert_close(grads[name], g, f"{name}.grad", **tol)
        return
    # bf16 / fp16 on exact integer inputs: the same selection as float64, and each output
    # within twice the error of torch's own implementation in that dtype
    e_code, e_recon, e_grads = _step(TorchBackend, dev, case, inputs, torch.float64, activation)
    t_code, t_recon, t_grads = _step(TorchBackend, dev, case, inputs, case["dtype"], activation)
    if activation == "topk":
        assert torch.equal(code[1].cpu(), e_code[1].cpu()), "indices"
    eps = 8e-3 if case["dtype"] == torch.bfloat16 else 2e-3
    triples = [("code", code[0], t_code[0], e_code[0]), ("recon", recon, t_recon, e_recon)]
    triples += [(f"{n}.grad", grads[n], t_grads[n], e_grads[n]) for n in e_grads]
    for name, ours, theirs, exact in triples:
        scale = exact.detach().double().norm().clamp_min(1.0)
        e_ours = float((ours.detach().double().cpu() - exact.detach().cpu()).norm() / scale)
        e_torch = float((theirs.detach().double().cpu() - exact.detach().cpu()).norm() / scale)
        assert e_ours <= 2 * e_torch + eps, f"{name}: ours {e_ours:.2e}, torch {e_torch:.2e}"


def _property(backend: str, activation: str):
    @_settings(backend)
    @given(case=cases(backend))
    def check(case):
        if activation == "batchtopk" and case["k"] * case["B"] > case["B"] * case["d_sae"]:
            return
        _check(backend, case, activation)

    return check


ALL = KERNEL_BACKENDS


@pytest.mark.parametrize("backend", ALL)
def test_topk_matches_reference(backend):
    _property(backend, "topk")()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
def test_dense_codes_match_reference(backend, activation):
    _property(backend, activation)()


@pytest.mark.parametrize("backend", ALL)
def test_sparse_decode_of_any_indices_matches_reference(backend):
    """decode_sparse alone, on codes TopK never makes: repeated features in a row,
    negative and zero values."""

    @_settings(backend)
    @given(case=cases(backend), dup=st.booleans())
    def check(case, dup):
        if case["dtype"] in LOW:
            return
        inputs = _inputs(case)
        g = torch.Generator().manual_seed(case["seed"] + 1)
        B, k, d_sae = case["B"], case["k"], case["d_sae"]
        idx = torch.randint(0, d_sae, (B, k), generator=g)
        if dup:
            idx[:, k // 2 :] = idx[:, : k - k // 2].clone()  # the halves overlap for odd k
        results = []
        dev = backend_device(backend)
        for ops in (get_backend(backend, dev), TorchBackend):
            vals = _layout(inputs["g_code"][:, :k].to(dev, case["dtype"]), case["layout"])
            W = _layout(inputs["W_dec"].to(dev, case["dtype"]), case["layout"])
            b = inputs["b_dec"].to(dev, case["dtype"])
            leaves = [t.requires_grad_(True) for t in (vals, W, b)]
            recon = ops.decode_sparse(leaves[0], idx.to(dev), leaves[1], leaves[2])
            (recon * inputs["g_recon"].to(dev, case["dtype"])).sum().backward()
            results.append([recon, *(t.grad for t in leaves)])
        tol = dict(rtol=1e-4, atol=1e-4) if case["dtype"] == torch.float32 else {}
        for name, a, b in zip(("recon", "values", "W_dec", "b_dec"), *results, strict=True):
            assert_close(a, b, name, **tol)

    check()
