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
``attn_probs`` runs the model's attentions through mmlens' attention function
for the block only: SDPA everywhere, plus fp32 probabilities at the asked
layers for the asked query rows only (see :func:`mmlens.models.runtime.attention_rows`).

Site options replace parallel APIs: ``capture(..., query=-1)`` computes one
attention row (``query=[3, 7]`` a few, ``mean_heads=True`` their mean over heads), ``capture(..., neuron_value="gate")`` reads gated neurons,
and :func:`intervene` takes :class:`BlockKeys` (attention knockout) and
:class:`OnlyAt` (an MLP computed at chosen positions only) besides plain
edits. Every hook goes through :mod:`mmlens.hooks.dispatch`.

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

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

import torch

from mmlens.errors import MmlensError
from mmlens.hooks.dispatch import CallEdit, Edit, attach, attach_call, attach_output
from mmlens.hooks.sites import NEURON_VALUES, Site, expand, resolve, site_names
from mmlens.models import runtime

if TYPE_CHECKING:
    from mmlens.model import Model

__all__ = ["BlockKeys", "CallEdit", "Captured", "Edit", "NEURON_VALUES", "OnlyAt", "Site", "attach", "attach_call",
           "attach_output", "attention_reader", "capture", "eager_attention", "expand", "intervene", "resolve", "site_names"]


@dataclass(frozen=True)
class BlockKeys:
    """An ``attn_probs`` edit: query row ``query`` gets probability exactly 0 on ``keys`` (``(rows, seq)`` bool).

    The attention mask is edited before the softmax, so the other keys share
    the whole mass (Geva et al.'s attention knockout). The output still comes from
    SDPA, with the edited mask materialised for that layer only.
    """

    keys: torch.Tensor
    query: int = -1


@dataclass(frozen=True)
class OnlyAt:
    """An ``mlp`` edit: the MLP computes at ``positions`` only and outputs zeros elsewhere.

    Exact for whatever later reads only those positions (the last layer's
    MLP before the unembedding), and about half the cost of that layer.
    """

    positions: torch.Tensor

    def __post_init__(self) -> None:
        positions = self.positions
        if not isinstance(positions, torch.Tensor):
            positions = torch.as_tensor(positions if isinstance(positions, (list, tuple)) else [positions])
        if positions.ndim != 1 or not positions.numel() or positions.is_floating_point():
            raise MmlensError(f"OnlyAt takes positions as an int or a non-empty list of ints, got {self.positions!r:.60}")
        object.__setattr__(self, "positions", positions)


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

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(site, value)`` pairs, as ``captured[site]`` reads each one."""
        return [(site, self[site]) for site in self._values]

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
    def _store(self, site: str, value: torch.Tensor, keep_grad: bool,
               select: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Keep ``select(value)`` (the whole value without ``select``) and, with ``keep_grad``, the same part of its
        gradient: the hook sits on ``value`` itself, the tensor in the graph."""
        select = select or (lambda tensor: tensor)
        calls = self._values.setdefault(site, [])
        call = len(calls)
        calls.append(select(value.detach()))
        if keep_grad:
            value.register_hook(lambda grad: self._grads.setdefault(site, {}).__setitem__(call, select(grad.detach())))


