"""Decoder-input baselines: the mean image-token embedding of each image, or zeros, at image tokens only."""

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.readout import Baseline, embedding_baseline, image_baseline

# BOS, two tokens of image 0, one text token, two tokens of image 1
LAYOUT = TokenLayout.build(
    seq_len=6,
    images=[[ImageInfo((2, 2), [View(1, 2, (0, 0, 2, 2))]), ImageInfo((2, 2), [View(1, 2, (0, 0, 2, 2))])]],
    image_tokens=[[(1, 0, 0, 0, 0), (2, 0, 0, 0, 1), (4, 1, 0, 0, 0), (5, 1, 0, 0, 1)]],
    special=[[0]],
)
EMBEDS = torch.tensor([[[9.0], [1.0], [3.0], [7.0], [10.0], [20.0]]])


def test_mean_baseline_is_per_image():
    assert image_baseline(LAYOUT, 0, EMBEDS)[0, :, 0].tolist() == [9.0, 2.0, 2.0, 7.0, 15.0, 15.0]
    assert torch.equal(embedding_baseline(LAYOUT, 0, EMBEDS, "mean"), image_baseline(LAYOUT, 0, EMBEDS))


def test_zeros_baseline_and_pixel_kinds():
    assert embedding_baseline(LAYOUT, 0, EMBEDS, Baseline.ZEROS)[0, :, 0].tolist() == [9.0, 0, 0, 7.0, 0, 0]
    assert Baseline.BLUR.pixel and not Baseline.MEAN.pixel
    with pytest.raises(MmlensError):
        embedding_baseline(LAYOUT, 0, EMBEDS, "blur")
