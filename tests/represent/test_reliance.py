"""Modality reliance per layer on shapes-llava: the answer needs image tokens early and not at the last layer."""

import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.represent.reliance import _masks, modality_reliance


@pytest.fixture(scope="module")
def shapes_llava() -> mmlens.Model:
    return mmlens.load("shapes-llava")


def test_image_tokens_matter_at_the_input_and_not_after_the_last_layer(shapes_llava):
    samples = [make_sample("val", i, "colour") for i in range(12)]
    result = modality_reliance(shapes_llava, samples, batch_size=5)
    assert result.layers == [-1, 0, 1, 2, 3] and result.base_probability > 0.9
    assert result.image_drop[0] > 0.3  # the colour lives in the image tokens at the input
    assert abs(result.image_drop[-1]) < 1e-4 and abs(result.text_drop[-1]) < 1e-4  # the last layer reaches nothing
    assert result.summary()["n_samples"] == 12


def test_masks_leave_the_answer_position_and_padding_out(shapes_llava):
    samples = [make_sample("val", 0, "colour"), make_sample("val", 0, "count")]
    batch = shapes_llava.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    image, text = _masks(batch)
    assert image.sum(1).tolist() == [64, 64]
    assert not text[:, -1].any() and (text & image).sum() == 0
    assert (text.sum(1) == torch.tensor([len(s.prompt.split()) - 2 for s in samples])).all()


def test_no_answer_or_no_images_gets_one_line(shapes_llava):
    s = make_sample("val", 0)
    s.answer = None
    with pytest.raises(MmlensError, match="no answer"):
        modality_reliance(shapes_llava, [s])
    with pytest.raises(MmlensError, match="no samples"):
        modality_reliance(shapes_llava, [])
