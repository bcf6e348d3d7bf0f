"""Named sites, and reading or editing them during a forward pass.

Sites have the same names in every family:

- ``lm.L{i}.resid``: output of decoder block ``i`` (the residual stream)
- ``lm.L{i}.attn``: output of its attention (before the residual add)
- ``lm.L{i}.mlp``: output of its MLP
- ``lm.L{i}.neurons``: the MLP activation, the input of the down projection
- ``lm.L{i}.attn_probs``: attention probabilities, ``(batch, heads, query, key)``
- ``lm.embed``: the decoder's input embeddings, image features already merged in
- ``vision.L{i}.resid`` / ``.attn`` / ``.mlp`` / ``.neurons`` / ``.attn_probs``: the vision tower
- ``projector``: the output of the vision-to-language projector
- ``projector.neurons``: its hidden activation (two-layer projectors only)

Hooks exist only inside a ``with`` block and are removed when it ends, even
when its body raises, so an idle model pays nothing. Asking for
``attn_probs`` switches the model to eager attention for the block only.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> batch = model.prepare(["a red circle", "a blue square"])
    >>> with capture(model, "lm.L*.resid") as captured:
    ...     _ = model.forward(batch)
    >>> captured["lm.L1.resid"].shape[:2] == batch.input_ids.shape
    True
    >>> with intervene(model, {"lm.L0.mlp": lambda x: torch.zeros_like(x)}):
    ...     _ = model.forward(batch)
"""

from __future__ import annotations

import fnmatch
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import torch

from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.model import Model

Edit = Callable[[torch.Tensor], "torch.Tensor | None"]

_LAYER_SITE = re.compile(r"^(lm|vision)\.L(\d+)\.(resid|attn|mlp|neurons|attn_probs)$")
_LAYER_PARTS = ("resid", "attn", "mlp", "neurons", "attn_probs")


@dataclass(frozen=True)
class Site:
    """A resolved site: the module to hook and which of its values is the site."""

    name: str
    module: torch.nn.Module
    reads: str  # "output" (first element if a tuple), "input" (first argument), "probs" (output[1])
    field: str = "last_hidden_state"  # read from a ModelOutput

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


def resolve(model: "Model", name: str) -> Site:
    """The module and value behind a site name."""
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
    return Site(name, layer.get_submodule(neurons), "input")


class Captured:
    """Values (and gradients) seen at sites, one entry per forward call.

    A single forward gives one tensor per site. During generation each step is
    a call: ``captured[site]`` joins them along the sequence axis, and
    ``captured.steps(site)`` keeps them apart (attention probabilities must be
    read per step, their key length grows).
    """

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}
        self._grads: dict[str, dict[int, torch.Tensor]] = {}

    def __contains__(self, site: str) -> bool:
        return site in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    def steps(self, site: str) -> list[torch.Tensor]:
        """The value at ``site`` for each forward call, in order."""
        if site not in self._values:
            raise MmlensError(f"nothing was captured at {site!r}; captured: {', '.join(self._values) or 'nothing'}")
        return self._values[site]

    def __getitem__(self, site: str) -> torch.Tensor:
        values = self.steps(site)
        if len(values) == 1:
            return values[0]
        if site.endswith("attn_probs"):
            raise MmlensError(f"{site} was captured over {len(values)} calls; read them with .steps({site!r})")
        return torch.cat(values, dim=1)

    def grad(self, site: str, call: int = 0) -> torch.Tensor:
        """The gradient at ``site`` for forward call ``call`` (after ``backward()``)."""
        grads = self._grads.get(site, {})
        if call not in grads:
            raise MmlensError(f"no gradient at {site!r}: capture with grads=True and call backward() first")
        return grads[call]

    # called by the hooks
    def _store(self, site: str, value: torch.Tensor, keep_grad: bool) -> None:
        calls = self._values.setdefault(site, [])
        call = len(calls)
        calls.append(value.detach())
        if keep_grad:
            value.register_hook(lambda grad: self._grads.setdefault(site, {}).__setitem__(call, grad.detach()))


@contextmanager
def capture(model: "Model", sites: str | Sequence[str], *, grads: bool = False) -> Iterator[Captured]:
    """Record the values at ``sites`` (names or glob patterns) during the ``with`` block.

    With ``grads=True`` each captured value also records its gradient when
    ``backward()`` runs inside the block; a site whose value does not require
    grad (frozen weights) is made a leaf that does, so gradients still flow.

    Example:
        >>> with capture(model, ["lm.L0.resid"], grads=True) as captured:
        ...     model.forward(batch).logits[0, -1].max().backward()
        >>> captured.grad("lm.L0.resid").shape == captured["lm.L0.resid"].shape
        True
    """
    resolved = [resolve(model, name) for name in expand(model, sites)]
    captured = Captured()
    with ExitStack() as stack:
        if any(site.needs_eager for site in resolved):
            stack.enter_context(eager_attention(model))
        for site in resolved:
            stack.enter_context(attach(site, _recorder(captured, site, grads)))
        yield captured


