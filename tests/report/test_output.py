"""Output folders: checked first, built aside, moved into place whole, with a manifest; results load back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import mmlens
from mmlens.errors import MmlensError
from mmlens.models.weights import weights_sha256
from mmlens.neurons import NeuronSet
from mmlens.report.files import load_result, save_json, save_neuron_set, save_tensors
from mmlens.report.output import (
    MANIFEST,
    OutputFolder,
    can_resume,
    library_versions,
    manifest_mismatches,
    read_manifest,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- a fresh run -------------------------------------------------------------------------------------------------

def test_a_run_is_built_aside_and_appears_whole_with_its_manifest(tmp_path, umask_022):
    out = tmp_path / "run"
    with OutputFolder(out, "explain", {"out": out, "method": ("rollout",)}, seeds={"rise": 0},
                      result="explanation") as folder:
        assert folder.path.parent == tmp_path and folder.path.name.startswith(".run.partial-")
        assert not out.exists()
        (folder.path / "sub").mkdir()
        (folder.path / "sub" / "a.txt").write_text("a")
        (folder.path / "b.json").write_text("{}")
    assert names(tmp_path) == ["run"]  # no partial folder left beside it
    assert names(out) == ["b.json", MANIFEST, "sub"]
    manifest = read_manifest(out)
    assert manifest["command"] == "explain" and manifest["result"] == "explanation"
    assert manifest["parameters"] == {"out": str(out), "method": ["rollout"]} and manifest["seeds"] == {"rise": 0}
    assert manifest["files"] == ["b.json", "sub/a.txt"] and manifest["complete"] is True
    assert manifest["mmlens_version"] == mmlens.__version__ and manifest["schema_version"] == 1
    assert {"python", "torch", "transformers", "numpy"} <= set(manifest["libraries"])
    assert manifest["started"] <= manifest["finished"] and manifest["seconds"] >= 0
    assert out.stat().st_mode & 0o777 == 0o755  # as a plain mkdir makes it, not mkdtemp's 0700
    assert (out / MANIFEST).stat().st_mode & 0o777 == 0o644


def test_the_manifest_records_the_model_and_its_weights_hash(tmp_path, tiny_llama):
    with OutputFolder(tmp_path / "run", "info") as folder:
        folder.set_model(tiny_llama)
    model = read_manifest(tmp_path / "run")["model"]
    assert model["name"] == "tiny-llama" and model["class"] == type(tiny_llama.hf).__name__
    assert model["weights_sha256"] == weights_sha256(tiny_llama.hf) and len(model["weights_sha256"]) == 64
    assert model["parameters"] == sum(p.numel() for p in tiny_llama.hf.parameters())


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_run_leaves_no_folder(tmp_path, error):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(type(error)):
        with OutputFolder(out, "trace") as folder:
            (folder.path / "half.png").write_bytes(b"half")
            raise error
    assert names(tmp_path) == []  # neither the run nor the parents it created


def test_an_empty_folder_is_used_and_parents_are_created(tmp_path):
    (tmp_path / "empty").mkdir()
    with OutputFolder(tmp_path / "empty", "lens") as folder:
        (folder.path / "x").write_text("x")
    with OutputFolder(tmp_path / "a" / "b", "lens") as folder:
        (folder.path / "y").write_text("y")
    assert names(tmp_path / "empty") == [MANIFEST, "x"] and names(tmp_path / "a" / "b") == [MANIFEST, "y"]


# --- runs never mix ----------------------------------------------------------------------------------------------

def test_a_non_empty_folder_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    with pytest.raises(MmlensError, match="is not empty; give --overwrite"):
        with OutputFolder(out, "explain"):
            raise AssertionError("the run must not start")
    assert names(tmp_path) == ["run"] and names(out) == ["old.png"]


def test_overwrite_swaps_the_new_run_in_at_the_end(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    with OutputFolder(out, "explain", overwrite=True) as folder:
        assert names(out) == ["stale.png"]  # untouched while the new run works
        (folder.path / "new.png").write_bytes(b"new")
    assert names(out) == [MANIFEST, "new.png"] and names(tmp_path) == ["run"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_interrupted_overwrite_leaves_the_old_results_intact(tmp_path, error):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    with pytest.raises(type(error)):
        with OutputFolder(out, "explain", overwrite=True) as folder:
            (folder.path / "new.png").write_bytes(b"new")
            raise error
    assert names(tmp_path) == ["run"] and names(out) == ["old.png"]


def test_replace_own_replaces_only_a_folder_of_the_same_command(tmp_path):
    out = tmp_path / "demo"
    with OutputFolder(out, "demo", replace_own=True) as folder:
        (folder.path / "first.png").write_bytes(b"1")
    with OutputFolder(out, "demo", replace_own=True) as folder:  # make demo, twice
        (folder.path / "second.png").write_bytes(b"2")
    assert names(out) == [MANIFEST, "second.png"]
    with pytest.raises(MmlensError, match="not empty"):
        OutputFolder(out, "explain", replace_own=True).__enter__()  # another command's folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(MmlensError, match="not empty"):
        OutputFolder(mine, "demo", replace_own=True).__enter__()  # a folder that is no demo's
    assert names(mine) == ["thesis.tex"]


# --- places that cannot hold a run -------------------------------------------------------------------------------

def test_places_that_cannot_hold_a_run_give_one_clear_error(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {a_file: "is a file, not a folder", a_file / "sub": "is a file, not a folder",
             Path("/proc/mmlens-x"): "cannot write in /proc", Path("/proc/mmlens-x/y"): "cannot create /proc/mmlens-x"}
    for out, words in cases.items():
        with pytest.raises(MmlensError, match=words):
            OutputFolder(out, "explain").__enter__()
    monkeypatch.chdir(tmp_path)
    for out in (Path("."), tmp_path.parent, Path("/")):
        with pytest.raises(MmlensError, match="current folder or one above it"):
            OutputFolder(out, "explain", overwrite=True).__enter__()
    assert names(tmp_path) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_place_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(MmlensError, match="cannot write in"):
            OutputFolder(locked / "run", "explain").__enter__()
    finally:
        locked.chmod(0o700)


# --- resumable jobs ----------------------------------------------------------------------------------------------

def test_a_resumable_job_picks_up_its_own_folder_only(tmp_path, tiny_llama):
    out = tmp_path / "job"
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out, "store", {"shards": 4}, seeds={"seed": 0}, resumable=True) as folder:
            folder.set_model(tiny_llama)
            assert folder.path == out.resolve() and read_manifest(out)["complete"] is False
            (folder.path / "shard-0").write_text("done")
            raise KeyboardInterrupt  # a resumable job keeps what it did
    wanted = {"command": "store", "parameters": {"shards": 4}, "seeds": {"seed": 0},
              "mmlens_version": read_manifest(out)["mmlens_version"]}
    assert can_resume(out, wanted)
    assert not can_resume(out, {**wanted, "parameters": {"shards": 5}})
    assert manifest_mismatches(read_manifest(out), {**wanted, "seeds": {"seed": 1}}) == ["seeds"]
    with OutputFolder(out, "store", {"shards": 4}, seeds={"seed": 0}, resumable=True) as folder:
        assert folder.resumed and (folder.path / "shard-0").is_file()
        folder.set_model(tiny_llama)
        (folder.path / "shard-1").write_text("done")
    assert read_manifest(out)["complete"] is True and read_manifest(out)["files"] == ["shard-0", "shard-1"]
    with pytest.raises(MmlensError, match="not empty"):  # another job's parameters: not resumed, not mixed
        OutputFolder(out, "store", {"shards": 5}, seeds={"seed": 0}, resumable=True).__enter__()
    other = mmlens.load("tiny-gpt2")
    with pytest.raises(MmlensError, match="other weights"):
        with OutputFolder(out, "store", {"shards": 4}, seeds={"seed": 0}, resumable=True) as folder:
            folder.set_model(other)
    assert not can_resume(tmp_path / "nothing", wanted)


# --- versions ----------------------------------------------------------------------------------

def test_library_versions_name_the_stack():
    versions = library_versions()
    assert versions["torch"] == torch.__version__ and {"transformers", "numpy", "safetensors"} <= set(versions)


# --- files: modes, schema versions, load_result ------------------------------------------------------------------

def test_every_file_gets_the_usual_mode(tmp_path, umask_022):
    tensors = save_tensors({"x": torch.zeros(3)}, tmp_path / "x.safetensors")
    chosen = NeuronSet(["lm.L0.neurons"], torch.tensor([1]), torch.tensor([0.5]), ["image"])
    saved = save_neuron_set(chosen, tmp_path / "set")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for path in (tensors, *saved):
        assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644, path
    os.umask(0o077)
    assert save_tensors({"x": torch.zeros(1)}, tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600


def test_load_result_reads_each_kind_back_with_its_manifest(tmp_path):
    chosen = NeuronSet(["lm.L0.neurons"], torch.tensor([1]), torch.tensor([0.5]), ["image"])
    for kind, name, format in [("explanation", "explanation.json", "mmlens.Explanation"),
                               ("trace", "trace.json", "mmlens.CausalTrace"), ("lens", "lens.json", "mmlens.Lens"),
                               ("neurons", "neurons.json", "mmlens.Neurons")]:
        with OutputFolder(tmp_path / kind, kind, result=kind) as folder:
            save_json({"answer": "red"}, folder.path / name, format)
            if kind == "neurons":
                save_neuron_set(chosen, folder.path / "neurons_modality")
        stored = mmlens.load_result(tmp_path / kind)
        assert (stored.kind, stored.data["answer"], stored.data["format"]) == (kind, "red", format)
        assert stored.schema_version == 1 and stored.manifest["command"] == kind
        assert load_result(tmp_path / kind / name).kind == kind
    assert mmlens.load_result(tmp_path / "neurons").neuron_sets["neurons_modality"].labels == ["image"]
    assert json.loads((tmp_path / "neurons" / "neurons_modality.json").read_text())["schema_version"] == 1


def test_load_result_says_what_is_wrong(tmp_path):
    with pytest.raises(MmlensError, match="no such result folder"):
        load_result(tmp_path / "missing")
    with pytest.raises(MmlensError, match="holds no mmlens result"):
        load_result(tmp_path)
    (tmp_path / "trace.json").write_text(json.dumps({"format": "mmlens.CausalTrace", "schema_version": 99}))
    with pytest.raises(MmlensError, match="schema version 99"):
        load_result(tmp_path)
    (tmp_path / "trace.json").write_text(json.dumps({"model": "old"}))  # written before schema versions
    assert load_result(tmp_path).schema_version == 0 and load_result(tmp_path).manifest is None
