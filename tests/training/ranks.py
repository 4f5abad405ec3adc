"""Running a function on N gloo processes from a test: spawned, bounded in time."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from tests.helpers import SMALL_TRAIN

TIMEOUT_S = 300
# The parallel tests' run: small, and latents die within it, so AuxK and the dead-latent
# counters take part.
BASE = dict(
    SMALL_TRAIN,
    d_sae=768,
    max_tokens=2048,
    steps=8,
    checkpoint_every=4,
    log_every=2,
    dead_after_tokens=1024,  # latents die within the run: AuxK and the counters take part
    # and latents silent as long are revived (topk): its exchanges take part too
    revive_after_tokens=1024,
    seed=3,
    # the rate these equivalence tests were tuned at: the recipe's (2.3e-3 for 8 steps)
    # grows the float-order differences between ranks past their tolerance in 8 steps
    lr=4e-4,
)


def assert_same_sae(got: Path, want: Path | dict[str, Tensor], rtol=1e-4, atol=1e-5) -> None:
    """The SAE saved at `got` has the weights of `want` (a saved SAE or a state dict)."""
    from sae_fast import SparseAutoencoder

    w = want if isinstance(want, dict) else SparseAutoencoder.load(want).state_dict()
    g = SparseAutoencoder.load(got).state_dict()
    for name, t in w.items():
        torch.testing.assert_close(g[name], t, rtol=rtol, atol=atol, msg=f"{got}: {name}")


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun would give rank `rank` of `world` (one CPU thread each)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world), LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)


def spawn(fn, args: tuple, world: int = 2) -> None:
    """Run `fn(rank, world, port, *args)` on `world` processes; fail the test if any fails
    or the whole does not finish in TIMEOUT_S."""
    ctx = mp.start_processes(
        fn, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world}-process run did not finish in {TIMEOUT_S} s")
