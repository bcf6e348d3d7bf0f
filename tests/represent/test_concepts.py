"""CAV and TCAV: the logistic boundary, the score, the significance test, activations and gradients on a real model."""

import numpy as np
import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.represent.concepts import (EMBED, MIN_CONCEPT_SAMPLES, activations, gradients, object_patches,
                                       significance, site_of, tcav, tcav_score, train_cav)


@pytest.fixture(scope="module")
def shapes_llava() -> mmlens.Model:
    return mmlens.load("shapes-llava")


def _sets(seed: int = 0, n: int = 30, width: int = 6):
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(width)
    direction[0] = 1.0
    concept = torch.randn(n, width, generator=g) + 3 * direction
    randoms = [torch.randn(n, width, generator=g) for _ in range(11)]
    return direction, concept, randoms


def test_cav_finds_the_separating_direction():
    direction, concept, randoms = _sets()
    cav = train_cav(concept, randoms[0])
    assert cav.accuracy > 0.9
    assert float(cav.vector @ direction) > 0.9
    assert abs(float(cav.vector.norm()) - 1) < 1e-5


def test_tcav_is_significant_for_a_real_concept_and_not_for_a_random_one():
    direction, concept, randoms = _sets()
    g = torch.Generator().manual_seed(5)
    grads = torch.randn(40, 6, generator=g) * 0.3 + direction  # the target rises along the concept
    result = tcav(concept, randoms, grads)
    assert result.score > 0.95 and result.significant
    assert len(result.scores) == len(result.random_scores) == 10
    _, _, more = _sets(seed=3)
    extra = torch.randn(30, 6, generator=torch.Generator().manual_seed(9))
    random_concept = tcav(extra, more, grads)  # a concept drawn like the random sets
    assert not random_concept.significant


def test_score_and_significance_by_hand():
    assert tcav_score(torch.tensor([[1.0], [-1.0], [3.0], [2.0]]), torch.tensor([1.0])) == 0.75
    assert significance([0.9, 0.91, 0.95], [0.2, 0.5, 0.4])[1]
    assert not significance([0.5, 0.4, 0.6], [0.45, 0.55, 0.5])[1]


def test_small_concept_sets_and_too_few_random_sets_get_one_line():
    _, concept, randoms = _sets()
    with pytest.raises(MmlensError, match=f"at least {MIN_CONCEPT_SAMPLES}"):
        train_cav(concept[:MIN_CONCEPT_SAMPLES - 1], randoms[0])
    with pytest.raises(MmlensError, match="random sets"):
        tcav(concept, randoms[:5], torch.randn(4, 6))
    with pytest.raises(MmlensError, match="width"):
        train_cav(concept, randoms[0][:, :3])


def test_object_patches_cover_the_object():
    s = make_sample("test", 0)
    for obj in s.objects:
        patches = object_patches(obj)
        rows, cols = np.asarray(patches) // 8, np.asarray(patches) % 8
        x0, y0, x1, y1 = obj.box
        assert all(x0 - 8 < 8 * c < x1 and y0 - 8 < 8 * r < y1 for r, c in zip(rows, cols))


def test_activations_and_gradients_on_shapes_llava(shapes_llava):
    samples = [make_sample("val", i, "colour") for i in range(4)]
    where = [object_patches(s.objects[s.target_objects[0]]) for s in samples]
    acts = activations(shapes_llava, samples, [EMBED, 1], where=where, batch_size=3)
    assert acts[1].shape == (4, 128) and acts[EMBED].shape == (4, 128)
    last = activations(shapes_llava, samples, [1])
    assert not torch.allclose(last[1], acts[1])
    grads = gradients(shapes_llava, samples, [1, 3], samples[0].answer)
    assert grads[3].shape == (4, 128) and grads[3].abs().sum() > 0
    image_grads = gradients(shapes_llava, samples, [3], "red", where="image")
    assert image_grads[3].abs().max() == 0  # the last layer's image positions cannot reach the answer
    assert site_of(EMBED) == "lm.embed"
    with pytest.raises(MmlensError, match="position lists"):
        activations(shapes_llava, samples, [1], where=where[:2])
    with pytest.raises(MmlensError, match="tokens"):
        gradients(shapes_llava, samples, [1], "red blue")