@contextmanager
def capture(model: "Model", sites: str | Sequence[str], *, grads: bool = False,
            query: int | Sequence[int] | torch.Tensor | None = None, neuron_value: str = "input",
            mean_heads: bool = False) -> Iterator[Captured]:
    """Record the values at ``sites`` (names or glob patterns) during the ``with`` block.

    ``query`` computes only that query row of ``attn_probs`` sites
    (``(batch, heads, keys)``), a list of rows gives ``(batch, heads, rows, keys)``:
    full attention maps of a real model take gigabytes, and no layer computes
    more than is asked. ``mean_heads=True`` averages over heads as the rows are
    computed (the head axis goes). With ``grads=True`` an ``attn_probs`` layer
    runs eagerly, its probabilities in the graph, and ``query`` picks the rows
    of both the value and its gradient (the head mean is not in the graph:
    ``mean_heads`` with ``grads`` is refused). ``neuron_value="gate"`` reads gated neurons (see
    :func:`mmlens.hooks.sites.resolve`).

    With ``grads=True`` each captured value also records its gradient when
    ``backward()`` runs inside the block; a site whose value does not require
    grad (frozen weights) is made a leaf that does, so gradients still flow.

    Example:
        >>> with capture(model, ["lm.L0.resid"], grads=True) as captured:
        ...     model.forward(batch).logits[0, -1].max().backward()
        >>> captured.grad("lm.L0.resid").shape == captured["lm.L0.resid"].shape
        True
    """
    _check_query(query)
    resolved = [resolve(model, name, neuron_value) for name in expand(model, sites)]
    captured = Captured()
    with ExitStack() as stack:
        for site in resolved:
            if site.reads == "probs" and grads:  # the whole probabilities are in the graph: record the asked rows
                if mean_heads:
                    raise MmlensError("grads=True with mean_heads=True: the head mean is not in the graph, the heads "
                                      "are; capture the heads and average the values and gradients yourself")
                request = runtime.RowRequest(query, on_path=True)
                stack.enter_context(runtime.attention_rows(model.hf, site.module, request))
                stack.enter_context(attach(site, _recorder(captured, site, grads, partial(runtime.rows_of,
                                                                                          request=request))))
            elif site.reads == "probs":
                request = runtime.RowRequest(query, mean_heads)
                stack.enter_context(attention_reader(model, site, _recorder(captured, site, grads), request))
            else:
                stack.enter_context(attach(site, _recorder(captured, site, grads)))
        yield captured


@contextmanager
def intervene(model: "Model", edits: Mapping[str, Union[Edit, BlockKeys, OnlyAt]], *,
              neuron_value: str = "input") -> Iterator[None]:
    """Replace the values at sites during the ``with`` block.

    Each edit receives the site's value and returns its replacement (or
    ``None`` after editing in place). Keys may be glob patterns. Attention
    probabilities take a :class:`BlockKeys` (knockout), MLP sites may take
    an :class:`OnlyAt`. With ``neuron_value="gate"``, neuron sites of gated
    MLPs are read as ``act(gate_proj x)``: such a site is read-only, and what
    its edit returns is ignored (streaming statistics read this way).

    Example:
        >>> with intervene(model, {"lm.L*.mlp": lambda x: x * 0}):
        ...     out = model.forward(batch)
    """
    if not isinstance(edits, Mapping):
        raise MmlensError(f"intervene takes a mapping {{site: edit}}, got {type(edits).__name__}")
    for pattern, edit in edits.items():
        if not (callable(edit) or isinstance(edit, (BlockKeys, OnlyAt))):
            raise MmlensError(f"the edit at {pattern!r} must be a function of the value (or BlockKeys, OnlyAt), "
                              f"got {type(edit).__name__}")
    with ExitStack() as stack:
        for pattern, edit in edits.items():
            for name in expand(model, pattern):
                stack.enter_context(_apply(model, resolve(model, name, neuron_value), edit))
        yield


def _apply(model: "Model", site: Site, edit: Any):
    """The context that puts one edit on one site."""
    if isinstance(edit, BlockKeys):
        if not site.needs_eager:
            raise MmlensError(f"{site.name}: BlockKeys edits attention probabilities (lm.L<i>.attn_probs sites)")
        return runtime.blocked_keys(model.hf, site.module, edit.keys, edit.query)
    if isinstance(edit, OnlyAt):
        if not site.name.endswith(".mlp"):
            raise MmlensError(f"{site.name}: OnlyAt restricts an MLP (lm.L<i>.mlp sites)")
        return _only_at(site.module, edit.positions)
    if site.needs_eager:
        raise MmlensError(f"{site.name}: attention probabilities are edited with BlockKeys, or captured")
    return attach(site, _same_shape(site.name, edit))


