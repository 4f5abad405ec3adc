"""The checks and timings of `python -m benchmarks.gpu_check` (the driver, rows and files
live in gpu_check.py). Each function takes a `Case` (one dtype's tensors) and returns the
row's metrics, or raises `CheckFailed` (a wrong result, metrics attached) or any exception.

Tolerances (relative error in norm, `common.rel_err`):
- one kernel against the reference computed in fp32 from the same operands: 1e-4 for fp32,
  1e-2 for bf16/fp16 (the kernel rounds its output once to the parameters' dtype);
- the whole autograd step, triton backend against the torch backend (both in the run's
  dtype): 1e-3 for fp32, 2e-2 for bf16/fp16 (gradients rounded to bf16 by both, and the
  rows whose TopK set differs by an fp32 near-tie);
- TopK indices: at least 99% of rows identical to the reference's, in order;
- the dense reference and sparsify (timing rows): loss within 5e-2 of the torch backend's
  (`workloads.tolerance`: their bf16 pre-activations are ranked in bf16, ties differ).
Only torch/triton APIs present in torch 2.4+ are used here.

In --smoke (the CPU interpreter) bf16 results are rounded toward zero: the interpreter's
fp32 -> bf16 conversion truncates (GPUs round to nearest even). The bias projects onto the
selected decoder rows, and dL/dv = g . W_dec[i] is a small difference (about 2% of
|g| |W_dec[i]| for a random SAE), so at d_in >= 512 the smoke's sae_step W_enc/b_enc rows
can exceed 2e-2 for that reason alone; the default smoke shape (d_in=32) stays under it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from sae_fast.ops import reference as ref

from .common import Shape, rel_err

ROWS_EQUAL_MIN = 0.99
PEER_LOSS_TOL = 5e-2


class CheckFailed(Exception):
    """A wrong result; `metrics` are what the check measured before it gave up."""

    def __init__(self, message: str, metrics: dict) -> None:
        super().__init__(message)
        self.metrics = metrics


class Skipped(Exception):
    """A row that cannot be measured here: status `SKIP (<why>)`, the detail as its error."""

    def __init__(self, why: str, detail: str) -> None:
        super().__init__(detail)
        self.why = why


def kernel_tol(dtype: str) -> float:
    """Allowed relative error of one kernel against the fp32 reference."""
    return 1e-4 if dtype == "float32" else 1e-2


def step_tol(dtype: str) -> float:
    """Allowed relative error of the triton step's loss and gradients against torch's."""
    return 1e-3 if dtype == "float32" else 2e-2


def _require(metrics: dict, problems: list[str]) -> dict:
    """`metrics`, or CheckFailed naming every problem found."""
    if problems:
        raise CheckFailed("; ".join(problems), metrics)
    return metrics


def _errs_within(metrics: dict, errs: dict[str, float], tol: float) -> list[str]:
    """Record `errs` as `<name>_rel` metrics; the problems where one is over `tol` (or NaN)."""
    problems = []
    for name, err in errs.items():
        metrics[f"{name}_rel"] = err
        if not err <= tol:
            problems.append(f"{name} relative error {err:.2e} > {tol:.0e}")
    return problems


# ----------------------------------------------------------------------------- data


def make_tensors(shape: Shape, device: str, seed: int = 0) -> dict[str, Tensor]:
    """Unit-norm decoder rows, W_enc = W_dec^T, small random biases, random x and grad."""
    g = torch.Generator(device=device).manual_seed(seed)
    dt = shape.torch_dtype

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=g, device=device)

    w = randn(shape.d_sae, shape.d_in)
    w /= w.norm(dim=1, keepdim=True)
    W_dec = w.to(dt)  # [d_sae, d_in]
    del w
    return {
        "W_dec": W_dec,
        "W_enc": W_dec.t().contiguous(),  # [d_in, d_sae]
        "b_enc": (0.01 * randn(shape.d_sae)).to(dt),
        "b_dec": (0.1 * randn(shape.d_in)).to(dt),
        "x": randn(shape.B, shape.d_in).to(dt),
        "grad": randn(shape.B, shape.d_in).to(dt),  # dL/drecon
        "extra": 0.1 * randn(shape.B, shape.k),  # a direct dL/dv (AuxK-like), fp32
        "threshold": (0.5 * torch.rand(shape.d_sae, generator=g, device=device)).to(dt),
    }


class Case:
    """One dtype's tensors (built on first use) and what its earlier rows measured."""

    def __init__(self, shape: Shape, device: str, b_check: int, b_dense: int, reps: int,
                 warmup: int) -> None:  # fmt: skip
        self.shape, self.device = shape, device
        self.dtype = shape.dtype
        self.b_check, self.b_dense = min(b_check, shape.B), min(b_dense, shape.B)
        self.reps, self.warmup = reps, warmup
        self._tensors: dict[str, Tensor] | None = None
        self._code: ref.SparseCode | None = None
        self.gemm_ms: float | None = None
        self.ref_loss: float | None = None  # the torch backend's loss (sae_step)
        self.ms: dict[str, float] = {}  # timing rows so far, by check name

    @property
    def t(self) -> dict[str, Tensor]:
        """The tensors (see `make_tensors`)."""
        if self._tensors is None:
            self._tensors = make_tensors(self.shape, self.device)
        return self._tensors

    def state(self) -> dict[str, Tensor]:
        """The SAE parameters, as `SparseAutoencoder.load_state_dict` takes them."""
        return {n: self.t[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def ref_code(self) -> ref.SparseCode:
        """`ref.encode_topk` of the whole batch (computed once)."""
        if self._code is None:
            t = self.t
            self._code = ref.encode_topk(t["x"], t["W_enc"], t["b_enc"], t["b_dec"], self.shape.k)
        return self._code


# ----------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
    """Median ms of `fn()` after `warmup` calls: CUDA events on a GPU, else wall clock."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory `fn()` allocates beyond what was allocated before (MiB; None on CPU)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / 2**20


def _timed(case: Case, name: str, fn: Callable[[], object], memory: bool = False) -> dict:
    """The timing row of `fn`: ms, its ratio to the encoder GEMM, peak extra memory."""
    ms = median_ms(fn, case.device, case.reps, case.warmup)
    case.ms[name] = ms
    row: dict = {"ms": ms, "reps": case.reps}
    if case.gemm_ms:
        row["x_gemm"] = ms / case.gemm_ms
    if memory:
        row["peak_extra_mib"] = peak_extra_mib(fn, case.device)
    return row


# ----------------------------------------------------------------------------- correctness


def compare_codes(v: Tensor, i: Tensor, want: ref.SparseCode, dtype: str) -> dict:
    """Metrics of a TopK code against the reference's; CheckFailed when it is wrong."""
    if v.shape != want.values.shape or i.shape != want.indices.shape:
        raise CheckFailed(
            f"shapes {tuple(v.shape)}/{tuple(i.shape)} != {tuple(want.values.shape)}", {}
        )
    same_row = (i == want.indices).all(-1)  # [B]
    same_set = (i.sort(-1).values == want.indices.sort(-1).values).all(-1)  # [B]
    m = {
        "rows_equal": float(same_row.float().mean()),
        "rows_same_set": float(same_set.float().mean()),
        "values_rel": rel_err(v, want.values),
    }
    problems = []
    if i.dtype != torch.int64 or v.dtype != want.values.dtype:
        problems.append(f"dtypes {v.dtype}/{i.dtype}, want {want.values.dtype}/int64")
    if m["rows_equal"] < ROWS_EQUAL_MIN:
        problems.append(f"only {m['rows_equal']:.4f} of rows have the reference's indices")
    if not m["values_rel"] <= kernel_tol(dtype):
        problems.append(f"values relative error {m['values_rel']:.2e} > {kernel_tol(dtype):.0e}")
    return _require(m, problems)


@contextlib.contextmanager
def chunked_rows_seen() -> Iterator[list[int]]:
    """Record the rows each call of `triton_encoder.encode_topk_chunked` gets: under
    method="fused", the rows whose candidate list overflowed (redone chunked), or the whole
    batch when k is past the fused kernel's configurations. No public API reports it."""
    from sae_fast.ops import triton_encoder as te

    seen: list[int] = []
    chunked = te.encode_topk_chunked

    def counting(xc: Tensor, *args, **kwargs):
        seen.append(xc.shape[0])
        return chunked(xc, *args, **kwargs)

    te.encode_topk_chunked = counting
    try:
        yield seen
    finally:
        te.encode_topk_chunked = chunked


def encode_topk(case: Case, method: str) -> dict:
    """`encode_topk(method=...)` on the whole batch against `ref.encode_topk`."""
    from sae_fast.ops import triton_encoder as te

    t, k = case.t, case.shape.k
    want = case.ref_code()
    with chunked_rows_seen() as seen:
        v, i = te.encode_topk(t["x"], t["W_enc"], t["b_enc"], t["b_dec"], k, method=method)
    m = {"chunked_rows": sum(seen)} if method == "fused" else {}
    try:
        return m | compare_codes(v, i, want, case.dtype)
    except CheckFailed as e:
        raise CheckFailed(str(e), m | e.metrics) from None


def encode_dense(case: Case, jumprelu: bool) -> dict:
    """`encode_dense` (ReLU, or JumpReLU with thresholds in [0, 0.5)) on `b_dense` rows
    against `ref.encode_dense` (both write a dense [rows, d_sae] code)."""
    from sae_fast.ops import triton_encoder as te

    t, n = case.t, case.b_dense
    thr = t["threshold"] if jumprelu else None
    args = (t["x"][:n], t["W_enc"], t["b_enc"], t["b_dec"])
    got = te.encode_dense(*args, thr)
    want = ref.encode_dense(*args, thr)
    m = {"rows": n, "gate_mismatch": float(((got != 0) != (want != 0)).float().mean())}
    problems = _errs_within(m, {"code": rel_err(got, want)}, kernel_tol(case.dtype))
    if got.dtype != want.dtype or got.shape != want.shape:
        problems.append(f"got {got.dtype} {tuple(got.shape)}, want {want.dtype}")
    if m["gate_mismatch"] > 1e-3:
        problems.append(f"{m['gate_mismatch']:.2e} of entries gated differently")
    return _require(m, problems)


def decode(case: Case) -> dict:
    """`decode_sparse` of the reference code against `ref.decode_sparse` in fp32."""
    from sae_fast.ops import triton_decoder as td

    t = case.t
    v, i = case.ref_code()
    got = td.decode_sparse(v, i, t["W_dec"], t["b_dec"])
    want = ref.decode_sparse(v.float(), i, t["W_dec"].float(), t["b_dec"].float())
    m: dict = {}
    problems = _errs_within(m, {"recon": rel_err(got, want)}, kernel_tol(case.dtype))
    if got.dtype != v.dtype:
        problems.append(f"recon dtype {got.dtype} != {v.dtype}")
    return _require(m, problems)


def grad_values(case: Case) -> dict:
    """`grad_values` on `b_check` rows against the gathered dot products in fp32."""
    from sae_fast.ops import triton_decoder as td

    t, n = case.t, case.b_check
    i = case.ref_code().indices[:n]
    g = t["grad"][:n]
    got = td.grad_values(g, i, t["W_dec"])
    want = torch.einsum("bd,bjd->bj", g.float(), t["W_dec"][i].float())  # [n, k]
    m: dict = {"rows": n}
    return _require(m, _errs_within(m, {"dv": rel_err(got, want)}, kernel_tol(case.dtype)))


def sparse_backward(case: Case) -> dict:
    """`sparse_backward` (without and with a direct dL/dv) on `b_check` rows against
    `ref.topk_backward` in fp32: every gradient, its dtype and layout."""
    from sae_fast.ops import triton_backward as tb

    t, n = case.t, case.b_check
    v, i = (c[:n] for c in case.ref_code())
    x, g = t["x"][:n], t["grad"][:n]
    W_enc, W_dec, b_dec = t["W_enc"], t["W_dec"], t["b_dec"]
    f32 = {name: t[name].float() for name in ("W_enc", "W_dec", "b_dec")}
    names = ("d_pre", "W_enc", "b_enc", "W_dec", "b_dec")
    worst = dict.fromkeys(names, 0.0)
    problems = []
    for extra in (None, t["extra"][:n]):
        got = tb.sparse_backward(g, extra, x, W_enc, b_dec, W_dec, v, i)
        want = ref.topk_backward(g.float(), x.float(), v.float(), i, f32["W_enc"],
                                 f32["W_dec"], f32["b_dec"], extra)  # fmt: skip
        for name, a, b in zip(names, got, want, strict=True):
            err = rel_err(a, b)
            worst[name] = err if (err != err or err > worst[name]) else worst[name]  # NaN sticks
        params = (W_enc, t["b_enc"], W_dec, b_dec)
        for a, p, name in zip(got[1:], params, names[1:], strict=True):
            if a.dtype != p.dtype or a.shape != p.shape or not a.is_contiguous():
                problems.append(f"{name}.grad is {a.dtype} {tuple(a.shape)}, want {p.dtype}")
        del got, want
    m: dict = {"rows": n}
    problems += _errs_within(m, worst, kernel_tol(case.dtype))
    return _require(m, problems)


def _step_grads(impl, x: Tensor) -> tuple[float, Tensor, dict[str, Tensor]]:
    """(loss, indices, gradients) of one forward and backward of a `workloads.SaeFast`."""
    from .workloads import loss_of

    for p in impl.parameters():
        p.grad = None
    out = impl.sae(x)
    loss = loss_of(out.reconstruction, x)
    loss.backward()
    return float(loss.detach()), out.indices, {n: p.grad for n, p in impl.sae.named_parameters()}


def sae_step(case: Case) -> dict:
    """`SparseAutoencoder(backend="triton")` forward + backward (the fused topk_sae op) on
    the whole batch against the torch backend: loss, TopK indices, every gradient."""
    from .workloads import SaeFast

    x = case.t["x"]
    tri = SaeFast(case.shape, case.state(), backend="triton")
    loss_t, idx_t, grads_t = _step_grads(tri, x)
    del tri
    ref_impl = SaeFast(case.shape, case.state(), backend="torch")
    loss_r, idx_r, grads_r = _step_grads(ref_impl, x)
    del ref_impl
    case.ref_loss = loss_r
    m = {"loss": loss_t, "rows_equal": float((idx_t == idx_r).all(-1).float().mean())}
    errs = {"loss": abs(loss_t - loss_r) / max(abs(loss_r), 1e-12)}
    errs.update({f"{n}.grad": rel_err(grads_t[n], grads_r[n]) for n in grads_r})
    problems = _errs_within(m, errs, step_tol(case.dtype))
    if m["rows_equal"] < ROWS_EQUAL_MIN:
        problems.append(f"only {m['rows_equal']:.4f} of rows select the torch backend's indices")
    return _require(m, problems)


def int64_probe(probe: Shape, device: str) -> dict:
    """Fused and chunked TopK at d_in * d_sae >= 2**31 (int64 addressing) against the
    reference on the same tensors. W_enc is drawn directly in the dtype (no fp32 copy)."""
    from sae_fast.ops import triton_encoder as te

    g = torch.Generator(device=device).manual_seed(1)
    dt = probe.torch_dtype
    W = torch.randn(probe.d_in, probe.d_sae, generator=g, device=device, dtype=dt)
    W.mul_(probe.d_in**-0.5)  # [d_in, d_sae], pre-activations ~ N(0, 1)
    b_enc = (0.01 * torch.randn(probe.d_sae, generator=g, device=device)).to(dt)
    b_dec = (0.1 * torch.randn(probe.d_in, generator=g, device=device)).to(dt)
    x = torch.randn(probe.B, probe.d_in, generator=g, device=device).to(dt)
    want = ref.encode_topk(x, W, b_enc, b_dec, probe.k)
    m: dict = {"elements": probe.d_in * probe.d_sae, "over_2^31": probe.d_in * probe.d_sae >= 2**31}
    problems = []
    for method in ("fused", "chunked"):
        with chunked_rows_seen() as seen:
            v, i = te.encode_topk(x, W, b_enc, b_dec, probe.k, method=method)
        try:
            got = compare_codes(v, i, want, probe.dtype)
        except CheckFailed as e:
            got = e.metrics
            problems.append(f"{method}: {e}")
        if method == "fused":
            got["chunked_rows"] = sum(seen)
        m.update({f"{method}_{key}": val for key, val in got.items()})
    return _require(m, problems)


# ----------------------------------------------------------------------------- timings


def time_gemm(case: Case) -> dict:
    """The cuBLAS encoder GEMM `(x - b_dec) @ W_enc` in the dtype: every ratio's unit."""
    t = case.t
    row = _timed(case, "gemm", lambda: (t["x"] - t["b_dec"]) @ t["W_enc"], memory=True)
    case.gemm_ms = row["ms"]
    row["x_gemm"] = 1.0
    return row


def time_encode(case: Case, method: str) -> dict:
    """`encode_topk(method=...)` on the whole batch, with its peak extra memory."""
    from sae_fast.ops import triton_dispatch
    from sae_fast.ops import triton_encoder as te

    t, s = case.t, case.shape
    args = (t["x"], t["W_enc"], t["b_enc"], t["b_dec"], s.k)
    row = _timed(case, f"encode_{method}", lambda: te.encode_topk(*args, method=method), True)
    if method == "auto":
        row["method"] = triton_dispatch.encoder_plan(s.B, s.d_in, s.d_sae, s.k, s.torch_dtype)
    return row


def time_decode(case: Case) -> dict:
    """`decode_sparse` of the whole batch's code."""
    from sae_fast.ops import triton_decoder as td

    t = case.t
    v, i = case.ref_code()
    return _timed(case, "decode", lambda: td.decode_sparse(v, i, t["W_dec"], t["b_dec"]))


def time_grad_values(case: Case) -> dict:
    """`grad_values` of the whole batch."""
    from sae_fast.ops import triton_decoder as td

    i = case.ref_code().indices
    return _timed(case, "grad_values", lambda: td.grad_values(case.t["grad"], i, case.t["W_dec"]))


def time_sparse_backward(case: Case) -> dict:
    """`sparse_backward` of the whole batch (every gradient, one sort)."""
    from sae_fast.ops import triton_backward as tb

    t = case.t
    v, i = case.ref_code()
    args = (t["grad"], None, t["x"], t["W_enc"], t["b_dec"], t["W_dec"], v, i)
    return _timed(case, "sparse_backward", lambda: tb.sparse_backward(*args), memory=True)


def _make_impl(case: Case, which: str):
    """The `workloads.Impl` a step row times."""
    from .workloads import DenseReference, SaeFast

    if which == "triton":
        return SaeFast(case.shape, case.state(), backend="triton", name="sae_fast[triton]")
    if which == "dense":
        return DenseReference(case.shape, case.state())
    try:
        import sparsify  # noqa: F401
    except ImportError as e:
        raise Skipped("not importable", f"sparsify: not importable ({e})") from None
    from .peers import adapters

    return adapters.Sparsify(case.shape, case.state())


def time_step(case: Case, which: str) -> dict:
    """Forward + backward (loss = squared error summed over d_in, mean over rows) of the
    triton SparseAutoencoder, the dense reference (`workloads.dense_topk`) or sparsify;
    the loss is checked against the torch backend's first (when sae_step ran)."""
    impl = _make_impl(case, which)
    x = case.t["x"]

    def step() -> None:
        for p in impl.parameters():
            p.grad = None
        impl.loss(x).backward()

    loss = float(impl.loss(x).detach())
    row = _timed(case, f"step_{which}", step, memory=True)
    row["loss"] = loss
    if "step_dense" in case.ms and which != "dense":
        row["x_dense"] = row["ms"] / case.ms["step_dense"]
    if which == "dense" and "step_triton" in case.ms:
        row["triton_speedup"] = row["ms"] / case.ms["step_triton"]
    if case.ref_loss is not None:
        tol = step_tol(case.dtype) if which == "triton" else PEER_LOSS_TOL
        return _require(row, _errs_within(row, {"loss": abs(loss / case.ref_loss - 1)}, tol))
    return row


def time_adam(case: Case) -> dict:
    """`torch.optim.Adam(fused=True)` step over the SAE's parameters (random gradients)."""
    params = [torch.nn.Parameter(p.clone()) for p in case.state().values()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)
    row = _timed(case, "adam", opt.step)
    if "step_triton" in case.ms:
        row["of_triton_step"] = row["ms"] / case.ms["step_triton"]
    return row
