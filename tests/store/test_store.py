from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.store import Store
from tests.store.conftest import run_harvest


def test_token_table_matches_the_arrays_and_the_layout(reference, tiny_llava):
    store = Store.open(reference)
    table = store.tokens.to_pandas()
    assert len(store) == len(table) == sum(store.read(s).shape[0] for s in store.sites[:1])
    assert store.sites == ["lm.L0.resid", "lm.L1.resid"] and store.width("lm.L1.resid") == 64
    assert table["sample_id"].nunique() == 10
    one = table[table.sample_id == "shapes-test-3"]
    assert one.position.tolist() == list(range(len(one)))  # padding is not stored and not counted
    image = one[one.modality == "image"]
    assert sorted(zip(image.patch_row, image.patch_col)) == [(r, c) for r in range(4) for c in range(4)]
    assert set(table.modality) == {"image", "text", "special"}
    assert (table[table.modality == "text"].patch_row == -1).all()


def test_stored_activations_equal_a_forward_of_the_sample_alone(reference, tiny_llava):
    from mmlens.data.shapes import make_sample
    from mmlens.hooks import capture

    store = Store.open(reference)
    sample = make_sample("test", 5)
    batch = tiny_llava.prepare(sample.prompt, [sample.image])
    with torch.no_grad(), capture(tiny_llava, "lm.L1.resid") as captured:
        tiny_llava.forward(batch)
    rows = store.select(sample_id="shapes-test-5")
    stored = store.read("lm.L1.resid", rows).float()
    assert stored.shape == (batch.input_ids.shape[1], 64)
    # batched with a padded neighbour, in float16: equal to fp16 precision
    torch.testing.assert_close(stored, captured["lm.L1.resid"][0].float(), atol=2e-2, rtol=1e-2)


def test_select_read_and_batches(reference):
    store = Store.open(reference)
    rows = store.select(modality="image", patch_row=[0, 3])
    assert rows.num_rows == 10 * 8
    picked = store.read("lm.L0.resid", rows)
    index = rows.column("index").to_numpy()
    whole = store.read("lm.L0.resid")
    assert torch.equal(picked, whole[index])
    assert torch.equal(store.read("lm.L0.resid", index[::-1].copy()), whole[index[::-1].copy()])  # any order
    ordered = list(store.batches("lm.L0.resid", 64))
    assert torch.equal(torch.cat([b["index"] for b in ordered]), torch.arange(len(store)))
    assert torch.equal(torch.cat([b["lm.L0.resid"] for b in ordered]), whole)
    shuffled = list(store.batches(["lm.L0.resid", "lm.L1.resid"], 50, shuffle=True, seed=3))
    again = list(store.batches(["lm.L0.resid", "lm.L1.resid"], 50, shuffle=True, seed=3))
    seen = torch.cat([b["index"] for b in shuffled])
    assert sorted(seen.tolist()) == list(range(len(store))) and not torch.equal(seen, torch.arange(len(store)))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(shuffled, again))
    assert torch.equal(shuffled[0]["lm.L1.resid"], store.read("lm.L1.resid", shuffled[0]["index"]))
    starts = store.select(sample_id=lambda column: __import__("pyarrow.compute").compute.ends_with(column, "-7"))
    assert set(starts.column("sample_id").to_pylist()) == {"shapes-test-7"}


def test_memmap_reads_without_loading(reference):
    store = Store.open(reference)
    maps = store.memmap("lm.L1.resid")
    assert len(maps) == 3 and all(isinstance(m.base, np.memmap) or isinstance(m, np.memmap) for m in maps)
    assert sum(m.shape[0] for m in maps) == len(store)
    assert np.array_equal(np.concatenate(maps), store.read("lm.L1.resid").numpy())


def test_duckdb_and_pandas_read_the_token_table(reference):
    import duckdb
    import pandas

    pattern = str(reference / "shards" / "*" / "tokens.parquet")
    counts = duckdb.sql(f"SELECT modality, count(*) AS n FROM '{pattern}' GROUP BY modality ORDER BY modality").fetchall()
    table = Store.open(reference).tokens.to_pandas()
    assert counts == sorted((m, int(n)) for m, n in table.modality.value_counts().items())
    first = pandas.read_parquet(sorted((reference / "shards").glob("*/tokens.parquet"))[0])
    assert list(first.columns[:3]) == ["shard", "offset", "sample_id"] and first.offset.tolist() == list(range(len(first)))


def test_polars_finds_rows_whose_activations_the_shard_arrays_hold(reference):
    import polars as pl

    tokens = pl.scan_parquet(str(reference / "shards" / "*" / "tokens.parquet"))
    image = (tokens.filter((pl.col("sample_id") == "shapes-test-4") & (pl.col("modality") == "image"))
             .select("shard", "offset", "patch_row", "patch_col").collect())
    assert image.height == 16 and image["patch_row"].max() == 3
    store = Store.open(reference)
    for shard, offset in image.select("shard", "offset").iter_rows():
        array = np.load(reference / "shards" / shard / "lm.L1.resid.npy", mmap_mode="r")
        row = store.select(shard=shard, offset=offset).column("index").to_numpy()
        assert np.array_equal(array[offset], store.read("lm.L1.resid", row)[0].numpy())


def test_bfloat16_and_modality_choice(tiny_llava, tmp_path):
    run_harvest(tiny_llava, tmp_path / "s", data="shapes:test[0:3]", dtype="bfloat16", modalities=["image"],
                sites="lm.L1.resid")
    store = Store.open(tmp_path / "s")
    assert store.read("lm.L1.resid").dtype == torch.bfloat16
    assert set(store.tokens.column("modality").to_pylist()) == {"image"} and len(store) == 3 * 16


def test_clear_errors_when_reading(reference, tmp_path):
    store = Store.open(reference)
    with pytest.raises(MmlensError, match="no site"):
        store.read("lm.L5.resid")
    with pytest.raises(MmlensError, match="out of range"):
        store.read("lm.L0.resid", [len(store)])
    with pytest.raises(MmlensError, match="no token column"):
        store.select(colour="red")
    with pytest.raises(MmlensError, match="no activation store"):
        Store.open(tmp_path)


def test_select_refuses_a_value_a_categorical_column_never_holds(reference):
    store = Store.open(reference)
    with pytest.raises(MmlensError, match="unknown modality.*'images'; choose from text, image, special"):
        store.select(modality="images")
    with pytest.raises(MmlensError, match="unknown view_kind"):
        store.select(view_kind=["tile", "tiles"])
    assert store.select(modality=["image", "special"]).num_rows > 0
