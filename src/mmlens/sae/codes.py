"""An SAE's latent codes over a whole activation store, kept sparse, and the samples behind the store's rows.

:func:`encode_store` runs ``sae.encode`` over one site of a store, in token
order, and keeps each token's ``top`` strongest latents (values and ids): a
TopK SAE never has more than ``k`` active latents, so ``top >= k`` loses
nothing, and SAE-V's first step ("each token's top 50 latents") is exactly
this table. Dashboards, labels and SAE-V all read :class:`Codes`.
:func:`store_samples` reopens the datasets a store was harvested from, so a
token row leads back to its image.

Example:
    >>> import torch
    >>> codes = Codes("lm.L2.resid", np.arange(3), torch.tensor([[1, 0], [0, 2], [2, 1]]),
    ...               torch.tensor([[2.0, 1.0], [3.0, 0.0], [1.0, 0.5]]), d_sae=4)
    >>> codes.latent(0).tolist()
    [1.0, 3.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.data.sample import Sample
    from mmlens.store import Store


@dataclass
class Codes:
    """Each token's ``top`` strongest latents: ``latents[i]`` ids (strongest first), ``values[i]`` activations.

    ``index[i]`` is the token's row in the store (``Store.tokens``'s
    ``index``); a value of 0 means fewer than ``top`` latents fired.
    """

    site: str
    index: np.ndarray
    latents: torch.Tensor
    values: torch.Tensor
    d_sae: int

    def __len__(self) -> int:
        return len(self.index)

    def latent(self, j: int) -> torch.Tensor:
        """Latent ``j``'s activation on every token, dense ``(n,)`` (0 where it is not among the top).

        Example:
            >>> codes.latent(2).tolist()  # doctest: +SKIP
            [0.0, 0.0, 1.0]
        """
        return (self.values * (self.latents == j)).sum(1)

    def dense(self, latents: list[int] | np.ndarray) -> torch.Tensor:
        """Activations of the chosen latents on every token, ``(n, len(latents))``."""
        return torch.stack([self.latent(int(j)) for j in latents], 1) if len(latents) else torch.zeros(len(self), 0)

    def firing_counts(self) -> torch.Tensor:
        """How many tokens each latent fires on (value > 0), ``(d_sae,)``."""
        active = self.latents[self.values > 0].long()
        return torch.bincount(active, minlength=self.d_sae)


def encode_store(sae: Any, store: "Store", site: str | None = None, *, top: int = 50, rows: Any = None,
                 batch_size: int = 4096) -> Codes:
    """Encode every token (or ``rows``) of ``store`` at ``site`` (default ``sae.site``); keep the top ``top``.

    Example:
        >>> codes = encode_store(sae, Store.open("store/"), top=50)  # doctest: +SKIP
        >>> codes.latents.shape  # doctest: +SKIP
        torch.Size([4603, 50])
    """
    site = site or getattr(sae, "site", None)
    if not site:
        raise MmlensError("the SAE names no site; give the site to read (e.g. lm.L2.resid)")
    if store.width(site) != sae.d_in:
        raise MmlensError(f"the store's {site} is {store.width(site)} wide but the SAE reads d_in={sae.d_in}")
    if top < 1:
        raise MmlensError(f"top is at least 1 (got {top})")
    top = min(top, sae.d_sae)
    index = np.arange(len(store)) if rows is None else _rows(rows)
    ids, vals = [], []
    with torch.no_grad():
        for batch in store.batches(site, batch_size, rows=index):
            acts = sae.encode(batch[site].float())
            best = acts.topk(top, dim=-1)
            ids.append(best.indices.to(torch.int32))
            vals.append(best.values.clamp_min(0).float())
    empty = torch.zeros(0, top)
    return Codes(site, index, torch.cat(ids) if ids else empty.int(), torch.cat(vals) if vals else empty,
                 int(sae.d_sae))


def store_samples(store: "Store") -> Callable[[str, int], "Sample"]:
    """A function ``(shard, sample) -> Sample`` that reloads a token row's sample from the store's own datasets.

    The store's manifest keeps each source's reader options; shapes-world
    and JSON Lines sources reopen as they were harvested.

    Example:
        >>> load = store_samples(Store.open("store/"))  # doctest: +SKIP
        >>> load("465a016a12-0", 3).id  # doctest: +SKIP
        'shapes-test-3'
    """
    source_of = {r["id"]: r["source"] for r in store.shards}
    readers: dict[str, Any] = {}
    options = {s["key"]: s["reader"] for s in store.manifest.get("sources", [])}

    def load(shard: str, sample: int) -> "Sample":
        key = source_of.get(shard)
        if key not in options:
            raise MmlensError(f"shard {shard} of {store.folder} names no known source")
        if key not in readers:
            readers[key] = _reopen(options[key])
        return readers[key].load(int(sample))

    return load


def _reopen(options: dict[str, Any]) -> Any:
    """The reader a manifest's source options describe (each reader's own ``options()``)."""
    from mmlens.data.readers import FolderReader, HFReader, JsonlReader, WorldReader

    kind = options.get("reader")
    if kind == WorldReader.name:
        return WorldReader(options["world"], options["split"], options["start"], options["stop"])
    if kind == JsonlReader.name:
        return JsonlReader(options["path"])
    if kind == FolderReader.name:
        return FolderReader(options["path"], prompt=options.get("prompt"))
    if kind == HFReader.name:
        return HFReader(list(options["path"]), columns=options.get("columns") or None, split=options.get("split"))
    raise MmlensError(f"cannot reopen a {kind!r} dataset from the store's manifest")


def _rows(rows: Any) -> np.ndarray:
    if hasattr(rows, "column_names") and "index" in rows.column_names:
        return rows.column("index").to_numpy()
    if isinstance(rows, torch.Tensor):
        return rows.cpu().numpy().astype(np.int64)
    return np.asarray(rows, dtype=np.int64).reshape(-1)


__all__ = ["Codes", "encode_store", "store_samples"]
