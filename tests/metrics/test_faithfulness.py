"""Deletion and insertion curves on tiny-llava: endpoints, ordering, batching, pixel baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens.attribution.occlusion import occlusion
from mmlens.budget import row_bytes
from mmlens.errors import MmlensError
from mmlens.metrics import (
    FaithfulnessCurves,
    auc,
    deletion_insertion,
    deletion_insertion_batch,
    removal_counts,
    removal_order,
)
from mmlens.metrics import faithfulness
from mmlens.models.decoder import record_decoder_call
from mmlens.readout import Targets, build_targets, hidden_images, image_baseline
from tests.conftest import noise_image

PROMPT = "<image> what colour is the circle ?"


@pytest.fixture(scope="module")
def targets(tiny_llava: mmlens.Model) -> Targets:
    batch = tiny_llava.prepare(PROMPT, [noise_image(64, 80)])  # 80 wide: a centre crop, NaN margins
    return build_targets(tiny_llava, batch, answer="blue circle", score="prob")


@pytest.fixture(scope="module")
def effect(tiny_llava: mmlens.Model, targets: Targets) -> torch.Tensor:
    """True single-token occlusion effect on the answer probability, ``(targets, seq)``."""
    return occlusion(tiny_llava, targets).scores[0]


def probability(model: mmlens.Model, targets: Targets, embeds: torch.Tensor, target: int) -> float:
    """One variant, one replay: the slow reference."""
    call = record_decoder_call(model, targets.batch)
    with torch.no_grad():
        logits = call.logits(embeds, positions=[int(targets.positions[target])])[0, 0]
    return float(torch.softmax(logits.float(), -1)[targets.tokens[0, target]])


def forward_probability(model: mmlens.Model, targets: Targets, target: int) -> float:
    with torch.no_grad():
        logits = model.forward(targets.batch).logits[0, int(targets.positions[target])]
    return float(torch.softmax(logits.float(), -1)[targets.tokens[0, target]])


def test_helpers() -> None:
    assert removal_counts(16, 20)[:4] == [0, 1, 2, 2] and removal_counts(16, 20)[-1] == 16
    assert auc(np.linspace(0, 1, 11), np.ones(11)) == pytest.approx(1.0)
    assert auc(np.linspace(0, 1, 3), np.array([0.0, 1.0, 0.0])) == pytest.approx(0.5)


def test_removal_order(targets: Targets) -> None:
    layout = targets.batch.layout
    image = layout.image_positions(0).tolist()
    scores = torch.zeros(layout.seq_len)
    scores[image[3]], scores[image[5]], scores[image[0]] = 2.0, 1.0, float("nan")
    scores[image[-1] + 1] = 99.0  # a text token: never ranked
    order = removal_order(layout, 0, scores)
    assert sorted(order) == image
    assert order[:2] == [image[3], image[5]] and order[-1] == image[0]  # NaN last
    assert order[2:-1] == [p for p in image if p not in (image[0], image[3], image[5])]  # ties keep prompt order


@pytest.mark.parametrize("target", [0, 1])
def test_endpoints(tiny_llava: mmlens.Model, targets: Targets, effect: torch.Tensor, target: int) -> None:
    curves = deletion_insertion(tiny_llava, targets, effect[target], target=target)
    call = record_decoder_call(tiny_llava, targets.batch)
    original = forward_probability(tiny_llava, targets, target)
    all_baseline = probability(tiny_llava, targets, image_baseline(targets.batch.layout, 0, call.embeds), target)
    assert curves.fractions[0] == 0.0 and curves.fractions[-1] == 1.0 and len(curves.fractions) == 21
    assert curves.deletion[0] == pytest.approx(original, rel=1e-4)
    assert curves.insertion[-1] == pytest.approx(original, rel=1e-4)
    assert curves.deletion[-1] == pytest.approx(all_baseline, rel=1e-4)
    assert curves.insertion[0] == pytest.approx(all_baseline, rel=1e-4)
    assert curves.deletion_auc == pytest.approx(auc(curves.fractions, curves.deletion))


def test_zeros_baseline_endpoint(tiny_llava: mmlens.Model, targets: Targets, effect: torch.Tensor) -> None:
    curves = deletion_insertion(tiny_llava, targets, effect[0], steps=4, baseline="zeros")
    embeds = record_decoder_call(tiny_llava, targets.batch).embeds.clone()
    embeds[0, targets.batch.layout.image_positions(0)] = 0
    assert curves.deletion[-1] == pytest.approx(probability(tiny_llava, targets, embeds, 0), rel=1e-4)
    assert curves.insertion[0] == pytest.approx(curves.deletion[-1], rel=1e-5)


def test_true_ranking_deletes_faster_at_first_step(tiny_llava: mmlens.Model, targets: Targets,
                                                   effect: torch.Tensor) -> None:
    # By construction: step 1 (1 of 16 tokens) removes the single token whose occlusion hurts most.
    good = deletion_insertion(tiny_llava, targets, effect[0])
    reverse = deletion_insertion(tiny_llava, targets, -effect[0])
    image = targets.batch.layout.image_positions(0)
    assert good.deletion[1] == pytest.approx(good.deletion[0] - effect[0, image].max().item(), abs=1e-6)
    assert good.deletion[1] < reverse.deletion[1]


def test_auc_ordering_on_a_one_token_score(monkeypatch: pytest.MonkeyPatch, tiny_llava: mmlens.Model,
                                           targets: Targets) -> None:
    """Synthetic: the answer survives exactly while one key token is visible."""
    image = targets.batch.layout.image_positions(0).tolist()
    key = image[6]

    def fake(model, targets, hide, *args, **kwargs) -> torch.Tensor:
        return (~hide[:, key]).float()

    monkeypatch.setattr(faithfulness, "answer_probabilities", fake)
    scores = torch.zeros(targets.batch.layout.seq_len)
    scores[image] = torch.arange(len(image), 0, -1).float()
    good_scores, bad_scores = scores.clone(), scores.clone()
    good_scores[key], bad_scores[key] = 100.0, -100.0
    good = deletion_insertion(tiny_llava, targets, good_scores)
    bad = deletion_insertion(tiny_llava, targets, bad_scores)
    assert good.deletion_auc == pytest.approx(0.025) and bad.deletion_auc == pytest.approx(0.975)
    assert good.insertion_auc == pytest.approx(0.975) and bad.insertion_auc == pytest.approx(0.025)


def test_batched_equals_one_variant_at_a_time(tiny_llava: mmlens.Model, targets: Targets,
                                              effect: torch.Tensor) -> None:
    five = 5 * row_bytes(tiny_llava, targets.batch.input_ids.shape[1])  # 5 variants a pass: pass edges too
    curves = deletion_insertion(tiny_llava, targets, effect[1], target=1, steps=8, memory_budget=five)
    unlimited = deletion_insertion(tiny_llava, targets, effect[1], target=1, steps=8, memory_budget="unlimited")
    np.testing.assert_allclose(curves.deletion, unlimited.deletion, rtol=1e-5)
    np.testing.assert_allclose(curves.insertion, unlimited.insertion, rtol=1e-5)
    x = record_decoder_call(tiny_llava, targets.batch).embeds
    base = image_baseline(targets.batch.layout, 0, x)
    order = removal_order(targets.batch.layout, 0, effect[1])
    for k, count in enumerate(removal_counts(len(order), 8)):
        deleted, inserted = x.clone(), base.clone()
        deleted[0, order[:count]] = base[0, order[:count]]
        inserted[0, order[:count]] = x[0, order[:count]]
        assert curves.deletion[k] == pytest.approx(probability(tiny_llava, targets, deleted, 1), rel=1e-4)
        assert curves.insertion[k] == pytest.approx(probability(tiny_llava, targets, inserted, 1), rel=1e-4)


def test_batch_rows_match_single_samples(tiny_llava: mmlens.Model) -> None:
    prompts, images = [PROMPT, "<image> colour ?"], [[noise_image(64, 64, 1)], [noise_image(64, 64, 2)]]
    batch = tiny_llava.prepare(prompts, images)  # left-padded: rows of different lengths
    targets = build_targets(tiny_llava, batch, answer=["red", "blue circle"])
    scores = occlusion(tiny_llava, targets).scores  # (batch, targets, seq)
    results = deletion_insertion_batch(tiny_llava, targets, scores, target=0, steps=4)
    assert [r.row for r in results] == [0, 1]
    assert deletion_insertion_batch(tiny_llava, targets, scores, target=1, steps=4)[0].row == 1  # row 0 has no token 1
    for row, result in enumerate(results):
        answer = ["red", "blue circle"][row]
        alone = build_targets(tiny_llava, tiny_llava.prepare(prompts[row], images[row]), answer=answer)
        single = deletion_insertion(tiny_llava, alone, occlusion(tiny_llava, alone).scores[0, 0], steps=4)
        np.testing.assert_allclose(result.deletion, single.deletion, rtol=1e-3)
        np.testing.assert_allclose(result.insertion, single.insertion, rtol=1e-3)


@pytest.mark.parametrize("baseline", ["mean_colour", "blur"])
def test_pixel_baselines(tiny_llava: mmlens.Model, targets: Targets, effect: torch.Tensor, baseline: str) -> None:
    curves = deletion_insertion(tiny_llava, targets, effect[1], target=1, steps=2, baseline=baseline)
    assert isinstance(curves, FaithfulnessCurves) and curves.baseline == baseline
    original = forward_probability(tiny_llava, targets, 1)
    assert curves.deletion[0] == pytest.approx(original, rel=1e-4)  # nothing hidden: the plain forward
    assert curves.insertion[-1] == pytest.approx(original, rel=1e-4)
    assert curves.deletion[-1] == pytest.approx(curves.insertion[0], rel=1e-5)
    one = row_bytes(tiny_llava, targets.batch.input_ids.shape[1])  # one variant a pass
    slow = deletion_insertion(tiny_llava, targets, effect[1], target=1, steps=2, baseline=baseline, memory_budget=one)
    np.testing.assert_allclose(curves.deletion, slow.deletion, rtol=1e-4)
    np.testing.assert_allclose(curves.insertion, slow.insertion, rtol=1e-4)


def test_too_small_a_budget_fails_before_any_work(tiny_llava: mmlens.Model, targets: Targets,
                                                  effect: torch.Tensor) -> None:
    with pytest.raises(MmlensError, match="too small for one row of answer probabilities: it needs at least"):
        deletion_insertion(tiny_llava, targets, effect[1], target=1, steps=2, memory_budget="1KB")


def test_hidden_images_edit_only_token_boxes(targets: Targets) -> None:
    layout, image = targets.batch.layout, targets.batch.images[0][0]
    position = layout.image_positions(0)[5].item()
    left, top, right, bottom = (int(v) for v in layout.token_boxes(0)[position][1])  # x0, y0, x1, y1
    original = np.asarray(image, dtype=np.int16)
    for baseline in ("mean_colour", "blur"):
        edited = np.asarray(hidden_images([image], layout, 0, [position], baseline)[0], dtype=np.int16)
        outside = np.ones(original.shape[:2], dtype=bool)
        outside[top:bottom, left:right] = False
        assert (edited[outside] == original[outside]).all()
        assert (edited[~outside] != original[~outside]).any()
    filled = np.asarray(hidden_images([image], layout, 0, [position], "mean_colour")[0])
    colour = np.rint(original.reshape(-1, 3).mean(0))
    assert (filled[top:bottom, left:right] == colour).all()


def test_errors(tiny_llava: mmlens.Model, targets: Targets, effect: torch.Tensor) -> None:
    with pytest.raises(MmlensError):
        deletion_insertion(tiny_llava, targets, effect[0], target=2)
    with pytest.raises(MmlensError, match="scores for a sequence of"):
        deletion_insertion(tiny_llava, targets, effect[0][:-1])
    with pytest.raises(MmlensError, match="unknown baseline 'grey'; choose one of mean, zeros, blur, mean_colour"):
        deletion_insertion(tiny_llava, targets, effect[0], baseline="grey")
    with pytest.raises(MmlensError, match="steps must be a whole number of at least 1"):
        deletion_insertion(tiny_llava, targets, effect[0], steps=0)
    text_only = tiny_llava.prepare("what colour ?")
    with pytest.raises(MmlensError):
        deletion_insertion(tiny_llava, build_targets(tiny_llava, text_only, answer="red"),
                           torch.zeros(text_only.input_ids.shape[1]))
