"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from sae_fast import TrainConfig
from sae_fast.training.trainer import collect
from tests.training.ranks import BASE


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> str:
    """An activation cache of the parallel tests' run (BASE), shared by them."""
    path = tmp_path_factory.mktemp("acts") / "cache"
    collect(TrainConfig(**BASE, cache=str(path)))
    return str(path)
