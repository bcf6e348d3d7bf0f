"""The neurons job: what ``mmlens neurons`` and the web's Neurons page write and return."""

import json
import math

import pytest

from mmlens.data.shapes import QUESTION_TYPES
from mmlens.errors import MmlensError
from mmlens.neurons.modality import parse_weights
from mmlens.report.files import load_neuron_set
from mmlens.runner.neurons import DOMAIN_TOP, STRONGEST, UNSPECIFIC, find_neurons, top_patches


@pytest.fixture(scope="module")
def found(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("neurons")
    summary = find_neurons(tiny_llava, folder, samples=2, ratio=0.05, budget="modality",
                           weights=parse_weights("mean+max"), exclusive=False, domains=True, top=2)
    return folder, summary


def test_every_listed_file_is_written_and_neurons_json_is_the_summary(found):
    folder, summary = found
    for name in summary["files"]:
        assert (folder / name).is_file(), name
    assert json.loads((folder / "neurons.json").read_text())["selected"] == summary["selected"]
    chosen = load_neuron_set(folder / "neurons_modality")
    assert len(chosen) == sum(summary["selected"].values())


def test_strongest_are_each_modalitys_highest_scores_in_order(found):
    folder, summary = found
    chosen = load_neuron_set(folder / "neurons_modality")
    for label, listed in summary["strongest"].items():
        scores = sorted(chosen.where(label=label).scores.tolist(), reverse=True)
        assert 0 < len(listed) <= STRONGEST
        assert [row["score"] for row in listed] == pytest.approx(scores[:len(listed)], abs=1e-4)


def test_domain_neurons_are_the_lowest_entropies_of_each_question_type(found):
    folder, summary = found
    assert set(summary["domain_neurons"]) == set(QUESTION_TYPES) == set(summary["domains"])
    domain = load_neuron_set(folder / "neurons_domain")
    for name, listed in summary["domain_neurons"].items():
        entropies = [row["entropy"] for row in listed]
        assert len(listed) <= DOMAIN_TOP and entropies == sorted(entropies)
        if listed:
            assert entropies[0] == pytest.approx(float(domain.where(label=name).scores.min()), abs=1e-4)


def test_unspecific_domain_neurons_are_said_to_be_so(found):
    folder, summary = found
    ceiling = math.log(len(QUESTION_TYPES))
    assert summary["domain_entropy_max"] == pytest.approx(ceiling, abs=1e-4)
    lowest = float(load_neuron_set(folder / "neurons_domain").scores.min())
    assert ("domain_warning" in summary) == (lowest >= UNSPECIFIC * ceiling)
    if "domain_warning" in summary:
        assert f"{lowest:.3f} of a possible {ceiling:.3f}" in summary["domain_warning"]


def test_top_image_neuron_is_the_best_image_neuron_and_its_patches_are_ranked(tiny_llava, found):
    folder, summary = found
    image = load_neuron_set(folder / "neurons_modality").where(label="image")
    best = int(image.scores.argmax())
    top = summary["top_image_neuron"]
    assert (top["site"], top["index"]) == (image.sites[best], int(image.indices[best]))
    assert len(top["patches"]) == len(top["samples"]) == 2 and top["values"] == sorted(top["values"], reverse=True)
    again, figure = top_patches(tiny_llava, top["site"], top["index"], samples=2, top=2)
    assert again["values"] == top["values"] and figure.axes


def test_top_patches_refuse_a_site_that_is_no_decoder_neuron_site(tiny_llava):
    with pytest.raises(MmlensError, match="no decoder neuron site"):
        top_patches(tiny_llava, "vision.L0.neurons", 0, samples=1, top=1)
