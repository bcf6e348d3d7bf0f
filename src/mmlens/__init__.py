"""mmlens: explain and interpret multimodal large language models.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llava")
    >>> with mmlens.capture(model, ["lm.L0.resid"]) as captured:
    ...     _ = model.forward(model.prepare("hello"))
    >>> captured["lm.L0.resid"].shape[-1] == model.hf.config.text_config.hidden_size
    True
"""

import importlib
from typing import Any

# Public names and the module each lives in. They import on first use, so
# `import mmlens` stays light (the command line can answer Ctrl-C while torch
# loads) and a script pays only for what it touches.
_EXPORTS = {
    "Explanation": "mmlens.attribution", "explain": "mmlens.attribution", "explain_batch": "mmlens.attribution",
    "Box": "mmlens.box",
    "CausalTrace": "mmlens.causal", "patch": "mmlens.causal", "trace": "mmlens.causal",
    "MmlensError": "mmlens.errors",
    "Captured": "mmlens.hooks", "capture": "mmlens.hooks", "intervene": "mmlens.hooks",
    "ImageInfo": "mmlens.layout", "Modality": "mmlens.layout", "TokenLayout": "mmlens.layout", "View": "mmlens.layout",
    "Batch": "mmlens.model", "Model": "mmlens.model",
    "load": "mmlens.models.loading", "wrap": "mmlens.models.loading",
    "NeuronSet": "mmlens.neurons",
    "load_result": "mmlens.report.files",
}
_SUBPACKAGES = {"attribution", "causal", "cli", "data", "hooks", "lens", "metrics", "models", "neurons", "readout",
                "report", "represent", "runner", "sae", "store", "web", "zoo", "box", "errors", "layout", "model",
                "notices"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mmlens.{name}")
    raise AttributeError(f"module 'mmlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _SUBPACKAGES)


__all__ = [
    "Batch",
    "Box",
    "Captured",
    "CausalTrace",
    "Explanation",
    "ImageInfo",
    "MmlensError",
    "Modality",
    "Model",
    "NeuronSet",
    "TokenLayout",
    "View",
    "capture",
    "explain",
    "explain_batch",
    "intervene",
    "load",
    "load_result",
    "patch",
    "trace",
    "wrap",
]
__version__ = "0.1.0"
