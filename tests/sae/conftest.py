"""Shared SAE fixtures: a small tiny-llava store (12 shapes samples, every residual site), built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmlens.data.readers import open_reader
from mmlens.store.harvest import harvest


@pytest.fixture(scope="session")
def sae_store(tiny_llava, tmp_path_factory) -> Path:
    """A store of ``shapes:train[0:12]`` through tiny-llava at ``lm.L*.resid`` (shards of 6)."""
    out = tmp_path_factory.mktemp("sae") / "store"
    harvest(tiny_llava, open_reader("shapes:train[0:12]"), out, "lm.L*.resid", shard_size=6, batch_size=4)
    return out
