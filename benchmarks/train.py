"""Train suite: one TopK training step (forward + backward + Adam) of every implementation
against the encoder GEMM alone and the dense reference, at the preset's shape and across
dictionary sizes (4x-32x d_in) and batch sizes, all in one process.

With peers, this whole suite runs inside the peer environment (`benchmarks/peers/`), so
sae_fast, sparsify and SAELens are timed side by side, in rounds, on the same data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .common import OnRow, Shape, interleaved_medians, machine
from .workloads import IMPLS, check_impl, initial_state, make_impl, make_step, reference_gradients

WIDTHS = (4, 8, 16, 32)  # dictionary size as a multiple of d_in
BATCH_FACTORS = (0.25, 0.5, 1, 2)  # batch sizes as multiples of the preset's batch
SWEEP_IMPLS = ("sae_fast", "dense", "sparsify", "saelens")  # at every sweep point
CHECK_ROWS = 256


def sweep_shapes(main: Shape) -> list[Shape]:
    """The preset's shape first, then the dictionary-size and batch-size sweeps."""
    shapes = [main]
    shapes += [main.with_(d_sae=w * main.d_in) for w in WIDTHS]
    shapes += [main.with_(B=max(64, int(f * main.B))) for f in BATCH_FACTORS]
    return list(dict.fromkeys(shapes))


def gemm_fn(x: Tensor, state: dict[str, Tensor]) -> Callable[[], object]:
    """The encoder GEMM alone, `(x - b_dec) @ W_enc`, into a preallocated output on the CPU
    (so the figure is the GEMM, not page faults on a fresh [B, d_sae] buffer)."""
    xc = x - state["b_dec"]
    W = state["W_enc"]
    if x.device.type == "cpu":
        out = torch.empty(x.shape[0], W.shape[1], dtype=x.dtype)
        return lambda: torch.matmul(xc, W, out=out)
    return lambda: xc @ W


def time_shape(
    shape: Shape, x: Tensor, impls: list[str], repeats: int, device: str, backend: str = "auto"
) -> list[dict]:
    """Check every implementation against the reference at `shape`, then time them."""
    state = initial_state(shape, device)
    xs = x[: shape.B].to(device=device, dtype=shape.torch_dtype)
    xcheck = xs[:CHECK_ROWS]
    want = reference_gradients(shape, state, xcheck)
    fns: dict[str, Callable[[], object]] = {"encoder GEMM": gemm_fn(xs, state)}
    errs: dict[str, float] = {}
    for name in impls:
        impl = make_impl(name, shape, state, backend)
        errs[impl.name] = check_impl(name, impl, shape, state, xcheck, want)
        fns[impl.name] = make_step(impl, xs)
    times = interleaved_medians(fns, repeats, warmup=1, device=device)
    gemm = times["encoder GEMM"]
    dense = times.get("dense reference")
    rows = []
    for name, ms in times.items():
        rows.append(
            {
                "suite": "train",
                "op": "encoder GEMM" if name == "encoder GEMM" else "train step",
                "impl": "torch.matmul" if name == "encoder GEMM" else name,
                **shape.as_dict(),
                "ms": round(ms, 3),
                "x_gemm": round(ms / gemm, 3),
                "speedup_vs_dense": round(dense / ms, 3) if dense else "",
                "check_err": "" if name == "encoder GEMM" else f"{errs[name]:.1e}",
            }
        )
    return rows


def run(
    main: Shape,
    x: Tensor,
    impls: list[str],
    repeats: int,
    device: str,
    sweep: bool = True,
    backend: str = "auto",
    on_row: OnRow | None = None,
) -> list[dict]:
    """The suite: every implementation at `main`; the sweep implementations (those of
    `SWEEP_IMPLS` asked for, never torch.compile: one compile per shape) at the sweep shapes.
    Each shape's rows go to `on_row` as soon as that shape is timed."""
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise SystemExit(f"unknown implementation(s) {sorted(unknown)}; known: {list(IMPLS)}")
    if "dense" not in impls:
        impls = [*impls, "dense"]  # the reference every ratio is against
    rows: list[dict] = []
    shapes = sweep_shapes(main) if sweep else [main]
    if x.shape[0] < max(s.B for s in shapes):
        raise SystemExit(f"need {max(s.B for s in shapes)} rows of data, got {x.shape[0]}")
    print(f"train suite on {machine(device)}: {len(shapes)} shapes, {repeats} rounds each")
    for shape in shapes:
        names = impls if shape == main else [n for n in impls if n in SWEEP_IMPLS]
        shape_rows = time_shape(shape, x, names, repeats, device, backend)
        for r in shape_rows:
            r["machine"] = machine(device)
            if on_row:
                on_row(r)
        print_rows(shape, shape_rows)
        rows += shape_rows
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def print_rows(shape: Shape, rows: list[dict]) -> None:
    """One small table per shape."""
    print(f"  {shape.label()}")
    for r in rows:
        dense = f"{r['speedup_vs_dense']:6.2f}x faster than dense" if r["speedup_vs_dense"] else ""
        print(f"    {r['impl']:22s} {r['ms']:10.1f} ms {r['x_gemm']:6.2f}x GEMM  {dense}")
