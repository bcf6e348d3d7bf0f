"""Coupled weights, after DEAN: weights that matter to two attributes but not to general ability.

Importance of each weight ``W[r, c]`` of the decoder's linear layers on a
dataset: ``|W| * sum over batches |dL/dW|``, with ``L`` the next-token loss on
the answer tokens only (answers teacher-forced after the prompt). Per matrix,
keep the top ``p`` fraction of weights on each attribute dataset and the top
``q`` fraction on the general one; coupled = ``(A1 minus G) intersect (A2 minus
G)``, as true sets of ``(matrix, row, col)`` whatever order each top list
came in. :meth:`WeightSet.zeroed` switches them off reversibly.

Published defaults are ``p = q = 5e-7`` on a 7B model; on small models that
leaves under one weight per matrix, so the default here is ``1e-3``.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("tiny-llava")
    >>> coupled = coupled_weights(model, make_dataset("val", 2, question_type="colour"),
    ...                           make_dataset("val", 2, question_type="shape"),
    ...                           make_dataset("val", 2, question_type="count"), p=0.01, progress=False)
    >>> with coupled.zeroed(model):
    ...     pass  # the coupled weights read 0 here, and their values come back afterwards
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.neurons._batches import chunks, prepare_samples, progress_bar
from mmlens.readout import build_targets, logits_at

if TYPE_CHECKING:
    from mmlens.model import Model

FORMAT = "mmlens.WeightSet"  # the header's "format"


@dataclass
class WeightSet:
    """Single weights as parallel per-entry fields: ``params[k]`` (a parameter name), ``rows[k]``, ``cols[k]``."""

    params: list[str]
    rows: torch.Tensor
    cols: torch.Tensor
    scores: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params)

    def by_param(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{parameter name: (rows, cols)}``."""
        groups: dict[str, list[int]] = {}
        for k, name in enumerate(self.params):
            groups.setdefault(name, []).append(k)
        return {name: (self.rows[ks], self.cols[ks]) for name, ks in groups.items()}

    @contextmanager
    def zeroed(self, model: "Model") -> Iterator[None]:
        """Inside the block the set's weights are 0 (forward, backward and generate alike); restored after.

        Example:
            >>> with coupled.zeroed(model):
            ...     _ = model.generate(model.prepare("hello"), max_new_tokens=2)
        """
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for name, (rows, cols) in self.by_param().items():
                    weight = model.hf.get_parameter(name)
                    rows, cols = rows.to(weight.device), cols.to(weight.device)
                    saved.append((weight, rows, cols, weight[rows, cols].clone()))
                    weight[rows, cols] = 0
            yield
        finally:
            with torch.no_grad():
                for weight, rows, cols, values in reversed(saved):
                    weight[rows, cols] = values

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Named tensors (parameter numbers, rows, cols, scores) and a JSON header (parameter names, metadata).

        Example:
            >>> WeightSet.from_tensors(*coupled.to_tensors()).params == coupled.params
            True
        """
        names = list(dict.fromkeys(self.params))
        tensors = {"params": torch.tensor([names.index(p) for p in self.params], dtype=torch.int32),
                   "rows": self.rows.contiguous(), "cols": self.cols.contiguous(),
                   "scores": self.scores.float().contiguous()}
        return tensors, {"format": FORMAT, "version": 1, "params": names, "metadata": self.metadata}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> "WeightSet":
        """The set :meth:`to_tensors` described."""
        if header.get("format") != FORMAT:
            raise MmlensError("not an mmlens weight set")
        params = [header["params"][k] for k in tensors["params"].tolist()]
        return cls(params, tensors["rows"], tensors["cols"], tensors["scores"], header.get("metadata", {}))


def decoder_matrices(model: "Model") -> dict[str, torch.nn.Parameter]:
    """Weights of every linear layer inside the decoder layers, by parameter name.

    Example:
        >>> list(decoder_matrices(model))[0]
        'model.language_model.layers.0.self_attn.q_proj.weight'
    """
    prefix = model.adapter.decoder_layers.split("|")[0]
    matrices = {}
    for i, layer in enumerate(model.decoder_layers):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                matrices[f"{prefix}.{i}.{name}.weight"] = module.weight
    return matrices


def answer_loss(model: "Model", samples: Sequence[Sample]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of ``samples``, answers teacher-forced."""
    if any(sample.answer is None for sample in samples):
        raise MmlensError("every sample needs an answer for the answer loss")
    targets = build_targets(model, prepare_samples(model, samples), answer=[s.answer for s in samples])
    logits = logits_at(model, targets.batch, targets.positions).float()
    real = targets.real.to(model.device)
    return torch.nn.functional.cross_entropy(logits[real], targets.tokens.to(model.device)[real])


