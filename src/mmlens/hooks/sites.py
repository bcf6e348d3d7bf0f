"""Site names, the same in every family, and the module and value behind each.

Per-head sites ``lm.L{i}.head{j}`` and ``vision.L{i}.head{j}`` are head
``j``'s output before the output projection: the projection's input, cut
into heads (:mod:`mmlens.models.heads`), ``(..., head_dim)``. They are
listed by :func:`site_names` with ``heads=True`` and matched by patterns
that name heads (``"lm.L*.head*"``); capture and intervene treat them like
any site, an edit replacing only that head's slice.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> expand(model, "lm.L*.resid")
    ['lm.L0.resid', 'lm.L1.resid']
    >>> with mmlens.hooks.capture(model, "lm.L0.head1") as captured:
    ...     _ = model.forward(model.prepare("a red circle"))
    >>> captured["lm.L0.head1"].shape[-1]  # (batch, seq, head_dim)
    16
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from mmlens.errors import MmlensError, check_choice
from mmlens.models.heads import HeadLayout, head_layout

if TYPE_CHECKING:
    from mmlens.model import Model

_LAYER_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.(resid|attn|mlp|neurons|attn_probs)$")
_HEAD_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.head(\d+)$")
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
    columns: slice | None = None  # head sites: the slice of the last axis that is the site

    @property
    def needs_eager(self) -> bool:
        return self.reads == "probs"


def site_names(model: "Model", heads: bool = False) -> list[str]:
    """Every site of ``model``: per decoder layer, then ``lm.embed``, vision layers, ``projector``.

    ``heads=True`` adds each layer's per-head sites after its other sites.

    Example:
        >>> site_names(model, heads=True)[5:7]
        ['lm.L0.head0', 'lm.L0.head1']
    """
    names = [f"lm.L{i}.{part}" for i in range(model.n_layers)
             for part in _LAYER_PARTS + (_head_parts(model, "lm", i) if heads else ())]
    names.append("lm.embed")
    if model.adapter.multimodal:
        vision_parts = tuple(p for p in _LAYER_PARTS if (p != "neurons" or model.adapter.vision_neurons)
                             and (p != "attn_probs" or model.adapter.vision_probs))
        names += [f"vision.L{i}.{part}" for i in range(model.n_vision_layers)
                  for part in vision_parts + (_head_parts(model, "vision", i) if heads else ())]
        if model.adapter.projector:
            names.append("projector")
        if model.adapter.projector and model.adapter.projector_neurons:
            names.append("projector.neurons")
    return names


def expand(model: "Model", patterns: str | Sequence[str]) -> list[str]:
    """Site names matching glob ``patterns`` (``"lm.L*.resid"``), in model order."""
    given = patterns
    patterns = [patterns] if isinstance(patterns, str) else list(patterns) if isinstance(patterns, Sequence) else None
    if patterns is None or not all(isinstance(p, str) for p in patterns):  # an empty list reads nothing
        raise MmlensError(f"sites are a name or a list of names such as 'lm.L0.resid' (globs allowed); "
                          f"got {given!r:.60}")
    if not any(set(p) & set("*?[") for p in patterns):  # exact names: no need to list every site
        for name in patterns:
            resolve(model, name)
        return list(dict.fromkeys(patterns))
    known = site_names(model, heads=any("head" in p for p in patterns))
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
    check_choice(neuron_value, NEURON_VALUES, "neuron value")
    adapter = model.adapter
    if name == "projector" and adapter.projector:
        return Site(name, model.module(adapter.projector), "output", adapter.projector_output)
    if name == "projector.neurons" and adapter.projector and adapter.projector_neurons:
        return Site(name, model.module(adapter.projector).get_submodule(adapter.projector_neurons), "input")
    if name == "projector.neurons" and adapter.projector:
        raise MmlensError(f"{adapter.family}: the projector is one linear layer, so it has no neuron site "
                          f"(read its output at 'projector')")
    if name == "lm.embed":
        return Site(name, model.decoder_layers[0], "input")
    head = _HEAD_SITE.match(name)
    if head:
        layers = model.decoder_layers if head.group(1) == "lm" else model.vision_layers
        if layers is None or int(head.group(2)) >= len(layers):
            raise MmlensError(f"site {name!r} is out of range: the model has {0 if layers is None else len(layers)} "
                              f"{head.group(1)} layers")
        layout = heads_of(model, head.group(1), int(head.group(2)))
        index = int(head.group(3))
        if index >= layout.n_heads:
            raise MmlensError(f"site {name!r} is out of range: {head.group(1)} layer {head.group(2)} has "
                              f"{layout.n_heads} heads (head0 to head{layout.n_heads - 1})")
        return Site(name, layout.out_proj, "input", columns=layout.columns(index))
    match = _LAYER_SITE.match(name)
    if not match:
        grid_name = re.match(r"^(?:(lm|vision)\.)?L(\d+)\.H(\d+)$", name)  # how head grids write a head
        if grid_name:
            tower, layer, index = grid_name.groups()
            raise MmlensError(f"unknown site {name!r}; a head's site is {tower or 'lm'}.L{layer}.head{index}")
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
    if part == "attn_probs" and tower == "vision" and not adapter.vision_probs:
        raise MmlensError(f"{adapter.family}: the vision tower's attention never forms probabilities, so "
                          f"{name!r} is not a site of this family (its resid, attn, mlp and neurons are)")
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


def heads_of(model: "Model", tower: str, index: int) -> HeadLayout:
    """The output projection of layer ``index`` of ``tower`` (``"lm"`` or ``"vision"``) and its head split.

    Example:
        >>> heads_of(model, "lm", 0).n_heads
        4
    """
    layers = model.decoder_layers if tower == "lm" else model.vision_layers
    if layers is None or not 0 <= index < len(layers):
        raise MmlensError(f"layer {index} is out of range: the model has {0 if layers is None else len(layers)} "
                          f"{tower} layers")
    adapter = model.adapter
    attn, out = (adapter.attn, adapter.attn_out) if tower == "lm" else (adapter.vision_attn, adapter.vision_attn_out)
    return head_layout(layers[index].get_submodule(attn), out, f"{adapter.family} ({tower})")


def _head_parts(model: "Model", tower: str, index: int) -> tuple[str, ...]:
    """``head0 ..`` of one layer; none where the family's heads cannot be split (listing never fails)."""
    try:
        return tuple(f"head{j}" for j in range(heads_of(model, tower, index).n_heads))
    except MmlensError:
        return ()
