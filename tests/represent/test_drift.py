"""Concept drift: k-means concepts of base states, tracked along checkpoints."""

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.represent.drift import concepts, track


def _states(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = {"red": torch.tensor([10.0, 0, 0]), "purple": torch.tensor([0, 10.0, 0]), "green": torch.tensor([0, 0, 10.0])}
    answers = [c for c in centres for _ in range(20)]
    base = torch.stack([centres[a] + torch.randn(3, generator=g) * 0.5 for a in answers])
    return centres, answers, base


def test_the_red_concept_moves_to_purple_and_the_others_stay():
    centres, answers, base = _states()
    red = torch.tensor([a == "red" for a in answers])
    states = {0: base}
    for step, t in ((5, 0.5), (10, 1.0)):
        moved = base.clone()
        moved[red] = base[red] + t * (centres["purple"] - centres["red"])
        states[step] = moved
    drift = track(states, answers, k=3)
    assert sorted(drift.names) == ["green", "purple", "red"]
    assert drift.toward["red"]["purple"][0] == pytest.approx(0, abs=0.05)
    assert drift.toward["red"]["purple"][-1] > 0.95 and drift.assigned["red"]["purple"][-1] == 1.0
    assert drift.moved["green"][-1] < 1e-6 and drift.moved["purple"][-1] < 1e-6
    assert 0.4 < drift.toward["red"]["purple"][1] < 0.6
    summary = drift.summary([f"s{i}" for i in range(len(answers))])
    assert summary["sizes"]["red"] == 20 and len(summary["top_samples"]["red"]) == 5


def test_names_repeat_with_a_number_and_bad_input_gets_one_line():
    names, _, members, _ = concepts(torch.randn(20, 2), ["x"] * 20, k=2)
    assert sorted(names) == ["x", "x#2"] and sum(len(m) for m in members.values()) == 20
    with pytest.raises(MmlensError, match="too few"):
        concepts(torch.randn(3, 2), ["x"] * 3, k=2)
    _, answers, base = _states()
    with pytest.raises(MmlensError, match="shape"):
        track({0: base, 5: base[:10]}, answers, k=3)
