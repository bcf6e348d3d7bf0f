"""Probe tasks' control labels (Hewitt and Liang): one random label per type, from the labels' own distribution."""

from __future__ import annotations

import numpy as np

from mmlens.represent.probe_tasks import control_labels


def test_every_occurrence_of_a_type_gets_the_same_control_label():
    types = ["red", "blue", "red", "green", "blue", "red"]
    labels = np.array([0, 1, 0, 2, 1, 0])
    control = control_labels(types, labels, seed=3)
    assert control[0] == control[2] == control[5] and control[1] == control[4]
    assert set(control) <= set(labels)


def test_control_labels_are_seeded_and_drawn_from_the_label_distribution():
    types = [f"t{k}" for k in range(2000)]
    labels = np.array([0] * 1800 + [1] * 200)
    first = control_labels(types, labels, seed=0)
    assert np.array_equal(first, control_labels(types, labels, seed=0))
    assert not np.array_equal(first, control_labels(types, labels, seed=1))
    assert 0.06 < first.mean() < 0.14  # about 10% ones, as in the labels
