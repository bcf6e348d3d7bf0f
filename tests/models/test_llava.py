"""LLaVA-1.5 layout, proved by perturbing pixels (see mmlens.models.verify)."""

import dataclasses

import numpy as np
import pytest
import torch

from mmlens.box import Box
from mmlens.layout import Modality, View
from mmlens.models.llava import processed_box
from mmlens.models.verify import verify_layout
from tests.conftest import noise_image


@pytest.mark.parametrize("size", [(64, 64), (120, 200), (200, 90)])
def test_layout_matches_what_the_vision_tower_sees(tiny_llava, size):
    report = verify_layout(tiny_llava, noise_image(*size))
    assert report.ok, report.failures()


def test_verification_catches_a_transposed_grid(tiny_llava, monkeypatch):
    real_layout = type(tiny_llava.adapter).layout

    def transposed(self, inputs, sizes, processor):
        layout = real_layout(self, inputs, sizes, processor)
        layout.row, layout.col = layout.col.clone(), layout.row.clone()
        return layout

    monkeypatch.setattr(type(tiny_llava.adapter), "layout", transposed)
    assert not verify_layout(tiny_llava, noise_image(64, 64)).ok


def test_verification_catches_a_wrong_crop_box(tiny_llava, monkeypatch):
    real_layout = type(tiny_llava.adapter).layout

    def uncropped(self, inputs, sizes, processor):
        layout = real_layout(self, inputs, sizes, processor)
        for row in layout.images:
            for i, info in enumerate(row):
                row[i] = dataclasses.replace(info, views=[View(v.rows, v.cols, Box(0, 0, info.size[1], info.size[0])) for v in info.views])
        return layout

    monkeypatch.setattr(type(tiny_llava.adapter), "layout", uncropped)
    assert not verify_layout(tiny_llava, noise_image(120, 200)).ok


def test_processed_box_for_pad_resize_and_crop():
    class Processor:
        do_pad, do_resize, do_center_crop = True, True, False
        size = {"height": 32, "width": 32}

    box = processed_box((50, 100), Processor())  # 50 high, 100 wide
    assert isinstance(box, Box) and box == Box(0.0, -25.0, 100.0, 75.0)  # padded to 100x100, image centred


def test_two_images_and_heatmaps(tiny_llava):
    images = [noise_image(64, 64, 1), noise_image(40, 80, 2)]
    batch = tiny_llava.prepare("<image> and <image> same ?", images)
    layout = batch.layout
    assert [len(layout.image_positions(0, image=i)) for i in range(2)] == [16, 16]
    assert layout.image_positions(0, image=0).max() < layout.image_positions(0, image=1).min()
    maps = layout.to_heatmaps(torch.rand(batch.input_ids.shape))[0]
    assert [m.shape for m in maps] == [(64, 64), (40, 80)]
    assert not np.isnan(maps[0]).any()
    assert (layout.mask(Modality.IMAGE)[0] == (batch.input_ids[0] == tiny_llava.hf.config.image_token_id)).all()
