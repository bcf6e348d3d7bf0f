"""Harvest runs that survive: kill -9 at several points, a full disk, bad rows."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.store import Store
from mmlens.store import shard as shard_module
from mmlens.store import writer as writer_module
from mmlens.store.harvest import plan_shards
from tests.store.conftest import run_harvest, snapshot


def _slow_child(model, out: Path, where: str) -> None:
    """In the forked child: harvest with one step slowed down, so the parent's kill lands inside it."""
    if where == "array":  # mid-shard: some arrays written to the temporary folder, not all
        save = shard_module.save_array
        shard_module.save_array = lambda path, array: (save(path, array), time.sleep(0.3))
    elif where == "commit":  # the shard folder renamed into place, the manifest not yet updated
        commit = writer_module.StoreWriter.commit
        writer_module.StoreWriter.commit = lambda self, *a: (time.sleep(0.3), commit(self, *a))
    try:
        run_harvest(model, out)
    finally:
        os._exit(0)


def _kill_when(model, out: Path, where: str, ready: Callable[[Path], bool]) -> bool:
    """Fork a harvest into ``out``, SIGKILL it once ``ready(out)``; whether the kill came before it finished."""
    process = multiprocessing.get_context("fork").Process(target=_slow_child, args=(model, out, where))
    process.start()
    deadline = time.monotonic() + 120
    while process.is_alive() and time.monotonic() < deadline and not ready(out):
        time.sleep(0.002)
    killed = process.is_alive()
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    return killed


def _listed(out: Path) -> set[str]:
    try:
        return {r["id"] for r in json.loads((out / "manifest.json").read_text())["shards"]}
    except (OSError, ValueError):
        return set()


def _tmp_with_array(out: Path) -> bool:
    return any(any(p.glob("*.npy")) for p in (out / "shards").glob(".tmp-*")) if (out / "shards").is_dir() else False


def _renamed_not_listed(out: Path) -> bool:
    if not (out / "shards").is_dir():
        return False
    on_disk = {p.name for p in (out / "shards").iterdir() if not p.name.startswith(".")}
    return len(_listed(out)) >= 1 and bool(on_disk - _listed(out))


def test_kill_9_at_several_points_then_resume_equals_an_uninterrupted_run(reference, tiny_llava, tmp_path):
    out = tmp_path / "store"
    # 1. mid-write of the second shard (one shard committed, arrays of the next in .tmp-)
    assert _kill_when(tiny_llava, out, "array", lambda o: len(_listed(o)) == 1 and _tmp_with_array(o))
    assert len(_listed(out)) == 1 and any((out / "shards").glob(".tmp-*"))
    # 2. after a shard folder is renamed into place, before the manifest lists it
    assert _kill_when(tiny_llava, out, "commit", _renamed_not_listed)
    assert _renamed_not_listed(out)
    assert [r["id"] for r in Store.open(out).shards] == sorted(_listed(out))  # readers see finished shards only
    # 3. right at the start of a run (while the weights are hashed)
    _kill_when(tiny_llava, out, "none", lambda o: True)
    summary = run_harvest(tiny_llava, out)
    assert summary["shards"]["skipped"] >= 1 and summary["shards"]["written"] >= 1
    assert snapshot(out) == snapshot(reference)
    assert not list((out / "shards").glob(".tmp-*"))


def test_a_full_disk_stops_with_one_line_and_the_store_resumes(reference, tiny_llava, tmp_path, monkeypatch):
    out = tmp_path / "store"
    save, calls = shard_module.save_array, []

    def fill_up(path, array):
        calls.append(path)
        if len(calls) == 3:  # the first array of the second shard
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(path, array)

    monkeypatch.setattr(shard_module, "save_array", fill_up)
    with pytest.raises(MmlensError, match="^the disk is full at .*: 1 shards are stored; free some space") as error:
        run_harvest(tiny_llava, out)
    assert "\n" not in str(error.value)
    assert not list((out / "shards").glob(".tmp-*")) and len(_listed(out)) == 1
    monkeypatch.setattr(shard_module, "save_array", save)
    assert run_harvest(tiny_llava, out)["shards"] == {"total": 3, "written": 2, "skipped": 1}
    assert snapshot(out) == snapshot(reference)


def _jsonl(tmp_path: Path) -> Path:
    from mmlens.data.shapes import make_sample

    rows = []
    for i in range(5):
        sample = make_sample("test", i)
        sample.image.save(tmp_path / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"{i}.png", "prompt": sample.prompt})
    rows[1]["image"] = "missing.png"
    rows[3]["prompt"] = "what colour ?"
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_rows_are_skipped_listed_and_counted(tiny_llava, tmp_path):
    summary = run_harvest(tiny_llava, tmp_path / "s", data=str(_jsonl(tmp_path)), shard_size=3)
    assert summary["bad_rows"] == 2 and summary["samples"] == 3
    errors = [json.loads(line) for line in (tmp_path / "s" / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["row"]) for e in errors] == [("s1", 1), ("s3", 3)]
    assert "no such image file" in errors[0]["reason"] and "no <image> slot" in errors[1]["reason"]
    assert errors[0]["shard"] != errors[1]["shard"]
    assert set(Store.open(tmp_path / "s").tokens.column("sample_id").to_pylist()) == {"s0", "s2", "s4"}


def test_strict_stops_at_the_first_bad_row(tiny_llava, tmp_path):
    with pytest.raises(MmlensError, match=r"bad row s1 \(row 1\): no such image file.*--strict"):
        run_harvest(tiny_llava, tmp_path / "s", data=str(_jsonl(tmp_path)), strict=True)


def test_shard_ids_fix_their_rows():
    plans = plan_shards(10, 4, "abc")
    assert [(p.id, p.first, p.stop) for p in plans] == [("abc-000000", 0, 4), ("abc-000001", 4, 8),
                                                        ("abc-000002", 8, 10)]


def test_sites_that_are_not_per_token_are_refused(tiny_llava, tmp_path):
    with pytest.raises(MmlensError, match="one row per token"):
        run_harvest(tiny_llava, tmp_path / "s", sites="vision.L0.resid")
    with pytest.raises(MmlensError, match="unknown modality"):
        run_harvest(tiny_llava, tmp_path / "s", modalities=["audio"])


def test_a_shard_of_bad_rows_only_is_an_empty_shard(tiny_llava, tmp_path):
    summary = run_harvest(tiny_llava, tmp_path / "s", data=str(_jsonl(tmp_path)), shard_size=1, dtype="float32")
    assert summary["shards"]["total"] == 5 and summary["bad_rows"] == 2
    store = Store.open(tmp_path / "s")
    assert [r["tokens"] == 0 for r in store.shards] == [False, True, False, True, False]
    whole = store.read("lm.L0.resid")
    assert whole.dtype == torch.float32 and whole.shape == (len(store), 64)
    assert all(m.dtype == np.float32 for m in store.memmap("lm.L0.resid"))
