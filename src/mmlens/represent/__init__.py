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

# Public name -> module; one line per export (other helpers add theirs here). No export takes the
# name of a submodule (cka, fingerprint): importing the submodule would replace it on the package.
_EXPORTS = {
    "cka_matrix": "mmlens.represent.cka",
    "collect_last_token": "mmlens.represent.fingerprint",
    "probe_samples": "mmlens.represent.fingerprint",
    "shapes_tasks": "mmlens.represent.probe_tasks",
    "train_probes": "mmlens.represent.probes",
    "train_cav": "mmlens.represent.concepts",
    "tcav": "mmlens.represent.concepts",
    "fit_gcav": "mmlens.represent.gcav",
    "SteeringVector": "mmlens.represent.steering",
    "mean_difference": "mmlens.represent.steering",
    "shift_vectors": "mmlens.represent.steering",
    "steer": "mmlens.represent.steering",
    "track": "mmlens.represent.drift",
    "modality_reliance": "mmlens.represent.reliance",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmlens.represent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
