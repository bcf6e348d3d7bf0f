"""Site names, the same in every family, and the module and value behind each.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> expand(model, "lm.L*.resid")
    ['lm.L0.resid', 'lm.L1.resid']
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.model import Model

_LAYER_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.(resid|attn|mlp|neurons|attn_probs)$")
_LAYER_PARTS = ("resid", "attn", "mlp", "neurons", "attn_probs")
NEURON_VALUES = ("input", "gate")


@dataclass(frozen=True)
class Site:
    """A resolved site: the module to hook and which of its values is the site."""

    name: str
    module: torch.nn.Module
    reads: str  # "output" (first element if a tuple), "input" (first argument), "probs" (output[1])
    field: str = "last_hidden_state"  # read from a ModelOutput
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # applied before reading (read-only sites)

    @property
    def needs_eager(self) -> bool:
        return self.reads == "probs"


def site_names(model: "Model") -> list[str]:
    """Every site of ``model``: per decoder layer, then ``lm.embed``, vision layers, ``projector``."""
    names = [f"lm.L{i}.{part}" for i in range(model.n_layers) for part in _LAYER_PARTS]
    names.append("lm.embed")
    if model.adapter.multimodal:
        vision_parts = [p for p in _LAYER_PARTS if p != "neurons" or model.adapter.vision_neurons]
        names += [f"vision.L{i}.{part}" for i in range(model.n_vision_layers) for part in vision_parts]
        if model.adapter.projector:
            names.append("projector")
        if model.adapter.projector and model.adapter.projector_neurons:
            names.append("projector.neurons")
    return names


def expand(model: "Model", patterns: str | Sequence[str]) -> list[str]:
    """Site names matching glob ``patterns`` (``"lm.L*.resid"``), in model order."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not any(set(p) & set("*?[") for p in patterns):  # exact names: no need to list every site
        for name in patterns:
            resolve(model, name)
        return list(dict.fromkeys(patterns))
    known = site_names(model)
    chosen: list[str] = []
    for pattern in patterns:
        matches = [n for n in known if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise MmlensError(f"no site matches {pattern!r}; sites look like lm.L0.resid (see `mmlens info`)")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def resolve(model: "Model", name: str, neuron_value: str = "input") -> Site:
    """The module and value behind a site name.

    ``neuron_value="gate"`` reads a gated decoder MLP's neurons as
    ``act(gate_proj x)`` (what MINER and MMNeuron count as "active"), a
    read-only view; elsewhere it is the same as ``"input"``.

    Example:
        >>> resolve(model, "lm.L0.mlp").module is model.decoder_layers[0].mlp
        True
    """
    if neuron_value not in NEURON_VALUES:
        raise MmlensError(f"unknown neuron value {neuron_value!r}; choose one of {', '.join(NEURON_VALUES)}")
    adapter = model.adapter
    if name == "projector" and adapter.projector:
        return Site(name, model.module(adapter.projector), "output", adapter.projector_output)
    if name == "projector.neurons" and adapter.projector and adapter.projector_neurons:
        return Site(name, model.module(adapter.projector).get_submodule(adapter.projector_neurons), "input")
    if name == "lm.embed":
        return Site(name, model.decoder_layers[0], "input")
    match = _LAYER_SITE.match(name)
    if not match:
        raise MmlensError(f"unknown site {name!r}; sites look like lm.L0.resid (see `mmlens info`)")
    tower, index, part = match.group(1), int(match.group(2)), match.group(3)
    layers = model.decoder_layers if tower == "lm" else model.vision_layers
    if layers is None or index >= len(layers):
        raise MmlensError(f"site {name!r} is out of range: the model has {0 if layers is None else len(layers)} {tower} layers")
    layer = layers[index]
    attn, mlp = (adapter.attn, adapter.mlp) if tower == "lm" else (adapter.vision_attn, adapter.vision_mlp)
    if part == "resid":
        return Site(name, layer, "output")
    if part == "attn":
        return Site(name, layer.get_submodule(attn), "output")
    if part == "attn_probs":
        return Site(name, layer.get_submodule(attn), "probs")
    if part == "mlp":
        return Site(name, layer.get_submodule(mlp), "output")
    neurons = adapter.neurons if tower == "lm" else adapter.vision_neurons
    if neurons is None:
        raise MmlensError(f"{adapter.family}: no neuron site in the {tower} layers")
    if neuron_value == "gate" and tower == "lm" and adapter.mlp_gate and adapter.mlp_act:
        gate, act = layer.get_submodule(adapter.mlp_gate), layer.get_submodule(adapter.mlp_act)
        if isinstance(gate, torch.nn.Linear) and callable(act):
            return Site(name, gate, "output", transform=act)
    return Site(name, layer.get_submodule(neurons), "input")
