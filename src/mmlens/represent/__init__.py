"""Representations: CKA fingerprints, linear probes, concept vectors and steering.

Submodules import on first use (``from mmlens.represent import cka``), so
``import mmlens.represent`` stays light.

Example:
    >>> from mmlens.represent import cka_matrix
    >>> import torch
    >>> cka_matrix([torch.randn(8, 3)], [torch.randn(8, 5)]).shape
    torch.Size([1, 1])
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module; one line per export (other helpers add theirs here).
_EXPORTS = {
    "cka": "mmlens.represent.cka",
    "cka_matrix": "mmlens.represent.cka",
    "fingerprint": "mmlens.represent.fingerprint",
    "collect_last_token": "mmlens.represent.fingerprint",
    "train_probes": "mmlens.represent.probes",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmlens.represent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
