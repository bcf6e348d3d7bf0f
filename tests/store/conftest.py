"""A small reference store (tiny-llava, 10 shapes samples, shards of 4) built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmlens.data.readers import open_reader
from mmlens.store.harvest import harvest

DATA = "shapes:test[0:10]"
OPTIONS = dict(sites="lm.L*.resid", shard_size=4, batch_size=2)


def run_harvest(model, out: Path, **overrides):
    return harvest(model, open_reader(overrides.pop("data", DATA)), out, **{**OPTIONS, **overrides})


def snapshot(folder: Path) -> tuple[dict, dict[str, bytes], str]:
    """What must be equal between two runs: the manifest less its times, every shard file's bytes, the errors."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("created", "updated"):
        manifest.pop(key)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "shards").rglob("*"))
             if p.is_file()}
    return manifest, files, (folder / "errors.jsonl").read_text()


@pytest.fixture(scope="session")
def reference(tiny_llava, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "store"
    run_harvest(tiny_llava, out)
    return out
