"""Peer libraries, benchmarked side by side with sae_fast: EleutherAI sparsify (PyPI
`eai-sparsify`) and SAELens (PyPI `sae-lens`). They live in their own environment,
`benchmarks/peers/.venv`, made by `benchmarks/peers/setup.sh`, never in sae_fast's."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"


def ready() -> bool:
    """Whether setup.sh finished making the environment."""
    return (VENV / ".ready").exists()


def python() -> Path:
    """The peer environment's interpreter; a clear error when it has not been made."""
    exe = VENV / "bin" / "python"
    if not ready():
        raise SystemExit(
            f"the peer environment {VENV} does not exist: run `bash benchmarks/peers/setup.sh` "
            "(or `make peers`) first"
        )
    return exe
