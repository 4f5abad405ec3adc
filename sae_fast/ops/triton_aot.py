"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine with none.

Each `sae_fast.ops.triton_*` kernel module lists the launch configurations its host
launchers can produce in `aot_configs() -> list[KernelConfig]`. `compile_config` compiles
one of them with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` (no
driver needed), reads the ptxas report (registers, spills, stack frame), the shared memory
triton allocates, the tensor-core instructions and the SASS, and applies the rules that
`make gpu-compile` enforces (`find_violations`). Importing this module compiles nothing;
`benchmarks/gpu_compile.py` drives it over every module.

Works with triton 3.6 and 3.9 (the lent GPU machine runs 3.6): where the two differ (the
ptxas log knob, `get_ptxas(arch)`), the newer path is tried and the older one guarded.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

# Shared memory a block may use (the opt-in maximum of cudaFuncSetAttribute), bytes.
SHARED_LIMIT = {90: 232448, 80: 166912}
TARGET_NAME = {90: "sm_90a", 80: "sm_80"}


@dataclass(frozen=True)
class KernelConfig:
    """One compile of a `@triton.jit` kernel, exactly as a host launcher would launch it.

    `signature` holds every runtime argument's type; `constexprs` every `tl.constexpr` and
    every argument triton specialises to a constant at launch (an int equal to 1, such as a
    unit stride). `divisible` names the arguments launched as multiples of 16 (pointers from
    torch allocations, d_in): triton specialises those as `tt.divisibility=16`.
    """

    name: str
    fn: object
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int = 4
    num_stages: int = 3
    hot: bool = True
    label: str = ""
    divisible: tuple[str, ...] = ()
    int64_offsets: bool = False
    maxnreg: int | None = None  # the triton option (PTX .maxnreg); None = no cap
    archs: tuple[int, ...] = (90, 80)  # the GPU generations a launcher picks this config for

    def compile_key(self, arch: int) -> tuple:
        """What decides the compiled binary: equal keys share one compile."""
        fn = jit_function(self.fn)
        raw = getattr(fn, "fn", fn)
        return (
            getattr(raw, "__module__", ""),
            getattr(raw, "__qualname__", repr(raw)),
            tuple(sorted(self.signature.items())),
            tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())),
            self.num_warps,
            self.num_stages,
            self.maxnreg,
            tuple(sorted(self.divisible)),
            arch,
        )


@dataclass
class CompileReport:
    """What one compile for one arch produced; `asm` holds the TTIR, TTGIR, PTX, SASS."""

    name: str
    label: str
    arch: int
    target: str
    num_warps: int
    num_stages: int
    ok: bool = False
    error: str = ""
    registers: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    stack_bytes: int = 0
    shared_bytes: int = 0
    wgmma: int = 0  # wgmma.mma_async in the PTX (Hopper tensor cores)
    mma: int = 0  # mma.sync in the PTX (Ampere-style tensor cores)
    sass_instructions: int | None = None  # None when no disassembler was found
    sass_tensor_core: int | None = None  # HGMMA + HMMA in the SASS
    compile_seconds: float = 0.0
    i32_addptr: list[str] = field(default_factory=list)  # tt.addptr ops with 32-bit offsets
    i32_offset_products: list[str] = field(default_factory=list)  # ... computed by i32 muls
    violations: list[str] = field(default_factory=list)
    asm: dict[str, str] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The report as a flat JSON-able dict, without the assembly text."""
        d = {k: v for k, v in self.__dict__.items() if k != "asm"}
        d["status"] = "ok" if not self.violations else "FAIL"
        return d


def jit_function(fn: object) -> object:
    """The `JITFunction` under autotuner/heuristics wrappers (their `.fn`)."""
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction) and type(fn).__name__ in ("Autotuner", "Heuristics"):
        fn = fn.fn
    return fn  # a JITFunction, or an InterpretedFunction under TRITON_INTERPRET


def expand_autotune(cfg: KernelConfig) -> list[KernelConfig]:
    """One config per `triton.Config` of the autotuner `cfg.fn` wraps (its kwargs merged into
    `cfg.constexprs`, its warps/stages/maxnreg), labelled `<label> <kwargs> w<warps> s<stages>`;
    `[cfg]` itself when `cfg.fn` is not autotuned."""
    fn, out = cfg.fn, []
    while type(fn).__name__ == "Heuristics":
        fn = fn.fn
    for c in getattr(fn, "configs", None) or []:
        kw = " ".join(f"{k}={v}" for k, v in c.kwargs.items())
        out.append(replace(
            cfg, constexprs={**cfg.constexprs, **c.kwargs}, num_warps=c.num_warps,
            num_stages=c.num_stages, maxnreg=getattr(c, "maxnreg", None) or cfg.maxnreg,
            label=f"{cfg.label} {kw} w{c.num_warps} s{c.num_stages}".strip(),
        ))  # fmt: skip
    return out or [cfg]


def import_file(path: str | Path, module_name: str) -> ModuleType:
    """Import the file `path` as the module `module_name` (a scratch kernel file)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    spec.loader.exec_module(mod)
    return mod


def _interpreted() -> bool:
    """True where this process cannot compile for a GPU: TRITON_INTERPRET is set, or was
    when triton was imported (its own `tl.sum`... are then interpreter objects)."""
    from triton.language import standard
    from triton.runtime.jit import JITFunction

    on = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return on or not isinstance(standard.sum, JITFunction)


@functools.lru_cache(maxsize=1)
def _isolated_pool() -> ProcessPoolExecutor:
    """One spawned worker without TRITON_INTERPRET, kept for the process's later compiles."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def _isolated_compile(module: str, path: str, fn_name: str, cfg: KernelConfig, arch: int):
    """In the clean worker: re-import the kernel's module, compile `cfg` with its kernel."""
    mod = sys.modules.get(module)
    if mod is None or getattr(mod, "__file__", None) != path:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = None
        if mod is None or getattr(mod, "__file__", None) != path:
            mod = import_file(path, module)
    return compile_config(replace(cfg, fn=getattr(mod, fn_name)), arch)


def _compile_isolated(cfg: KernelConfig, arch: int) -> CompileReport:
    """`compile_config` in a clean spawned process (for callers under the interpreter)."""
    raw = getattr(jit_function(cfg.fn), "fn", None)
    path = inspect.getsourcefile(raw) if raw is not None else None
    if raw is None or path is None:
        raise TypeError(f"{cfg.name}: cannot locate the source of {cfg.fn!r}")
    request = (raw.__module__, os.path.abspath(path), raw.__name__, replace(cfg, fn=None), arch)
    with _environ(TRITON_INTERPRET=None):  # the worker spawns (once) on this first submit
        future = _isolated_pool().submit(_isolated_compile, *request)
    return future.result()


def ptxas_path(arch: int) -> str:
    """The ptxas triton itself uses for `arch` (3.9: ptxas-blackwell from sm_90 on)."""
    from triton.backends.nvidia import compiler as nv

    try:
        return nv.get_ptxas(arch).path
    except TypeError:  # older triton: get_ptxas() takes no arch
        return nv.get_ptxas().path
    except AttributeError:
        import triton

        return str(Path(triton.__file__).parent / "backends/nvidia/bin/ptxas")


def _tool(name: str, arch: int) -> str | None:
    """A CUDA binary shipped beside ptxas in the triton wheel (nvdisasm, cuobjdump)."""
    path = Path(ptxas_path(arch)).parent / name
    return str(path) if path.exists() else None


def parse_ptxas_log(log: str) -> dict[str, int]:
    """Registers, spill store/load bytes and stack frame bytes from `ptxas -v` output."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return {
        "registers": int(regs.group(1)) if regs else 0,
        "spill_store_bytes": int(spill.group(1)) if spill else 0,
        "spill_load_bytes": int(spill.group(2)) if spill else 0,
        "stack_bytes": int(stack.group(1)) if stack else 0,
    }


def _split_top_level(text: str) -> list[str]:
    """Split a type list `a, tensor<4x!tt.ptr<f32>>` on commas outside `<...>`."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _loc_table(ir: str) -> dict[str, str]:
    return dict(re.findall(r"^(#loc\d*) = loc\((.*)\)\s*$", ir, re.MULTILINE))


def _resolve_loc(ref: str, table: dict[str, str], depth: int = 0) -> str:
    """`file.py:LINE` for an MLIR location reference, following aliases; "" if unknown."""
    body = table.get(ref, "")
    hit = re.search(r'"([^"]+\.py)":(\d+):\d+', body)
    if hit:
        return f"{Path(hit.group(1)).name}:{hit.group(2)}"
    if depth < 16:
        for inner in re.findall(r"#loc\d*", body):
            found = _resolve_loc(inner, table, depth + 1)
            if found:
                return found
    return ""


_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)? = ([\w.]+)(.*)$")
_I32 = re.compile(r"(i32|tensor<(\d+x)*i32>)")


def _strip_loc(text: str) -> str:
    return re.sub(r"\s+loc\(.*\)\s*$", "", text)


def _result_type(rest: str) -> str:
    types = _strip_loc(rest).rsplit(" : ", 1)[-1]
    return types.rsplit("->", 1)[-1].strip()


def _i32_product(name: str, defs: dict[str, tuple[str, str]], seen: set[str]) -> str:
    """The i32 `arith.muli`/`arith.shli` that the i32 value `name` is computed from, through
    i32 index arithmetic (add, splat, broadcast...), or "" if none; loads and loop-carried
    values are leaves."""
    if name in seen or name not in defs:
        return ""
    seen.add(name)
    op, rest = defs[name]
    if not _I32.fullmatch(_result_type(rest)) or op in ("tt.load", "scf.for", "scf.while"):
        return ""
    if op in ("arith.muli", "arith.shli"):
        return f"{name} = {op}{_strip_loc(rest)}"
    operands = re.findall(r"%[\w.$-]+", rest.split(" : ", 1)[0])
    for operand in operands:
        found = _i32_product(operand, defs, seen)
        if found:
            return found
    return ""


def find_i32_addptr(ttir: str) -> list[tuple[str, str]]:
    """The `tt.addptr` ops whose offset operand is not i64 (scalar or tensor), each as
    (`file.py:LINE: <op>`, the i32 multiply the offset is computed from, or "").

    An i32 offset alone is not an overflow: triton's own canonicalisation splits
    `p + (i64 + i32 range)` into two addptrs, one with the i32 range. A product computed
    in i32 (`row * stride`) is what overflows past 2**31 elements.
    """
    table = _loc_table(ttir)
    defs = {}
    for line in ttir.splitlines():
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3))
    bad = []
    for line in ttir.splitlines():
        m = _DEF.match(line)
        if not m or m.group(2) != "tt.addptr" or " : " not in line:
            continue
        rest = m.group(3)
        loc = re.search(r"\s+loc\((#loc\d*)\)\s*$", rest)
        types = _strip_loc(rest).split(" : ", 1)[1]
        parts = _split_top_level(types)
        offset = parts[1] if len(parts) > 1 else ""
        if offset == "i64" or re.fullmatch(r"tensor<(\d+x)*i64>", offset):
            continue
        operands = re.findall(r"%[\w.$-]+", rest.split(" : ", 1)[0])
        product = _i32_product(operands[1], defs, set()) if len(operands) > 1 else ""
        op = _strip_loc(line.strip())
        where = _resolve_loc(loc.group(1), table) if loc else ""
        bad.append((f"{where}: {op}" if where else op, product))
    return bad


def count_sass(sass: str) -> tuple[int, int]:
    """(instructions, tensor-core instructions HGMMA/HMMA) in nvdisasm/cuobjdump text."""
    instrs = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", sass)
    tc = sum(1 for i in instrs if re.search(r"\b(HGMMA|HMMA)\b", i))
    return len(instrs), tc


def _disassemble(cubin: bytes, arch: int) -> str:
    """SASS of `cubin` (nvdisasm with branch labels, else cuobjdump); "" when neither."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        for tool, args in (("nvdisasm", ["-c"]), ("cuobjdump", ["-sass"])):
            exe = _tool(tool, arch)
            if exe is None:
                continue
            out = subprocess.run([exe, *args, str(path)], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout
    return ""


def _rerun_ptxas(ptx: str, arch: int, fp_fusion: bool) -> str:
    """`ptxas -v` on the PTX, for when triton's own ptxas log was not captured."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [ptxas_path(arch), "-lineinfo", "-v", f"--gpu-name={TARGET_NAME[arch]}"]
        cmd += [] if fp_fusion else ["--fmad=false"]
        out = subprocess.run([*cmd, str(src), "-o", str(Path(d) / "k.cubin")],
                             capture_output=True, text=True)  # fmt: skip
        return out.stderr + out.stdout


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _full_signature(fn: Any, cfg: KernelConfig) -> dict[str, str]:
    names = list(fn.arg_names)
    missing = [n for n in names if n not in cfg.signature and n not in cfg.constexprs]
    extra = [n for n in (*cfg.signature, *cfg.constexprs) if n not in names]
    if missing or extra:
        raise ValueError(
            f"{cfg.name} [{cfg.label}]: signature/constexprs do not match {fn.__name__}"
            f"{tuple(names)}: missing {missing}, unknown {extra}"
        )
    return {n: ("constexpr" if n in cfg.constexprs else cfg.signature[n]) for n in names}


def _compile(cfg: KernelConfig, arch: int) -> tuple[Any, str]:
    """(compiled kernel, ptxas -v log captured from triton's own ptxas run or "")."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = jit_function(cfg.fn)
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{cfg.name}: {type(fn).__name__} is not a @triton.jit function")
    signature = _full_signature(fn, cfg)
    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in cfg.divisible}
    src = ASTSource(fn, signature, constexprs=dict(cfg.constexprs), attrs=attrs)
    options: dict[str, Any] = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg is not None:
        options["maxnreg"] = cfg.maxnreg
    # TRITON_DUMP_PTXAS_LOG (triton >= 3.4) prints ptxas -v to stdout: keep it, save a rerun.
    buf = io.StringIO()
    with _environ(TRITON_DUMP_PTXAS_LOG="1"), contextlib.redirect_stdout(buf):
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    log = buf.getvalue()
    return kernel, log if "Used " in log and "registers" in log else ""


def error_summary(error: str, limit: int = 400) -> str:
    """One line for a compile error: its first line (triton's `at LINE:COL` in the kernel)
    and its last (the message itself, after the source excerpt)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()] or ["?"]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_violations(cfg: KernelConfig, report: CompileReport) -> list[str]:
    """The rules of `make gpu-compile` applied to one config's compile report."""
    if not report.ok:
        return [f"compile error: {error_summary(report.error)}"]
    out = []
    if cfg.hot and (report.spill_store_bytes or report.spill_load_bytes or report.stack_bytes):
        out.append(
            f"hot kernel spills: {report.spill_store_bytes} B spill stores, "
            f"{report.spill_load_bytes} B spill loads, {report.stack_bytes} B stack frame"
        )
    limit = SHARED_LIMIT[report.arch]
    if report.shared_bytes > limit:
        out.append(f"shared memory {report.shared_bytes} B > {limit} B ({report.target} limit)")
    if cfg.int64_offsets and report.i32_offset_products:
        bad = report.i32_offset_products
        out.append(f"{len(bad)} tt.addptr offset(s) multiplied in i32: {'; '.join(bad[:3])}")
    return out


def compile_config(cfg: KernelConfig, arch: int) -> CompileReport:
    """Compile `cfg` for sm_90a (arch 90) or sm_80 (arch 80) and check it; never raises
    for a kernel's compile error (it becomes `error` and a violation)."""
    if arch not in TARGET_NAME:
        raise ValueError(f"arch must be one of {sorted(TARGET_NAME)}, got {arch}")
    if _interpreted():
        return _compile_isolated(cfg, arch)
    report = CompileReport(
        name=cfg.name, label=cfg.label, arch=arch, target=TARGET_NAME[arch],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        kernel, log = _compile(cfg, arch)
    except Exception as e:  # triton's CompilationError, PTXASError, a bad signature...
        report.compile_seconds = time.perf_counter() - start
        report.error = f"{type(e).__name__}: {e}"
        if not str(e).strip():  # a bare assert inside triton: say where
            frame = traceback.extract_tb(e.__traceback__)[-1]
            report.error += f"(at {frame.filename}:{frame.lineno})"
        report.violations = find_violations(cfg, report)
        return report
    report.compile_seconds = time.perf_counter() - start
    asm = kernel.asm
    ptx = asm.get("ptx", "")
    if not log:
        fp_fusion = getattr(kernel.metadata, "enable_fp_fusion", True)
        log = _rerun_ptxas(ptx, arch, fp_fusion)
    report.ok = True
    for key, value in parse_ptxas_log(log).items():
        setattr(report, key, value)
    report.shared_bytes = int(kernel.metadata.shared)
    report.wgmma = len(re.findall(r"\bwgmma\.mma_async", ptx))
    report.mma = len(re.findall(r"\bmma\.sync", ptx))
    sass = _disassemble(asm["cubin"], arch) if "cubin" in asm else ""
    if sass:
        report.sass_instructions, report.sass_tensor_core = count_sass(sass)
    i32 = find_i32_addptr(asm.get("ttir", ""))
    report.i32_addptr = [op for op, _ in i32]
    report.i32_offset_products = [f"{op} <- {mul}" for op, mul in i32 if mul]
    report.asm = {
        "ttir": asm.get("ttir", ""),
        "ttgir": asm.get("ttgir", ""),
        "ptx": ptx,
        "sass": sass,
        "ptxas_log": log,
    }
    report.violations = find_violations(cfg, report)
    return report


def report_for(cfg: KernelConfig, shared: CompileReport) -> CompileReport:
    """`shared` (the compile of a config with the same compile key) relabelled for `cfg`,
    with `cfg`'s own rules applied."""
    out = replace(shared, name=cfg.name, label=cfg.label, violations=[])
    out.violations = find_violations(cfg, out)
    return out
