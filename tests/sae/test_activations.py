"""SiteActivations: modality filters, the row table, and batches that resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.activations import SiteActivations
from mmlens.store import Store


def test_modality_rows_and_table(sae_store) -> None:
    store = Store.open(sae_store)
    image = SiteActivations(store, "lm.L1.resid", "image")
    everything = SiteActivations(store, "lm.L1.resid", "all")
    assert len(everything) == len(store)
    assert 0 < len(image) < len(everything)
    frame = image.frame()
    assert set(frame["modality"]) == {"image"}
    assert {"sample_id", "position", "row", "col", "token"} <= set(frame.columns)
    assert frame["row"].min() >= 0
    # row i of the frame is row i of read(): the same activations as the store's own read
    assert torch.equal(image.read([3]), store.read("lm.L1.resid", [int(frame["index"][3])]).float())


def test_cached_and_streamed_reads_agree_and_resume(sae_store) -> None:
    cached = SiteActivations(sae_store, "lm.L0.resid", "text")
    streamed = SiteActivations(sae_store, "lm.L0.resid", "text", cache_bytes=0)
    assert streamed._cache is None and cached._cache is not None
    whole = list(cached.stream(8, seed=3, stop=12))
    again = list(streamed.stream(8, seed=3, start=5, stop=12))
    for (x, rows), (y, rows_again) in zip(whole[5:], again):
        assert torch.equal(rows, rows_again) and torch.equal(x, y)
    per_epoch = len(cached) // 8
    first_epoch = torch.cat([rows for _, rows in whole[:per_epoch]])
    assert len(set(first_epoch.tolist())) == per_epoch * 8  # an epoch never repeats a row


def test_chunks_cover_every_row_once(sae_store) -> None:
    acts = SiteActivations(sae_store, "lm.L0.resid", "image")
    rows = torch.cat([r for _, r in acts.chunks(50)])
    assert np.array_equal(rows.numpy(), np.arange(len(acts)))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"site": "lm.L9.resid"}, "has no site"),
    ({"modality": "audio"}, "unknown modality"),
])
def test_bad_input_is_one_line(sae_store, kwargs, message) -> None:
    with pytest.raises(MmlensError, match=message):
        SiteActivations(sae_store, **{"site": "lm.L0.resid", **kwargs})


def test_batch_larger_than_rows_is_one_line(sae_store) -> None:
    acts = SiteActivations(sae_store, "lm.L0.resid", "text")
    with pytest.raises(MmlensError, match="does not fit"):
        next(acts.stream(len(acts) + 1))
