"""Adding to a store: appending, refusing another model or sites, versions, half-written shards."""

from __future__ import annotations

import json
import shutil

import pytest

from mmlens.errors import MmlensError
from mmlens.store import Store
from tests.store.conftest import run_harvest, snapshot


def test_append_new_data_and_rerun_adds_nothing(reference, tiny_llava, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    again = run_harvest(tiny_llava, out)
    assert again["shards"] == {"total": 3, "written": 0, "skipped": 3}
    assert snapshot(out)[1] == snapshot(reference)[1]
    added = run_harvest(tiny_llava, out, data="shapes:val[0:3]")
    assert added["shards"]["written"] == 1 and added["store_tokens"] > added["tokens"]
    store = Store.open(out)
    ids = store.tokens.column("sample_id").to_pylist()
    assert ids[0] == "shapes-test-0" and ids[-1] == "shapes-val-2"  # appended after, in order
    assert len(store.manifest["sources"]) == 2


def test_mixing_models_sites_or_settings_is_refused(reference, tiny_llava, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    with pytest.raises(MmlensError, match="holds sites lm.L0.resid, lm.L1.resid; this run asks for lm.L1.resid"):
        run_harvest(tiny_llava, out, sites="lm.L1.resid")
    with pytest.raises(MmlensError, match="dtype"):
        run_harvest(tiny_llava, out, dtype="float32")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"]["weights_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MmlensError, match="one model per store"):
        run_harvest(tiny_llava, out)


def test_other_layout_version_or_foreign_folder_is_a_clear_error(reference, tiny_llava, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["layout_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MmlensError, match="layout version 99"):
        Store.open(out)
    with pytest.raises(MmlensError, match="layout version 99"):
        run_harvest(tiny_llava, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MmlensError, match="not empty and holds no store manifest"):
        run_harvest(tiny_llava, other)


def test_half_written_shard_is_an_error_to_read_and_is_redone(reference, tiny_llava, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(reference, out)
    victim = sorted((out / "shards").glob("*/lm.L1.resid.npy"))[1]
    victim.write_bytes(victim.read_bytes()[:1000])  # as a crash mid-copy would leave it
    (out / "shards" / ".tmp-leftover").mkdir()
    with pytest.raises(MmlensError, match="half-written or damaged .*run the same mmlens harvest again"):
        Store.open(out)
    summary = run_harvest(tiny_llava, out)
    assert summary["shards"] == {"total": 3, "written": 1, "skipped": 2}
    assert snapshot(out) == snapshot(reference)
    assert not (out / "shards" / ".tmp-leftover").exists()
    assert Store.open(out).verify() == []


def test_two_jobs_cannot_write_one_store_at_once(reference, tiny_llava, tmp_path):
    from mmlens.store import StoreWriter

    out = tmp_path / "s"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    spec = {key: manifest[key] for key in ("model", "sites", "dtype", "modalities", "shard_size", "batch_size")}
    holder = StoreWriter.open(out, spec, manifest["sources"][0]["reader"])
    with pytest.raises(MmlensError, match="another job is writing to"):
        run_harvest(tiny_llava, out)
    holder.close()
    assert run_harvest(tiny_llava, out)["shards"]["skipped"] == 3
