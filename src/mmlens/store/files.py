"""The store on disk: names, the manifest, dtypes, and writing files so that a kill leaves nothing half-done.

A store folder holds::

    manifest.json            model, sites, dtype, layout version, sources, finished shards and their checksums
    errors.jsonl             bad rows (id, reason, shard), rewritten from the manifest at each commit
    shards/<id>/tokens.parquet          one row per stored token
    shards/<id>/<site>.npy              (tokens, d) per site, memory-mappable
    shards/.tmp-<id>/                   a shard being written (never read; removed on the next run)

A shard counts only once the manifest lists it: the shard folder is written
under a temporary name, renamed, then the manifest is replaced atomically.
Whatever a kill leaves (a temporary folder, a renamed folder the manifest does
not list) is removed and redone by the next run.

Example:
    >>> numpy_dtype("bfloat16")
    dtype('uint16')
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlens.errors import MmlensError, check_choice

FORMAT = "mmlens.ActivationStore"
LAYOUT_VERSION = 1
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
SHARDS = "shards"
TOKENS = "tokens.parquet"
TMP_PREFIX = ".tmp-"
DTYPES = ("float16", "bfloat16", "float32")
#: numpy has no bfloat16: its bits are stored as uint16 and viewed back as torch.bfloat16.
_NUMPY = {"float16": np.dtype("float16"), "bfloat16": np.dtype("uint16"), "float32": np.dtype("float32")}
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a store dtype is kept as on disk."""
    return _NUMPY[check_dtype(dtype)]


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a store dtype is read as."""
    return _TORCH[check_dtype(dtype)]


def check_dtype(dtype: str) -> str:
    check_choice(dtype, DTYPES, "dtype")
    return dtype


def to_numpy(values: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor as the numpy array the store keeps for ``dtype`` (bfloat16 as its uint16 bits)."""
    values = values.detach().to(torch_dtype(dtype)).cpu().contiguous()
    if dtype == "bfloat16":
        values = values.view(torch.int16)
    return values.numpy().view(numpy_dtype(dtype))


def to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored array as a tensor of ``dtype`` (bfloat16 viewed from its bits; no copy of a writeable array)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def site_file(site: str) -> str:
    """The file name of a site's array in a shard (site names are already file-safe: ``lm.L3.resid``)."""
    return f"{site}.npy"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(tmp: Path, final: Path) -> dict[str, dict[str, Any]]:
    """Checksum every file under ``tmp``, then move ``tmp`` to ``final`` in one rename (replacing a damaged one).

    Returns ``{relative path: {"sha256", "bytes"}}`` for the manifest.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); (root / "tmp").mkdir(); _ = (root / "tmp" / "a.txt").write_text("x")
        >>> publish(root / "tmp", root / "final")["a.txt"]["bytes"], (root / "final" / "a.txt").exists()
        (1, True)
    """
    files = {path.relative_to(tmp).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
             for path in sorted(tmp.rglob("*")) if path.is_file()}
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return files


def remove_unlisted_shards(folder: Path, listed: set[str] | list[str]) -> None:
    """Delete what ``folder/shards`` holds beyond the shards ``listed`` (half-written or unlisted ones).

    Example:
        >>> remove_unlisted_shards(Path("store/"), {"a1b2"})  # doctest: +SKIP
    """
    shards = folder / SHARDS
    if shards.is_dir():
        for path in shards.iterdir():
            if path.name.startswith(TMP_PREFIX) or path.name not in listed:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def disk_full(error: OSError) -> bool:
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path``, flushed to disk (a shard is renamed into place only after its files are)."""
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` by ``payload`` in one step: readers see the old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The store manifest of ``folder``; None where there is none; a clear error for another format or version.

    Example:
        >>> read_manifest(Path("/nonexistent")) is None
        True
    """
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MmlensError(f"{path} is not readable JSON ({error}); this folder is not an mmlens store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MmlensError(f"{folder} is not an mmlens activation store (its manifest.json is another kind); "
                          "use another --out")
    version = manifest.get("layout_version")
    if version != LAYOUT_VERSION:
        raise MmlensError(f"{folder} is an activation store of layout version {version}; this mmlens reads and "
                          f"writes version {LAYOUT_VERSION} (use the mmlens that wrote it, or another --out)")
    return manifest
