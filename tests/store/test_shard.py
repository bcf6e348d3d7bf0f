"""One shard: written whole or not at all, with sizes and checksums that find damage."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.store.shard import COLUMNS, ShardData, damage, shard_path, token_table, verify, write_shard


def _data(n: int = 3) -> ShardData:
    columns = {name: [0] * n for name in COLUMNS}
    columns.update(shard=["s"] * n, sample_id=["x"] * n, modality=["text"] * n, view_kind=[""] * n,
                   token=["a"] * n, offset=list(range(n)))
    return ShardData({"lm.L0.resid": np.arange(n * 4, dtype=np.float16).reshape(n, 4)}, token_table(columns), 1)


def test_token_table_takes_rows_or_columns_with_the_declared_types():
    by_rows = token_table([{name: (1 if kind != "string" else "t") for name, kind in COLUMNS.items()}])
    assert by_rows.column_names == list(COLUMNS)
    assert str(by_rows.schema.field("patch_row").type) == "int16" and by_rows.column("token").to_pylist() == ["t"]
    assert token_table({name: np.array([], dtype=object) for name in COLUMNS}).num_rows == 0


def test_a_written_shard_is_complete_and_verified(tmp_path):
    record = write_shard(tmp_path, "s-0", _data())
    assert record["tokens"] == 3 and set(record["files"]) == {"lm.L0.resid.npy", "tokens.parquet"}
    assert damage(tmp_path, record) is None and verify(tmp_path, record) is None
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".tmp")]
    assert np.load(shard_path(tmp_path, "s-0") / "lm.L0.resid.npy").shape == (3, 4)


def test_damage_finds_missing_and_resized_files_and_verify_finds_changed_bytes(tmp_path):
    record = write_shard(tmp_path, "s-0", _data())
    array = shard_path(tmp_path, "s-0") / "lm.L0.resid.npy"
    raw = bytearray(array.read_bytes())
    raw[-1] ^= 0xFF
    array.write_bytes(bytes(raw))
    assert damage(tmp_path, record) is None  # same size: only the checksum sees it
    assert "checksum" in verify(tmp_path, record)
    array.write_bytes(bytes(raw[:-2]))
    assert "bytes" in damage(tmp_path, record)
    array.unlink()
    assert "missing" in damage(tmp_path, record)


def test_a_failed_write_leaves_no_folder_and_a_rewrite_replaces_a_left_over_one(tmp_path, monkeypatch):
    import mmlens.store.shard as shard

    write_shard(tmp_path, "s-0", _data())  # as if a run was killed after writing but before its commit
    record = write_shard(tmp_path, "s-0", _data(5))
    assert record["tokens"] == 5 and verify(tmp_path, record) is None

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shard, "save_array", fail)
    with pytest.raises(OSError):
        write_shard(tmp_path, "s-1", _data())
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["s-0"]
