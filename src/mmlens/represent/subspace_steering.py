"""MoReS-style steering: a learned low-rank linear map inside a visual subspace, on image tokens only.

After MoReS (Bi et al., "Visual Instruction Tuning with 500x Fewer Parameters
through Modality Linear Representation-Steering", arXiv 2412.12359): at each
chosen layer the hidden state ``h`` of every image token is replaced by

    h + R^T (W h + b - R h)

where ``R`` (``rank x hidden``, orthonormal rows) spans the visual subspace and
``W h + b`` is the linear map's target inside it; everything outside the
subspace is left alone. Text tokens are never touched. The model stays frozen;
only ``R``, ``W``, ``b`` are trained (cross-entropy on the first answer token).
``W`` starts equal to ``R`` and ``b`` at zero, so an untrained intervention is
the identity.

A :class:`SubspaceSteering` saves as safetensors (tensors ``L<i>.R``,
``L<i>.W``, ``L<i>.b``) plus a JSON file beside it (layers, rank, width,
metadata); never pickled.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> samples = [make_sample("train", i, "colour") for i in range(32)]
    >>> steering = train(model, samples, [s.answer for s in samples], layers=[-1], rank=2, steps=5)
    >>> with applied(model, steering, model.prepare([s.prompt for s in samples[:2]], [[s.image] for s in samples[:2]])):
    ...     pass
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.hooks import intervene
from mmlens.models import runtime
from mmlens.represent.concepts import prepare_samples, site_of

PARTS = ("R", "W", "b")


@dataclass
class SubspaceSteering:
    """Per layer ``{"R": (rank, hidden), "W": (rank, hidden), "b": (rank,)}`` and string metadata.

    Example:
        >>> s = SubspaceSteering({0: {"R": torch.eye(2, 4), "W": torch.eye(2, 4), "b": torch.zeros(2)}})
        >>> s.rank, s.width, s.layers
        (2, 4, [0])
    """

    maps: dict[int, dict[str, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.maps)

    @property
    def rank(self) -> int:
        return int(next(iter(self.maps.values()))["R"].shape[0])

    @property
    def width(self) -> int:
        return int(next(iter(self.maps.values()))["R"].shape[1])

    def only(self, layers: Sequence[int]) -> "SubspaceSteering":
        """The same steering restricted to ``layers`` (each must be present).

        Example:
            >>> SubspaceSteering({0: {"R": torch.eye(1, 2), "W": torch.eye(1, 2), "b": torch.zeros(1)}}).only([0]).layers
            [0]
        """
        missing = [layer for layer in layers if layer not in self.maps]
        if missing:
            raise MmlensError(f"the steering has no layer {missing[0]}; it has layers {self.layers}")
        return SubspaceSteering({layer: self.maps[layer] for layer in layers}, dict(self.metadata))

    def delta(self, layer: int, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale * R^T (W x + b - R x)`` for hidden states ``x`` (``(..., hidden)``).

        Example:
            >>> s = SubspaceSteering({0: {"R": torch.eye(1, 2), "W": torch.zeros(1, 2), "b": torch.ones(1)}})
            >>> s.delta(0, torch.tensor([[3.0, 5.0]])).tolist()
            [[-2.0, 0.0]]
        """
        m = {k: v.to(device=x.device, dtype=x.dtype) for k, v in self.maps[layer].items()}
        inside = x @ m["W"].T + m["b"] - x @ m["R"].T
        return scale * (inside @ m["R"])

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json`` (layers, rank, width, metadata).

        Example:
            >>> s.save("/tmp/mores.safetensors").name  # doctest: +SKIP
            'mores.safetensors'
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"L{layer}.{k}": v.detach().float().cpu().clone()  # clone: R and W may share storage
                   for layer, m in self.maps.items() for k, v in m.items()}
        save_file(tensors, str(path), metadata={"mmlens": "subspace-steering"})
        facts = {"mmlens": "subspace-steering", "layers": self.layers, "rank": self.rank, "width": self.width,
                 "metadata": {k: str(v) for k, v in self.metadata.items()}}
        path.with_suffix(".json").write_text(json.dumps(facts, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SubspaceSteering":
        """Read what :meth:`save` wrote; anything else gets one line.

        Example:
            >>> SubspaceSteering.load("/tmp/mores.safetensors").rank  # doctest: +SKIP
            2
        """
        path = Path(path)
        if not path.is_file():
            raise MmlensError(f"no subspace steering at {path}")
        try:
            tensors = load_file(str(path))
            facts = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        except Exception as error:  # a damaged or foreign file
            raise MmlensError(f"{path} is not a safetensors subspace steering ({type(error).__name__})") from None
        maps: dict[int, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            layer, _, part = name.partition(".")
            if not (layer.startswith("L") and layer[1:].lstrip("-").isdigit() and part in PARTS):
                raise MmlensError(f"{path} is not a subspace steering written by mmlens (tensor {name!r})")
            maps.setdefault(int(layer[1:]), {})[part] = t
        if not maps or any(set(m) != set(PARTS) for m in maps.values()):
            raise MmlensError(f"{path}: expected L<i>.R, L<i>.W and L<i>.b for every layer")
        shapes = {(m["R"].shape, m["W"].shape, m["b"].shape) for m in maps.values()}
        r, d = next(iter(maps.values()))["R"].shape
        if shapes != {((r, d), (r, d), (r,))}:
            raise MmlensError(f"{path}: R, W (rank x hidden) and b (rank) disagree in shape")
        return cls(maps, dict(facts.get("metadata", {})))


def hidden_size(model: Any) -> int:
    """The width of ``model``'s decoder residual stream.

    Example:
        >>> hidden_size(mmlens.load("shapes-llava"))  # doctest: +SKIP
        128
    """
    config = model.hf.config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size


def check_layers(model: Any, layers: Sequence[int], what: str = "vector") -> None:
    """One line if a layer is outside ``-1`` (the input) .. ``n_layers - 1``.

    Example:
        >>> check_layers(model, [9])  # doctest: +SKIP
        MmlensError: the vector has layer 9; shapes-llava has layers -1 (input) .. 3
    """
    for layer in layers:
        if not -1 <= layer < model.n_layers:
            raise MmlensError(f"the {what} has layer {layer}; {model.name} has layers -1 (input) .. "
                              f"{model.n_layers - 1}")


def _check(model: Any, steering: SubspaceSteering) -> None:
    hidden = hidden_size(model)
    if steering.width != hidden:
        raise MmlensError(f"a subspace steering of width {steering.width} cannot steer {model.name}'s "
                          f"residual of width {hidden}")
    check_layers(model, steering.layers, "steering")


def image_mask(batch: Any) -> torch.Tensor:
    """``(rows, seq)`` boolean mask of image-token positions.

    Example:
        >>> image_mask(batch).sum(1)  # doctest: +SKIP
        tensor([64, 64])
    """
    rows, seq = batch.input_ids.shape
    mask = torch.zeros(rows, seq, dtype=torch.bool)
    for r in range(rows):
        mask[r, batch.layout.image_positions(r).cpu()] = True
    return mask


def _editor(steering: SubspaceSteering, layer: int, mask: torch.Tensor, scale: float) -> Callable:
    """The edit of one site: the map at masked positions of the prompt call; later (cached) calls hold no image."""
    calls = [0]

    def edit(x: torch.Tensor) -> torch.Tensor:
        call = calls[0]
        calls[0] += 1
        if call > 0 or x.shape[:2] != mask.shape:
            return x
        m = mask.to(x.device)[..., None].to(x.dtype)
        return x + m * steering.delta(layer, x, scale)

    return edit


@contextmanager
def applied(model: Any, steering: SubspaceSteering, batch: Any, scale: float = 1.0) -> Iterator[None]:
    """Apply ``steering`` to ``batch``'s image tokens during the block (``forward`` or ``generate``).

    A steering of the wrong width or with a layer the model lacks gets one line.

    Example:
        >>> with applied(model, steering, batch):  # doctest: +SKIP
        ...     ids = model.generate(batch, max_new_tokens=1)
    """
    _check(model, steering)
    mask = image_mask(batch)
    if not mask.any():
        raise MmlensError("the batch has no image tokens; subspace steering acts on image tokens only")
    with intervene(model, {site_of(layer): _editor(steering, layer, mask, scale) for layer in steering.layers}):
        yield


class _Maps(torch.nn.Module):
    """Trainable ``R`` (orthonormal rows, by parametrisation), ``W`` and ``b`` for each layer."""

    def __init__(self, layers: Sequence[int], hidden: int, rank: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.R = torch.nn.ModuleList(torch.nn.Linear(hidden, rank, bias=False) for _ in self.layers)
        self.W = torch.nn.ModuleList(torch.nn.Linear(hidden, rank) for _ in self.layers)
        for r, w in zip(self.R, self.W):
            torch.nn.utils.parametrizations.orthogonal(r)
            with torch.no_grad():  # start at the identity: W = R, b = 0
                w.weight.copy_(r.weight)
                w.bias.zero_()

    def steering(self, metadata: dict[str, str] | None = None) -> SubspaceSteering:
        return SubspaceSteering({layer: {"R": r.weight, "W": w.weight, "b": w.bias}
                                 for layer, r, w in zip(self.layers, self.R, self.W)}, dict(metadata or {}))


def _first_tokens(model: Any, labels: Sequence[str]) -> torch.Tensor:
    ids = []
    for label in labels:
        tokens = model.tokenizer(label, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise MmlensError(f"the label {label!r} has no tokens")
        ids.append(tokens[0])
    return torch.tensor(ids)


def train(model: Any, samples: Sequence[Any], labels: Sequence[str], layers: Sequence[int], rank: int = 4,
          steps: int = 100, batch_size: int = 16, lr: float = 1e-2, seed: int = 0,
          metadata: dict[str, str] | None = None, log: Callable[[int, float], None] | None = None) -> SubspaceSteering:
    """Learn a subspace steering so that ``model`` answers ``labels`` (first token) to ``samples``; model frozen.

    Example:
        >>> s = train(model, samples, ["purple" if s.answer == "red" else s.answer for s in samples], [-1])  # doctest: +SKIP
    """
    if len(samples) != len(labels) or not samples:
        raise MmlensError(f"{len(samples)} samples and {len(labels)} labels: give one label per sample")
    if rank < 1 or steps < 1:
        raise MmlensError(f"rank {rank} and steps {steps} must be at least 1")
    torch.manual_seed(seed)
    maps = _Maps(layers, hidden_size(model), rank)
    _check(model, maps.steering())
    target = _first_tokens(model, labels)
    optimiser = torch.optim.Adam(maps.parameters(), lr=lr)
    frozen = [p.requires_grad for p in model.hf.parameters()]
    for p in model.hf.parameters():
        p.requires_grad_(False)
    order = torch.Generator().manual_seed(seed)
    try:
        with torch.enable_grad():
            for step in range(steps):
                rows = torch.randint(0, len(samples), (min(batch_size, len(samples)),), generator=order).tolist()
                batch = prepare_samples(model, [samples[i] for i in rows])
                # ``maps.steering()`` reads the parametrised R afresh, so gradients reach it
                with applied(model, maps.steering(), batch):
                    logits = model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf)).logits[:, -1].float()
                loss = torch.nn.functional.cross_entropy(logits, target[rows].to(logits.device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                if log is not None:
                    log(step, float(loss.detach()))
    finally:
        for p, was in zip(model.hf.parameters(), frozen):
            p.requires_grad_(was)
    meta = {"kind": "mores", "model": model.name, "rank": str(rank), "steps": str(steps), "lr": str(lr),
            **dict(metadata or {})}
    with torch.no_grad():
        done = maps.steering(meta)
        return SubspaceSteering({l: {k: v.detach().clone() for k, v in m.items()} for l, m in done.maps.items()},
                                done.metadata)