def _same_shape(name: str, edit: Edit) -> Edit:
    """``edit``, refusing a replacement of another shape in one line (the model would fail deep inside)."""
    def checked(value: torch.Tensor) -> torch.Tensor | None:
        new = edit(value)
        if new is not None and (not isinstance(new, torch.Tensor) or new.shape != value.shape):
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise MmlensError(f"the edit at {name} returned {got} for a value of shape {tuple(value.shape)}; "
                              f"return a tensor of the same shape, or None after editing in place")
        return new

    return checked


def _check_query(query: Any) -> None:
    """``capture``'s ``query``: None, an int, or a non-empty list or 1-D tensor of ints."""
    rows = query.flatten().tolist() if isinstance(query, torch.Tensor) and not query.is_floating_point() else query
    if query is None or isinstance(rows, int) or (isinstance(rows, (list, tuple)) and rows
                                                  and all(isinstance(r, int) for r in rows)):
        return
    raise MmlensError(f"query is an attention row (an int such as -1) or a non-empty list of them, got {query!r:.60}")


@contextmanager
def _only_at(mlp: torch.nn.Module, positions: torch.Tensor) -> Iterator[None]:
    seen: dict[str, int] = {}

    def keep_positions(args: tuple, kwargs: dict) -> tuple:
        seen["length"] = length = args[0].shape[1]
        if positions.device.type == "cpu" and not ((positions >= -length) & (positions < length)).all():
            raise MmlensError(f"OnlyAt positions {positions.tolist()} are out of range for {length} tokens")
        return (args[0][:, positions.to(args[0].device)], *args[1:]), kwargs

    def spread(output: Any) -> Any:
        if isinstance(output, tuple):  # mixture-of-experts MLPs also return router logits
            return (spread(output[0]), *output[1:])
        full = output.new_zeros(output.shape[0], seen["length"], *output.shape[2:])
        full[:, positions.to(output.device)] = output
        return full

    with attach_call(mlp, keep_positions), attach_output(mlp, spread):
        yield


@contextmanager
def eager_attention(model: "Model") -> Iterator[None]:
    """Run every attention of ``model`` with the eager kernel (which returns probabilities), then switch back.

    Example:
        >>> with eager_attention(model):
        ...     out = model.hf(**batch.inputs, output_attentions=True)
    """
    with runtime.attention_implementation(model.hf, "eager"):
        yield


@contextmanager
def attention_reader(model: "Model", site: Site, read: Edit, request: "runtime.RowRequest") -> Iterator[None]:
    """Call ``read`` with the probabilities ``request`` asks for at an ``attn_probs`` site, in the block.

    Only this site's attention computes them (the rows asked for, fp32); the
    others run SDPA. ``read`` gets ``(batch, heads, rows, keys)``, without the
    row axis for an int row and without the head axis with ``mean_heads``.

    Example:
        >>> site = resolve(model, "lm.L1.attn_probs")
        >>> with attention_reader(model, site, print, runtime.RowRequest(rows=-1)):
        ...     _ = model.forward(batch)
    """
    def rows(probs: torch.Tensor) -> torch.Tensor | None:
        read(runtime.requested_rows(site.module, probs, request))
        return None

    with runtime.attention_rows(model.hf, site.module, request), attach(site, rows):
        yield


def _recorder(captured: Captured, site: Site, grads: bool,
              select: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Edit:
    def record(value: torch.Tensor) -> torch.Tensor | None:
        replacement = None
        if grads:
            if not torch.is_grad_enabled():
                raise MmlensError("gradients were asked for, but autograd is off (torch.no_grad)")
            if not value.requires_grad:
                replacement = value = value.detach().requires_grad_(True)
        captured._store(site.name, value, grads, select)
        return replacement

    return record


