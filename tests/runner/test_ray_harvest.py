"""Harvesting on Ray: a local Ray with 2 workers, one of them lost mid-run, ends with the in-process store.

Ray starts slowly on a busy machine (tens of seconds), so one Ray run checks
everything it can: a restart (one shard already stored is skipped), two
workers, a worker process that exits on its first shard (Ray restarts it and
retries the shard), and a final store identical to the in-process one.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from mmlens.errors import MmlensError
from tests.store.conftest import DATA, OPTIONS, snapshot

import ray  # noqa: E402  (a dev dependency: a missing one fails, never skips)


@pytest.fixture(scope="module")
def local_ray():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def keep_first_shard(reference: Path, out: Path) -> str:
    """A copy of the reference store as a run killed after its first commit leaves it; that shard's id."""
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    first, *rest = manifest["shards"]
    manifest["shards"] = [first]
    (out / "manifest.json").write_text(json.dumps(manifest))
    for record in rest:
        shutil.rmtree(out / "shards" / record["id"])
    return first["id"]


def test_two_workers_one_lost_after_a_restart_end_with_the_in_process_store(local_ray, tiny_llava, reference,
                                                                            tmp_path):
    from mmlens.runner.ray_harvest import harvest_on_ray

    out = tmp_path / "store"
    kept = keep_first_shard(reference, out)
    marker = tmp_path / "worker-exited"
    summary = harvest_on_ray(tiny_llava, DATA, out, OPTIONS["sites"], shard_size=OPTIONS["shard_size"],
                             batch_size=OPTIONS["batch_size"], workers=2, exit_once=str(marker))
    assert marker.exists()  # a worker process did exit mid-run
    assert summary["shards"] == {"total": 3, "written": 2, "skipped": 1}
    assert summary["backend"]["workers"] == 2 and summary["backend"]["gpus_per_worker"] == 0
    assert summary["samples"] == 10 and summary["bad_rows"] == 0
    # identical manifests (less times), token tables and activation bytes: the same shards hold the same samples
    assert snapshot(out) == snapshot(reference)
    assert (out / "shards" / kept).is_dir()
    # and a second run finds nothing to do
    again = harvest_on_ray(tiny_llava, DATA, out, OPTIONS["sites"], shard_size=OPTIONS["shard_size"],
                           batch_size=OPTIONS["batch_size"], workers=2)
    assert again["shards"] == {"total": 3, "written": 0, "skipped": 3}
    assert snapshot(out) == snapshot(reference)


def test_a_store_of_other_settings_is_refused_before_any_worker_starts(local_ray, tiny_llava, reference, tmp_path):
    from mmlens.runner.ray_harvest import harvest_on_ray

    out = tmp_path / "store"
    shutil.copytree(reference, out)
    with pytest.raises(MmlensError, match="shard_size"):
        harvest_on_ray(tiny_llava, DATA, out, OPTIONS["sites"], shard_size=5, batch_size=OPTIONS["batch_size"])


def test_without_ray_installed_is_one_line(monkeypatch, tiny_llava, tmp_path):
    from mmlens.runner.ray_harvest import harvest_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MmlensError, match=r"pip install 'mmlens\[ray\]'") as error:
        harvest_on_ray(tiny_llava, DATA, tmp_path / "store", "lm.L0.resid")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "store").exists()


def test_the_command_without_ray_is_one_line(monkeypatch, capsys, tmp_path):
    from mmlens.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["harvest", "--data", DATA, "--model", "tiny-llava", "--out", str(tmp_path / "s"), "--ray"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1
    assert err == ["mmlens: error: --ray needs Ray (with Ray Data): pip install 'mmlens[ray]'"]
