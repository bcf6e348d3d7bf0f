"""Neuron sites in every part of a model: language model, vision tower and projector.

A *neuron* is one unit of an MLP's hidden activation, the input of the MLP's
output projection:

- ``lm.L{i}.neurons``: decoder layer ``i`` (the input of ``down_proj``; the
  same site as :mod:`mmlens.hooks` names);
- ``vision.L{i}.neurons``: vision layer ``i`` (the input of ``fc2`` in CLIP and
  SigLIP layers);
- ``projector.neurons``: the projector's hidden activation (the input of
  ``linear_2`` in LLaVA).

What a neuron's *value* is, for statistics (``neuron_value``): in a gated
decoder MLP (``down_proj(act(gate_proj x) * up_proj x)``, LLaMA, Qwen2, ...)
MINER and MMNeuron (after LAPE) read ``act(gate_proj x)``, so a neuron is
"active" when its gate is; ``value="input"`` reads the input of ``down_proj``
instead. Elsewhere both are the same. Switching a neuron off (zeroing the
input of ``down_proj``) is the same either way.

Neuron sites are :mod:`mmlens.hooks` sites: read or edit them with
:func:`mmlens.intervene` (``neuron_value="gate"`` for the gated reading) or
:func:`mmlens.capture`.

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
from typing import TYPE_CHECKING, Sequence


from mmlens import hooks
from mmlens.errors import MmlensError, check_choices

if TYPE_CHECKING:
    from mmlens.model import Model

TOWERS = ("lm", "vision", "projector")
VALUES = hooks.NEURON_VALUES
_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.neurons$")


def neuron_sites(model: "Model", towers: Sequence[str] = ("lm",)) -> list[str]:
    """Neuron site names of ``model`` in the chosen ``towers`` (``lm``, ``vision``, ``projector``).

    Towers the model lacks are skipped.

    Example:
        >>> neuron_sites(mmlens.load("tiny-llama"), TOWERS)
        ['lm.L0.neurons', 'lm.L1.neurons']
    """
    check_choices(towers, TOWERS, "tower")
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
