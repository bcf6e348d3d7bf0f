"""The common shape of every attribution method.

A method takes a model and :class:`~mmlens.readout.Targets` and
returns an :class:`Attribution`: one score per (row, target token, position)
of the teacher-forced sequence, plus method-specific extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.model import Batch, Model
from mmlens.readout import Targets

#: Methods that score image tokens only: on a prompt without images they would return zeros, so they refuse it.
IMAGE_METHODS = ("occlusion", "rise", "grad_eclip", "mmel")


@dataclass
class Attribution:
    """Scores ``(batch, targets, seq)``; positions a target cannot see are 0."""

    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    def __call__(self, model: Model, targets: Targets, **options: Any) -> Attribution: ...


def empty_scores(targets: Targets) -> torch.Tensor:
    rows, seq = targets.batch.input_ids.shape
    return torch.zeros(rows, targets.count, seq)


def require_images(model: Model, batch: Batch, methods: str | list[str]) -> None:
    """Refuse image-only ``methods`` on a text-only model or a batch without image tokens.

    Example:
        >>> require_images(model, model.prepare("what colour ?"), "occlusion")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: occlusion explains image tokens and the prompt has no images; ...
    """
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        return
    what = f"{', '.join(names)} {'explains' if len(names) == 1 else 'explain'} image tokens"
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} is a text-only model, it has no vision tower: {what}")
    if not has_image_tokens(batch):
        raise MmlensError(f"{what} and the prompt has no images: give an image, or choose a method that scores "
                          "text too (attention, relevancy, integrated_gradients, ...)")


def has_image_tokens(batch: Batch) -> bool:
    """Whether any row of ``batch`` holds an image token."""
    return bool(batch.layout.mask(Modality.IMAGE).any())


def layer_indices(model: Model, layers: int | slice | Sequence[int] | None, method: str) -> list[int]:
    """Decoder layer indices from a ``layers`` option: None (all), one index, a list or a slice (negatives count
    from the end); out-of-range indices and empty selections are refused with the number of layers.

    Example:
        >>> layer_indices(model, slice(-2, None), "attention")  # a 4-layer model  # doctest: +SKIP
        [2, 3]
    """
    n = model.n_layers
    span = f"{model.name} has {n} decoder layers (0 to {n - 1})"
    if layers is None or isinstance(layers, slice):
        try:
            chosen = list(range(n)[layers or slice(None)])
        except (TypeError, ValueError) as error:
            raise MmlensError(f"{method}: layers {layers!r} is not a slice of layer indices ({error})") from None
        if not chosen:
            raise MmlensError(f"{method}: layers {layers!r} selects no layer; {span}")
        return chosen
    items = [layers] if not isinstance(layers, (list, tuple, range, torch.Tensor)) else list(layers)
    chosen = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, torch.Tensor)) or int(item) != item:
            raise MmlensError(f"{method}: layers is a layer index, a list of them or a slice; got {layers!r}")
        if not -n <= int(item) < n:
            raise MmlensError(f"{method}: layer {int(item)} is out of range; {span}")
        chosen.append(int(item) % n)
    if not chosen:
        raise MmlensError(f"{method}: layers [] selects no layer; {span}")
    return chosen


def causal_cut(scores: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Zero what a target cannot depend on: positions after it, padding, and absent targets."""
    seq = scores.shape[-1]
    visible = torch.arange(seq)[None, :] <= targets.positions[:, None]  # (n, seq)
    real_position = targets.batch.inputs["attention_mask"].bool().cpu()[:, None, :]  # (batch, 1, seq)
    keep = visible[None] & real_position & targets.real[:, :, None].cpu()
    return torch.where(keep, scores, torch.zeros((), dtype=scores.dtype))


MethodRegistry = dict[str, Callable[..., Attribution]]
