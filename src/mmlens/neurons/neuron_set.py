"""A selection of neurons you can store and switch off: :class:`NeuronSet`.

Each entry is one neuron: its site (``lm.L3.neurons``, ``vision.L1.neurons``,
``projector.neurons``), its index within that site, a score and a label (a
modality such as ``image``, or a domain). A neuron may appear under several
labels. :meth:`NeuronSet.to_tensors` gives plain data (named tensors and a JSON
header: site and label names, metadata); :mod:`mmlens.report.files` stores it
as safetensors plus a JSON sidecar, nothing pickled.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llava")
    >>> chosen = NeuronSet(["lm.L0.neurons", "lm.L1.neurons"], torch.tensor([3, 7]),
    ...                    torch.tensor([0.9, 0.8]), ["image", "text"])
    >>> NeuronSet.from_tensors(*chosen.to_tensors()).labels
    ['image', 'text']
    >>> batch = model.prepare("hello")
    >>> with chosen.deactivate(model):  # neuron 3 of layer 0 and 7 of layer 1 read 0 at every position
    ...     _ = model.forward(batch)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from mmlens.errors import MmlensError, check_choice
from mmlens.hooks import intervene
from mmlens.neurons.sites import TOWERS, layer_of, neuron_width, tower_of

if TYPE_CHECKING:
    from mmlens.model import Model

MODES = ("zero", "min")
MODALITY_LABELS = ["image", "text", "special"]  # labels of modality-specific sets: valid even with no neurons
FORMAT = "mmlens.NeuronSet"  # the header's "format"


@dataclass
class NeuronSet:
    """Neurons as parallel per-entry fields: ``sites[k]``, ``indices[k]``, ``scores[k]``, ``labels[k]``.

    ``sites`` or ``labels`` may be one string for every entry:
    ``NeuronSet("lm.L2.neurons", torch.tensor([1, 5]), torch.zeros(2), "image")``.
    """

    sites: list[str]
    indices: torch.Tensor  # (n,) int64, the neuron's index within its site
    scores: torch.Tensor  # (n,) float32; what the score means is in metadata["score"]
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = torch.as_tensor(self.indices, dtype=torch.int64).flatten().cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).flatten().cpu()
        n = len(self.indices)
        # One site or label for all entries may be given as a plain string.
        self.sites = [self.sites] * n if isinstance(self.sites, str) else list(self.sites)
        self.labels = [self.labels] * n if isinstance(self.labels, str) else list(self.labels)
        if not (len(self.sites) == len(self.scores) == len(self.labels) == n):
            raise MmlensError(f"a NeuronSet needs as many indices, scores and labels as sites "
                              f"({n}, {len(self.scores)}, {len(self.labels)} for {len(self.sites)})")

    # ---- queries --------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sites)

    @property
    def layers(self) -> torch.Tensor:
        """Layer index of each entry (the projector counts as layer 0)."""
        return torch.tensor([layer_of(site) for site in self.sites], dtype=torch.int64)

    @property
    def label_names(self) -> list[str]:
        """Distinct labels in order of first appearance."""
        return list(dict.fromkeys(self.labels))

    def where(self, label: str | None = None, site: str | None = None, tower: str | None = None) -> "NeuronSet":
        """The entries with this label, site and/or tower (``lm``, ``vision``, ``projector``).

        ``label`` must be one of :attr:`known_labels` (a typo such as
        ``"images"`` is refused, not answered with an empty set); a known label
        without neurons gives an empty set.

        Example:
            >>> chosen.where(label="image").sites
            ['lm.L0.neurons']
        """
        if label is not None:
            check_choice(label, self.known_labels, "label")
        if tower is not None:
            check_choice(tower, TOWERS, "tower")
        keep = [k for k in range(len(self)) if (label is None or self.labels[k] == label)
                and (site is None or self.sites[k] == site) and (tower is None or tower_of(self.sites[k]) == tower)]
        return self._take(keep)

    @property
    def known_labels(self) -> list[str]:
        """Labels this set can hold: its own, the modalities and the domains its metadata names (they may be empty).

        Example:
            >>> chosen.known_labels
            ['image', 'text', 'special']
        """
        declared = list(self.metadata.get("domains") or []) + list(self.metadata.get("samples") or {})
        return list(dict.fromkeys(self.label_names + MODALITY_LABELS + [str(d) for d in declared]))

    def by_site(self) -> dict[str, torch.Tensor]:
        """``{site: sorted distinct neuron indices}``, labels merged."""
        groups: dict[str, list[int]] = {}
        for site, index in zip(self.sites, self.indices.tolist()):
            groups.setdefault(site, []).append(index)
        return {site: torch.tensor(sorted(set(found)), dtype=torch.int64) for site, found in groups.items()}

    def depth_counts(self, n_layers: int, tower: str = "lm") -> tuple[list[str], np.ndarray]:
        """Per label, how many of its neurons sit in each layer of ``tower``: ``(labels, (labels, n_layers))``."""
        part = self.where(tower=tower)
        labels = part.label_names
        counts = np.zeros((len(labels), n_layers), dtype=np.int64)
        layers = part.layers.numpy()
        for row, label in enumerate(labels):
            mask = np.asarray([lab == label for lab in part.labels], dtype=bool)
            counts[row] = np.bincount(layers[mask], minlength=n_layers)[:n_layers]
        return labels, counts

    def union(self, other: "NeuronSet") -> "NeuronSet":
        """Both sets' entries, this one's first; metadata of this one."""
        return NeuronSet(self.sites + other.sites, torch.cat([self.indices, other.indices]),
                         torch.cat([self.scores, other.scores]), self.labels + other.labels, dict(self.metadata))

    def _take(self, keep: list[int]) -> "NeuronSet":
        rows = torch.tensor(keep, dtype=torch.int64)
        return NeuronSet([self.sites[k] for k in keep], self.indices[rows], self.scores[rows],
                         [self.labels[k] for k in keep], dict(self.metadata))

    # ---- plain data ----------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Named tensors (indices, scores, site and label numbers) and a JSON header (names, metadata).

        Example:
            >>> tensors, header = chosen.to_tensors()
            >>> header["sites"], tensors["sites"].tolist()
            (['lm.L0.neurons', 'lm.L1.neurons'], [0, 1])
        """
        site_names, label_names = list(dict.fromkeys(self.sites)), self.label_names
        tensors = {
            "indices": self.indices.contiguous(),
            "scores": self.scores.contiguous(),
            "sites": torch.tensor([site_names.index(s) for s in self.sites], dtype=torch.int32),
            "labels": torch.tensor([label_names.index(lab) for lab in self.labels], dtype=torch.int32),
        }
        header = {"format": FORMAT, "version": 1, "sites": site_names, "labels": label_names,
                  "metadata": self.metadata}
        return tensors, header

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> "NeuronSet":
        """The set :meth:`to_tensors` described.

        Example:
            >>> NeuronSet.from_tensors(*chosen.to_tensors()).sites
            ['lm.L0.neurons', 'lm.L1.neurons']
        """
        if header.get("format") != FORMAT:
            raise MmlensError("not an mmlens neuron set")
        sites = [header["sites"][k] for k in tensors["sites"].tolist()]
        labels = [header["labels"][k] for k in tensors["labels"].tolist()]
        return cls(sites, tensors["indices"], tensors["scores"], labels, header.get("metadata", {}))

    # ---- switching off ----------------------------------------------------
    @contextmanager
    def deactivate(self, model: "Model", mode: str = "zero") -> Iterator[None]:
        """Inside the block, the set's neurons read 0 (``zero``) or the layer minimum (``min``).

        The value is written at every position of every forward call, so it
        holds in :meth:`Model.forward` and in each step of
        :meth:`Model.generate`. ``min`` is the smallest activation of the whole
        layer at the same position (the most "off" value the layer produced).

        Example:
            >>> with chosen.deactivate(model, mode="min"):
            ...     new_tokens = model.generate(batch, max_new_tokens=2)
        """
        check_choice(mode, MODES, "deactivation mode")
        edits = {}
        for site, indices in self.by_site().items():
            width = neuron_width(model, site)
            if len(indices) and int(indices.max()) >= width:
                raise MmlensError(f"{site} has {width} neurons; the set names neuron {int(indices.max())}")
            mask = torch.zeros(width, dtype=torch.bool)
            mask[indices] = True
            edits[site] = _switch_off(mask, mode)
        with intervene(model, edits):
            yield


def _switch_off(mask: torch.Tensor, mode: str):
    """An edit writing 0 or the per-position layer minimum where ``mask`` is set (last axis)."""
    cache: dict[torch.device, torch.Tensor] = {}

    def edit(x: torch.Tensor) -> torch.Tensor:
        where = cache.setdefault(x.device, mask.to(x.device))
        if mode == "zero":
            return x.masked_fill(where, 0.0)
        return torch.where(where, x.amin(-1, keepdim=True), x)

    return edit
