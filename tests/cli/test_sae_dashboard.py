"""``mmlens sae dashboard``: the command function writes an index and the latent pages, labels included."""

from __future__ import annotations

import json

import pytest

from mmlens.cli import samples
from mmlens.cli.sae_dashboard import dashboard, write_dashboard
from mmlens.errors import MmlensError
from tests.report.test_browser import run_command
from tests.sae.shapes_fixtures import concept_sae, shapes_model, shapes_store  # noqa: F401


def test_dashboard_command_writes_pages_and_json(shapes_store, concept_sae, shapes_model, monkeypatch, tmp_path,
                                                 capsys):
    _, folder = concept_sae
    monkeypatch.setattr(samples, "load_model", lambda console, name: shapes_model)  # already loaded
    run_command(dashboard, sae=folder, store=shapes_store, out=tmp_path / "dash", latents="0,5,12", as_json=True)
    summary = json.loads(capsys.readouterr().out)
    assert summary["pages"] == 3 and summary["latents"] == [0, 5, 12]
    assert summary["labels"]["0"]["concept"].startswith("colour:red")
    index = tmp_path / "dash" / "index.html"
    assert summary["index"] == str(index) and index.is_file()
    page = (tmp_path / "dash" / "latent-00005.html").read_text()
    assert "promotes" in page and page.count('class="crop"') >= 1


def test_default_latents_are_the_most_frequent(shapes_store, concept_sae, tmp_path):
    _, folder = concept_sae
    summary = write_dashboard(folder, shapes_store, tmp_path / "d", n_latents=4, logits=False, labels=False)
    assert summary["pages"] == 4 and all(latent < 9 for latent in summary["latents"])  # built latents only fire
    assert summary["labels"] == {}


def test_bad_latent_list_is_one_line(shapes_store, concept_sae, tmp_path):
    _, folder = concept_sae
    with pytest.raises(MmlensError, match="comma-separated"):
        run_command(dashboard, sae=folder, store=shapes_store, out=tmp_path, latents="3,x", logits=False)
