"""One shard: the activations and token table of a fixed run of samples, written whole or not at all.

Example:
    >>> import numpy as np
    >>> table = token_table([])
    >>> table.num_rows, table.column_names[:3]
    (0, ['shard', 'offset', 'sample_id'])
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmlens.store.files import SHARDS, TMP_PREFIX, TOKENS, publish, save_array, sha256_file, site_file

#: Columns of the per-token table, in order, with their Arrow types (strings, or numpy dtypes).
COLUMNS: dict[str, str] = {
    "shard": "string",        # the shard holding the token's activations
    "offset": "int32",        # its row in that shard's arrays
    "sample_id": "string",    # the dataset row's id
    "sample": "int64",        # the dataset row's number in its reader
    "position": "int32",      # position in the sample's own sequence (padding not counted)
    "modality": "string",     # text, image or special
    "image": "int16",         # which image of the sample (-1: not an image patch)
    "view": "int16",          # which view (tile, global view) of that image (-1 likewise)
    "view_kind": "string",    # image, global or tile ("" for non-image tokens)
    "patch_row": "int16",     # row of the patch in the view's grid (-1 likewise)
    "patch_col": "int16",     # column likewise
    "token_id": "int32",
    "token": "string",        # the token's text as the tokenizer spells it
}
#: Columns with a fixed set of values, and those values (a select on anything else is a typo).
CATEGORIES: dict[str, tuple[str, ...]] = {"modality": ("text", "image", "special"),
                                          "view_kind": ("image", "global", "tile", "")}


def _arrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        from mmlens.errors import MmlensError

        raise MmlensError("the activation store needs pyarrow: pip install 'mmlens[store]'") from None
    return pyarrow


def token_table(rows: Sequence[dict[str, Any]] | dict[str, Sequence[Any]]):
    """An Arrow table of :data:`COLUMNS` from row dicts or from one sequence per column.

    Example:
        >>> token_table({name: [] for name in COLUMNS}).num_rows
        0
    """
    pa = _arrow()
    if isinstance(rows, dict):
        columns = rows
    else:
        columns = {name: [row[name] for row in rows] for name in COLUMNS}
    arrays = {}
    for name, kind in COLUMNS.items():
        values = columns[name]
        if kind == "string":
            arrays[name] = pa.array(list(values), type=pa.string())
        else:
            arrays[name] = pa.array(np.asarray(values, dtype=kind), type=pa.from_numpy_dtype(np.dtype(kind)))
    return pa.table(arrays)


@dataclass
class ShardData:
    """What one shard holds before it is written."""

    arrays: dict[str, np.ndarray]
    table: Any  # pyarrow.Table of COLUMNS
    samples: int
    errors: list[dict[str, Any]] = field(default_factory=list)


def shard_path(folder: Path, shard_id: str) -> Path:
    return folder / SHARDS / shard_id


def write_shard(folder: Path, shard_id: str, data: ShardData) -> dict[str, Any]:
    """Write ``data`` as shard ``shard_id`` of the store at ``folder``; its record for the manifest.

    The files go to ``shards/.tmp-<id>`` and are renamed into ``shards/<id>``
    once complete; a shard folder already there (left by a run killed before
    its commit) is replaced. On any error the temporary folder is removed.
    """
    pq = _arrow().parquet
    tmp = folder / SHARDS / f"{TMP_PREFIX}{shard_id}"
    final = shard_path(folder, shard_id)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for site, array in data.arrays.items():
            save_array(tmp / site_file(site), array)
        pq.write_table(data.table, str(tmp / TOKENS))
        with (tmp / TOKENS).open("rb") as handle:
            os.fsync(handle.fileno())
        files = publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"id": shard_id, "tokens": int(data.table.num_rows), "samples": data.samples,
            "errors": data.errors, "files": files}


def damage(folder: Path, record: dict[str, Any]) -> str | None:
    """Why a finished shard's files are not as its record says (missing, other size), or None.

    Sizes only: cheap enough for every open. :func:`verify` compares checksums.
    """
    path = shard_path(folder, record["id"])
    for name, facts in record["files"].items():
        file = path / name
        if not file.is_file():
            return f"{file.relative_to(folder)} is missing"
        if file.stat().st_size != facts["bytes"]:
            return f"{file.relative_to(folder)} has {file.stat().st_size} bytes, not {facts['bytes']}"
    return None


def verify(folder: Path, record: dict[str, Any]) -> str | None:
    """Like :func:`damage`, and every file's sha256 against the record."""
    reason = damage(folder, record)
    if reason:
        return reason
    path = shard_path(folder, record["id"])
    for name, facts in record["files"].items():
        if sha256_file(path / name) != facts["sha256"]:
            return f"{(path / name).relative_to(folder)} does not match its checksum"
    return None
