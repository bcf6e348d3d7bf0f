"""Pick the adapter for a model from its ``config.model_type``.

Example:
    >>> adapter_for_model_type("llava").family
    'llava'
"""

from __future__ import annotations

from importlib import import_module

from mmlens.errors import MmlensError
from mmlens.models.adapter import Adapter

# Modules that define adapters; each exports module-level Adapter instances.
_ADAPTER_MODULES = (
    "mmlens.models.llava",
    "mmlens.models.llava_next",
    "mmlens.models.qwen2_vl",
    "mmlens.models.idefics3",
    "mmlens.models.paligemma",
    "mmlens.models.causal_lm",
)


def adapters() -> dict[str, Adapter]:
    """Every known adapter, keyed by the ``model_type`` values it serves."""
    table: dict[str, Adapter] = {}
    for name in _ADAPTER_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:  # a family not written yet
                continue
            raise
        for value in vars(module).values():
            if isinstance(value, Adapter):
                table.update({model_type: value for model_type in value.model_types})
    return table


def adapter_for_model_type(model_type: str) -> Adapter:
    """The adapter for ``model_type``, or a clear error naming the supported ones."""
    table = adapters()
    if model_type not in table:
        raise MmlensError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(sorted(table))}"
        )
    return table[model_type]
