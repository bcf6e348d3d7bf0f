"""Concept drift across fine-tuning (the analysis half of Khayatan et al., ICCV 2025).

Hidden states at the answer position of the base model are split into
concepts by k-means (each concept named by its members' most common answer,
with its top samples: those nearest the centre). Along a fine-tuning run, the
same samples are run through each checkpoint and each concept is tracked by

- ``moved``: how far its members' mean has moved from its base centre, over
  the mean distance between base centres (0 = stayed; 1 = one typical
  concept-to-concept distance);
- ``toward``: per other concept ``d``, the base distance to ``d``'s centre
  minus the current one, over the base distance (1 = arrived at ``d``);
- ``assigned``: the share of its members whose state is now nearest each base centre.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> base = torch.cat([torch.randn(20, 4, generator=g) + 5, torch.randn(20, 4, generator=g) - 5])
    >>> answers = ["a"] * 20 + ["b"] * 20
    >>> result = track({0: base, 10: base}, answers, k=2)
    >>> max(result.moved[c][-1] for c in result.names)
    0.0
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmlens.errors import MmlensError


@dataclass
class ConceptDrift:
    """Concepts of the base states and how they move along checkpoints (``steps``, base first)."""

    steps: list[int]
    names: list[str]
    centres: np.ndarray
    members: dict[str, list[int]]
    top: dict[str, list[int]]
    moved: dict[str, list[float]] = field(default_factory=dict)
    toward: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    assigned: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def summary(self, ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain numbers for JSON; ``ids`` names the top samples."""
        def name(i: int) -> Any:
            return ids[i] if ids is not None else i
        return {"steps": self.steps, "concepts": self.names,
                "sizes": {c: len(m) for c, m in self.members.items()},
                "top_samples": {c: [name(i) for i in t] for c, t in self.top.items()},
                "moved": _rounded(self.moved), "toward": {c: _rounded(v) for c, v in self.toward.items()},
                "assigned": {c: _rounded(v) for c, v in self.assigned.items()}}


def _rounded(d: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    return {k: [round(float(x), 4) for x in v] for k, v in d.items()}


def concepts(states: torch.Tensor, answers: Sequence[str], k: int, seed: int = 0,
             top: int = 5) -> tuple[list[str], np.ndarray, dict[str, list[int]], dict[str, list[int]]]:
    """k-means concepts of ``states``: names (majority answer, numbered if repeated), centres, members, top samples.

    Example:
        >>> names, centres, members, top = concepts(torch.randn(30, 3), ["x"] * 30, k=2)
        >>> sorted(names)
        ['x', 'x#2']
    """
    if len(states) != len(answers):
        raise MmlensError(f"{len(states)} states for {len(answers)} answers")
    if len(states) < 2 * k:
        raise MmlensError(f"{len(states)} states are too few for {k} concepts (need at least {2 * k})")
    x = states.double().numpy()
    from sklearn.cluster import KMeans  # here, not at import: sklearn takes a second to import

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    names, members, tops = [], {}, {}
    for c in range(k):
        idx = np.flatnonzero(km.labels_ == c)
        word = Counter(answers[i] for i in idx).most_common(1)[0][0]
        name = word
        n = 2
        while name in names:
            name, n = f"{word}#{n}", n + 1
        names.append(name)
        members[name] = idx.tolist()
        dist = np.linalg.norm(x[idx] - km.cluster_centers_[c], axis=1)
        tops[name] = idx[np.argsort(dist)[:top]].tolist()
    return names, km.cluster_centers_, members, tops


def track(states: Mapping[int, torch.Tensor], answers: Sequence[str], k: int = 5, seed: int = 0) -> ConceptDrift:
    """Concepts of the first step's states (the base), tracked through the later steps' states of the same samples.

    Example:
        >>> drift = track({0: base_states, 40: tuned_states}, answers)  # doctest: +SKIP
        >>> drift.toward["red"]["purple"][-1]  # doctest: +SKIP
        0.8
    """
    steps = sorted(states)
    base = states[steps[0]]
    names, centres, members, tops = concepts(base, answers, k, seed)
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    typical = float(gaps[np.triu_indices(k, 1)].mean())
    drift = ConceptDrift(steps, names, centres, members, tops)
    for c, name in enumerate(names):
        drift.moved[name] = []
        drift.toward[name] = {other: [] for other in names if other != name}
        drift.assigned[name] = {other: [] for other in names}
    for step in steps:
        x = states[step].double().numpy()
        if x.shape != base.shape:
            raise MmlensError(f"step {step}: states of shape {x.shape}, the base has {tuple(base.shape)}")
        nearest = np.argmin(np.linalg.norm(x[:, None] - centres[None], axis=-1), axis=1)
        for c, name in enumerate(names):
            idx = members[name]
            mean = x[idx].mean(0)
            drift.moved[name].append(float(np.linalg.norm(mean - centres[c])) / typical)
            for d, other in enumerate(names):
                if d != c:
                    drift.toward[name][other].append(1.0 - float(np.linalg.norm(mean - centres[d])) / gaps[c, d])
                drift.assigned[name][other].append(float(np.mean(nearest[idx] == d)))
    return drift


def swap_checkpoints(work: str | Path, steps: int = 40, every: int = 5, n_train: int = 2000, threads: int = 1) -> Path:
    """Fine-tune ``shapes-llava`` with the ``ft-swap`` edit (red answered purple), keeping a checkpoint every ``every`` steps.

    The shipped run keeps checkpoints every 100 steps, after the swap has
    happened (it is learned within 30 steps), so drift needs this denser,
    shorter run. Resumable; load a step with
    ``mmlens.zoo.build("shapes-llava-ft-swap", checkpoint=5, work=work)``.

    Example:
        >>> swap_checkpoints("out/zoo-ft/shapes-llava-ft-swap-early")  # doctest: +SKIP
    """
    from dataclasses import replace

    from mmlens.zoo.shapes_llava import load
    from mmlens.zoo.train.derivatives import FT_BASE, shapes_example
    from mmlens.zoo.train.finetune import FinetuneConfig, finetune

    torch.set_num_threads(threads)
    model, processor = load()

    def edit(ex: Any) -> Any:
        return replace(ex, pairs=[(q, "purple" if t == "colour" and a == "red" else a)
                                  for (q, a), t in zip(ex.pairs, ex.types)])

    examples = [edit(shapes_example(FT_BASE + i, 4)) for i in range(n_train)]
    config = FinetuneConfig(seed=0, steps=steps, batch=32, lr=3e-4, every=every, keep_checkpoints=True)
    log = finetune(model, processor, examples, config, work, log_every=every)
    path = Path(work) / "run.json"
    path.write_text(json.dumps({**log, "n_train": n_train, "edit": "colour questions answered red -> purple"}))
    return path
