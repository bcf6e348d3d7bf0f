"""Writing results to disk and reading stored ones back: the storage layer over plain result data.

Results are data (:class:`~mmlens.attribution.Explanation`,
:class:`~mmlens.neurons.NeuronSet`, :class:`~mmlens.neurons.WeightSet`); this
module alone knows files:

- an explanation is ``explanation.json`` (its :meth:`to_json`) plus, when
  asked, one overlay PNG per method, answer token and image;
- a neuron or weight set is ``<path>.safetensors`` (its tensors) plus
  ``<path>.json`` (names and metadata), from its ``to_tensors()``; nothing is
  pickled.

Example:
    >>> import torch
    >>> from mmlens.neurons import NeuronSet
    >>> chosen = NeuronSet(["lm.L0.neurons", "lm.L1.neurons"], torch.tensor([3, 7]),
    ...                    torch.tensor([0.9, 0.8]), ["image", "text"])
    >>> tensors_path, json_path = save_neuron_set(chosen, "/tmp/chosen")
    >>> load_neuron_set("/tmp/chosen").labels
    ['image', 'text']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError

if TYPE_CHECKING:  # storage reads results; it imports no model code at runtime
    from mmlens.attribution.explanation import Explanation
    from mmlens.neurons.coupled import WeightSet
    from mmlens.neurons.neuron_set import NeuronSet


def save_explanation(explanation: "Explanation", folder: str | Path, figures: bool = True) -> Path:
    """Write ``explanation.json`` (and, with ``figures``, one PNG overlay per method and token) into ``folder``.

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> e = mmlens.explain(mmlens.load("tiny-llava"), [Image.new("RGB", (64, 64))], "<image> hi",
        ...                    methods=["rollout"], max_new_tokens=1)
        >>> (save_explanation(e, "/tmp/explained", figures=False) / "explanation.json").is_file()
        True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "explanation.json").write_text(json.dumps(explanation.to_json()))
    if figures:
        from mmlens.report.figures import save_overlays  # matplotlib only when figures are asked for

        save_overlays(explanation, folder)
    return folder


def save_neuron_set(neurons: "NeuronSet", path: str | Path) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json``; returns both paths (``path`` may carry either suffix).

    Example:
        >>> [p.suffix for p in save_neuron_set(chosen, "/tmp/chosen.json")]
        ['.safetensors', '.json']
    """
    return _save(*neurons.to_tensors(), path)


def load_neuron_set(path: str | Path) -> "NeuronSet":
    """Read a set written by :func:`save_neuron_set` (give the path with or without a suffix).

    Example:
        >>> len(load_neuron_set("/tmp/chosen.safetensors"))
        2
    """
    from mmlens.neurons.neuron_set import FORMAT, NeuronSet

    return NeuronSet.from_tensors(*_load(path, FORMAT, "neuron set"))


def save_weight_set(weights: "WeightSet", path: str | Path) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json`` for a :class:`~mmlens.neurons.WeightSet`; returns both paths.

    Example:
        >>> from mmlens.neurons import WeightSet
        >>> found = WeightSet(["lm_head.weight"], torch.tensor([1]), torch.tensor([2]), torch.ones(1))
        >>> load_weight_set(save_weight_set(found, "/tmp/found")[1]).params
        ['lm_head.weight']
    """
    return _save(*weights.to_tensors(), path)


def load_weight_set(path: str | Path) -> "WeightSet":
    """Read a set written by :func:`save_weight_set` (give the path with or without a suffix)."""
    from mmlens.neurons.coupled import FORMAT, WeightSet

    return WeightSet.from_tensors(*_load(path, FORMAT, "weight set"))


def _save(tensors: dict[str, torch.Tensor], header: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    tensors_path, json_path = _paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tensors_path))
    json_path.write_text(json.dumps(header, indent=1))
    return tensors_path, json_path


def _load(path: str | Path, format: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON header stored at ``path``, checked to be of ``format``."""
    tensors_path, json_path = _paths(path)
    if not tensors_path.is_file() or not json_path.is_file():
        raise MmlensError(f"no {what} at {tensors_path.with_suffix('')} (.safetensors and .json)")
    header = json.loads(json_path.read_text())
    if header.get("format") != format:
        raise MmlensError(f"{json_path} is not an mmlens {what}")
    return load_file(str(tensors_path)), header


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
