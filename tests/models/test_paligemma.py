"""PaliGemma adapter: an image-token prefix, one square grid per image, bidirectional prefix attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import mmlens
from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.layout import Modality, TokenLayout
from mmlens.model import Model
from mmlens.models.adapter import Adapter
from mmlens.models.paligemma import PALIGEMMA, PaliGemmaAdapter
from mmlens.models.registry import adapter_for_model_type
from mmlens.models.verify import verify_layout
from tests.conftest import noise_image

PROMPT = "<image> what colour is the circle ?"
SIZES = {"square": (64, 64), "wide": (200, 120), "tall": (120, 200)}  # (width, height)
N = 16  # tiny image_seq_length: a 4 x 4 grid



@pytest.fixture(scope="module")
def model() -> Model:
    return mmlens.load("tiny-paligemma")


@dataclass(frozen=True)
class _Transposed(PaliGemmaAdapter):
    """A plausible but wrong layout: the patch grid read column-major."""

    def layout(self, inputs: dict[str, Any], image_sizes: list, processor: Any) -> TokenLayout:
        layout = super().layout(inputs, image_sizes, processor)
        layout.row, layout.col = layout.col.clone(), layout.row.clone()
        return layout


def test_registered_and_paths_resolve(model: Model) -> None:
    assert adapter_for_model_type("paligemma") is PALIGEMMA
    assert model.n_layers == 2 and model.n_vision_layers == 2
    for path in (PALIGEMMA.final_norm, PALIGEMMA.projector, PALIGEMMA.embed_tokens):
        model.module(path)


def test_format_prompt_moves_slots_to_the_front() -> None:
    assert PALIGEMMA.format_prompt(PROMPT, 1) == "<image>what colour is the circle ?"
    assert PALIGEMMA.format_prompt("compare <image> and <image>", 2) == "<image><image>compare and"
    with pytest.raises(MmlensError, match="no image slot"):
        PALIGEMMA.format_prompt("what colour is the circle ?", 1)
    with pytest.raises(MmlensError, match="only 1"):
        PALIGEMMA.format_prompt(PROMPT, 2)
    with pytest.raises(MmlensError, match="needs an image"):
        PALIGEMMA.format_prompt("what colour is the circle ?", 0)


def test_tokens_are_the_canonical_prefix(model: Model) -> None:
    image = noise_image(64, 64)
    batch = model.prepare(PROMPT, [image])
    tokens = model.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    assert tokens == ["<image>"] * N + ["<bos>", "what", "colour", "is", "the", "circle", "?", "\n"]
    # The same ids the processor builds itself from text without a slot (its documented form).
    own = model.processor(images=[image], text=["what colour is the circle ?"], return_tensors="pt")
    assert torch.equal(own["input_ids"], batch.input_ids)
    layout = batch.layout
    assert layout.image_positions(0).tolist() == list(range(N))
    assert layout.modality[0, N] == int(Modality.SPECIAL)  # <bos>
    assert (layout.modality[0, N + 1:] == int(Modality.TEXT)).all()  # the prompt and its newline
    assert (batch.inputs["token_type_ids"] == 0).all()  # all prefix: no suffix given


def test_adapter_drops_labels_and_marks_appended_tokens_as_suffix(model: Model) -> None:
    batch = model.prepare(PROMPT, [noise_image(64, 64)])
    assert "labels" in model.processor(images=[noise_image(64, 64)], text=["what ?"], return_tensors="pt")
    assert "labels" not in batch.inputs  # all -100 labels would make every forward compute a NaN loss
    red = model.tokenizer("red", add_special_tokens=False)["input_ids"]
    forced = model.append_tokens(batch, torch.tensor([red]))
    assert forced.inputs["token_type_ids"][0, -len(red):].tolist() == [1] * len(red)  # the causal suffix
    assert (forced.inputs["token_type_ids"][0, :-len(red)] == 0).all()
    base = Adapter("x", ("x",), "model.layers", "model.norm")
    assert base.appended_value("token_type_ids") == 0 and base.model_inputs({"labels": 1}) == {"labels": 1}


@pytest.mark.parametrize("name", list(SIZES))
def test_verify_layout(model: Model, name: str) -> None:
    width, height = SIZES[name]
    layout = model.prepare(PROMPT, [noise_image(height, width)]).layout
    (view,) = layout.images[0][0].views
    assert (view.rows, view.cols, view.box) == (4, 4, Box(0.0, 0.0, float(width), float(height)))
    report = verify_layout(model, noise_image(height, width, seed=1), prompt=PROMPT)
    assert report.ok, report.failures()


def test_verify_layout_catches_a_transposed_grid(model: Model) -> None:
    broken = Model(model.hf, model.processor, _Transposed(**vars(PALIGEMMA)), "broken")
    assert not verify_layout(broken, noise_image(120, 200, seed=1), prompt=PROMPT).ok


def test_two_images_split_one_run(model: Model) -> None:
    images = [noise_image(120, 200), noise_image(200, 120, seed=2)]
    layout = model.prepare("<image> <image> compare them", images).layout
    assert layout.image_positions(0, image=0).tolist() == list(range(N))
    assert layout.image_positions(0, image=1).tolist() == list(range(N, 2 * N))
    maps = layout.to_heatmaps(torch.arange(layout.seq_len, dtype=torch.float32))
    assert [m.shape for m in maps[0]] == [(120, 200), (200, 120)]
    assert maps[0][1][0, 0] == N and maps[0][1][-1, -1] == 2 * N - 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_has_the_right_layout_per_row(model: Model, side: str) -> None:
    prompts = [PROMPT, "<image> is the circle on the left of the square ?"]
    images = [noise_image(120, 200), noise_image(200, 120, seed=3)]
    batch = model.prepare(prompts, [[images[0]], [images[1]]], padding_side=side)
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        alone = model.prepare(prompt, [image]).layout
        mask = batch.inputs["attention_mask"][row].bool()
        assert batch.layout.images[row] == alone.images[0]
        for field in ("modality", "image", "view", "row", "col"):
            assert torch.equal(getattr(batch.layout, field)[row][mask], getattr(alone, field)[0])
        assert (batch.layout.modality[row][~mask] == int(Modality.PAD)).all()
    padded = ~batch.inputs["attention_mask"][0].bool()
    assert padded.any() and bool(padded[0] if side == "left" else padded[-1])


def test_heatmap_is_one_array_per_image_at_original_size(model: Model) -> None:
    layout = model.prepare(PROMPT, [noise_image(120, 200)]).layout
    scores = torch.zeros(layout.seq_len)
    scores[layout.image_positions(0)[5]] = 1.0  # row 1, col 1 of the 4 x 4 grid
    (heatmap,) = layout.to_heatmaps(scores)[0]
    assert heatmap.shape == (120, 200)
    lit = np.zeros((120, 200), dtype=bool)
    lit[30:60, 50:100] = True
    assert np.allclose(heatmap[lit], 1.0) and np.allclose(heatmap[~lit], 0.0)


def test_prefix_attends_bidirectionally(model: Model) -> None:
    """Image tokens see the prompt after them: attention is not causal over the prefix."""
    batch = model.prepare(PROMPT, [noise_image(64, 64)])
    with torch.no_grad(), capture(model, "lm.L0.attn_probs") as captured:
        model.forward(batch)
    probs = captured["lm.L0.attn_probs"][0]  # heads x query x key
    assert probs[:, 0, N + 1:].sum() > 0  # the first image token attends to later prompt tokens
