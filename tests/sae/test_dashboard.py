"""Dashboard data: top image patches with their heat grid, top text tokens in context, histogram, mix, logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae import SparseAutoencoder
from mmlens.sae.codes import encode_store, store_samples
from mmlens.sae.dashboard import build_dashboards, choose_latents, unembedding_of
from mmlens.sae.labels import concept_table
from mmlens.store import Store
from tests.sae.shapes_fixtures import SITE, concept_sae, shapes_model, shapes_store  # noqa: F401


@pytest.fixture(scope="module")
def boards(shapes_store, concept_sae, shapes_model):
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    table = concept_table(store.tokens, store_samples(store))
    return build_dashboards(sae, store, [0, 5, 12], unembedding=unembedding_of(shapes_model), concepts=table,
                            n_images=4)


def test_top_images_are_one_per_sample_strongest_first_with_their_grid(boards, shapes_store, concept_sae):
    red = boards[0]
    assert 0 < len(red.top_images) <= 4
    values = [ex.value for ex in red.top_images]
    assert values == sorted(values, reverse=True)
    assert len({ex.sample_id for ex in red.top_images}) == len(values)
    for ex in red.top_images:
        assert ex.heat.shape == (8, 8)
        assert ex.heat[ex.patch] == pytest.approx(ex.value) and ex.heat.max() == pytest.approx(ex.value)
    # the heat is the latent itself, read back from the store
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    frame = store.tokens.to_pandas()
    first = red.top_images[0]
    rows = frame[(frame.sample_id == first.sample_id) & (frame.modality == "image")]
    acts = sae.encode(store.read(SITE, rows["index"].to_numpy()).float())[:, 0].detach().numpy()
    assert np.allclose(first.heat[rows.patch_row, rows.patch_col], acts, atol=1e-4)


def test_counts_histogram_mix_and_label(boards):
    red = boards[0]
    assert red.fires == sum(red.histogram[0]) and 0 < red.frequency < 1
    assert sum(red.modality_mix.values()) == pytest.approx(1.0)
    assert red.modality_mix["image"] == 1.0  # built on image patches only
    assert red.label is not None and red.label.concept.startswith("colour:red")
    silent = boards[2]  # latent 12 never fires
    assert silent.fires == 0 and silent.top_images == [] and silent.top_texts == []


def test_promoted_and_suppressed_tokens_are_the_decoder_row_through_the_unembedding(boards, concept_sae, shapes_model):
    sae, _ = concept_sae
    weight, words = unembedding_of(shapes_model)
    scores = weight @ sae.W_dec[5].detach()
    assert boards[1].promoted[0] == (words[int(scores.argmax())], pytest.approx(float(scores.max()), abs=1e-4))
    assert boards[1].suppressed[0][0] == words[int(scores.argmin())]
    assert [v for _, v in boards[1].promoted] == sorted([v for _, v in boards[1].promoted], reverse=True)


def test_text_examples_hold_their_context(shapes_store):
    store = Store.open(shapes_store)
    frame = store.tokens.to_pandas()
    sae = SparseAutoencoder(store.width(SITE), 4, "topk", k=1, site=SITE)
    with torch.no_grad():  # latent 0 fires on every token, as strongly as the first residual coordinate + 100
        sae.W_enc.zero_(); sae.b_dec.zero_(); sae.W_enc[0, 0] = 1.0; sae.b_enc.fill_(-1e3); sae.b_enc[0] = 100.0
    board = build_dashboards(sae, store, [0], n_texts=3, context=2)[0]
    assert len(board.top_texts) == 3
    for ex in board.top_texts:
        row = frame[(frame.sample_id == ex.sample_id) & (frame.position == ex.position)].iloc[0]
        assert ex.tokens[ex.focus] == row.token and ex.values[ex.focus] == pytest.approx(ex.value)
        assert len(ex.tokens) <= 5
    assert choose_latents(encode_store(sae, store), 3) == [0]


def test_bad_latent_is_one_line(shapes_store, concept_sae):
    sae, _ = concept_sae
    with pytest.raises(MmlensError, match="no latent 99"):
        build_dashboards(sae, Store.open(shapes_store), [99])


def test_store_of_another_width_is_one_line(shapes_store):
    with pytest.raises(MmlensError, match="d_in=7"):
        encode_store(SparseAutoencoder(7, 8, "topk", k=2, site=SITE), Store.open(shapes_store))


def test_store_samples_reopen_jsonl_and_folder_sources(tiny_llava, tmp_path):
    import json

    from PIL import Image

    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{colour}.png")
    rows = [{"id": f"row-{c}", "image": f"{c}.png", "prompt": "<image> what colour ?"} for c in ("red", "blue")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    harvest(tiny_llava, open_reader(tmp_path / "d.jsonl"), tmp_path / "s1", ["lm.L0.resid"], shard_size=2)
    harvest(tiny_llava, open_reader(tmp_path, prompt="<image> a {stem}"), tmp_path / "s2", ["lm.L0.resid"],
            shard_size=2)
    for folder, wanted in (("s1", {"row-red", "row-blue"}), ("s2", {"blue.png", "red.png"})):
        store = Store.open(tmp_path / folder)
        load = store_samples(store)
        frame = store.tokens.to_pandas().drop_duplicates("sample_id")
        got = {load(r.shard, r.sample).id for r in frame.itertuples()}
        assert got == wanted and got == set(frame.sample_id)
        sample = load(frame.shard.iloc[0], int(frame["sample"].iloc[0]))
        assert sample.image.size == (32, 32)
