"""Linear probes on a real store of shapes-llava activations: labels, splits by sample, control tasks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import mmlens
from mmlens.data.readers import open_reader
from mmlens.data.shapes import COLOURS, make_sample, patch_labels
from mmlens.errors import MmlensError
from mmlens.represent.probe_tasks import control_labels, shapes_tasks
from mmlens.represent.probes import fit_score, split_by_sample, train_probes
from mmlens.store import Store
from mmlens.store.harvest import harvest


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    folder = tmp_path_factory.mktemp("probe-store") / "store"
    harvest(mmlens.load("shapes-llava"), open_reader("shapes:test[0:40]"), folder, ["lm.embed", "lm.L1.resid"],
            modalities=["image", "text"], shard_size=20)
    return Store.open(folder)


def test_split_keeps_every_sample_on_one_side():
    samples = np.array([f"s{i // 3}" for i in range(60)], dtype=object)
    test = split_by_sample(samples, 0.25, seed=1)
    assert not set(samples[test]) & set(samples[~test])
    assert len(set(samples[test])) == 5
    with pytest.raises(MmlensError, match="at least 2 samples"):
        split_by_sample(np.array(["a", "a"], dtype=object))


def test_control_labels_are_one_random_label_per_type():
    types = ["a", "b", "a", "c", "b"] * 20
    labels = np.array([0, 1, 0, 2, 1] * 20)
    control = control_labels(types, labels, seed=3)
    for t in "abc":
        assert len({control[i] for i, u in enumerate(types) if u == t}) == 1
    assert set(control) <= set(labels)
    assert (control_labels(types, labels, seed=3) == control).all()


def test_fit_score_reads_a_linear_label_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    test = np.arange(400) % 4 == 0
    assert fit_score(x, (x[:, 2] > 0).astype(int), test) > 0.9
    assert fit_score(x, rng.integers(0, 4, 400), test) < 0.45
    assert fit_score(x, 3 * x[:, 1] + 0.1 * rng.normal(size=400), test, "regress") > 0.95


def test_labels_follow_the_shapes_world(store):
    colour, asked_row = shapes_tasks(store, ["patch-colour", "asked-row"])
    tokens = store.tokens.to_pandas().set_index("index")
    row = tokens.loc[colour.rows[0]]
    grid = patch_labels(make_sample("test", int(row.sample_id.split("-")[-1])).objects)[0]
    assert colour.labels[0] == grid[row.patch_row, row.patch_col] >= 0
    assert colour.modality == "image" and len(set(colour.samples)) == 40
    assert set(tokens.loc[asked_row.rows, "token"]) == {"?"}  # the last prompt token
    sample = make_sample("test", int(asked_row.samples[0].split("-")[-1]))
    assert asked_row.labels[0] == int(sample.objects[sample.target_objects[0]].centre[1] // 8)


def test_patch_colour_is_decodable_and_selective(store):
    result, = train_probes(store, shapes_tasks(store, ["patch-colour"]))
    assert result["sites"] == ["lm.embed", "lm.L1.resid"]
    assert result["best"]["accuracy"] >= 0.9
    assert result["best"]["selectivity"] >= 0.3
    assert result["majority"] < 0.5 and len(COLOURS) == 5
    assert result["held_out_samples"] == 10


def test_not_a_shapes_store_is_one_line():
    class Fake:
        tokens = pa.table({"sample_id": ["photo-1"]})
    with pytest.raises(MmlensError, match="shapes world"):
        shapes_tasks(Fake(), ["object-count"])
    with pytest.raises(MmlensError, match="unknown probe task"):
        shapes_tasks(Fake(), ["shoe-size"])
