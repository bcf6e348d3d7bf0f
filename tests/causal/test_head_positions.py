"""Position-restricted head edits: the head changes only at P, the model only through P; masks land on the right patches."""

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.box import Box
from mmlens.causal.attribution_patching import attribution_patching
from mmlens.causal.head_positions import at_positions, describe_where, element_rows, head_mask
from mmlens.causal.heads import knockout_heads, patch_heads
from mmlens.hooks import capture, intervene
from mmlens.layout import Modality


def _run(model, batch, edits, sites):
    with torch.no_grad(), intervene(model, edits), capture(model, sites) as captured:
        logits = model.forward(batch, use_cache=False).logits[:, -1].float()
    return logits, captured


@pytest.mark.parametrize("where", ["image", "last", [2, 5]])
def test_an_lm_head_edited_at_p_changes_only_at_p(tiny_llava, clean, where):
    mask = head_mask(tiny_llava, clean, where)
    sites = ["lm.L0.head1", "lm.L0.head0", "lm.L0.attn"]
    base, before = _run(tiny_llava, clean, {}, sites)
    logits, after = _run(tiny_llava, clean, {"lm.L0.head1": at_positions(torch.zeros_like, mask)}, sites)
    head = after["lm.L0.head1"]
    assert torch.equal(head[~mask], before["lm.L0.head1"][~mask])  # untouched away from P
    assert (head[mask] == 0).all()
    assert torch.equal(after["lm.L0.head0"], before["lm.L0.head0"])  # the other heads too
    # The output projection works per position: the layer's attention output moves at P only.
    moved = (after["lm.L0.attn"] - before["lm.L0.attn"]).abs().amax(-1) > 0
    assert torch.equal(moved, mask)
    assert not torch.allclose(logits, base)


def test_an_edit_at_every_position_is_the_plain_edit_and_at_none_changes_nothing(tiny_llava, clean):
    everywhere = head_mask(tiny_llava, clean, "all")
    plain, _ = _run(tiny_llava, clean, {"lm.L1.head2": torch.zeros_like}, [])
    restricted, _ = _run(tiny_llava, clean, {"lm.L1.head2": at_positions(torch.zeros_like, everywhere)}, [])
    torch.testing.assert_close(restricted, plain)
    base, _ = _run(tiny_llava, clean, {}, [])
    nowhere, _ = _run(tiny_llava, clean, {"lm.L1.head2": at_positions(torch.zeros_like, ~everywhere)}, [])
    torch.testing.assert_close(nowhere, base)


def test_grids_at_positions_equal_one_forward_per_head(tiny_llava, clean):
    mask = head_mask(tiny_llava, clean, "image")
    grid = knockout_heads(tiny_llava, clean, positions="image", heads=["L0.H3", "L1.H1"])
    for layer, head in [(0, 3), (1, 1)]:
        logits, _ = _run(tiny_llava, clean, {f"lm.L{layer}.head{head}": at_positions(torch.zeros_like, mask)}, [])
        expected = torch.softmax(logits, -1).gather(-1, grid.answer_ids[:, None])[:, 0]
        torch.testing.assert_close(grid.edited[:, layer, head], expected, rtol=1e-4, atol=1e-6)
    assert grid.settings["positions"] == "image"
    # Patching only where clean and corrupted runs agree (text: noise on the image embeddings) restores nothing.
    text = patch_heads(tiny_llava, clean, corrupt="embeddings", positions=[0], metric="logit")
    torch.testing.assert_close(text.edited, text.corrupt[:, None, None].expand_as(text.edited), rtol=1e-4, atol=1e-5)


def test_a_vision_head_edited_in_a_box_changes_only_there(tiny_llava, clean):
    box = Box(0, 0, 20, 20)
    mask = head_mask(tiny_llava, clean, box, tower="vision")
    assert mask.shape == (2, 17) and not mask[:, 0].any()  # CLS is no patch
    sites = ["vision.L1.head0", "vision.L1.head1", "vision.L1.attn"]
    base, before = _run(tiny_llava, clean, {}, sites)
    logits, after = _run(tiny_llava, clean, {"vision.L1.head0": at_positions(torch.zeros_like, mask)}, sites)
    assert torch.equal(after["vision.L1.head0"][~mask], before["vision.L1.head0"][~mask])
    assert torch.equal(after["vision.L1.head1"], before["vision.L1.head1"])
    moved = (after["vision.L1.attn"] - before["vision.L1.attn"]).abs().amax(-1) > 0
    assert torch.equal(moved, mask)
    grid = knockout_heads(tiny_llava, clean, tower="vision", positions=box, heads=["L1.H0"])
    expected = torch.softmax(logits, -1).gather(-1, grid.answer_ids[:, None])[:, 0]
    torch.testing.assert_close(grid.edited[:, 1, 0], expected, rtol=1e-4, atol=1e-6)


def _changed_tokens(model, prompt, image, box):
    """Tower patches whose pixels change when the image changes inside ``box`` only (patch embeddings are local)."""
    other = np.asarray(image).copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    other[y0:y1, x0:x1] = 255 - other[y0:y1, x0:x1]
    batches = [model.prepare(prompt, [im]) for im in (image, Image.fromarray(other))]
    with torch.no_grad(), capture(model, "vision.L0.head0") as captured:
        model.forward(batches[0])
    return batches[0], captured["vision.L0.head0"].shape[:-1], batches


