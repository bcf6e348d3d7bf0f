"""One site's activations from an activation store, as shuffled float32 batches with their row table.

:class:`SiteActivations` picks a site and a modality (``image``, ``text``,
``special`` or ``all``) of a :class:`mmlens.store.Store` and keeps the table of
its rows (sample id and number, position, modality, patch row and column,
token), so any row an SAE looks at maps back to its sample and patch.

Batches are a pure function of ``(seed, batch number)``: epoch ``e`` is the
permutation drawn from ``seed + e``, so a resumed training run reads exactly
the batches an uninterrupted one would. A site small enough (``cache_bytes``)
is read into memory once; a bigger one is read batch by batch from the
store's memory maps. Both give the same numbers.

Example:
    >>> acts = SiteActivations("store/", "lm.L2.resid", modality="image")  # doctest: +SKIP
    >>> x, rows = next(acts.stream(4096, seed=0))  # doctest: +SKIP
    >>> acts.frame().iloc[rows[:3].numpy()]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mmlens.errors import MmlensError, check_choice
from mmlens.store import Store

MODALITIES = ("image", "text", "special", "all")
FRAME_COLUMNS = {"index": "index", "sample_id": "sample_id", "sample": "sample", "position": "position",
                 "modality": "modality", "patch_row": "row", "patch_col": "col", "token": "token"}
DEFAULT_CACHE_BYTES = 2 << 30  # read a site into memory when its float32 copy takes at most this


def batch_order(rows: int, batch_size: int, seed: int = 0, start: int = 0, stop: int | None = None,
                what: str = "the activations") -> Iterator[np.ndarray]:
    """Row numbers of batches ``start, start + 1, ...`` of ``rows`` rows (endless unless ``stop``).

    Epoch ``e`` is the permutation drawn from ``seed + e``, cut into full
    batches (an epoch's remainder is skipped), so batch ``b`` is the same
    whatever ``start`` was.

    Example:
        >>> [b.tolist() for b in batch_order(4, 2, seed=0, stop=2)]
        [[2, 0], [1, 3]]
    """
    per_epoch = rows // batch_size if batch_size >= 1 else 0
    if per_epoch == 0:
        raise MmlensError(f"batch size {batch_size} does not fit the {rows} rows of {what}")
    batch, order, epoch = start, None, -1
    while stop is None or batch < stop:
        if batch // per_epoch != epoch:
            epoch = batch // per_epoch
            order = np.random.default_rng(seed + epoch).permutation(rows)
        offset = (batch % per_epoch) * batch_size
        yield order[offset:offset + batch_size]
        batch += 1


class _Batches:
    """Shuffled batches of whatever ``read`` returns for row numbers."""

    site: str

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def stream(self, batch_size: int, seed: int = 0, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(activations, row numbers)`` for batches ``start, start + 1, ...`` (endless unless ``stop``).

        Each epoch is a fresh permutation (``seed + epoch``), cut into full
        batches (the remainder of an epoch is skipped). Batch ``b`` is the same
        whatever ``start`` was: resuming at ``start=b`` continues a run exactly.

        Example:
            >>> x, rows = next(acts.stream(256, seed=0))  # doctest: +SKIP
            >>> x.shape  # doctest: +SKIP
            torch.Size([256, 128])
        """
        for chosen in batch_order(len(self), batch_size, seed, start, stop, self.site):
            yield self.read(chosen), torch.from_numpy(chosen)


class SiteActivations(_Batches):
    """The rows of one site of a store, optionally one modality and other token-column filters.

    ``where`` filters on token columns like :meth:`Store.select` (e.g.
    ``sample=range(0, 100)``). Row ``i`` here is ``rows[i]``; its store index
    is ``rows["index"][i]``.

    Example:
        >>> acts = SiteActivations(store, "lm.L2.resid", "image")  # doctest: +SKIP
        >>> len(acts), acts.width  # doctest: +SKIP
        (64000, 128)
    """

    def __init__(self, store: Store | str | Path, site: str, modality: str = "all",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, **where: Any) -> None:
        self.store = store if isinstance(store, Store) else Store.open(store)
        check_choice(modality, MODALITIES, "modality")
        self.width = self.store.width(site)  # also a one-line error for a site the store lacks
        self.site, self.modality = site, modality
        if modality != "all":
            where = {"modality": modality, **where}
        where = {key: (list(value) if isinstance(value, range) else value) for key, value in where.items()}
        self.rows = self.store.select(**where) if where else self.store.tokens
        if self.rows.num_rows == 0:
            raise MmlensError(f"no {modality} tokens at {site} in {self.store.folder}")
        self.index = self.rows.column("index").to_numpy()
        self._cache = self._read(np.arange(len(self))) if len(self) * self.width * 4 <= cache_bytes else None

    def __len__(self) -> int:
        return int(self.rows.num_rows)

    def read(self, rows: np.ndarray | torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Float32 activations ``(n, width)`` of row numbers ``rows`` (all when None).

        Example:
            >>> acts.read([0, 1]).shape  # doctest: +SKIP
            torch.Size([2, 128])
        """
        chosen = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if self._cache is not None:
            return self._cache[torch.from_numpy(chosen)]
        return self._read(chosen)

    def chunks(self, size: int = 8192) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every row once, in order, ``size`` rows at a time: ``(activations, row numbers)``."""
        for first in range(0, len(self), size):
            chosen = np.arange(first, min(first + size, len(self)))
            yield self.read(chosen), torch.from_numpy(chosen)

    def frame(self):
        """The row table as a pandas DataFrame: index, sample_id, sample, position, modality, row, col, token.

        Row ``i`` of the frame is row ``i`` of :meth:`read` and :meth:`stream`.
        """
        names = [name for name in FRAME_COLUMNS if name in self.rows.column_names]
        return self.rows.select(names).to_pandas().rename(columns=FRAME_COLUMNS)

    def _read(self, chosen: np.ndarray) -> torch.Tensor:
        return self.store.read(self.site, self.index[chosen]).float()


class TensorActivations(_Batches):
    """Activations already in memory (any device), with :class:`SiteActivations`' batches: train an SAE on a tensor.

    Batches stay on ``rows``' device, so rows kept on a GPU train without a
    host copy per step.

    Example:
        >>> acts = TensorActivations(torch.randn(1000, 16), site="lm.L2.resid")
        >>> x, rows = next(acts.stream(256))
        >>> tuple(x.shape), acts.width
        ((256, 16), 16)
    """

    modality = "all"
    store = None

    def __init__(self, rows: torch.Tensor, site: str = "tensor") -> None:
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise MmlensError(f"activations must be a non-empty (rows, width) tensor, not shape {tuple(rows.shape)}")
        self.rows_tensor, self.site, self.width = rows, site, int(rows.shape[1])

    def __len__(self) -> int:
        return int(self.rows_tensor.shape[0])

    def read(self, rows: np.ndarray | torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Float32 rows ``rows`` (all when None), on the tensor's device."""
        if rows is None:
            return self.rows_tensor.float()
        chosen = torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1), device=self.rows_tensor.device)
        return self.rows_tensor[chosen].float()


__all__ = ["MODALITIES", "SiteActivations", "TensorActivations", "batch_order"]
