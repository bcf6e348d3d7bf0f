"""Automatic labels: concept truth from the shapes world, best concept on the fit half, scores on the held-out half."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlens.data.shapes import make_sample, patch_labels
from mmlens.errors import MmlensError
from mmlens.sae.codes import encode_store, store_samples
from mmlens.sae.labels import ConceptTable, concept_table, label_activations, label_latents, split_held_out
from mmlens.store import Store
from tests.sae.shapes_fixtures import CONCEPTS, concept_sae, shapes_model, shapes_store  # noqa: F401


def _table(sample: str = "shapes-val-3") -> pd.DataFrame:
    """A hand-made token table: <s>, the 64 patches, three words."""
    rows = [{"shard": "s", "sample": 0, "sample_id": sample, "position": 0, "modality": "special", "image": -1,
             "view": -1, "patch_row": -1, "patch_col": -1, "token": "<s>"}]
    for p in range(64):
        rows.append({"shard": "s", "sample": 0, "sample_id": sample, "position": 1 + p, "modality": "image",
                     "image": 0, "view": 0, "patch_row": p // 8, "patch_col": p % 8, "token": "<image>"})
    for j, word in enumerate(["what", "red", "?"]):
        rows.append({"shard": "s", "sample": 0, "sample_id": sample, "position": 65 + j, "modality": "text",
                     "image": -1, "view": -1, "patch_row": -1, "patch_col": -1, "token": word})
    return pd.DataFrame(rows)


def test_image_concepts_follow_patch_labels_and_words_and_answer():
    sample = make_sample("val", 3)
    frame = _table()
    table = concept_table(frame, lambda shard, i: sample)
    colours, shapes = patch_labels(sample.objects)
    for k, obj in enumerate(sample.objects):
        column = table.truth[1:65, table.names.index(f"colour:{obj.colour}@image")]
        assert np.array_equal(column.reshape(8, 8), colours == list(["red", "green", "blue", "yellow",
                                                                      "purple"]).index(obj.colour))
    red_word = table.truth[:, table.names.index("word:red")]
    assert red_word.tolist() == [False] * 66 + [True, False]
    assert table.truth[66, table.names.index("colour:red")]  # the cross-modal concept holds the word
    answer = table.truth[:, table.names.index(f"answer:{sample.answer}")]
    assert np.flatnonzero(answer).tolist() == [67]  # the last token predicts the answer
    assert table.known.all()


def test_samples_without_ground_truth_are_unknown():
    table = concept_table(_table(), lambda shard, i: type("Plain", (), {"answer": "red"})())
    assert not table.known.any()
    fires = torch.ones(len(table.known), 1)
    with pytest.raises(MmlensError, match="ground truth"):
        label_activations(fires, table, [0])


def test_label_is_chosen_on_fit_half_and_scored_on_held_out_half():
    truth = np.array([[True, False], [False, True], [True, False], [False, True]])
    table = ConceptTable(["a", "b"], truth, np.array(["s1", "s1", "s2", "s2"]), np.ones(4, bool))
    # fires on concept a in s1 (fit) but on b in s2 (held out): the label is a, held-out precision 0
    acts = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    label = label_activations(acts, table, [5], held_out={"s2"})[0]
    assert (label.latent, label.concept, label.fit_f1) == (5, "a", 1.0)
    assert label.precision == 0.0 and label.recall == 0.0 and label.fires == 1 and label.support == 1
    silent = label_activations(torch.zeros(4, 1), table, [6], held_out={"s2"})[0]
    assert silent.concept is None and "never fires" in silent.text()


def test_held_out_split_is_stable_and_near_half():
    ids = [f"shapes-test-{i}" for i in range(400)]
    assert split_held_out(ids) == split_held_out(reversed(ids))
    assert 150 < len(split_held_out(ids)) < 250


def test_built_concept_latents_get_their_own_labels(shapes_store, concept_sae):
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    table = concept_table(store.tokens, store_samples(store))
    labels = label_latents(encode_store(sae, store), table, list(range(12)))
    right = [lab.concept is not None and lab.concept.split("@")[0] == CONCEPTS[i].split("@")[0]
             for i, lab in enumerate(labels[:9])]
    assert sum(right) >= 7, [lab.text() for lab in labels]
    assert all(lab.concept is None for lab in labels[9:])  # latents built never to fire
    seen = [lab.recall for lab in labels[:9] if lab.support > 0]  # a small store: some concepts miss a half
    assert len(seen) >= 4 and min(seen) >= 0.8, [lab.text() for lab in labels]


def test_codes_and_table_must_match(shapes_store, concept_sae):
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    codes = encode_store(sae, store, rows=np.arange(10))
    table = concept_table(store.tokens, store_samples(store))
    with pytest.raises(MmlensError, match="rows of concepts"):
        label_latents(codes, table, [0])


def test_cut_off_is_chosen_with_the_concept():
    # the latent fires weakly everywhere and strongly on concept a: above a cut-off it is exactly a
    truth = np.array([[True], [False], [False], [True], [False], [False]])
    table = ConceptTable(["a"], truth, np.array(["s1"] * 3 + ["s2"] * 3), np.ones(6, bool))
    acts = torch.tensor([[5.0], [0.5], [0.4], [6.0], [0.3], [0.6]])
    label = label_activations(acts, table, [0], held_out={"s2"})[0]
    assert label.concept == "a" and label.precision == 1.0 and label.recall == 1.0
    assert label.threshold == pytest.approx(3.75)  # ties go to the strictest cut-off (0.75 x 5)
    loose = label_activations(acts, table, [0], held_out={"s2"}, fractions=[0.0])[0]
    assert loose.threshold == 0.0 and loose.precision == pytest.approx(1 / 3, abs=1e-4)
