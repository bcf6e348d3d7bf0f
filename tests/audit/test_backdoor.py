"""BYE backdoor filtering: the entropies, the mixture rule, the label scores, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.audit import EntropyTable, attention_entropies, bye_filter, fit_mixture, label_scores
from mmlens.data import make_sample
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError

IDS = [f"s{i}" for i in range(300)]


def _planted(seed: int = 0) -> np.ndarray:
    """300 samples x 4 layers, all unimodal except layer 2, where 30 samples collapse to low entropy."""
    rng = np.random.default_rng(seed)
    h = rng.normal(3.0, 0.15, (300, 4))
    h[:30, 2] = rng.normal(1.0, 0.15, 30)
    return h


def test_fit_mixture_recovers_two_components():
    rng = np.random.default_rng(1)
    fit = fit_mixture(np.r_[rng.normal(-2, 0.5, 700), rng.normal(3, 0.25, 300)])
    assert fit.means == pytest.approx((-2, 3), abs=0.1)
    assert fit.sigmas == pytest.approx((0.5, 0.25), abs=0.05)
    assert fit.weights == pytest.approx((0.7, 0.3), abs=0.03)
    assert fit.gap() > 2


def test_a_planted_bimodal_layer_is_found_and_its_low_cluster_removed():
    result = bye_filter(_planted(), IDS)
    assert result.sensitive == [2]
    assert sorted(result.removed) == sorted(IDS[:30])
    assert len(result.kept) == 270
    assert label_scores(result.ids, result.removed, IDS[:30])["f1"] == 1.0


def test_no_sensitive_layer_removes_nothing_and_says_so():
    h = np.random.default_rng(2).normal(3.0, 0.2, (300, 4))
    result = bye_filter(h, IDS)
    assert result.removed == [] and result.kept == IDS and result.scores is None
    assert result.note.startswith("no sensitive layer")


def test_the_separation_constant_decides_what_counts():
    h = _planted()  # layer 2's gap is about (3 - 1) / 0.3 = 6.7
    assert bye_filter(h, IDS, separation=8.0).sensitive == []
    assert bye_filter(h, IDS, separation=5.0).sensitive == [2]


def test_head_units_find_a_head_that_the_mean_hides():
    rng = np.random.default_rng(4)
    heads = rng.normal(3.0, 0.6, (300, 2, 4))
    heads[:30, 1, 3] = rng.normal(0.8, 0.15, 30)  # one noisy head of four collapses: in the mean, 0.55 against a spread of 0.3
    table = EntropyTable(IDS, heads.mean(2), heads)
    assert bye_filter(table).sensitive == []
    result = bye_filter(table, units="heads")
    assert [result.names[j] for j in result.sensitive] == ["L1.H3"]
    assert sorted(result.removed) == sorted(IDS[:30])


def test_label_scores_report_labels_missing_from_the_data():
    scores = label_scores(["a", "b", "c", "d"], ["a", "b"], ["a", "c", "zz"])
    assert scores["unknown_labels"] == ["zz"]
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert scores["poisoned"] == 2


def test_bad_shapes_and_units_are_one_line_errors():
    with pytest.raises(MmlensError, match="do not match"):
        bye_filter(np.zeros((5, 2)), ["a"])
    with pytest.raises(MmlensError, match="head-level"):
        bye_filter(EntropyTable(IDS[:5], np.zeros((5, 2))), units="heads")


def test_entropies_match_eager_attention_over_image_tokens(tiny_llava):
    samples = [make_sample("val", i) for i in range(3)]
    table = attention_entropies(tiny_llava, samples, batch_size=2, per_head=True, shares=True)
    assert table.layers.shape == (3, tiny_llava.n_layers) and table.ids == [s.id for s in samples]
    assert table.shares.shape == table.heads.shape
    # the reference: the full eager attention of one sample, on its own
    batch = tiny_llava.prepare(samples[1].prompt, [samples[1].image])
    where = batch.layout.image_positions(0)
    from mmlens.hooks import eager_attention

    with torch.no_grad(), eager_attention(tiny_llava):
        out = tiny_llava.hf(**batch.inputs, output_attentions=True)
    for layer, probs in enumerate(out.attentions):
        row = probs[0, :, -1, where].float()
        p = row.mean(0) / row.mean(0).sum()
        assert table.layers[1, layer] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)
        ph = row / row.sum(-1, keepdim=True)
        assert table.heads[1, layer] == pytest.approx((-(ph * ph.log()).sum(-1)).numpy(), abs=1e-4)
        assert table.shares[1, layer] == pytest.approx(row.sum(-1).numpy(), abs=1e-5)  # the image tokens' mass
    assert np.all(table.layers <= np.log(where.numel()) + 1e-5)


def test_a_sample_without_an_image_is_one_line(tiny_llava):
    with pytest.raises(MmlensError, match="has no image"):
        attention_entropies(tiny_llava, [Sample("t0", None, "what colour is it?")])


def test_a_text_only_model_is_one_line(tiny_llama):
    with pytest.raises(MmlensError, match="text-only"):
        attention_entropies(tiny_llama, [make_sample("val", 0)])


def test_options_zscores_threshold_and_log_change_only_what_they_say():
    h = _planted()
    h[:, 2] *= 10  # layer 2 on a larger scale than the rest
    h[:, 1] = np.r_[np.random.default_rng(5).normal(1.0, 0.15, 30), np.random.default_rng(6).normal(3.0, 0.15, 270)]
    for combine in ("mean", "zmean", "min"):
        result = bye_filter(h, IDS, combine=combine)
        assert result.sensitive == [1, 2] and sorted(result.removed) == sorted(IDS[:30])
        assert result.summary()["combine"] == combine
    assert bye_filter(h, IDS, threshold=1e4).removed == []  # far-apart clusters: a large ratio, not an endless one
    assert bye_filter(h, IDS, log=True).sensitive == [1, 2]
    with pytest.raises(MmlensError, match="combine is one of"):
        bye_filter(h, IDS, combine="max")


def test_position_units_name_every_head_at_every_position():
    positions = np.random.default_rng(7).normal(3.0, 0.1, (300, 3, 2, 2))
    positions[:30, 1, 1, 0] = 0.5  # one head at the second-to-last prompt position collapses
    table = EntropyTable(IDS, positions[:, -1].mean(2), positions[:, -1], positions)
    result = bye_filter(table, units="positions")
    assert [result.names[j] for j in result.sensitive] == ["q-2.L1.H0"]
    assert sorted(result.removed) == sorted(IDS[:30])
    with pytest.raises(MmlensError, match="several prompt positions"):
        bye_filter(EntropyTable(IDS, positions[:, -1].mean(2)), units="positions")


def test_position_rows_and_whole_rows_match_eager_attention(tiny_llava):
    samples = [make_sample("val", i) for i in range(2)]
    table = attention_entropies(tiny_llava, samples, positions=3, keys="all")
    assert table.positions.shape[:2] == (2, 3) and table.heads is None
    batch = tiny_llava.prepare(samples[1].prompt, [samples[1].image])
    from mmlens.hooks import eager_attention

    with torch.no_grad(), eager_attention(tiny_llava):
        out = tiny_llava.hf(**batch.inputs, output_attentions=True)
    for layer, probs in enumerate(out.attentions):
        rows = probs[0, :, -3:].float()  # (heads, 3 rows, keys): the whole row, no renormalising
        want = (-(rows * rows.clamp_min(1e-30).log()).sum(-1)).T.numpy()
        assert table.positions[1, :, layer] == pytest.approx(want, abs=1e-4)
    image = attention_entropies(tiny_llava, samples, positions=3)
    assert np.allclose(image.layers, attention_entropies(tiny_llava, samples).layers, atol=1e-5)
    with pytest.raises(MmlensError, match="keys is 'image' or 'all'"):
        attention_entropies(tiny_llava, samples, keys="text")


def test_reused_fits_give_the_same_decision_and_must_match_the_units():
    h = _planted()
    first = bye_filter(h, IDS)
    again = bye_filter(h, IDS, fits=first.fits)
    assert again.removed == first.removed and again.sensitive == first.sensitive
    with pytest.raises(MmlensError, match="3 mixtures given for 4 units"):
        bye_filter(h, IDS, fits=first.fits[:3])


def test_the_command_passes_the_split_threshold_on(tmp_path):
    from mmlens.cli.audit import audit_backdoor

    summary = audit_backdoor("shapes:val[0:8]", tmp_path / "bye", model="tiny-llava", units="heads",
                             separation=0.1, threshold=2.5)
    assert summary["threshold"] == 2.5 and summary["combine"] == "mean" and summary["log"] is False
    assert summary["refine"] is False


def test_refine_sharpens_the_split_with_units_that_are_not_sensitive_alone():
    rng = np.random.default_rng(5)
    h = rng.normal(3.0, 0.3, (600, 4))
    poisoned = np.arange(600) < 60
    h[poisoned, 0] -= 0.9  # the sensitive unit (gap about 1.7): its clusters overlap
    h[poisoned, 1:] -= 0.6  # the others shift too, but no one of them is bimodal
    ids = [f"s{i}" for i in range(600)]
    plain = bye_filter(h, ids, separation=1.3)
    refined = bye_filter(h, ids, separation=1.3, refine=True)
    assert plain.sensitive == refined.sensitive == [0]
    truth = [i for i, p in zip(ids, poisoned) if p]
    assert label_scores(ids, refined.removed, truth)["f1"] > label_scores(ids, plain.removed, truth)["f1"] + 0.1
    assert refined.refined is not None and refined.extra["refine"] is True and "refined over all 4" in refined.note


def test_refine_reads_the_tables_image_shares_when_it_has_them():
    rng = np.random.default_rng(5)
    heads = rng.normal(3.0, 0.3, (600, 1, 2))
    heads[:60, 0, 0] -= 0.9  # the sensitive head overlaps
    shares = rng.normal(0.5, 0.05, (600, 1, 2))
    shares[:60] += 0.15  # the poisoned rows look at the image more: no share is bimodal on its own
    ids = [f"s{i}" for i in range(600)]
    truth = ids[:60]
    plain = bye_filter(EntropyTable(ids, heads.mean(2), heads), units="heads", separation=1.3, refine=True)
    both = bye_filter(EntropyTable(ids, heads.mean(2), heads, shares=shares), units="heads", separation=1.3,
                      refine=True)
    assert both.extra["refine_shares"] and not plain.extra["refine_shares"] and "image shares" in both.note
    assert label_scores(ids, both.removed, truth)["f1"] > label_scores(ids, plain.removed, truth)["f1"] + 0.05


def test_refine_keeps_nothing_removed_without_a_sensitive_unit():
    h = np.random.default_rng(2).normal(3.0, 0.2, (300, 4))
    result = bye_filter(h, IDS, refine=True, threshold=-5)
    assert result.removed == [] and result.refined is None


def test_the_refined_split_is_drawn_beside_the_scores():
    from mmlens.report.audit_pages import entropy_figure

    rng = np.random.default_rng(5)
    h = rng.normal(3.0, 0.3, (300, 4))
    h[:30, 0] -= 1.0
    result = bye_filter(h, IDS, separation=1.3, refine=True, threshold=1.0)
    titles = [ax.get_title() for ax in entropy_figure(result, h).axes]
    assert titles[-1] == f"refined log ratio (removed {len(result.removed)})"
    assert result.summary()["refine"] is True and result.summary()["threshold"] == 1.0


def test_the_command_with_refine_keeps_image_shares_in_a_folder_of_its_own(tmp_path):
    from mmlens.cli.audit import audit_backdoor

    out = tmp_path / "bye"
    audit_backdoor("shapes:val[0:8]", out, model="tiny-llava", units="heads", separation=0.1, refine=True)
    with np.load(out / "entropy.npz") as saved:
        assert saved["shares"].shape == saved["heads"].shape
        assert np.all((saved["shares"] > 0) & (saved["shares"] <= 1 + 1e-6))
    with pytest.raises(MmlensError, match="use another --out"):  # the scores of a run without shares differ
        audit_backdoor("shapes:val[0:8]", out, model="tiny-llava", units="heads", separation=0.1)
