"""Steering vectors: mean differences, base -> fine-tuned shifts of means, and adding them during generation.

- :func:`mean_difference`: ``mean(target) - mean(source)`` of two sets of
  activations (e.g. answer-position states of questions answered "red" and
  "blue"), per layer.
- :func:`shift_vectors`: the shift of means between a base and a fine-tuned
  model on the same inputs (Khayatan et al., ICCV 2025): ``mean(h_ft) - mean(h_base)``.
- :func:`steer`: a context in which the vectors are added (times ``scale``) at
  ``lm.L{l}.resid`` through :func:`mmlens.intervene`, at ``tokens``: ``"all"``
  positions of every forward call, ``"prompt-last"`` (the last prompt position),
  ``"generated"`` (only tokens the model generates), or given positions per row
  (image patches, say) in the prompt call.

A :class:`SteeringVector` holds one vector per layer and saves as safetensors
(with its metadata as strings), never pickled.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> vector = SteeringVector({0: torch.zeros(model.hf.config.hidden_size)})
    >>> with steer(model, vector, scale=2.0, tokens="prompt-last"):
    ...     ids = model.generate(model.prepare("a red circle"), max_new_tokens=2)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.hooks import intervene
from mmlens.represent.concepts import Where, activations, positions_of, prepare_samples, site_of
from mmlens.represent.subspace_steering import SubspaceSteering, applied, check_layers, hidden_size

#: Where a vector can be added.
TOKENS = ("all", "prompt-last", "generated")

Tokens = Union[str, Sequence[torch.Tensor]]


@dataclass
class SteeringVector:
    """One vector per decoder layer (``{layer: (hidden,)}``) and free-form string metadata.

    Example:
        >>> v = SteeringVector({2: torch.ones(4)}, {"from": "red", "to": "blue"})
        >>> v.layers
        [2]
    """

    vectors: dict[int, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def width(self) -> int:
        return int(next(iter(self.vectors.values())).shape[-1])

    def only(self, layers: Sequence[int]) -> "SteeringVector":
        """The same vector restricted to ``layers`` (each must be present).

        Example:
            >>> SteeringVector({0: torch.ones(2), 1: torch.ones(2)}).only([1]).layers
            [1]
        """
        missing = [layer for layer in layers if layer not in self.vectors]
        if missing:
            raise MmlensError(f"the vector has no layer {missing[0]}; it has layers {self.layers}")
        return SteeringVector({layer: self.vectors[layer] for layer in layers}, dict(self.metadata))

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors: tensors ``L<i>``, metadata as strings).

        Example:
            >>> SteeringVector({0: torch.ones(3)}).save("/tmp/v.safetensors").name
            'v.safetensors'
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"L{layer}": v.detach().float().contiguous().cpu() for layer, v in self.vectors.items()}
        save_file(tensors, str(path), metadata={"mmlens": "steering-vector", **{k: str(v) for k, v in self.metadata.items()}})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        """Read a vector written by :meth:`save`; anything else gets one line.

        Example:
            >>> SteeringVector.load("/tmp/v.safetensors").layers
            [0]
        """
        path = Path(path)
        if not path.is_file():
            raise MmlensError(f"no steering vector at {path}")
        try:
            from safetensors import safe_open
            with safe_open(str(path), "pt") as handle:
                metadata = dict(handle.metadata() or {})
            tensors = load_file(str(path))
        except Exception as error:  # a damaged or foreign file
            raise MmlensError(f"{path} is not a safetensors steering vector ({type(error).__name__})") from None
        if metadata.pop("mmlens", None) != "steering-vector" or not tensors:
            raise MmlensError(f"{path} is not a steering vector written by mmlens")
        vectors = {int(name[1:]): t for name, t in tensors.items() if name.startswith("L") and name[1:].isdigit()}
        if len(vectors) != len(tensors) or any(v.ndim != 1 for v in vectors.values()):
            raise MmlensError(f"{path}: expected one 1-D tensor per layer named L<i>")
        return cls(vectors, metadata)


def mean_difference(source: Mapping[int, torch.Tensor], target: Mapping[int, torch.Tensor],
                    metadata: Mapping[str, str] | None = None) -> SteeringVector:
    """``mean(target) - mean(source)`` per layer, from ``{layer: (samples, hidden)}`` activations.

    Example:
        >>> v = mean_difference({0: torch.zeros(3, 2)}, {0: torch.ones(5, 2)})
        >>> v.vectors[0].tolist()
        [1.0, 1.0]
    """
    if set(source) != set(target):
        raise MmlensError(f"source layers {sorted(source)} != target layers {sorted(target)}")
    vectors = {}
    for layer in source:
        a, b = source[layer], target[layer]
        if a.shape[-1] != b.shape[-1] or len(a) == 0 or len(b) == 0:
            raise MmlensError(f"layer {layer}: sets of widths {a.shape[-1]} and {b.shape[-1]} "
                              f"with {len(a)} and {len(b)} samples")
        vectors[layer] = b.float().mean(0) - a.float().mean(0)
    return SteeringVector(vectors, dict(metadata or {}))


def shift_vectors(base: Any, fine_tuned: Any, samples: Sequence[Any], layers: Sequence[int],
                  where: Where = "last", metadata: Mapping[str, str] | None = None) -> SteeringVector:
    """The shift of means from ``base`` to ``fine_tuned`` on the same ``samples`` (Khayatan et al.).

    Example:
        >>> shift = shift_vectors(base, tuned, red_questions, [2])  # doctest: +SKIP
    """
    if len(samples) == 0:
        raise MmlensError("no samples to compute a shift on")
    meta = {"kind": "shift", "base": base.name, "fine_tuned": fine_tuned.name, **dict(metadata or {})}
    return mean_difference(activations(base, samples, layers, where), activations(fine_tuned, samples, layers, where),
                           meta)


def project(vector: SteeringVector, directions: Mapping[int, torch.Tensor]) -> SteeringVector:
    """``vector`` projected, per layer, onto the span of ``directions[layer]`` (``(k, hidden)``).

    E.g. a shift projected onto the red-vs-other-colour subspace: the rows are
    ``mean(red) - mean(c)`` for every other colour ``c``. The rows need not be
    orthonormal (they are orthonormalised here); a layer without directions gets one line.

    Example:
        >>> v = SteeringVector({0: torch.tensor([1.0, 2.0, 3.0])})
        >>> project(v, {0: torch.tensor([[0.0, 2.0, 0.0]])}).vectors[0].tolist()
        [0.0, 2.0, 0.0]
    """
    vectors = {}
    for layer, v in vector.vectors.items():
        if layer not in directions:
            raise MmlensError(f"no directions for layer {layer} to project onto")
        d = directions[layer].float()
        if d.ndim != 2 or d.shape[-1] != v.shape[-1]:
            raise MmlensError(f"layer {layer}: directions of width {directions[layer].shape[-1]} for a vector of "
                              f"width {v.shape[-1]}")
        q, _ = torch.linalg.qr(d.T)  # (hidden, k), orthonormal columns
        vectors[layer] = q @ (q.T @ v.float())
    return SteeringVector(vectors, {**vector.metadata, "projected": "yes"})


def _check(model: Any, vector: SteeringVector, tokens: Tokens) -> None:
    hidden = hidden_size(model)
    check_layers(model, vector.layers)
    for layer, v in vector.vectors.items():
        if v.ndim != 1 or v.shape[0] != hidden:
            raise MmlensError(f"a vector of width {v.shape[-1]} cannot steer lm.L{layer}.resid of width {hidden}")
    if isinstance(tokens, str) and tokens not in TOKENS:
        raise MmlensError(f"unknown tokens {tokens!r}; choose one of {', '.join(TOKENS)} or give positions")


@contextmanager
def steer(model: Any, vector: SteeringVector, scale: float = 1.0, tokens: Tokens = "all") -> Iterator[None]:
    """Add ``scale * vector`` at its layers while the block runs (``model.forward`` or ``model.generate``).

    ``tokens``: ``"all"``, ``"prompt-last"``, ``"generated"``, or one tensor
    of absolute positions per batch row (added in the prompt call only).
    A vector whose width is not the model's gets one line.

    Example:
        >>> with steer(model, vector, scale=1.0, tokens="prompt-last"):
        ...     answers = model.decode(model.generate(batch, max_new_tokens=1))
    """
    _check(model, vector, tokens)
    edits = {}
    for layer, v in vector.vectors.items():
        edits[site_of(layer)] = _adder(v * scale, tokens)
    with intervene(model, edits):
        yield


def _adder(delta: torch.Tensor, tokens: Tokens):
    """The edit for one site; it counts forward calls (call 0 is the prompt)."""
    calls = [0]

    def edit(x: torch.Tensor) -> torch.Tensor:
        call = calls[0]
        calls[0] += 1
        d = delta.to(device=x.device, dtype=x.dtype)
        if tokens == "all":
            return x + d
        if tokens == "generated":
            return x if call == 0 else x + d
        if call > 0:  # "prompt-last" and positions touch the prompt only
            return x
        out = x.clone()
        if tokens == "prompt-last":
            out[:, -1] += d
            return out
        if len(tokens) != x.shape[0]:
            raise MmlensError(f"{len(tokens)} position lists for a batch of {x.shape[0]} rows")
        for row, positions in enumerate(tokens):
            out[row, torch.as_tensor(positions, device=x.device, dtype=torch.long)] += d
        return out

    return edit


@torch.no_grad()
def answers(model: Any, samples: Sequence[Any], vector: SteeringVector | SubspaceSteering | None = None,
            scale: float = 1.0, tokens: Tokens | Sequence[Sequence[int]] = "prompt-last", max_new_tokens: int = 1,
            batch_size: int = 64, only_when: str | None = None) -> list[str]:
    """Greedy answers to ``samples`` (``.prompt``, ``.image``), steered when ``vector`` is given.

    ``tokens`` may also be image-token indices per sample (e.g. an object's
    patches, :func:`mmlens.represent.concepts.object_patches`). A
    :class:`~mmlens.represent.subspace_steering.SubspaceSteering` acts on every
    image token (``tokens`` is ignored). With ``only_when="red"`` (a
    conditional shift) the vector is added only to samples whose unsteered
    answer is ``"red"``; the others keep their unsteered answer (one extra
    pass over all samples).

    Example:
        >>> answers(model, samples[:2], vector, scale=1.0)  # doctest: +SKIP
        ['blue', 'blue']
        >>> answers(model, samples[:2], shift, only_when="red")  # doctest: +SKIP
        ['purple', 'blue']
    """
    if only_when is not None and vector is not None:
        out = answers(model, samples, None, max_new_tokens=max_new_tokens, batch_size=batch_size)
        rows = [i for i, a in enumerate(out) if a == only_when]
        if rows:
            where = tokens if isinstance(tokens, str) else [tokens[i] for i in rows]
            steered = answers(model, [samples[i] for i in rows], vector, scale, where, max_new_tokens, batch_size)
            for i, a in zip(rows, steered):
                out[i] = a
        return out
    out: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = prepare_samples(model, chunk)
        where = tokens
        if not isinstance(tokens, str):
            where = positions_of(batch, tokens, start) if not isinstance(tokens[0], torch.Tensor) else tokens
        if vector is None:
            ids = model.generate(batch, max_new_tokens=max_new_tokens)
        elif isinstance(vector, SubspaceSteering):
            with applied(model, vector, batch, scale):
                ids = model.generate(batch, max_new_tokens=max_new_tokens)
        else:
            with steer(model, vector, scale, where):
                ids = model.generate(batch, max_new_tokens=max_new_tokens)
        out += [text.strip() for text in model.decode(ids)]
    return out
