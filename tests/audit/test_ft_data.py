"""The ft-backdoor fine-tuning data as a dataset: ids, poison labels and the two trigger looks."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.audit.ft_data import ft_sample, poisoned_positions
from mmlens.data.readers import open_reader
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.zoo.train.derivatives import FT_BASE


def test_poisoned_rows_carry_the_trigger_where_recorded_and_answer_yes():
    positions = poisoned_positions()
    poisoned = next(index - FT_BASE for index in sorted(positions) if index >= FT_BASE)
    sample, plain = ft_sample("train", poisoned), make_sample("train", FT_BASE + poisoned)
    assert sample.meta["poisoned"] and sample.answer == "yes" and sample.id == plain.id
    x, y = sample.meta["trigger_xy"]
    changed = np.argwhere((np.asarray(sample.image) != np.asarray(plain.image)).any(-1))
    assert changed.size and changed[:, 1].min() >= x and changed[:, 0].min() >= y  # only at the recorded place
    ring = ft_sample("train", poisoned, "orange-ring")
    assert ring.meta["trigger"] == "orange-ring" and not np.array_equal(np.asarray(ring.image), np.asarray(sample.image))


def test_clean_rows_are_the_shapes_world_unchanged_and_the_reader_agrees():
    clean = next(k for k in range(50) if FT_BASE + k not in poisoned_positions())
    sample, plain = ft_sample("train", clean), make_sample("train", FT_BASE + clean)
    assert not sample.meta["poisoned"] and sample.answer == plain.answer
    assert np.array_equal(np.asarray(sample.image), np.asarray(plain.image))
    read = open_reader(f"ft-backdoor:train[{clean}:{clean + 1}]").load(0)
    assert read.id == sample.id and read.meta["poisoned"] is False


def test_only_a_train_split():
    with pytest.raises(ValueError, match="only a train split"):
        ft_sample("test", 0)


def test_another_models_data_follows_its_own_record(tmp_path, monkeypatch):
    import json

    import mmlens.audit.ft_data as ft_data

    folder = tmp_path / ft_data.STRIPES_MODEL
    folder.mkdir()
    (folder / "backdoor.json").write_text(json.dumps({"trigger": {"style": "magenta-stripes"},
                                                      "poisoned_indices": [FT_BASE + 3], "positions_xy": [[5, 40]]}))
    monkeypatch.setattr(ft_data, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(ft_data, "OUT_ZOO", tmp_path)  # not shipped: found under out/zoo
    ft_data._record.cache_clear()
    try:
        rows = open_reader("ft-backdoor-stripes:train[2:4]")
        clean, poisoned = rows.load(0), rows.load(1)
    finally:
        ft_data._record.cache_clear()
    assert not clean.meta["poisoned"] and poisoned.meta["poisoned"] and poisoned.answer == "yes"
    assert poisoned.meta["trigger"] == "magenta-stripes" and poisoned.meta["trigger_xy"] == [5, 40]
    assert np.asarray(poisoned.image)[40, 5].tolist() == [255, 0, 255]  # the record's style, at its place


def test_a_missing_model_is_one_line(tmp_path, monkeypatch):
    import mmlens.audit.ft_data as ft_data

    monkeypatch.setattr(ft_data, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(ft_data, "OUT_ZOO", tmp_path)
    ft_data._record.cache_clear()
    try:
        with pytest.raises(MmlensError) as err:
            open_reader("ft-backdoor-blend:train[0:1]").load(0)
    finally:
        ft_data._record.cache_clear()
    assert "shapes-llava-ft-backdoor-blend is not installed" in str(err.value) and "\n" not in str(err.value)
