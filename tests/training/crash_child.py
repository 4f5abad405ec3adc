"""`sae-fast` in a child process that kill -9s itself at one exact point (crash tests).

    python -m tests.training.crash_child TARGET N ARGS...

TARGET names the write to break on its N-th call: `sae-weights` (an SAE weights file: half
written, then SIGKILL), `optimizer` (torch.save of the optimiser state: half written, then
SIGKILL), `rename` (SIGKILL just before an atomic directory's final rename), `prune` (the removal of
an old checkpoint: one file deleted, then SIGKILL), `cache-shard` (an activation-cache
shard: half written, then SIGKILL), or `none`. ARGS go to `sae-fast`.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

import sae_fast.data.store
import sae_fast.files
import sae_fast.formats.saelens
from sae_fast.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _torn(write, path_arg: int, nth: int):
    """`write`, which on its nth call writes only the first half of its file, then dies."""
    calls = 0

    @functools.wraps(write)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        out = write(*args, **kwargs)
        if calls == nth:
            path = Path(args[path_arg])
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            _die()
        return out

    return wrapper


def arm(target: str, nth: int) -> None:
    """Install the fault for `target` (see the module docstring)."""
    if target == "sae-weights":
        mod = sae_fast.formats.saelens
        mod.write_safetensors = _torn(mod.write_safetensors, 1, nth)
    elif target == "optimizer":
        torch.save = _torn(torch.save, 1, nth)
    elif target == "cache-shard":
        mod = sae_fast.data.store
        mod.save_file = _torn(mod.save_file, 1, nth)
    elif target == "rename":
        real, calls = os.rename, 0

        @functools.wraps(real)
        def rename(src, dst):
            nonlocal calls
            calls += 1
            if calls == nth:
                _die()
            real(src, dst)

        sae_fast.files.os.rename = rename  # the os module: every rename counts
    elif target == "prune":
        real_rmtree, calls = shutil.rmtree, 0

        @functools.wraps(real_rmtree)  # the embedded corpus reads stdlib docstrings
        def rmtree(path, *args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == nth:
                next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
                _die()
            real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif target != "none":
        raise SystemExit(f"unknown target {target!r}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    raise SystemExit(main(sys.argv[3:]))
