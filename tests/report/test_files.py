"""Storage: explanations as JSON and PNGs, neuron and weight sets as safetensors plus a JSON sidecar."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import mmlens
from mmlens.neurons import NeuronSet, WeightSet
from mmlens.report.files import (
    load_neuron_set,
    load_weight_set,
    save_explanation,
    save_neuron_set,
    save_weight_set,
)


def test_explanation_writes_its_json_and_overlays(tiny_llava: mmlens.Model, tmp_path) -> None:
    explanation = mmlens.explain(tiny_llava, "<image> what colour ?", [Image.new("RGB", (40, 40), "red")],
                                 methods=["rollout"], answer="red")
    folder = save_explanation(explanation, tmp_path / "plain", figures=False)
    stored = json.loads((folder / "explanation.json").read_text())
    assert stored.pop("format") == "mmlens.Explanation" and stored.pop("schema_version") == 1
    assert stored == json.loads(json.dumps(explanation.to_json()))
    assert not list(folder.glob("*.png"))
    with_figures = save_explanation(explanation, tmp_path / "figures")
    assert [p.name.split("_")[0] for p in with_figures.glob("*.png")] == ["rollout"]


def test_neuron_set_round_trip(tmp_path) -> None:
    chosen = NeuronSet(["lm.L1.neurons", "vision.L0.neurons", "lm.L1.neurons"], torch.tensor([4, 9, 4]),
                       torch.tensor([0.5, 0.25, 0.125]), ["image", "colour", "text"], {"ratio": 0.02, "k": [1, 2]})
    tensors, sidecar = save_neuron_set(chosen, tmp_path / "set")
    assert tensors.suffix == ".safetensors" and sidecar.suffix == ".json"
    assert json.loads(sidecar.read_text())["format"] == "mmlens.NeuronSet"
    for name in ("set", "set.safetensors", "set.json"):
        loaded = load_neuron_set(tmp_path / name)
        assert loaded.sites == chosen.sites and loaded.labels == chosen.labels
        assert loaded.metadata == chosen.metadata and torch.equal(loaded.scores, chosen.scores)
    with pytest.raises(mmlens.MmlensError, match="no neuron set"):
        load_neuron_set(tmp_path / "missing")


def test_weight_set_round_trip_and_formats_do_not_mix(tmp_path) -> None:
    found = WeightSet(["a.weight", "b.weight", "a.weight"], torch.tensor([0, 3, 2]), torch.tensor([5, 1, 2]),
                      torch.tensor([1.0, 2.0, 3.0]), {"p": 0.01})
    save_weight_set(found, tmp_path / "coupled")
    loaded = load_weight_set(tmp_path / "coupled.json")
    assert loaded.params == found.params and loaded.metadata == {"p": 0.01}
    assert torch.equal(loaded.rows, found.rows) and torch.equal(loaded.cols, found.cols)
    with pytest.raises(mmlens.MmlensError, match="not an mmlens neuron set"):
        load_neuron_set(tmp_path / "coupled")
