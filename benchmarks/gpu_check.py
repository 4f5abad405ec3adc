"""First contact of sae_fast's Triton kernels with a GPU: correctness at full size, then timings.

    python -m benchmarks.gpu_check                       # cuda preset, bf16, 280 s budget
    python -m benchmarks.gpu_check --dtype bf16,fp32 --shape 4096,131072,8192,64 --out DIR
    python -m benchmarks.gpu_check --write-dispatch      # also sae_fast/ops/gpu_dispatch.json
    python -m benchmarks.gpu_check --smoke --out /tmp/g  # CPU, TRITON_INTERPRET=1, tiny shapes

Rows, in order (per dtype; the checks and tolerances are in gpu_cases.py):
- env: torch, triton, CUDA, device, date, commit.
- correctness at the full shape: encode_fused, encode_chunked (vs ref.encode_topk: identical
  rows >= 99%, values), encode_relu, encode_jumprelu (vs ref.encode_dense on b_dense rows),
  decode (vs ref.decode_sparse), grad_values and sparse_backward (vs the explicit formulas and
  ref.topk_backward on b_check rows: that reference materialises [B, k, d_in]), sae_step
  (SparseAutoencoder triton vs torch backend: loss, indices, every gradient), int64_probe
  (d_in=4096, d_sae=2**20, B=64: fused and chunked vs the reference, d_in * d_sae >= 2**31).
- timings (median of --reps after warm-up, CUDA events; ms and x the encoder GEMM): gemm,
  encode_fused/chunked/auto (+ peak extra memory), dispatch (the faster of fused/chunked, to
  gpu-dispatch-<date>.json), decode, grad_values, sparse_backward, step_triton, adam,
  step_dense, step_sparsify (forward + backward each; Adam on its own row).

On a lent GPU (one call, about 5 minutes), leave margin for the start and the compiles:
    python -m benchmarks.gpu_check --budget-s 240       # with the call's timeout_s=300
$OUT is set there, so every file lands in it; copy $OUT/gpu_dispatch.json to sae_fast/ops/.

Outputs in --out (else $OUT, else benchmarks/results/; a new run the same day replaces
them): gpu-check-<date>.jsonl, one JSON object per row, flushed as each row is made (a
crash keeps the rows before it), and gpu-check-<date>.md, rewritten atomically after each
row. A failing check becomes a FAIL row and the run goes on; the exit status is 1 when any
row failed. Once less than a row's estimate is left of --budget-s, the remaining rows are
"SKIP (budget)". When a failure leaves the CUDA context unusable (an illegal address is
sticky), the remaining rows run in a fresh child process that appends to the same files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

T0 = time.monotonic()  # the budget counts from the process start

import torch  # noqa: E402

from .common import PRESETS, RESULTS, Shape  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SMOKE_SHAPE = Shape(32, 256, 32, 8)
PROBE = Shape(4096, 2**20, 64, 64)
SMOKE_PROBE = Shape(32, 1024, 8, 8)


def log(*parts: object) -> None:
    """A progress line, flushed at once (the device's output is read as it comes)."""
    print(*parts, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter")
    p.add_argument("--out", type=Path, default=None, help="default: $OUT, else benchmarks/results")
    p.add_argument("--shape", default=None, help="d_in,d_sae,B,k (default: the cuda preset)")
    p.add_argument("--dtype", default=None, help="comma list of bf16, fp16, fp32")
    p.add_argument("--budget-s", type=float, default=280.0, help="wall-clock budget (s)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per row (10; smoke 2)")
    table = str(ROOT / "sae_fast/ops/gpu_dispatch.json")
    p.add_argument("--write-dispatch", nargs="?", const=table, default=None, metavar="PATH",
                   help="also write the dispatch table (default: the package's)")  # fmt: skip
    hidden = argparse.SUPPRESS
    p.add_argument("--inject-failure", default="", help=hidden)  # NAME[:fatal],...
    p.add_argument("--start-after", default="", help=hidden)  # a row key: resume after it
    p.add_argument("--stamp", default="", help=hidden)  # the files' date (a resumed run's)
    return p.parse_args(argv)


def _dtypes(text: str | None, smoke: bool) -> list[str]:
    if text is None:
        return ["float32", "bfloat16"] if smoke else [PRESETS["cuda"].dtype]
    names = [DTYPES.get(d.strip(), d.strip()) for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES.values()]
    if bad or not names:
        raise SystemExit(f"unknown dtype(s) {bad or text!r}: choose from {', '.join(DTYPES)}")
    return names


def _shape(text: str | None, smoke: bool) -> Shape:
    if text is None:
        return SMOKE_SHAPE if smoke else PRESETS["cuda"]
    try:
        d_in, d_sae, B, k = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--shape wants d_in,d_sae,B,k, got {text!r}") from None
    return Shape(d_in, d_sae, B, k)


# ----------------------------------------------------------------------------- rows on disk


class Report:
    """The run's rows: `<stem>.jsonl` appended and flushed per row, `<stem>.md` rewritten
    atomically from the whole JSONL (so a resumed child's rows join the table)."""

    def __init__(self, out: Path, stamp: str, append: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = out / f"gpu-check-{stamp}.jsonl"
        self.md = out / f"gpu-check-{stamp}.md"
        if not append:
            self.jsonl.write_text("")

    def add(self, row: dict) -> None:
        """Write `row` to both files and print it."""
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write_md()
        log(_line(row))

    def rows(self) -> list[dict]:
        """Every row on disk so far."""
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]

    def _write_md(self) -> None:
        rows = self.rows()
        env = rows[0] if rows and rows[0].get("check") == "env" else {}
        counts: dict[str, int] = {}
        for r in rows[1:]:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        lines = [
            f"# sae_fast GPU check, {env.get('date', '?')}",
            "",
            f"{env.get('device', '?')}; torch {env.get('torch')}, triton {env.get('triton')}, "
            f"CUDA {env.get('cuda')}; commit {env.get('commit')}; shape {env.get('shape')}, "
            f"{env.get('dtypes')}.",
            "",
            "Rows: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
            "Tolerances and what each row checks: `benchmarks/gpu_cases.py`. Times are medians"
            " in ms; x GEMM = ratio to the cuBLAS encoder GEMM `(x - b_dec) @ W_enc`.",
            "",
            "| check | dtype | status | ms | x GEMM | details | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.get("check") == "env":
                continue
            lines.append(
                f"| {r['check']} | {r.get('dtype', '')} | {r['status']} | {_num(r.get('ms'))} "
                f"| {_num(r.get('x_gemm'))} | {_details(r)} "
                f"| {str(r.get('error', '')).replace('|', '/')[:300]} |"
            )
        _atomic_write(self.md, "\n".join(lines) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    """Write `path` by a rename. Not `sae_fast.formats.atomic_file`: the report must still
    be written when sae_fast itself fails to import on a new machine (that is a row too)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


BASE_KEYS = ("check", "dtype", "kind", "status", "error", "ms", "x_gemm", "t_s", "wall_s")


def _num(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "" if v is None else str(v)


def _details(row: dict) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in row.items() if k not in BASE_KEYS)


def _line(row: dict) -> str:
    ms = f" {row['ms']:.3f} ms" if isinstance(row.get("ms"), float) else ""
    gemm = f" ({row['x_gemm']:.2f}x GEMM)" if isinstance(row.get("x_gemm"), float) else ""
    err = f" -- {row['error']}" if row.get("error") else ""
    return (f"[{row.get('t_s', 0):6.1f}s] {row['status']:<6} {row['check']} "
            f"{row.get('dtype', '')}{ms}{gemm} {_details(row)}{err}")  # fmt: skip


def env_row(device: str, stamp: str, args: argparse.Namespace, shape: Shape, dtypes: list) -> dict:
    """The first row: versions, device, date, commit, settings."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError as e:
        triton_version = f"not importable ({e})"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    row = {
        "check": "env", "kind": "env", "status": "INFO", "date": stamp,
        "time": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "python": sys.version.split()[0], "commit": commit,
        "shape": f"d_in={shape.d_in} d_sae={shape.d_sae} B={shape.B} k={shape.k}",
        "dtypes": ",".join(dtypes), "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "budget_s": args.budget_s,
        "argv": sys.argv[1:],
    }  # fmt: skip
    if device == "cuda":
        row["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        row["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        row["mm_out_dtype"] = _has_mm_out_dtype()  # else the chunked path's GEMM is Triton's
    if args.start_after:
        row["resumed_after"] = args.start_after
    try:
        import sae_fast

        row["sae_fast"] = sae_fast.__file__
    except Exception as e:  # reported here, and every check then fails on its own row
        row["sae_fast"] = f"import failed: {type(e).__name__}: {e}"
    return row


# ----------------------------------------------------------------------------- the run


@dataclass
class Check:
    """One row to produce: `fn()` returns its metrics; `est_s` its budget reserve on a GPU."""

    name: str
    dtype: str
    kind: str
    fn: Callable[[], dict]
    est_s: float

    @property
    def key(self) -> str:
        return f"{self.name}/{self.dtype}"


class ContextLost(Exception):
    """The CUDA context cannot run anything more: the rest goes to a child process."""


class Runner:
    """Runs checks one by one, each isolated: budget, failure rows, memory freed after."""

    def __init__(self, args: argparse.Namespace, report: Report, device: str) -> None:
        self.args, self.report, self.device = args, report, device
        self.failed = False
        self.skipping = bool(args.start_after)  # until the resumed row is passed
        # --inject-failure NAME[:fatal],...: those checks raise (fatal: as if CUDA died)
        self.inject = {}
        for item in filter(None, args.inject_failure.split(",")):
            name, _, mode = item.partition(":")
            self.inject[name] = mode == "fatal"

    def left_s(self) -> float:
        """Seconds of the budget left."""
        return self.args.budget_s - (time.monotonic() - T0)

    def run(self, check: Check) -> None:
        """Produce `check`'s row (or skip it); ContextLost when CUDA cannot go on."""
        if self.skipping:
            self.skipping = check.key != self.args.start_after
            return
        reserve = 0.0 if self.device == "cpu" else check.est_s
        row: dict = {"check": check.name, "dtype": check.dtype, "kind": check.kind}
        start = time.monotonic()
        fatal = False
        if self.left_s() <= reserve:
            row["status"] = "SKIP (budget)"
        else:
            from .gpu_cases import CheckFailed, Skipped

            try:
                if check.name in self.inject:
                    fatal = self.inject[check.name]
                    raise RuntimeError(f"injected failure (--inject-failure {check.name})")
                metrics = check.fn()
                _sync(self.device)  # an asynchronous kernel error belongs to this row
                row.update(metrics)
                row["status"] = "PASS"
            except Skipped as e:
                row.update(status=f"SKIP ({e.why})", error=str(e))
            except CheckFailed as e:
                row.update(e.metrics, status="FAIL", error=str(e))
            except Exception as e:  # every failure becomes a row
                tb = traceback.extract_tb(e.__traceback__)[-1]
                where = f" ({Path(tb.filename).name}:{tb.lineno})"
                row.update(status="FAIL", error=f"{type(e).__name__}: {e}"[:800] + where)
            _free(self.device)
        row["t_s"] = time.monotonic() - T0
        row["wall_s"] = time.monotonic() - start
        self.failed |= row["status"] == "FAIL"
        self.report.add(row)
        if row["status"] == "FAIL" and (fatal or not _context_alive(self.device)):
            raise ContextLost(check.key)

    def resume_in_child(self, key: str) -> int:
        """Run the rows after `key` in a fresh process appending to the same files."""
        a = self.args
        budget = f"{self.left_s():.1f}"
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(a.out),
               "--stamp", a.stamp, "--start-after", key, "--budget-s", budget]  # fmt: skip
        for flag, value in (("--shape", a.shape), ("--dtype", a.dtype), ("--reps", a.reps),
                            ("--write-dispatch", a.write_dispatch),
                            ("--inject-failure", a.inject_failure)):  # fmt: skip
            if value:
                cmd += [flag, str(value)]
        cmd += ["--smoke"] if a.smoke else []
        log(f"CUDA context unusable after {key}: resuming in a child process")
        try:
            return subprocess.run(cmd, cwd=ROOT, timeout=max(self.left_s(), 0) + 60).returncode
        except subprocess.TimeoutExpired:
            return 124


def _has_mm_out_dtype() -> bool:
    """Whether this torch has `torch.mm(bf16, bf16, out_dtype=torch.float32)` on CUDA."""
    a = torch.ones(16, 16, device="cuda", dtype=torch.bfloat16)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError:
            pass


def _context_alive(device: str) -> bool:
    """Whether CUDA still runs work after a failure (False after a sticky error)."""
    if device != "cuda":
        return True
    try:
        torch.cuda.synchronize()
        return float(torch.ones(1, device="cuda").add_(1).item()) == 2.0
    except Exception:
        return False


class DispatchRows:
    """The faster TopK path of each timed shape: rows `{"key", "method", ...}` in
    `<out>/gpu-dispatch-<date>.json`; and the table `triton_dispatch.measured_table` reads
    (the package's rows for other shapes kept) in `<out>/gpu_dispatch.json`, ready to copy
    into sae_fast/ops/ from a machine whose $OUT is all that comes back, and with
    --write-dispatch at that path (default: the package's own table)."""

    def __init__(self, out: Path, stamp: str, table: str | None, device: str) -> None:
        self.path = out / f"gpu-dispatch-{stamp}.json"
        self.tables = [out / "gpu_dispatch.json"] + ([Path(table)] if table else [])
        self.stamp, self.device = stamp, device
        self.rows: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []

    def add(self, case) -> dict:
        """The row of `case`'s shape from its fused and chunked timings; writes the files."""
        from sae_fast.ops.triton_dispatch import TABLE, shape_key

        from .gpu_cases import Skipped

        fused, chunked = case.ms.get("encode_fused"), case.ms.get("encode_chunked")
        if fused is None or chunked is None:
            raise Skipped("no timings", "needs both time_encode_fused and time_encode_chunked")
        s = case.shape
        key = shape_key(s.B, s.d_in, s.d_sae, s.k, s.torch_dtype)
        row = {"key": key, "method": "fused" if fused <= chunked else "chunked",
               "fused_ms": fused, "chunked_ms": chunked}  # fmt: skip
        self.rows = [r for r in self.rows if r["key"] != key] + [row]
        _atomic_write(self.path, json.dumps(self.rows, indent=1) + "\n")
        name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        for path in self.tables:
            plans: dict[str, str] = {}
            for src in (TABLE, path):  # the package's table, then this file's own rows
                if src.exists():
                    plans.update(json.loads(src.read_text()).get("plans", {}))
            plans.update({r["key"]: r["method"] for r in self.rows})
            table = {"plans": plans, "measured": f"{name}, {self.stamp}"}
            _atomic_write(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
        return {**row, "fused_over_chunked": fused / chunked, "file": self.path.name}


def plan_checks(args: argparse.Namespace, device: str, shape: Shape, dtypes: list[str]) -> list:
    """Every row of the run, in order: correctness of each dtype, the probes, timings."""
    from . import gpu_cases as gk

    reps = args.reps or (1 if args.smoke else 10)
    warmup = 0 if args.smoke else 3  # the interpreter compiles nothing
    cases = {d: gk.Case(shape.with_(dtype=d), device, 256, 1024, reps, warmup) for d in dtypes}
    probe = SMOKE_PROBE if args.smoke else PROBE
    dispatch = DispatchRows(args.out, args.stamp, args.write_dispatch, device)
    checks: list[Check] = []
    for d, c in cases.items():
        checks += [
            Check("encode_fused", d, "correctness", lambda c=c: gk.encode_topk(c, "fused"), 25),
            Check("encode_chunked", d, "correctness", lambda c=c: gk.encode_topk(c, "chunked"), 15),
            Check("encode_relu", d, "correctness", lambda c=c: gk.encode_dense(c, False), 10),
            Check("encode_jumprelu", d, "correctness", lambda c=c: gk.encode_dense(c, True), 5),
            Check("decode", d, "correctness", lambda c=c: gk.decode(c), 5),
            Check("grad_values", d, "correctness", lambda c=c: gk.grad_values(c), 5),
            Check("sparse_backward", d, "correctness", lambda c=c: gk.sparse_backward(c), 10),
            Check("sae_step", d, "correctness", lambda c=c: gk.sae_step(c), 20),
        ]  # fmt: skip
    for d in dtypes:
        run_probe = lambda d=d: gk.int64_probe(probe.with_(dtype=d), device)  # noqa: E731
        checks.append(Check("int64_probe", d, "correctness", run_probe, 30))
    for d, c in cases.items():
        checks += [
            Check("gemm", d, "timing", lambda c=c: gk.time_gemm(c), 5),
            Check("time_encode_fused", d, "timing", lambda c=c: gk.time_encode(c, "fused"), 5),
            Check("time_encode_chunked", d, "timing", lambda c=c: gk.time_encode(c, "chunked"), 5),
            Check("time_encode_auto", d, "timing", lambda c=c: gk.time_encode(c, "auto"), 5),
            Check("dispatch", d, "dispatch", lambda c=c: dispatch.add(c), 1),
            Check("time_decode", d, "timing", lambda c=c: gk.time_decode(c), 3),
            Check("time_grad_values", d, "timing", lambda c=c: gk.time_grad_values(c), 3),
            Check("time_sparse_backward", d, "timing", lambda c=c: gk.time_sparse_backward(c), 5),
            Check("step_triton", d, "timing", lambda c=c: gk.time_step(c, "triton"), 10),
            Check("adam", d, "timing", lambda c=c: gk.time_adam(c), 5),
            Check("step_dense", d, "timing", lambda c=c: gk.time_step(c, "dense"), 10),
            Check("step_sparsify", d, "timing", lambda c=c: gk.time_step(c, "sparsify"), 10),
        ]  # fmt: skip
    return checks


def main(argv: list[str] | None = None) -> int:
    """Run every row; 0 when none failed."""
    args = _parse(argv)
    if args.smoke:  # before any @triton.jit module is imported (as tests/conftest.py does)
        os.environ["TRITON_INTERPRET"] = "1"
    args.out = (args.out or Path(os.environ.get("OUT") or RESULTS)).resolve()
    args.stamp = args.stamp or dt.date.today().isoformat()
    shape, dtypes = _shape(args.shape, args.smoke), _dtypes(args.dtype, args.smoke)
    device = "cpu" if args.smoke else "cuda"
    report = Report(args.out, args.stamp, append=bool(args.start_after))
    report.add(env_row(device, args.stamp, args, shape, dtypes) | {"t_s": time.monotonic() - T0})
    if device == "cuda" and not torch.cuda.is_available():
        report.add({"check": "cuda", "status": "FAIL", "t_s": time.monotonic() - T0,
                    "error": "no CUDA device (use --smoke for the CPU interpreter)"})  # fmt: skip
        return 1
    runner = Runner(args, report, device)
    try:
        checks = plan_checks(args, device, shape, dtypes)
    except Exception as e:  # gpu_cases imports sae_fast: nothing can run without it
        report.add({"check": "import", "status": "FAIL", "t_s": time.monotonic() - T0,
                    "error": f"{type(e).__name__}: {e}"})  # fmt: skip
        return 1
    child_rc = 0
    try:
        for check in checks:
            runner.run(check)
    except ContextLost as lost:
        child_rc = runner.resume_in_child(str(lost))
    log(f"done in {time.monotonic() - T0:.1f} s: {report.jsonl}, {report.md}")
    return 1 if runner.failed or child_rc else 0


if __name__ == "__main__":
    sys.exit(main())
