"""Opening a store to add shards: create it, or check that this job may add to it, and clean what a kill left.

One store holds one model's activations at one set of sites, in one dtype,
for one choice of modalities and one shard and batch size (the batch a
sample ran in decides its padding, hence its bytes). Data from another reader
appends as a new source; the same reader and options again resumes it.

Example:
    >>> spec = {"model": {"name": "m", "weights_sha256": "ab"}, "sites": ["lm.L0.resid"], "dtype": "float16",
    ...         "modalities": ["image", "text"], "shard_size": 64, "batch_size": 8}
    >>> writer = StoreWriter.open(Path(tempfile.mkdtemp()) / "store", spec, {"reader": "world"})  # doctest: +SKIP
    >>> writer.finished  # doctest: +SKIP
    set()
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mmlens.errors import MmlensError
from mmlens.notices import notice
from mmlens.store.files import ERRORS, FORMAT, LAYOUT_VERSION, MANIFEST, disk_full, read_manifest, \
    remove_unlisted_shards, write_json_atomic
from mmlens.store.shard import damage

LOCK = ".lock"
#: What must be equal for a job to add to an existing store, and how to say it.
SPEC_KEYS = ("model", "sites", "dtype", "modalities", "shard_size", "batch_size")


def source_key(options: dict[str, Any]) -> str:
    """A short stable key of a reader's options: the prefix of its shard ids.

    Example:
        >>> source_key({"reader": "world", "world": "shapes", "split": "test", "start": 0, "stop": 8})
        'a6b8fbe8c2'
    """
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


class StoreWriter:
    """A store opened by one job: :attr:`finished` shard ids, :meth:`commit` for new ones."""

    def __init__(self, folder: Path, manifest: dict[str, Any], source: str, lock: int | None = None) -> None:
        self.folder, self.manifest, self.source = folder, manifest, source
        self._lock = lock

    def close(self) -> None:
        """Let another job write to the store (the lock also goes when the process dies, kill -9 included)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __del__(self) -> None:
        self.close()

    @classmethod
    def open(cls, folder: Path, spec: dict[str, Any], reader_options: dict[str, Any]) -> "StoreWriter":
        """Create the store at ``folder`` or open it for ``spec``; refuse another model, sites or settings."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise MmlensError(f"{folder} is a file, not a store folder")
        manifest = read_manifest(folder) if folder.exists() else None
        if manifest is None:
            if folder.exists() and any(p.name != LOCK for p in folder.iterdir()):
                raise MmlensError(f"{folder} is not empty and holds no store manifest: use a new or empty --out")
            manifest = {"format": FORMAT, "layout_version": LAYOUT_VERSION, **spec, "site_dims": {},
                        "sources": [], "shards": [], "created": _now()}
            from mmlens.provenance import mmlens_version

            manifest["mmlens_version"] = mmlens_version()
        else:
            _check_spec(folder, manifest, spec)
        key = source_key(reader_options)
        if key not in [s["key"] for s in manifest["sources"]]:
            manifest["sources"].append({"key": key, "reader": reader_options})
        folder.mkdir(parents=True, exist_ok=True)
        writer = cls(folder, manifest, key, _lock(folder))
        writer._clean()
        writer._save()
        return writer

    @property
    def finished(self) -> set[str]:
        return {record["id"] for record in self.manifest["shards"]}

    def commit(self, record: dict[str, Any], site_dims: dict[str, int]) -> None:
        """Add a written shard's record; from now on the shard is part of the store."""
        known = self.manifest["site_dims"]
        for site, d in site_dims.items():
            if known.setdefault(site, d) != d:
                raise MmlensError(f"{site} has width {d} in shard {record['id']}, {known[site]} in the store")
        order = {s["key"]: i for i, s in enumerate(self.manifest["sources"])}
        shards = [r for r in self.manifest["shards"] if r["id"] != record["id"]] + [record]
        shards.sort(key=lambda r: (order[r["source"]], r["index"]))
        self.manifest["shards"] = shards
        self._save()

    def _save(self) -> None:
        self.manifest["updated"] = _now()
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        errors = [json.dumps({**error, "shard": record["id"]}, sort_keys=True)
                  for record in self.manifest["shards"] for error in record["errors"]]
        tmp = self.folder / (ERRORS + ".tmp")
        tmp.write_text("".join(line + "\n" for line in errors))
        tmp.replace(self.folder / ERRORS)

    def _clean(self) -> None:
        """Drop damaged shards from the manifest, then remove every shard folder it does not list."""
        kept = []
        for record in self.manifest["shards"]:
            reason = damage(self.folder, record)
            if reason:
                notice(f"shard {record['id']} is damaged ({reason}): it is written again")
            else:
                kept.append(record)
        self.manifest["shards"] = kept
        self._save()  # the manifest stops listing damaged shards before their files go
        remove_unlisted_shards(self.folder, self.finished)


def _lock(folder: Path) -> int:
    """An exclusive lock on the store, or a clear error when another running job holds it."""
    handle = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(handle)
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise MmlensError(f"another job is writing to {folder} right now; wait for it to end, or use another "
                              "--out") from None
        raise
    return handle


@contextmanager
def exclusive_writer(folder: Path) -> Iterator[None]:
    """Inside the block this job alone writes to ``folder`` (created); a full disk is one line on how to go on.

    Example:
        >>> with exclusive_writer(Path("out/scores")):  # doctest: +SKIP
        ...     write_shards()
    """
    lock = None
    try:
        if not folder.exists():
            folder.mkdir(parents=True)
        if folder.is_dir():  # else the caller's own check names the problem
            lock = _lock(folder)
        yield
    except OSError as error:
        if disk_full(error):
            raise MmlensError(f"the disk is full at {folder}: free some space and run the same command again to "
                              "continue") from None
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _check_spec(folder: Path, manifest: dict[str, Any], spec: dict[str, Any]) -> None:
    for key in SPEC_KEYS:
        have, want = manifest.get(key), json.loads(json.dumps(spec[key]))
        if have == want:
            continue
        if key == "model":
            raise MmlensError(f"{folder} holds activations of {have.get('name')} (weights sha256 "
                              f"{str(have.get('weights_sha256'))[:12]}); this run's model is {want['name']} "
                              f"({want['weights_sha256'][:12]}): one model per store, use another --out")
        shown = {"sites": lambda v: ", ".join(v), "modalities": lambda v: ",".join(v)}.get(key, str)
        raise MmlensError(f"{folder} holds {key} {shown(have)}; this run asks for {shown(want)}: a store keeps "
                          f"one {key.replace('_', ' ')}, use another --out")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
