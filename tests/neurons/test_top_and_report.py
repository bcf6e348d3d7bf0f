"""Top-activating samples and patches, the neuron figures, and the ``neurons`` command."""

import io
import json

import numpy as np
import pytest
import torch
import typer

import mmlens
from mmlens.cli.neurons import neurons
from mmlens.layout import Modality
from mmlens.neurons.neuron_set import NeuronSet
from mmlens.neurons.top import top_activations
from mmlens.report.files import load_neuron_set
from mmlens.report.neurons import depth_figure, top_activations_figure
from tests.neurons.conftest import gate_activations

SITE, INDEX = "lm.L1.neurons", 9


@pytest.fixture(scope="module")
def top(tiny_llava, samples):
    return top_activations(tiny_llava, samples, SITE, INDEX, k=3, progress=False)


def test_top_samples_and_patches_match_a_direct_search(tiny_llava, samples, top):
    best = []
    for sample in samples:
        batch = tiny_llava.prepare(sample.prompt, [sample.image])
        acts = gate_activations(tiny_llava, batch)[1][0, :, INDEX]  # layer 1 = SITE
        image = batch.layout.mask(Modality.IMAGE)[0]
        position = int(acts.masked_fill(~image, float("-inf")).argmax())
        best.append((float(acts[position]), sample.id, (int(batch.layout.row[0, position]),
                                                         int(batch.layout.col[0, position]))))
    best.sort(key=lambda item: -item[0])
    assert top.sample_ids == [item[1] for item in best[:3]]
    assert top.patches == [item[2] for item in best[:3]]
    np.testing.assert_allclose(top.values.numpy(), [item[0] for item in best[:3]], rtol=1e-5)
    heat = top.heatmaps[0]
    assert heat.shape == (64, 64) and np.isclose(np.nanmax(heat), top.values[0], rtol=1e-5)
    x0, y0, x1, y1 = top.boxes[0]
    assert x1 > x0 and y1 > y0
    assert np.isclose(heat[int(y0) + 1, int(x0) + 1], top.values[0], rtol=1e-5)  # the box holds the peak
    with pytest.raises(mmlens.MmlensError):
        top_activations(tiny_llava, samples, "vision.L0.neurons", 0, progress=False)


def test_figures_render(top):
    chosen = NeuronSet(["lm.L0.neurons", "lm.L1.neurons", "lm.L1.neurons"], torch.tensor([1, 2, 3]),
                       torch.zeros(3), ["image", "image", "text"])
    labels, counts = chosen.depth_counts(2)
    assert labels == ["image", "text"] and counts.tolist() == [[1, 1], [0, 1]]
    figure = depth_figure(counts, labels, "depth")
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    assert heights == [0.5, 0.5, 0.0, 1.0]
    buffer = io.BytesIO()
    top_activations_figure(top).savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_neurons_command_writes_a_reloadable_set_figures_and_json(tmp_path, capsys):
    app = typer.Typer()
    app.command()(neurons)
    app(["--model", "tiny-llava", "--out", str(tmp_path), "--samples", "2", "--ratio", "0.05", "--budget", "layer",
         "--score", "0.5*mean+0.5*attn_mean", "--top", "2", "--json"], standalone_mode=False)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["selected"] == {"image": 13, "text": 13, "special": 13}
    assert sum(summary["depth"]["image"]) == 13
    loaded = load_neuron_set(tmp_path / "neurons_modality")
    assert len(loaded) == 39 and loaded.metadata["budget"] == "layer"
    for name in summary["files"]:
        assert (tmp_path / name).is_file(), name
