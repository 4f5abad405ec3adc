"""Compile every Triton kernel configuration for NVIDIA GPUs with no GPU (`make gpu-compile`).

    python -m benchmarks.gpu_compile [--arch 90,80] [--out DIR] [--jobs N] [--only NAME]
                                     [--module extra.module] [--asm DIR]

Each kernel module (`sae_fast.ops.triton_encoder`, `sae_fast.ops.triton_decoder` and any
other `sae_fast.ops.triton_*`) lists its launch configurations in `aot_configs()`; a module
without one is skipped with a note. Every config is compiled for sm_90a and sm_80 in a pool
of `--jobs` worker processes (spawned once, each compiling many configs); configs with the
same compile key (kernel, signature, constexprs, warps, stages) share one compile. Writes
`<out>/gpu-compile-<date>.md` and `.json` (one row per config and arch) and exits non-zero
when any rule of `sae_fast.ops.triton_aot.find_violations` is broken: a compile error, a
spill or stack frame in a hot kernel, shared memory over the arch's limit, an i32-multiplied
pointer offset where the config asks for 64-bit offsets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODULES = ("sae_fast.ops.triton_encoder", "sae_fast.ops.triton_decoder")


@dataclass(frozen=True)
class Job:
    """One config of one module: `aot_configs()[index]` of `module`."""

    module: str
    index: int
    cfg: object  # KernelConfig


def kernel_modules() -> list[str]:
    """The default modules, then every other `sae_fast.ops.triton_*` module."""
    import sae_fast.ops

    found = sorted(
        f"sae_fast.ops.{m.name}"
        for m in pkgutil.iter_modules(sae_fast.ops.__path__)
        if m.name.startswith("triton_") and m.name != "triton_aot"
    )
    return list(dict.fromkeys([*DEFAULT_MODULES, *found]))


def discover(modules: list[str]) -> tuple[list[Job], list[str], list[str]]:
    """(jobs, notes, errors): the configs of every module defining `aot_configs()`; a note
    for each module without one; an error for a module that fails to import or list."""
    jobs, notes, errors = [], [], []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as e:
            errors.append(f"{name}: import failed: {type(e).__name__}: {e}")
            continue
        fn = getattr(mod, "aot_configs", None)
        if fn is None:
            notes.append(f"{name}: no aot_configs(), skipped")
            continue
        try:
            cfgs = list(fn())
        except Exception as e:
            errors.append(f"{name}: aot_configs() raised {type(e).__name__}: {e}")
            continue
        jobs += [Job(name, i, c) for i, c in enumerate(cfgs)]
    return jobs, notes, errors


_WORKER_CONFIGS: dict[str, list] = {}


def _init_worker(cache_dir: str) -> None:
    """Worker process setup: real (not interpreted) kernels, a private triton cache."""
    import warnings

    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _compile_job(module: str, index: int, arch: int, keep_asm: bool):
    """In a worker: compile `aot_configs()[index]` of `module` for `arch`."""
    from sae_fast.ops.triton_aot import compile_config

    if module not in _WORKER_CONFIGS:
        _WORKER_CONFIGS[module] = list(importlib.import_module(module).aot_configs())
    report = compile_config(_WORKER_CONFIGS[module][index], arch)
    if not keep_asm:
        report.asm = {}
    return report


def _failed_report(cfg, arch: int, error: str):
    from sae_fast.ops.triton_aot import TARGET_NAME, CompileReport, find_violations

    r = CompileReport(name=cfg.name, label=cfg.label, arch=arch, target=TARGET_NAME[arch],
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages, error=error)  # fmt: skip
    r.violations = find_violations(cfg, r)
    return r


def _line(r, shared: bool) -> str:
    status = "ok" if not r.violations else "FAIL"
    secs = f"{r.compile_seconds:5.1f}s" + ("*" if shared else " ")
    if not r.ok:
        return f"{r.name:<16} {r.label:<46} {r.target:<7} {secs} {status}: {r.violations[0]}"
    return (
        f"{r.name:<16} {r.label:<46} {r.target:<7} regs={r.registers:<3} "
        f"spill={r.spill_store_bytes}/{r.spill_load_bytes} stack={r.stack_bytes} "
        f"smem={r.shared_bytes} wgmma={r.wgmma} mma={r.mma} sass={r.sass_instructions} "
        f"{secs} {status}"
    )


def run(jobs: list[Job], archs: list[int], n_workers: int, asm_dir: Path | None) -> list[dict]:
    """Compile every (job, arch), sharing compiles between equal keys; rows in job order."""
    from sae_fast.ops.triton_aot import report_for

    groups: dict[tuple, list[tuple[int, Job, int]]] = {}
    for pos, job in enumerate(jobs):
        for arch in archs:
            if arch in job.cfg.archs:  # a config another generation never launches
                groups.setdefault(job.cfg.compile_key(arch), []).append((pos, job, arch))
    rows: dict[tuple[int, int], dict] = {}
    cache_dir = tempfile.mkdtemp(prefix="sae-fast-gpu-compile-")
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(cache_dir,)) as pool:  # fmt: skip
            keep_asm = asm_dir is not None
            futures = {
                pool.submit(_compile_job, m[0][1].module, m[0][1].index, m[0][2], keep_asm): m
                for m in groups.values()
            }
            for fut in as_completed(futures):
                members = futures[fut]
                try:
                    first = fut.result()
                except Exception as e:  # a crashed worker: a failed compile, not a crash here
                    first = _failed_report(
                        members[0][1].cfg, members[0][2], f"worker failed: {type(e).__name__}: {e}"
                    )
                for n, (pos, job, arch) in enumerate(members):
                    r = first if n == 0 else report_for(job.cfg, first)
                    print(_line(r, shared=n > 0), flush=True)
                    if asm_dir is not None and r.asm:
                        _write_asm(asm_dir, r)
                    rows[(pos, archs.index(arch))] = {
                        "module": job.module,
                        **r.row(),
                        "compile_shared": n > 0,
                    }
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return [rows[k] for k in sorted(rows)]


def _write_asm(asm_dir: Path, r) -> None:
    asm_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{r.name}.{r.label}.{r.target}")
    for kind, text in r.asm.items():
        (asm_dir / f"{stem}.{kind}").write_text(text)


def _ptxas_versions(archs: list[int]) -> str:
    import subprocess

    from sae_fast.ops.triton_aot import TARGET_NAME, ptxas_path

    out = []
    for arch in archs:
        try:
            text = subprocess.run([ptxas_path(arch), "--version"], capture_output=True,
                                  text=True).stdout  # fmt: skip
            ver = re.search(r"release ([\d.]+)", text)
            out.append(f"{TARGET_NAME[arch]}: {Path(ptxas_path(arch)).name} {ver and ver.group(1)}")
        except Exception as e:
            out.append(f"{TARGET_NAME[arch]}: ptxas unavailable ({e})")
    return ", ".join(out)


def markdown(meta: dict, rows: list[dict], violations: list[str]) -> str:
    """The report: a header, one table row per config and arch, then the violations."""
    lines = [
        f"# GPU compile report, {meta['date']}",
        "",
        f"- triton {meta['triton']}; ptxas {meta['ptxas']}; no GPU (ahead-of-time compile)",
        f"- command: `{meta['command']}`",
        f"- {meta['configs']} configs x {len(meta['archs'])} archs, {meta['compiles']} compiles "
        f"on {meta['jobs']} workers, {meta['wall_seconds']:.0f} s wall",
        *[f"- note: {n}" for n in meta["notes"]],
        "",
        "Spill and stack in bytes; smem is the shared memory triton allocates per block; "
        "wgmma/mma count PTX tensor-core instructions; `*` marks a config that shares the "
        "compile of an identical one above.",
        "",
        "| kernel | config | arch | regs | spill st/ld | stack | smem | wgmma/mma | SASS instrs "
        "| compile s | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        status = "ok" if not r["violations"] else "FAIL: " + "; ".join(r["violations"])
        status = status.replace("|", "\\|")
        secs = f"{r['compile_seconds']:.1f}" + ("*" if r["compile_shared"] else "")
        sass = r["sass_instructions"] if r["sass_instructions"] is not None else "n/a"
        cells = [
            r["registers"], f"{r['spill_store_bytes']}/{r['spill_load_bytes']}",
            r["stack_bytes"], r["shared_bytes"], f"{r['wgmma']}/{r['mma']}", sass,
        ] if r["ok"] else ["-"] * 6  # fmt: skip
        row = [r["name"], r["label"], r["target"], *cells, secs, status]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    lines += ["", f"## Violations ({len(violations)})", ""]
    lines += [f"- {v}" for v in violations] or ["None."]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    from sae_fast.formats import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Compile, print one line per config, write the md/json report; 1 on any violation."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_compile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--arch", default="90,80", help="comma-separated: 90 (sm_90a), 80 (sm_80)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the md/json report")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--only", default="", help="comma-separated kernel names (KernelConfig.name)")
    p.add_argument("--asm", type=Path, default=None, help="also write TTIR/PTX/SASS files here")
    p.add_argument("--module", action="append", default=[],
                   help="an extra module with aot_configs() (repeatable)")  # fmt: skip
    a = p.parse_args(argv)
    archs = [int(x) for x in a.arch.split(",") if x.strip()]
    if any(x not in (80, 90) for x in archs):
        p.error(f"--arch takes 90 and/or 80, got {a.arch}")
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module is imported
    start = time.perf_counter()

    import triton

    jobs, notes, errors = discover([*kernel_modules(), *a.module])
    for n in notes:
        print(f"note: {n}")
    if a.only:
        wanted = {s.strip() for s in a.only.split(",")}
        unknown = wanted - {j.cfg.name for j in jobs}
        if unknown:
            errors.append(f"--only: no configs named {sorted(unknown)}")
        jobs = [j for j in jobs if j.cfg.name in wanted]
    n_compiles = len(
        {j.cfg.compile_key(arch) for j in jobs for arch in archs if arch in j.cfg.archs}
    )
    print(f"{len(jobs)} configs x {len(archs)} archs = {n_compiles} compiles on {a.jobs} workers")
    rows = run(jobs, archs, max(1, a.jobs), a.asm) if jobs else []
    violations = errors + [
        f"{r['name']} [{r['label']}] {r['target']}: {v}" for r in rows for v in r["violations"]
    ]
    date = dt.date.today().isoformat()
    cmd_args = sys.argv[1:] if argv is None else argv
    meta = {
        "date": date,
        "triton": triton.__version__,
        "ptxas": _ptxas_versions(archs),
        "command": " ".join(["python -m benchmarks.gpu_compile", *cmd_args]),
        "archs": archs,
        "jobs": a.jobs,
        "configs": len(jobs),
        "compiles": n_compiles,
        "notes": notes,
        "wall_seconds": time.perf_counter() - start,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"gpu-compile-{date}"
    _write_atomic(stem.with_suffix(".md"), markdown(meta, rows, violations))
    doc = {**meta, "rows": rows, "violations": violations}
    _write_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    print(f"wrote {stem}.md and .json ({meta['wall_seconds']:.0f} s)")
    if violations:
        print(f"\n{len(violations)} violation(s):")
        for v in violations:
            print(f"  {v}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
