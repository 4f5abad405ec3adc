"""Crash safety with real processes: `sae-fast train` is killed with SIGKILL at exact
points of a checkpoint or cache write, and at random moments. The last complete checkpoint
must load, `--resume` from it must end where an uninterrupted run ends, and a torn
activation cache must be refused with a clear message."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_fast import SparseAutoencoder, TrainConfig
from sae_fast.training import train
from tests.training.ranks import BASE, TIMEOUT_S, assert_same_sae, free_port

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16
# the flags of BASE (so the shared cache matches), with a checkpoint every 2 steps
FLAGS = ["--max-tokens", "2048", "--context-size", "64", "--batch-size", "256", "--k", "8"]
FLAGS += ["--d-sae", "768", "--dead-after-tokens", "1024", "--seed", "3", "--no-progress"]
FLAGS += ["--log-every", "1", "--lr", "4e-4", "--eval-tokens", "1024"]
FLAGS += ["--revive-after-tokens", "1024"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _start(target: str, nth: int, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.training.crash_child", target, str(nth), "train"]
    return subprocess.Popen(
        [*cmd, *FLAGS, *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _run(target: str, nth: int, *args: str) -> subprocess.CompletedProcess:
    proc = _start(target, nth, *args)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints under run dir `out`, each checked to load; oldest first."""
    found = sorted((out / "checkpoints").glob("step_*"))
    for ckpt in found:
        SparseAutoencoder.load(ckpt / "sae")
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert ckpt.name == f"step_{state['step']:08d}"
        shards = int(state.get("feature_shards", 1))
        where = (
            [ckpt] if shards == 1 else [ckpt / "shards" / f"shard-{i:03d}" for i in range(shards)]
        )
        for w in where:
            assert torch.load(w / "optimizer.pt", weights_only=True)["state"]
    return found


def _resume_and_compare(out: Path, cache: str, want: dict[str, torch.Tensor]) -> None:
    """Resume from the newest checkpoint (or start over if none) and compare the result."""
    found = _checkpoints(out)
    resume = ["--resume", str(found[-1])] if found else []
    done = _run("none", 0, "--cache", cache, "--steps", str(STEPS), "--out", str(out), *resume)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_sae(out / "sae", want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = dict(BASE, steps=STEPS, cache=cache, out=str(out), log_every=1)
    return train(TrainConfig(**cfg)).sae.state_dict()


@pytest.mark.parametrize(
    "target, nth, left",
    [
        ("sae-weights", 2, [2]),  # the second checkpoint's SAE weights, half written
        ("optimizer", 2, [2]),  # the second checkpoint's optimiser state, half written
        ("rename", 4, [2]),  # the second checkpoint, complete, before its final rename
        ("prune", 1, [4, 6]),  # the third checkpoint removes the first: killed mid-delete
    ],
)
def test_kill_during_a_checkpoint_write(tmp_path, cache, uninterrupted, target, nth, left):
    out = tmp_path / "run"
    args = ["--cache", cache, "--steps", str(STEPS), "--checkpoint-every", "2", "--out", str(out)]
    killed = _run(target, nth, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in _checkpoints(out)] == [f"step_{n:08d}" for n in left]
    assert list((out / "checkpoints").glob(".step_*"))  # the torn write was there
    _resume_and_compare(out, cache, uninterrupted)
    assert not list((out / "checkpoints").glob(".*"))  # leftovers cleared by the resumed run


def test_kill_at_random_moments(tmp_path, cache, uninterrupted):
    """Three kills, each after a random number of steps of the run (a checkpoint every
    step, so some land inside a checkpoint write) plus a random fraction of a step."""
    rng = random.Random(1234)
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    codes = []
    for _ in range(3):
        found = _checkpoints(out) if (out / "checkpoints").exists() else []
        start = int(found[-1].name.removeprefix("step_")) if found else 0
        target = rng.randint(1, max(1, (STEPS - start - 1) // 2))  # steps logged before
        metrics.unlink(missing_ok=True)
        args = ["--cache", cache, "--steps", str(STEPS), "--checkpoint-every", "1"]
        proc = _start("none", 0, *args, "--out", str(out),
                      *(["--resume", str(found[-1])] if found else []))  # fmt: skip
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None:
            assert time.monotonic() < deadline
            if metrics.exists() and len(metrics.read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT_S)
        codes.append(proc.returncode)
    assert codes.count(-signal.SIGKILL) >= 2, codes  # killed mid-run, not after the end
    _resume_and_compare(out, cache, uninterrupted)


def test_kill_during_the_cache_write(tmp_path):
    cache = tmp_path / "cache"
    args = ["--cache", str(cache), "--steps", "1", "--out", str(tmp_path / "run")]
    killed = _run("cache-shard", 1, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = _run("none", 0, *args)
    assert again.returncode == 2
    assert "is incomplete (its writer was interrupted; it kept" in again.stderr
    assert "delete the directory to rebuild it" in again.stderr
    assert "Traceback" not in again.stderr


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_kill_a_feature_sharded_run(tmp_path, cache, uninterrupted):
    """A 2-rank feature-sharded torchrun run, every process SIGKILLed mid-run (a lost node):
    its complete checkpoints load, and a resumed torchrun run ends equal to one process."""
    out = tmp_path / "run"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2"]
    cmd = ["-m", "sae_fast.cli", "train", *FLAGS, "--parallel", "features", "--cache", cache]
    cmd += ["--steps", str(STEPS), "--checkpoint-every", "1", "--out", str(out)]
    proc = subprocess.Popen(
        [*torchrun, "--master-port", str(free_port()), *cmd], env=ENV, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.005)
    for pid in _tree(proc.pid):  # torchrun and its workers (their own sessions) at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT_S)
    found = _checkpoints(out)
    assert found and int(found[-1].name.removeprefix("step_")) < STEPS, found
    resume = [*torchrun, "--master-port", str(free_port()), *cmd, "--resume", str(found[-1])]
    done = subprocess.run(resume, env=ENV, cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_sae(out / "sae", uninterrupted)
    assert not list((out / "checkpoints").glob(".*"))  # the staging dirs were cleared
