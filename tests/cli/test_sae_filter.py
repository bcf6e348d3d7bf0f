"""``mmlens sae filter``: kept and removed ids by SAE-V score, from a store or a dataset harvested first."""

from __future__ import annotations

import json

import pytest

from mmlens.cli import samples
from mmlens.cli.sae_filter import sae_filter
from mmlens.errors import MmlensError
from tests.report.test_browser import run_command
from tests.sae.shapes_fixtures import concept_sae, shapes_model, shapes_store  # noqa: F401

LOOSE = dict(top_latents=2, top_tokens=10, min_per_modality=1, pairs=1)


def test_filter_a_store_splits_every_sample(shapes_store, concept_sae, tmp_path, capsys):
    _, folder = concept_sae
    out = tmp_path / "f"
    run_command(sae_filter, data=str(shapes_store), sae=folder, keep=0.25, out=out, within="any", as_json=True,
                **LOOSE)
    summary = json.loads(capsys.readouterr().out)
    kept = (out / "kept.txt").read_text().split()
    removed = (out / "removed.txt").read_text().split()
    assert len(kept) == summary["kept"] == 3 and len(removed) == 9
    assert sorted(kept + removed) == sorted(f"shapes-val-{i}" for i in range(12))
    scores = json.loads((out / "scores.json").read_text())
    assert scores["params"]["within"] == "any" and set(scores["samples"]) == set(kept + removed)
    ordered = [scores["samples"][s] for s in kept + removed]
    assert ordered == sorted(ordered, reverse=True)


def test_filter_a_dataset_harvests_it_first(concept_sae, shapes_model, monkeypatch, tmp_path):
    _, folder = concept_sae
    monkeypatch.setattr(samples, "load_model", lambda console, name: shapes_model)
    run_command(sae_filter, data="shapes:test[0:4]", sae=folder, keep=0.5, out=tmp_path / "g", **LOOSE)
    assert (tmp_path / "g" / "store" / "manifest.json").is_file()
    assert len((tmp_path / "g" / "kept.txt").read_text().split()) == 2


@pytest.mark.parametrize("given, message", [(dict(keep=1.5), "fraction"), (dict(within="all"), "within"),
                                            (dict(pairs=9), "pairs")])
def test_bad_options_are_one_line(shapes_store, concept_sae, tmp_path, given, message):
    _, folder = concept_sae
    with pytest.raises(MmlensError, match=message):
        run_command(sae_filter, data=str(shapes_store), sae=folder, out=tmp_path, **given)


def test_registered_under_mmlens_sae(shapes_store, concept_sae, tmp_path, capsys):
    from mmlens.cli.main import main

    _, folder = concept_sae
    assert main(["sae", "filter", "--data", str(shapes_store), "--sae", str(folder), "--keep", "0.5",
                 "--out", str(tmp_path / "m"), "--top-latents", "2", "--top-tokens", "10", "--min-per-modality", "1",
                 "--pairs", "1"]) == 0
    assert len((tmp_path / "m" / "kept.txt").read_text().split()) == 6
    assert main(["sae", "filter", "--data", str(shapes_store), "--sae", str(folder), "--keep", "2"]) == 1
    assert "mmlens: error: --keep is a fraction" in capsys.readouterr().err
    assert main(["sae", "dashboard", "--help"]) == 0