def weight_importance(model: "Model", samples: Sequence[Sample], matrices: Sequence[str] | None = None,
                      batch_size: int = 8, progress: bool = True) -> dict[str, torch.Tensor]:
    """``|W| * sum over batches |dL/dW|`` for each decoder matrix (or the named ``matrices``).

    Example:
        >>> importance = weight_importance(model, make_dataset("val", 2), progress=False)
        >>> all(value.shape == model.hf.get_parameter(name).shape for name, value in importance.items())
        True
    """
    params = decoder_matrices(model)
    if matrices is not None:
        missing = [m for m in matrices if m not in params]
        if missing:
            raise MmlensError(f"not decoder matrices: {', '.join(missing)}")
        params = {m: params[m] for m in matrices}
    grads = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    with progress_bar(progress, "weight importance", len(samples)) as advance, _only_grad(model, params.values()):
        for chunk in chunks(list(samples), batch_size):
            found = torch.autograd.grad(answer_loss(model, chunk), list(params.values()))
            for name, grad in zip(params, found):
                grads[name] += grad.detach().float().abs()
            advance(len(chunk))
    return {name: params[name].detach().float().abs() * grads[name] for name in params}


def top_fraction(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Flat indices of the ``ceil(fraction x size)`` most important entries (at least one when fraction > 0).

    Example:
        >>> top_fraction(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), 0.5).tolist()
        [1, 2]
    """
    if fraction <= 0:
        return torch.zeros(0, dtype=torch.int64)
    k = min(importance.numel(), max(1, math.ceil(fraction * importance.numel())))
    return importance.flatten().topk(k).indices


def coupled_indices(first: torch.Tensor, second: torch.Tensor, general: torch.Tensor) -> torch.Tensor:
    """``(first minus general) intersect (second minus general)`` as sets of indices, sorted.

    Order is irrelevant: this is a set operation, not an elementwise comparison of two top lists.

    Example:
        >>> coupled_indices(torch.tensor([5, 3, 9]), torch.tensor([9, 5, 1]), torch.tensor([1, 3])).tolist()
        [5, 9]
    """
    first = first[~torch.isin(first, general)]
    second = second[~torch.isin(second, general)]
    return torch.unique(first[torch.isin(first, second)])


def select_coupled(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                   general: Mapping[str, torch.Tensor], p: float = 1e-3, q: float | None = None) -> WeightSet:
    """Coupled weights from three importance maps (``{matrix: importance}``), per matrix top-``p`` / top-``q``.

    Scores of the set are the mean importance on the two attributes.

    Example:
        >>> imp = {"w": torch.tensor([[3.0, 2.0], [1.0, 0.0]])}
        >>> select_coupled(imp, imp, {"w": torch.tensor([[9.0, 0.0], [0.0, 0.0]])}, p=0.5, q=0.25).cols.tolist()
        [1]
    """
    q = p if q is None else q
    params, rows, cols, scores = [], [], [], []
    for name, importance in first.items():
        flat = coupled_indices(top_fraction(importance, p), top_fraction(second[name], p),
                               top_fraction(general[name], q))
        width = importance.shape[1]
        params += [name] * len(flat)
        rows.append(flat // width)
        cols.append(flat % width)
        scores.append((importance.flatten()[flat] + second[name].flatten()[flat]) / 2)
    empty = torch.zeros(0, dtype=torch.int64)
    return WeightSet(params, torch.cat(rows) if rows else empty, torch.cat(cols) if cols else empty,
                     torch.cat(scores) if scores else empty.float(),
                     {"method": "DEAN", "p": p, "q": q, "score": "mean |W|*sum|grad| on the two attributes"})


def coupled_weights(model: "Model", first: Sequence[Sample], second: Sequence[Sample], general: Sequence[Sample],
                    p: float = 1e-3, q: float | None = None, batch_size: int = 8, progress: bool = True) -> WeightSet:
    """Importance on the two attribute datasets and the general one, then :func:`select_coupled`."""
    maps = [weight_importance(model, data, batch_size=batch_size, progress=progress) for data in (first, second, general)]
    chosen = select_coupled(*maps, p=p, q=q)
    chosen.metadata["samples"] = [len(first), len(second), len(general)]
    return chosen


@contextmanager
def _only_grad(model: "Model", params: Sequence[torch.nn.Parameter] | Any) -> Iterator[None]:
    """Gradients for ``params`` only (others frozen for speed), and train/eval flags left as they were."""
    wanted = {id(p) for p in params}
    before = [(p, p.requires_grad) for p in model.hf.parameters()]
    try:
        for p, _ in before:
            p.requires_grad_(id(p) in wanted)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)