@pytest.mark.parametrize("name,size,box", [("tiny-qwen2-vl", 56, Box(14, 0, 28, 14)),
                                           ("tiny-llava", 32, Box(8, 16, 16, 24))])
def test_a_box_names_the_tower_patches_whose_pixels_lie_in_it(name, size, box, noise):
    model = mmlens.load(name)
    image = noise(size, size, 3)
    batch, shape, (one, two) = _changed_tokens(model, "<image> what colour ?", image, box)
    mask = head_mask(model, batch, box, tower="vision", shape=shape)
    assert mask.sum() == 1  # the box is one tower patch
    # Which tower token it is, from the pixels themselves: Qwen2-VL's packed rows are tower tokens in tower order;
    # CLIP's token 1 + r * cols + c is patch (r, c).
    pixels = [b.inputs["pixel_values"] for b in (one, two)]
    if name == "tiny-qwen2-vl":
        changed = (pixels[0] != pixels[1]).any(-1)
    else:
        patch = model.hf.config.vision_config.patch_size
        diff = (pixels[0] != pixels[1]).any(1)[0]  # (H, W)
        cells = diff.view(diff.shape[0] // patch, patch, -1, patch).any(3).any(1).flatten()
        changed = torch.cat([torch.zeros(1, dtype=torch.bool), cells])[None]
    assert torch.equal(mask, changed.view(mask.shape))


def test_rows_of_tower_positions(tiny_llava, clean, noise):
    assert element_rows(tiny_llava, clean, "vision", (2, 17))[:, 0].tolist() == [0, 1]
    qwen = mmlens.load("tiny-qwen2-vl")
    batch = qwen.prepare(["<image> a", "<image> b"], [[noise(56, 56, 1)], [noise(56, 56, 2)]])
    assert element_rows(qwen, batch, "vision", (32,)).tolist() == [0] * 16 + [1] * 16


def test_attribution_at_positions_sums_to_the_whole(tiny_llava, clean):
    kwargs = dict(corrupt="noise", metric="logit", tower="vision")
    whole = attribution_patching(tiny_llava, clean, **kwargs)
    patches = attribution_patching(tiny_llava, clean, positions="patches", **kwargs)
    cls = attribution_patching(tiny_llava, clean, positions=[0], **kwargs)
    torch.testing.assert_close(patches.edited + cls.edited - whole.corrupt[:, None, None], whole.edited)


def test_bad_positions_are_one_line(tiny_llava, clean):
    for call, match in [
        (lambda: head_mask(tiny_llava, clean, "patches"), "unknown positions 'patches' for lm heads"),
        (lambda: head_mask(tiny_llava, clean, [99]), "out of range"),
        (lambda: head_mask(tiny_llava, clean, Box(100, 100, 120, 120)), "covers no image patch"),
        (lambda: head_mask(tiny_llava, clean, torch.ones(3, 3, dtype=torch.bool)), "position mask of shape"),
        (lambda: knockout_heads(tiny_llava, clean, positions="image tokens"), "unknown positions"),
        (lambda: at_positions(torch.zeros_like, torch.ones(5, dtype=torch.bool))(torch.ones(2, 3, 4)), "does not fit"),
    ]:
        with pytest.raises(mmlens.MmlensError, match=match) as error:
            call()
        assert "\n" not in str(error.value)
    assert describe_where(Box(1, 2, 3, 4)) == "box 1,2,3,4"
    assert head_mask(tiny_llava, clean, "text").sum() == clean.layout.mask(Modality.TEXT).sum()


def test_llava_next_tiles_are_tower_sequences_of_their_row_and_a_box_lands_in_each_view(noise):
    # 64x64: a base view (4x4 patches of 16 px) and 2x2 tiles (4x4 patches of 8 px each), CLS first in each sequence.
    model = mmlens.load("tiny-llava-next")
    batch = model.prepare(["<image> a ?", "<image> b ?"], [[noise(64, 64, 3)], [noise(16, 64, 1)]])
    shape = (5 + 3, 17)  # row 0: base + 4 tiles; row 1: base + 2 tiles
    assert element_rows(model, batch, "vision", shape)[:, 0].tolist() == [0] * 5 + [1] * 3
    one = model.prepare("<image> a ?", [noise(64, 64, 3)])
    mask = head_mask(model, one, Box(40, 8, 48, 16), tower="vision", shape=(5, 17))
    expected = torch.zeros(5, 17, dtype=torch.bool)
    expected[0, 1 + 0 * 4 + 2] = True  # base view: patch (0, 2) covers pixels 32-48 x 0-16
    expected[2, 1 + 1 * 4 + 1] = True  # the top-right tile (sequence 2), its patch (1, 1)
    assert torch.equal(mask, expected)
    patches = head_mask(model, one, "patches", tower="vision", shape=(5, 17))
    assert patches.sum() == 5 * 16 and not patches[:, 0].any()
