"""The benchmark suite end to end at small sizes: timings here mean nothing; what is
tested is that every implementation is checked against the reference before it is timed
(and that a wrong one is refused), the result files, and the target verdicts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import e2e, peers, report
from benchmarks.__main__ import main as bench_main
from benchmarks.common import PRESETS, RowWriter, Shape
from benchmarks.kernels import CASE_IDS
from benchmarks.workloads import SaeFast, check, initial_state, make_impl, reference_gradients

ROOT = Path(__file__).resolve().parents[1]
SMALL = PRESETS["small"]


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _quick_run(tmp_path: Path, *args: str) -> list[dict]:
    """The small preset at its own shape only, on seeded rows, without torch.compile."""
    common = ["--no-sweep", "--no-compile", "--data", "random", "--out", str(tmp_path)]
    return bench_main(["run", "--preset", "small", *args, *common])


def test_runner_small_writes_csv_markdown_and_plot(tmp_path, capsys):
    rows = bench_main(
        ["run", "--preset", "small", "--suite", "kernels,train,memory", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    stem = tmp_path / f"cpu-small-{__import__('datetime').date.today().isoformat()}"
    saved = _rows(stem.with_suffix(".csv"))
    assert len(saved) == len(rows) and {r["suite"] for r in saved} == {"kernels", "train", "memory"}
    train = [r for r in rows if r["suite"] == "train"]
    # the preset's shape, 4 dictionary sizes (32x = the preset) and 4 batch sizes
    assert {r["d_sae"] for r in train} == {128, 256, 512, 1024}
    assert {r["B"] for r in train} == {64, 128, 256, 512}
    at_main = {r["impl"]: r for r in train if (r["d_sae"], r["B"]) == (SMALL.d_sae, SMALL.B)}
    assert set(at_main) == {
        "torch.matmul", "sae_fast", "sae_fast[torch]", "dense reference", "torch.compile(dense)"
    }  # fmt: skip
    assert at_main["torch.matmul"]["x_gemm"] == 1.0
    assert at_main["dense reference"]["speedup_vs_dense"] == 1.0
    for name, r in at_main.items():
        assert r["ms"] > 0
        if name != "torch.matmul":
            assert float(r["check_err"]) <= 1e-3, name
    kern = {(r["op"], r["impl"]) for r in rows if r["suite"] == "kernels"}
    assert ("backward", "sae_fast") in kern and ("sparse decode", "dense") in kern
    mem = {(r["op"], r["impl"]): r for r in rows if r["suite"] == "memory"}
    assert mem[("encode", "sae_fast")]["peak_mb"] > 0
    assert set(mem) >= {("train step", "dense"), ("train step", "sae_fast")}
    md = stem.with_suffix(".md").read_text()
    assert "## Train step" in md and "Cost against dictionary size" in md and "## Kernels" in md
    assert "train step <= 1.3x the encoder GEMM" in md  # a verdict, met or missed
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kernel suite" in out and "memory suite" in out


def test_row_writer_keeps_every_row_on_disk_with_the_union_of_columns(tmp_path):
    path = tmp_path / "rows.csv"
    write = RowWriter(path)
    assert not path.exists()  # nothing before the first row
    write({"suite": "kernels", "ms": 1.5})
    assert _rows(path) == [{"suite": "kernels", "ms": "1.5"}]
    write({"suite": "memory", "peak_mb": 2})
    assert _rows(path) == [
        {"suite": "kernels", "ms": "1.5", "peak_mb": ""},
        {"suite": "memory", "ms": "", "peak_mb": "2"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]  # no temp file left


def test_rows_written_before_a_failure_survive_it(tmp_path, monkeypatch):
    """The train suite dies at its second shape: the kernel rows and the first shape's train
    rows are on disk already; the markdown and plot (written at the end) are not."""
    from benchmarks import train

    timed = []

    def dies_at_the_second_shape(shape, *args, **kw):
        timed.append(shape)
        if len(timed) == 2:
            raise RuntimeError("device lost")
        return real(shape, *args, **kw)

    real = train.time_shape
    monkeypatch.setattr(train, "time_shape", dies_at_the_second_shape)
    args = ["--suite", "kernels,train", "--no-compile", "--data", "random", "--out", str(tmp_path)]
    with pytest.raises(RuntimeError, match="device lost"):
        bench_main(["run", "--preset", "small", *args])
    (csv_path,) = tmp_path.iterdir()  # the CSV alone, no temp file, no .md or .png
    assert csv_path.suffix == ".csv"
    saved = _rows(csv_path)
    kern = [(r["op"], r["impl"]) for r in saved if r["suite"] == "kernels"]
    assert kern == CASE_IDS
    train_rows = [r for r in saved if r["suite"] == "train"]
    assert {r["impl"] for r in train_rows} == {
        "torch.matmul", "sae_fast", "sae_fast[torch]", "dense reference"
    }  # fmt: skip
    assert all((int(r["d_sae"]), int(r["B"])) == (SMALL.d_sae, SMALL.B) for r in train_rows)
    assert all(float(r["ms"]) > 0 for r in saved)


def test_runner_triton_backend_in_the_interpreter(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    rows = _quick_run(tmp_path, "--backend", "triton", "--suite", "kernels,train")
    train = {r["impl"]: r for r in rows if r["suite"] == "train"}
    assert float(train["sae_fast"]["check_err"]) <= 1e-3
    assert {r["op"] for r in rows if r["suite"] == "kernels"} >= {"encode topk", "backward"}


def test_a_wrong_implementation_is_refused_before_timing():
    state = initial_state(SMALL, "cpu")
    x = torch.randn(64, SMALL.d_in)
    want = reference_gradients(SMALL, state, x)

    class Off(SaeFast):  # a bias applied twice
        def loss(self, x):
            return super().loss(x + self.sae.b_dec)

    with pytest.raises(SystemExit, match="disagrees with the reference"):
        check(Off(SMALL, state, name="off"), x, want, 1e-3)
    assert check(make_impl("sae_fast", SMALL, state), x, want, 1e-3) < 1e-5


def test_bad_runner_arguments_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="unknown suite"):
        bench_main(["run", "--suite", "kernel", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown implementation"):
        make_impl("nonesuch", SMALL, initial_state(SMALL, "cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench_main(["run", "--device", "cuda", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_target_verdicts():
    main = Shape(8, 64, 32, 4)
    base = {"suite": "train", **main.as_dict(), "check_err": ""}
    rows = [
        {**base, "impl": "torch.matmul", "ms": 10.0, "x_gemm": 1.0, "speedup_vs_dense": 6.0},
        {**base, "impl": "sae_fast", "ms": 12.0, "x_gemm": 1.2, "speedup_vs_dense": 5.0},
        {**base, "impl": "saelens", "ms": 11.0, "x_gemm": 1.1, "speedup_vs_dense": 5.5},
        {"suite": "memory", "op": "encode", "impl": "sae_fast", "x_buffer": 0.25},
    ]
    verdicts = dict(report.targets(rows, "cpu", main))
    assert verdicts["train step <= 1.3x the encoder GEMM: 1.20x"] is True
    assert verdicts[">= 4x faster than the dense reference: 5.00x"] is True
    assert verdicts["faster than SAELens at the same config: 0.92x"] is False
    assert verdicts["encode peak extra memory < 0.2x a [B, d_sae] fp32 buffer: 0.250x"] is False
    assert dict(report.targets(rows, "cuda", main))["train step <= 1.25x the encoder GEMM: 1.20x"]


def test_pytest_benchmark_entries_run():
    env = {**os.environ, "SAE_FAST_BENCH_PRESET": "small"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/test_bench_kernels.py",
            "-q",
            "--benchmark-disable",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "10 passed" in done.stdout


def test_end_to_end_throughput_of_sae_fast_train():
    rows = e2e.run("small", "cpu")
    phases = {r["op"]: r for r in rows}
    assert set(phases) == {"activation collection", "SAE steps"}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=0.01)


def test_peers_checked_and_timed_in_one_process(tmp_path):
    if not peers.ready():
        if os.environ.get("CI"):
            pytest.fail("CI must make the peer environment: make peers")
        pytest.skip("no peer environment: bash benchmarks/peers/setup.sh")
    rows = _quick_run(tmp_path, "--suite", "peers")
    train = {r["impl"]: r for r in rows if r["suite"] == "train"}
    assert {"sparsify", "saelens", "sae_fast", "dense reference", "torch.matmul"} <= set(train)
    for name in ("sparsify", "saelens"):
        assert float(train[name]["check_err"]) <= 1e-3 and train[name]["ms"] > 0
    md = next(tmp_path.glob("*.md")).read_text()
    assert "faster than sparsify at the same config" in md