@contextmanager
def intervene(model: "Model", edits: Mapping[str, Edit]) -> Iterator[None]:
    """Replace the values at sites during the ``with`` block.

    Each edit receives the site's value and returns its replacement (or
    ``None`` after editing in place). Keys may be glob patterns. Attention
    probabilities can be read but not edited here.

    Example:
        >>> with intervene(model, {"lm.L*.mlp": lambda x: x * 0}):
        ...     out = model.forward(batch)
    """
    with ExitStack() as stack:
        for pattern, edit in edits.items():
            for name in expand(model, pattern):
                site = resolve(model, name)
                if site.needs_eager:
                    raise MmlensError(f"{name}: attention probabilities can be captured, not edited")
                stack.enter_context(attach(site, edit))
        yield


@contextmanager
def eager_attention(model: "Model") -> Iterator[None]:
    """Switch every attention of ``model`` to the eager kernel (which returns probabilities), then back."""
    configs = _all_configs(model.hf)
    before = [(config, config._attn_implementation_internal) for config in configs]
    try:
        for config, _ in before:
            config._attn_implementation_internal = "eager"
        yield
    finally:
        for config, implementation in before:
            config._attn_implementation_internal = implementation


def _all_configs(hf: torch.nn.Module) -> list:
    """Every distinct config object reachable from the model's modules, sub-configs included."""
    seen: dict[int, object] = {}
    pending = [getattr(module, "config", None) for module in hf.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation_internal"):
            continue
        seen[id(config)] = config
        pending += [getattr(config, key, None) for key in getattr(config, "sub_configs", {})]
    return list(seen.values())


def _recorder(captured: Captured, site: Site, grads: bool) -> Edit:
    def record(value: torch.Tensor) -> torch.Tensor | None:
        replacement = None
        if grads:
            if not torch.is_grad_enabled():
                raise MmlensError("gradients were asked for, but autograd is off (torch.no_grad)")
            if not value.requires_grad:
                replacement = value = value.detach().requires_grad_(True)
        captured._store(site.name, value, grads)
        return replacement

    return record


@contextmanager
def attach(site: Site, edit: Edit) -> Iterator[None]:
    """Apply ``edit`` to the site's value while the block runs; always removed.

    The low-level form of :func:`intervene`: ``site`` may name any module
    (``Site("gate", layer.mlp.gate_proj, "output")``), not only a named site.

    mmlens callbacks on a module run in registration order and *before* any
    other hook, because transformers records hidden states (which vision
    features are read from) with hooks of its own: an edit must land before
    that record is taken.
    """
    kind = "input" if site.reads == "input" else "output"
    callback = edit if site.reads == "input" else _element_edit(site, edit)
    callbacks = _callbacks(site.module, kind)
    callbacks.append(callback)
    try:
        yield
    finally:
        callbacks.remove(callback)
        if not callbacks:
            site.module._mmlens_handles.pop(kind).remove()


def _callbacks(module: torch.nn.Module, kind: str) -> list[Callable]:
    """The module's list of mmlens callbacks of ``kind``, installing its one dispatching hook if needed."""
    lists = module.__dict__.setdefault("_mmlens_callbacks", {"input": [], "output": []})
    handles = module.__dict__.setdefault("_mmlens_handles", {})
    if kind not in handles:
        callbacks = lists[kind]
        if kind == "input":
            handles[kind] = module.register_forward_pre_hook(_input_dispatch(callbacks), with_kwargs=True, prepend=True)
        else:
            handles[kind] = module.register_forward_hook(_output_dispatch(callbacks), prepend=True)
    return lists[kind]


def _input_dispatch(callbacks: list[Edit]) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        changed = False
        for edit in list(callbacks):
            result = _input_hook(edit)(module, args, kwargs)
            if result is not None:
                args, kwargs = result
                changed = True
        return (args, kwargs) if changed else None

    return hook


def _output_dispatch(callbacks: list[Callable]) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
        changed = False
        for callback in list(callbacks):
            result = callback(output)
            if result is not None:
                output = result
                changed = True
        return output if changed else None

    return hook


def _input_hook(edit: Edit) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if args:
            new = edit(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        new = edit(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _element_edit(site: Site, edit: Edit) -> Callable[[object], object]:
    """Lift an edit of one tensor to a module output (a tensor, a tuple, or a ModelOutput)."""
    element = 1 if site.reads == "probs" else 0

    def apply(output: object) -> object:
        if isinstance(output, torch.Tensor) and element == 0:
            return edit(output)
        if isinstance(output, tuple) and len(output) > element and isinstance(output[element], torch.Tensor):
            new = edit(output[element])
            return None if new is None else (*output[:element], new, *output[element + 1:])
        if element == 0 and isinstance(getattr(output, site.field, None), torch.Tensor):  # a ModelOutput
            new = edit(getattr(output, site.field))
            if new is not None:
                output[site.field] = new  # ModelOutput keeps attribute and key in step
                return output
            return None
        if element == 1:
            raise MmlensError(f"{site.name}: this attention module returns no probabilities, even in eager mode")
        raise MmlensError(f"{site.name}: cannot read a tensor from a {type(output).__name__}")

    return apply
