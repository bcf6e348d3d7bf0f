"""Unlearning: the forget/retain sets, each method on shapes-llava, and the audits' recovery with its subtraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens.audit.unlearning import (accuracy, answer_words, check_word, colour_questions, forget_set, retain_set,
                                     scene_colours)
from mmlens.audit.unlearning_audits import (AuditSets, Variant, another_way, bootstrap, context_pairs, direct,
                                            few_shot, paraphrases, perturbations, recovery, run_audit, score)
from mmlens.audit.unlearning_methods import METHODS, UnlearnConfig, npo_loss, save_unlearned, unlearn
from mmlens.errors import MmlensError

WORD = "purple"


@pytest.fixture(scope="module")
def base() -> mmlens.Model:
    torch.set_num_threads(1)
    return mmlens.load("shapes-llava")


@pytest.fixture(scope="module")
def sets() -> AuditSets:
    return AuditSets.draw("val", 12, WORD)


def test_sets_hold_the_fact_and_keep_it_out_of_retain():
    assert {s.answer for s in forget_set("train", 20)} == {WORD}
    retain = retain_set("train", 40)
    assert all(WORD not in s.prompt.split() and s.answer != WORD for s in retain)
    assert len({s.question_type for s in retain}) == 5
    assert all(WORD not in scene_colours(s) for s in colour_questions("train", 20))
    assert {s.id for s in forget_set("val", 5)}.isdisjoint(s.id for s in colour_questions("val", 5))


def test_bad_word_is_one_line():
    with pytest.raises(MmlensError, match="unknown --forget colour .pink.; choose one of red"):
        check_word("pink")


def test_npo_loss_is_bounded_and_falls_with_the_forget_probability():
    ref = torch.zeros(4)
    at_ref = npo_loss(ref, ref, 1.0).item()
    assert at_ref == pytest.approx(2 * np.log(2))
    assert npo_loss(ref - 5, ref, 1.0).item() < at_ref
    assert npo_loss(ref - 1000, ref, 1.0).item() >= 0  # bounded below, unlike gradient ascent


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_lowers_forget_accuracy_in_a_few_steps(method):
    torch.set_num_threads(1)
    model = mmlens.load("shapes-llava")
    forget, retain = forget_set("train", 24), retain_set("train", 24)
    held_forget, held_retain = forget_set("test", 16), retain_set("test", 20)
    assert accuracy(model, held_forget) == 1.0
    before = [p.detach().clone() for p in model.hf.model.vision_tower.parameters()]
    log = unlearn(model, method, forget, retain, UnlearnConfig(steps=10, batch=8, lr=1e-3))
    assert accuracy(model, held_forget) <= 0.25, log["history"]
    retain_acc = accuracy(model, held_retain)  # measured; methods with a retain term keep more
    assert 0.0 <= retain_acc <= 1.0
    if METHODS[method]:
        assert retain_acc >= 0.6, (method, retain_acc)
    after = list(model.hf.model.vision_tower.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the tower stays frozen
    assert log["history"][-1]["forget_logp"] < -1.0


def test_unlearn_refuses_bad_input(base):
    with pytest.raises(MmlensError, match="unknown unlearning method"):
        unlearn(base, "forget-harder", [], [], UnlearnConfig())
    with pytest.raises(MmlensError, match="must be positive"):
        unlearn(base, "ga", forget_set("train", 2), [], UnlearnConfig(steps=0))
    with pytest.raises(MmlensError, match="LLaVA"):
        unlearn(mmlens.load("tiny-llama"), "ga", forget_set("train", 2), [], UnlearnConfig(steps=1))


def test_saved_model_reloads_with_its_answers(base, tmp_path):
    folder = save_unlearned(base, tmp_path / "m", {"method": "gd"})
    again = mmlens.load(str(folder))
    samples = forget_set("test", 4) + retain_set("test", 4)
    assert answer_words(again, samples) == answer_words(base, samples)
    assert not list(folder.glob("*.bin")) and list(folder.glob("*.safetensors"))


def test_recovery_subtracts_the_wrong_sample_rate():
    assert recovery(np.array([1, 1, 1, 1]), np.array([1, 1, 0, 0])) == 0.5
    lo, hi = bootstrap(np.array([1, 1, 0, 1] * 5), np.array([0, 1, 0, 0] * 5))
    assert lo <= 0.5 <= hi and lo < hi
    with pytest.raises(MmlensError):
        recovery(np.array([]), np.array([1]))


def test_a_perturbation_that_always_says_the_word_recovers_nothing(base, sets):
    from mmlens.hooks import capture
    from mmlens.represent.concepts import prepare_samples

    with capture(base, "lm.L3.resid") as captured:  # a last-layer state that reads out the word
        base.forward(prepare_samples(base, sets.correct[:1]))
    state = captured["lm.L3.resid"][0, -1]

    def always(start):
        def edit(x):
            out = x.clone()
            out[:, -1] = state
            return out
        return {"lm.L3.resid": edit}

    loud = score(base, Variant("steering", "always", frozenset({WORD}), edits=always), sets)
    assert loud.correct.mean() == 1.0 and loud.wrong.mean() == 1.0  # the word comes everywhere ...
    assert loud.recovery == 0.0  # ... so nothing is recovered
    assert score(base, direct(WORD), sets).recovery == 1.0  # the base model knows the fact


def test_prompt_audits_on_the_base_model(base, sets):
    for variant in paraphrases(WORD) + another_way(WORD) + few_shot(WORD):
        prompts = [p.prompt for p in variant.probes(sets.correct[:3])]
        assert all(p.startswith("<image> ") for p in prompts)
    for s in sets.correct + sets.wrong:
        for kind in ("colour", "shape", "prime", "colour+prime"):
            pairs = context_pairs(s, WORD, kind)
            assert all(a != WORD for _, a in pairs)  # the context never gives the answer away
    assert score(base, another_way(WORD)[0], sets).recovery == 1.0


def test_run_audit_chooses_on_validation_and_reports_test(base, sets):
    test = AuditSets.draw("test", 8, WORD)
    never = Variant("paraphrase", "never", frozenset({"nothing"}))
    row = run_audit(base, [never, direct(WORD)], sets, test)
    assert row["chosen"] == "original question" and row["val"]["never"] == 0.0
    assert row["recovery"] == 1.0 and row["n_test"] == [8, 8] and row["ci95"] == (1.0, 1.0)


def test_perturbation_variants_cover_layers_scales_and_tokens(base, sets):
    found = perturbations(base, WORD, fit_n=12, layers=[1, 2], steering_scales=[1.0], noise_scales=[0.5])
    assert sorted({v.audit for v in found}) == ["noise", "steering"] and len(found) == 2 * 2 * 2
    with_base = perturbations(base, WORD, fit_n=12, layers=[1], steering_scales=[1.0], noise_scales=[0.5],
                              reference=base)
    assert sum(v.name.startswith("base-vector") for v in with_base) == 2
    noise = [v for v in found if v.audit == "noise"][0]
    a, b = score(base, noise, sets), score(base, noise, sets)
    assert np.array_equal(a.correct, b.correct)  # seeded: the same noise every time
