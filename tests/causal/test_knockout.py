"""Knockout's runs: the answer position only, resumed at each window, equal to whole blocked forwards."""

import pytest
import torch

import mmlens
from mmlens.causal import knockout as knockout_module
from mmlens.causal.knockout import knockout_runs
from mmlens.hooks import BlockKeys, intervene
from mmlens.layout import Modality
from tests.conftest import noise_image


def _reference(model, batch, keys, layers, answer_ids):
    """P(answer) of one whole forward with the last query's attention to ``keys`` blocked at ``layers``."""
    edits = {f"lm.L{layer}.attn_probs": BlockKeys(keys, -1) for layer in layers}
    with torch.no_grad(), intervene(model, edits):
        logits = model.forward(batch).logits[:, -1].float()
    return torch.softmax(logits, -1)[torch.arange(len(answer_ids)), answer_ids]


def _groups(batch):
    image = batch.layout.mask(Modality.IMAGE)
    text = batch.layout.mask(Modality.TEXT)
    return {"image": image, "half image": image & (torch.arange(image.shape[1]) % 2 == 0), "text": text}


@pytest.mark.parametrize("name, window", [("tiny-llava", 2), ("tiny-qwen2-vl", 1), ("tiny-paligemma", 1)])
def test_knockout_runs_equal_whole_blocked_forwards(name, window):
    model = mmlens.load(name)
    batch = model.prepare(["<image> what colour ?", "<image> hi there"],
                          [[noise_image(56, 56, 1)], [noise_image(56, 56, 2)]])
    groups = _groups(batch)
    runs = knockout_runs(model, batch, groups, window=window)
    assert runs.probability.shape == (len(runs.window_starts), 3, 2)
    for w, start in enumerate(runs.window_starts):
        layers = range(start, min(model.n_layers, start + window))
        for g, keys in enumerate(groups.values()):
            expected = _reference(model, batch, keys, layers, runs.answer_ids)
            torch.testing.assert_close(runs.probability[w, g], expected, rtol=1e-4, atol=1e-6)


def test_causal_models_run_one_query_per_condition(tiny_llava, monkeypatch):
    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(56, 56, 1)])
    widths = []
    real = knockout_module.record_layers

    def recording(*args, **kwargs):
        replay = real(*args, **kwargs)
        logits = replay.logits

        def spy(start, hidden, *a, **k):
            widths.append(hidden.shape[1])
            return logits(start, hidden, *a, **k)

        replay.logits = spy
        return replay

    monkeypatch.setattr(knockout_module, "record_layers", recording)
    knockout_runs(tiny_llava, batch, _groups(batch))
    assert widths[0] == batch.input_ids.shape[1]  # the baseline: the final norm and unembedding of the recorded run
    assert set(widths[1:]) == {1}  # every condition: the last position only


def test_results_do_not_depend_on_the_budget(tiny_llava, monkeypatch):
    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(56, 56, 1)])
    from mmlens import budget
    from mmlens.budget import row_bytes

    monkeypatch.setitem(budget.SATURATION_TOKENS, "cpu", 10**9)
    one = row_bytes(tiny_llava, 1, keys=batch.input_ids.shape[1])
    small = knockout_runs(tiny_llava, batch, _groups(batch), memory_budget=one)  # one condition a pass
    large = knockout_runs(tiny_llava, batch, _groups(batch), memory_budget="unlimited")
    torch.testing.assert_close(small.probability, large.probability, rtol=1e-5, atol=1e-7)


def test_a_window_of_no_layers_and_no_groups_are_refused(tiny_llava):
    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(64, 64)])
    groups = {"image": batch.layout.mask(Modality.IMAGE)}
    with pytest.raises(mmlens.MmlensError, match="window .* at least 1, got 0"):
        knockout_runs(tiny_llava, batch, groups, window=0)
    with pytest.raises(mmlens.MmlensError, match="at least one key group"):
        knockout_runs(tiny_llava, batch, {})
