"""Turn the suites' rows into what people read: a markdown report with the targets of
docs/design.md section 6 marked met or missed, and a PNG of step cost against dictionary size
and batch size. Written atomically next to the CSV."""

from __future__ import annotations

from pathlib import Path

from sae_fast.formats import atomic_file

from .common import Shape

ENCODE_MEMORY_TARGET = 0.2  # x one [B, d_sae] fp32 buffer
STEP_TARGET = {"cpu": 1.3, "cuda": 1.25}  # x the encoder GEMM
DENSE_SPEEDUP_TARGET = 4.0  # CPU: x faster than the dense reference


def shape_of(row: dict) -> Shape:
    """The Shape a result row was measured at."""
    return Shape(**{k: row[k] for k in Shape.__dataclass_fields__})


def _at(rows: list[dict], suite: str, shape: Shape) -> dict[str, dict]:
    """Rows of `suite` at `shape`, by implementation."""
    keys = shape.as_dict()
    return {
        r["impl"]: r
        for r in rows
        if r["suite"] == suite and all(r.get(k) == v for k, v in keys.items())
    }


def targets(rows: list[dict], device: str, main: Shape) -> list[tuple[str, bool]]:
    """(statement with the measured figure, met?) for each target the rows can decide."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    out: list[tuple[str, bool]] = []
    step = _at(rows, "train", main)
    ours = step.get("sae_fast")
    if ours:
        lim = STEP_TARGET[kind]
        out.append(
            (f"train step <= {lim}x the encoder GEMM: {ours['x_gemm']:.2f}x", ours["x_gemm"] <= lim)
        )
        if kind == "cpu":
            s = ours["speedup_vs_dense"]
            out.append(
                (
                    f">= {DENSE_SPEEDUP_TARGET:.0f}x faster than the dense reference: {s:.2f}x",
                    s >= DENSE_SPEEDUP_TARGET,
                )
            )
        for peer, label in (("sparsify", "sparsify"), ("saelens", "SAELens")):
            if peer in step:
                ratio = step[peer]["ms"] / ours["ms"]
                out.append((f"faster than {label} at the same config: {ratio:.2f}x", ratio > 1))
    for r in rows:
        if r["suite"] == "memory" and r["op"] == "encode" and r["impl"] == "sae_fast":
            x = r["x_buffer"]
            out.append(
                (
                    f"encode peak extra memory < {ENCODE_MEMORY_TARGET}x a [B, d_sae] fp32 buffer: "
                    f"{x:.3f}x",
                    x < ENCODE_MEMORY_TARGET,
                )
            )
    return out


def _num(value: float | str) -> str:
    return f"{value:.2f}" if isinstance(value, float | int) else "-"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def _sweep_table(rows: list[dict], main: Shape, axis: str) -> list[str]:
    """ms (x GEMM) per implementation across one sweep axis, the other held at `main`."""
    other = "B" if axis == "d_sae" else "d_sae"
    pts = [r for r in rows if r["suite"] == "train" and r[other] == getattr(main, other)]
    values = sorted({r[axis] for r in pts})
    impls = list(dict.fromkeys(r["impl"] for r in pts))
    cells = {(r["impl"], r[axis]): f"{r['ms']:.1f} ({r['x_gemm']:.2f}x)" for r in pts}
    head = [axis if axis == "B" else "d_sae (x d_in)"]
    head += [str(v) if axis == "B" else f"{v} ({v // main.d_in}x)" for v in values]
    body = [[impl] + [cells.get((impl, v), "") for v in values] for impl in impls]
    body = [row for row in body if sum(1 for c in row[1:] if c) > 1]
    return _table(head, body)


def markdown(rows: list[dict], device: str, main: Shape, meta: dict[str, str]) -> str:
    """The report: setup, targets, then one section per suite present."""
    lines = [f"# sae_fast benchmarks, {meta['date']}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "date"]
    checks = targets(rows, device, main)
    if checks:
        lines += ["", "## Targets (docs/design.md section 6)", ""]
        lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    step = _at(rows, "train", main)
    if step:
        lines += ["", f"## Train step (forward + backward + Adam), {main.label()}", ""]
        lines += _table(
            ["implementation", "ms", "x encoder GEMM", "x faster than dense", "check (rel err)"],
            [
                [
                    n,
                    f"{r['ms']:.1f}",
                    f"{r['x_gemm']:.2f}",
                    f"{r['speedup_vs_dense']:.2f}",
                    r["check_err"] or "-",
                ]
                for n, r in step.items()
            ],
        )
        lines += ["", "Cost against dictionary size, ms (x the encoder GEMM), B held:", ""]
        lines += _sweep_table(rows, main, "d_sae")
        lines += ["", "Cost against batch size, ms (x the encoder GEMM), d_sae held:", ""]
        lines += _sweep_table(rows, main, "B")
    kern = [r for r in rows if r["suite"] == "kernels"]
    if kern:
        lines += [
            "",
            f"## Kernels, {shape_of(kern[0]).label()}",
            "",
        ]
        lines += _table(
            ["op", "implementation", "ms", "x encoder GEMM", "x faster than dense"],
            [
                [
                    r["op"],
                    r["impl"],
                    f"{r['ms']:.2f}",
                    f"{r['x_gemm']:.2f}",
                    _num(r["speedup_vs_dense"]),
                ]
                for r in kern
            ],
        )
    mem = [r for r in rows if r["suite"] == "memory"]
    if mem:
        lines += ["", "## Peak memory (fresh process each)", ""]
        lines += _table(
            ["op", "implementation", "shape", "peak extra MiB", "x one [B, d_sae] fp32 buffer"],
            [[r["op"], r["impl"], shape_of(r).label(), r["peak_mb"], r["x_buffer"]] for r in mem],
        )
    e2e = [r for r in rows if r["suite"] == "e2e"]
    if e2e:
        lines += ["", "## End to end: `sae-fast train` on the embedded default", ""]
        lines += _table(
            ["phase", "seconds", "tokens/s", "share of the time"],
            [
                [r["op"], r["seconds"], f"{r['tokens_per_s']:,.0f}", f"{r['share']:.0%}"]
                for r in e2e
            ],
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], main: Shape, title: str, path: Path) -> Path | None:
    """PNG: train-step ms against d_sae (B held) and against B (d_sae held), log-log."""
    train = [r for r in rows if r["suite"] == "train"]
    if len({(r["d_sae"], r["B"]) for r in train}) < 2:
        return None  # no sweep, nothing to draw
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True)
    for ax, axis in zip(axes, ("d_sae", "B"), strict=True):
        other = "B" if axis == "d_sae" else "d_sae"
        pts = [r for r in train if r[other] == getattr(main, other)]
        for impl in dict.fromkeys(r["impl"] for r in pts):
            series = sorted((r[axis], r["ms"]) for r in pts if r["impl"] == impl)
            if len(series) < 2:
                continue
            style = "k--" if impl == "torch.matmul" else "o-"
            label = "encoder GEMM alone" if impl == "torch.matmul" else impl
            ax.plot(*zip(*series, strict=True), style, label=label, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        xs = sorted({r[axis] for r in pts})
        labels = (
            [f"{v}\n{v // main.d_in}x" for v in xs] if axis == "d_sae" else [str(v) for v in xs]
        )
        ax.set_xticks(xs, labels)
        ax.minorticks_off()
        ax.set_xlabel("dictionary size d_sae" if axis == "d_sae" else "batch size (tokens)")
        ax.set_ylabel("ms per train step (fwd + bwd + Adam)")
        held = f"B = {main.B}" if axis == "d_sae" else f"d_sae = {main.d_sae}"
        ax.set_title(f"cost vs {'dictionary' if axis == 'd_sae' else 'batch'} size ({held})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def write_markdown(text: str, path: Path) -> Path:
    """Write the report atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    print(f"wrote {path}")
    return path
