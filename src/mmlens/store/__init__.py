"""The activation store: activations one array per site, a per-token Parquet table, a manifest.

:mod:`.files` (the layout on disk), :mod:`.shard` (one shard, written whole or
not at all), :mod:`.writer` (opening a store to add to it), :mod:`.store`
(reading it), :mod:`.harvest` (the per-shard job that ``mmlens harvest`` runs).
See ``docs/store.md``.

Example:
    >>> from mmlens.store import Store
    >>> store = Store.open("store/")  # doctest: +SKIP
    >>> store.read("lm.L1.resid", store.select(modality="image")).shape  # doctest: +SKIP
    torch.Size([640, 64])
"""

from mmlens.store.files import DTYPES, LAYOUT_VERSION
from mmlens.store.store import Store
from mmlens.store.writer import StoreWriter

__all__ = ["DTYPES", "LAYOUT_VERSION", "Store", "StoreWriter"]
