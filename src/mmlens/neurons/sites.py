"""Neuron sites in every part of a model: language model, vision tower and projector.

A *neuron* is one unit of an MLP's hidden activation, the input of the MLP's
output projection:

- ``lm.L{i}.neurons``: decoder layer ``i`` (the input of ``down_proj``; the
  same site as :mod:`mmlens.hooks` names);
- ``vision.L{i}.neurons``: vision layer ``i`` (the input of ``fc2`` in CLIP and
  SigLIP layers);
- ``projector.neurons``: the projector's hidden activation (the input of
  ``linear_2`` in LLaVA).

What a neuron's *value* is, for statistics (:func:`read_neurons`): in a gated
decoder MLP (``down_proj(act(gate_proj x) * up_proj x)``, LLaMA, Qwen2, ...)
MINER and MMNeuron (after LAPE) read ``act(gate_proj x)``, so a neuron is
"active" when its gate is; ``value="input"`` reads the input of ``down_proj``
instead. Elsewhere both are the same. Switching a neuron off (zeroing the
input of ``down_proj``) is the same either way.

The vision and projector sites are not (yet) :mod:`mmlens.hooks` sites; they are
found here from a short list of module names per family and hooked through the
same dispatch, so edits from both places compose.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> hi", [Image.new("RGB", (32, 32))])
    >>> neuron_sites(model, ("lm", "projector"))
    ['lm.L0.neurons', 'lm.L1.neurons', 'projector.neurons']
    >>> neuron_width(model, "lm.L0.neurons")
    128
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import torch

from mmlens import hooks
from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.model import Model

TOWERS = ("lm", "vision", "projector")
VALUES = ("gate", "input")
_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.neurons$")


def neuron_sites(model: "Model", towers: Sequence[str] = ("lm",)) -> list[str]:
    """Neuron site names of ``model`` in the chosen ``towers`` (``lm``, ``vision``, ``projector``).

    Towers the model lacks are skipped.

    Example:
        >>> neuron_sites(mmlens.load("tiny-llama"), TOWERS)
        ['lm.L0.neurons', 'lm.L1.neurons']
    """
    unknown = [t for t in towers if t not in TOWERS]
    if unknown:
        raise MmlensError(f"unknown tower(s) {', '.join(unknown)}; choose from {', '.join(TOWERS)}")
    names: list[str] = []
    if "lm" in towers:
        names += [f"lm.L{i}.neurons" for i in range(model.n_layers)]
    if "vision" in towers and model.adapter.multimodal and model.adapter.vision_neurons:
        names += [f"vision.L{i}.neurons" for i in range(model.n_vision_layers)]
    if "projector" in towers and model.adapter.projector and model.adapter.projector_neurons:
        names.append("projector.neurons")
    return names


def resolve_neuron_site(model: "Model", name: str) -> hooks.Site:
    """The module whose input is the neuron activation at ``name`` (a :mod:`mmlens.hooks` site).

    Example:
        >>> resolve_neuron_site(model, "vision.L0.neurons").module is model.vision_layers[0].mlp.fc2
        True
    """
    if name == "projector.neurons" and not model.adapter.projector_neurons:
        raise MmlensError(f"{model.adapter.family}: the projector has no hidden activation to call neurons")
    if name != "projector.neurons" and not _SITE.match(name):
        raise MmlensError(f"unknown neuron site {name!r}; they look like lm.L0.neurons, vision.L0.neurons, "
                          "projector.neurons")
    return hooks.resolve(model, name)


def neuron_width(model: "Model", name: str) -> int:
    """Number of neurons at a site (the input width of its output projection)."""
    module = resolve_neuron_site(model, name).module
    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != 2:
        raise MmlensError(f"{name}: {type(module).__name__} is not a linear layer")
    return int(weight.shape[1])


def layer_of(site: str) -> int:
    """The layer index in a site name; the projector counts as layer 0.

    Example:
        >>> layer_of("lm.L3.neurons"), layer_of("projector.neurons")
        (3, 0)
    """
    match = re.search(r"\.L(\d+)\.", site)
    return int(match.group(1)) if match else 0


def tower_of(site: str) -> str:
    """``lm``, ``vision`` or ``projector``: the first part of a site name."""
    return site.split(".", 1)[0]


@contextmanager
def on_neurons(model: "Model", edits: Mapping[str, hooks.Edit]) -> Iterator[None]:
    """Read or replace neuron activations at any neuron site during the ``with`` block.

    Like :func:`mmlens.intervene` (each edit gets the activation tensor,
    ``(..., neurons)``, and returns a replacement or None), but vision and
    projector sites work too. Hooks stay for every forward call of the block,
    generation steps included, and are always removed.

    Example:
        >>> with on_neurons(model, {"projector.neurons": torch.zeros_like}):
        ...     _ = model.forward(batch)
    """
    with ExitStack() as stack:
        for name, edit in edits.items():
            stack.enter_context(hooks.attach(resolve_neuron_site(model, name), edit))
        yield


def gate_of(model: "Model", site: str) -> tuple[torch.nn.Module, Callable] | None:
    """``(gate_proj, act_fn)`` of a gated decoder MLP at ``site``; None for other sites and ungated MLPs.

    Example:
        >>> gate, act = gate_of(model, "lm.L0.neurons")
        >>> gate is model.decoder_layers[0].mlp.gate_proj
        True
    """
    match = _SITE.match(site)
    adapter = model.adapter
    if not match or match.group(1) != "lm" or not adapter.mlp_gate or not adapter.mlp_act:
        return None
    layer = model.decoder_layers[int(match.group(2))]
    gate, act = layer.get_submodule(adapter.mlp_gate), layer.get_submodule(adapter.mlp_act)
    return (gate, act) if isinstance(gate, torch.nn.Linear) and callable(act) else None


@contextmanager
def read_neurons(model: "Model", readers: Mapping[str, Callable[[torch.Tensor], None]],
                 value: str = "gate") -> Iterator[None]:
    """Call each reader with its site's neuron values, ``(..., neurons)``, on every forward call of the block.

    ``value="gate"`` reads ``act(gate_proj x)`` in gated decoder MLPs (see
    the module doc), ``"input"`` the input of the output projection.

    Example:
        >>> seen = []
        >>> with read_neurons(model, {"lm.L0.neurons": seen.append}):
        ...     _ = model.forward(batch)
        >>> seen[0].shape[-1]
        128
    """
    if value not in VALUES:
        raise MmlensError(f"unknown neuron value {value!r}; choose one of {', '.join(VALUES)}")
    plain = {}
    with ExitStack() as stack:
        for site, reader in readers.items():
            gated = gate_of(model, site) if value == "gate" else None
            if gated is None:
                plain[site] = _reading_only(reader)
                continue
            gate, act = gated
            stack.enter_context(hooks.attach(hooks.Site(site, gate, "output"),
                                            _reading_only(lambda out, act=act, reader=reader: reader(act(out)))))
        stack.enter_context(on_neurons(model, plain))
        yield


def _reading_only(reader: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], None]:
    """A hook edit that reads and never replaces (whatever the reader returns)."""

    def read(x: torch.Tensor) -> None:
        with torch.no_grad():
            reader(x)

    return read
