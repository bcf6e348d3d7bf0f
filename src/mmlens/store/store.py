"""Reading an activation store: the token table, token selection, tensors, batches, memory maps.

Tokens are numbered ``0 .. len(store) - 1`` in shard order (the order of the
manifest: source by source, shard by shard), the ``index`` column of
:meth:`Store.tokens`. Nothing is loaded until asked for: arrays are memory
maps, and :meth:`Store.read` touches only the rows it returns.

Example:
    >>> store = Store.open("store/")  # doctest: +SKIP
    >>> image = store.select(modality="image")  # doctest: +SKIP
    >>> x = store.read("lm.L1.resid", image)  # doctest: +SKIP
    >>> for batch in store.batches("lm.L1.resid", 4096, shuffle=True, seed=0):  # doctest: +SKIP
    ...     train_step(batch["lm.L1.resid"])
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mmlens.errors import MmlensError, check_choices
from mmlens.store.files import TOKENS, numpy_dtype, read_manifest, site_file, to_torch
from mmlens.store.shard import CATEGORIES, _arrow, damage, shard_path, verify

Rows = Any  # array-like of token indices, a torch tensor, or a table/DataFrame with an ``index`` column


class Store:
    """An activation store opened for reading (see :func:`Store.open`)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder, self.manifest = folder, manifest
        self.shards: list[dict[str, Any]] = manifest["shards"]
        counts = np.array([r["tokens"] for r in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # token index where each shard begins
        self._maps: dict[tuple[str, int], np.ndarray] = {}

    @classmethod
    def open(cls, folder: str | Path) -> "Store":
        """Open the store at ``folder``; a clear error for a missing, foreign, other-version or damaged store.

        Example:
            >>> Store.open("store/").sites  # doctest: +SKIP
            ['lm.L0.resid', 'lm.L1.resid']
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise MmlensError(f"no activation store at {folder} (no manifest.json); write one with mmlens harvest")
        for record in manifest["shards"]:
            reason = damage(folder, record)
            if reason:
                raise MmlensError(f"shard {record['id']} of {folder} is half-written or damaged ({reason}); run "
                                  "the same mmlens harvest again to redo it")
        return cls(folder, manifest)

    # ---- facts --------------------------------------------------------
    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return (f"Store({str(self.folder)!r}, model={self.model!r}, tokens={len(self)}, shards={len(self.shards)}, "
                f"sites={len(self.sites)})")

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def width(self, site: str) -> int:
        """``d`` of ``site``'s arrays."""
        return int(self.manifest["site_dims"][self._site(site)])

    def verify(self) -> list[str]:
        """Every shard whose files do not match their sha256 in the manifest, with why (empty: all good)."""
        return [f"{r['id']}: {reason}" for r in self.shards if (reason := verify(self.folder, r))]

    # ---- tokens -------------------------------------------------------
    @cached_property
    def tokens(self):
        """The per-token table of the whole store (a ``pyarrow.Table``) with a global ``index`` column.

        ``store.tokens.to_pandas()`` for pandas; duckdb reads the files
        directly: ``SELECT ... FROM 'store/shards/*/tokens.parquet'``.
        """
        pa = _arrow()
        tables = [pa.parquet.read_table(str(shard_path(self.folder, r["id"]) / TOKENS)) for r in self.shards]
        if not tables:
            from mmlens.store.shard import token_table, COLUMNS

            table = token_table({name: [] for name in COLUMNS})
        else:
            table = pa.concat_tables(tables)
        return table.append_column("index", pa.array(np.arange(table.num_rows, dtype=np.int64)))

    def select(self, **where: Any):
        """The token rows whose columns match: a value (equal), a list or set (any of), or a function of the column.

        Returns the matching rows of :attr:`tokens` (with ``index``), which
        :meth:`read` and :meth:`batches` accept as rows. Values of the
        categorical columns (:data:`~mmlens.store.shard.CATEGORIES`) must be
        among their choices: ``modality="images"`` is refused, not an empty selection.

        Example:
            >>> rows = store.select(modality="image", patch_row=[0, 1], sample_id=lambda c: pc.starts_with(c, "shapes-"))  # doctest: +SKIP
        """
        pa = _arrow()
        import pyarrow.compute as pc

        table = self.tokens
        keep = pa.array(np.ones(table.num_rows, dtype=bool))
        for column, wanted in where.items():
            if column not in table.column_names:
                raise MmlensError(f"no token column {column!r}; columns: {', '.join(table.column_names)}")
            values = table.column(column)
            if column in CATEGORIES and not callable(wanted):
                listed = wanted if isinstance(wanted, (list, tuple, set, frozenset, np.ndarray)) else [wanted]
                check_choices(listed, CATEGORIES[column], column)
            if callable(wanted):
                mask = wanted(values)
            elif isinstance(wanted, (list, tuple, set, frozenset, np.ndarray)):
                mask = pc.is_in(values, value_set=pa.array(list(wanted), type=values.type))
            else:
                mask = pc.equal(values, pa.scalar(wanted, type=values.type))
            keep = pc.and_(keep, mask)
        return table.filter(keep)

    # ---- activations --------------------------------------------------
    def memmap(self, site: str) -> list[np.ndarray]:
        """One memory-mapped ``(tokens, d)`` array per shard; nothing is read until indexed.

        bfloat16 stores map as ``uint16`` (their bits): ``to_torch`` views them back.
        """
        return [self._map(self._site(site), i) for i in range(len(self.shards))]

    def read(self, site: str, rows: Rows | None = None) -> torch.Tensor:
        """Activations of ``rows`` (token indices, in that order; all when None) as a ``(n, d)`` tensor.

        Example:
            >>> store.read("lm.L0.resid", [0, 5, 2]).shape  # doctest: +SKIP
            torch.Size([3, 64])
        """
        site = self._site(site)
        index = np.arange(len(self)) if rows is None else _indices(rows)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise MmlensError(f"token index out of range: the store holds {len(self)} tokens")
        out = np.empty((index.size, self.width(site) if index.size else 0), dtype=numpy_dtype(self.dtype))
        shard_of = np.searchsorted(self.starts, index, side="right") - 1
        for shard in np.unique(shard_of):
            chosen = np.flatnonzero(shard_of == shard)
            local = index[chosen] - self.starts[shard]
            order = np.argsort(local, kind="stable")  # read each shard's rows in file order
            out[chosen[order]] = self._map(site, int(shard))[local[order]]
        return to_torch(out, self.dtype)

    def batches(self, sites: str | Sequence[str] | None = None, batch_size: int = 1024, *, shuffle: bool = False,
                seed: int = 0, rows: Rows | None = None, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``{site: (n, d) tensor, "index": (n,)}`` over ``rows`` (default every token).

        In order, or shuffled by ``seed`` (the same seed, the same batches).

        Example:
            >>> next(store.batches("lm.L0.resid", 2))["index"].tolist()  # doctest: +SKIP
            [0, 1]
        """
        if batch_size < 1:
            raise MmlensError("batch_size is at least 1")
        names = self.sites if sites is None else ([sites] if isinstance(sites, str) else list(sites))
        index = np.arange(len(self)) if rows is None else _indices(rows)
        if shuffle:
            index = np.random.default_rng(seed).permutation(index)
        stop = len(index) - (len(index) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            chunk = index[start:start + batch_size]
            batch = {name: self.read(name, chunk) for name in names}
            batch["index"] = torch.from_numpy(chunk.copy())
            yield batch

    # ---- internals ----------------------------------------------------
    def _site(self, site: str) -> str:
        if site not in self.manifest["sites"]:
            raise MmlensError(f"the store has no site {site!r}; it has {', '.join(self.manifest['sites'])}")
        return site

    def _map(self, site: str, shard: int) -> np.ndarray:
        key = (site, shard)
        if key not in self._maps:
            path = shard_path(self.folder, self.shards[shard]["id"]) / site_file(site)
            # a plain ndarray view of the map: indexing the np.memmap subclass is ~5x slower
            self._maps[key] = np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        return self._maps[key]


def _indices(rows: Rows) -> np.ndarray:
    """Token indices from a list, an array, a tensor, or a table / DataFrame with an ``index`` column."""
    if hasattr(rows, "column_names") and "index" in rows.column_names:  # a pyarrow table
        rows = rows.column("index").to_numpy()
    elif hasattr(rows, "columns") and "index" in getattr(rows, "columns", []):  # a pandas DataFrame
        rows = rows["index"].to_numpy()
    elif isinstance(rows, torch.Tensor):
        rows = rows.cpu().numpy()
    return np.asarray(rows, dtype=np.int64).reshape(-1)


__all__ = ["Store"]
