"""Modality-specific neurons, after MINER: which decoder MLP neurons serve image, text or special tokens.

Four steps:

1. *Separate*: the batch's :class:`~mmlens.layout.TokenLayout` assigns each
   position to ``image``, ``text`` or ``special`` (padding is ignored).
2. *Score*: per sample, modality and neuron, statistics over that modality's
   positions: ``frac`` (share of positions with activation > 0), ``mean``,
   ``max``, and attention-weighted variants ``attn_frac`` / ``attn_mean``
   (positions weighted by the attention the last prompt position pays them
   at the same layer, averaged over heads). Each statistic is min-max
   normalised within its layer, per sample and modality.
3. *Aggregate*: the mean over a dataset's samples (those containing the
   modality), then the mean over the datasets where the modality occurs.
   :class:`ModalityScores` keeps per-dataset sums, so runs can be merged.
4. *Select* (:func:`select_modality_neurons`): a weighted sum of statistics
   (published default ``0.5 mean + 0.5 max``), and the top ``K = ratio x layers
   x width`` neurons under one of three budgets, see :data:`BUDGETS`.

Neurons are the units of the ``lm.L{i}.neurons`` site (the input of
``down_proj``); in gated MLPs their statistics read ``act(gate_proj x)`` as in
MINER (``value="gate"``), and switching them off zeroes the ``down_proj`` input,
which is the same as zeroing ``act(gate_proj x)``.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("tiny-llava")
    >>> scores = modality_scores(model, make_dataset("val", 4), progress=False)
    >>> chosen = select_modality_neurons(scores, ratio=0.02, budget="modality")
    >>> sorted(set(chosen.labels))
    ['image', 'special', 'text']
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch

from mmlens import hooks
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError, check_choice, check_choices
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.budget import MemoryBudget
from mmlens.neurons._batches import Datasets, as_datasets, budget_batches, progress_bar
from mmlens.neurons.neuron_set import NeuronSet
from mmlens.neurons.sites import neuron_sites, neuron_width

if TYPE_CHECKING:
    from mmlens.model import Model

STATISTICS = ("frac", "mean", "max", "attn_frac", "attn_mean")
MODALITIES = (Modality.IMAGE, Modality.TEXT, Modality.SPECIAL)
#: ``global``: one ranking of all neurons, each under its best modality, K in total;
#: ``layer``: per modality K, split evenly over the layers; ``modality``: per modality K, from any layer.
BUDGETS = ("global", "layer", "modality")
DEFAULT_WEIGHTS = {"mean": 0.5, "max": 0.5}


@dataclass
class ModalityScores:
    """Layer-normalised neuron statistics, summed per dataset: ``sums[stat]`` is ``(datasets, modalities, layers, width)``.

    ``counts[d, m]`` is how many samples of dataset ``d`` contain modality ``m``.
    """

    sites: list[str]
    modalities: list[str]
    datasets: list[str]
    sums: dict[str, torch.Tensor]
    counts: torch.Tensor

    @property
    def present(self) -> list[str]:
        """Modalities seen in at least one sample."""
        return [m for k, m in enumerate(self.modalities) if self.counts[:, k].sum() > 0]

    def statistic(self, name: str) -> torch.Tensor:
        """``(modalities, layers, width)``: mean over samples per dataset, then over datasets with the modality.

        A modality never seen gives NaN.

        Example:
            >>> scores.statistic("mean").shape[0] == len(scores.modalities)
            True
        """
        if name not in self.sums:
            raise MmlensError(f"statistic {name!r} was not computed; computed: {', '.join(self.sums)}")
        counts = self.counts.to(torch.float64)[..., None, None]  # (D, M, 1, 1)
        per_dataset = self.sums[name].to(torch.float64) / counts.clamp_min(1)
        seen = (counts > 0).to(torch.float64)
        return ((per_dataset * seen).sum(0) / seen.sum(0)).to(torch.float32)  # 0/0 = NaN when never seen

    def combined(self, weights: Mapping[str, float] | str | None = None) -> torch.Tensor:
        """The weighted sum of statistics, ``(modalities, layers, width)``; see :func:`parse_weights`."""
        weights = parse_weights(weights)
        return sum(weight * self.statistic(name) for name, weight in weights.items())  # type: ignore[return-value]

    def merge(self, other: "ModalityScores") -> "ModalityScores":
        """Both runs together; datasets with the same name are pooled."""
        if self.sites != other.sites or self.modalities != other.modalities or set(self.sums) != set(other.sums):
            raise MmlensError("only scores of the same sites, modalities and statistics can be merged")
        names = self.datasets + [d for d in other.datasets if d not in self.datasets]
        index = [names.index(d) for d in other.datasets]
        grow = len(names) - len(self.datasets)
        counts = torch.cat([self.counts, self.counts.new_zeros(grow, self.counts.shape[1])])
        counts[index] += other.counts
        sums = {}
        for stat, value in self.sums.items():
            total = torch.cat([value, value.new_zeros(grow, *value.shape[1:])])
            total[index] += other.sums[stat]
            sums[stat] = total
        return ModalityScores(list(self.sites), list(self.modalities), names, sums, counts)


def parse_weights(weights: Mapping[str, float] | str | None) -> dict[str, float]:
    """Statistic weights from a mapping or text like ``mean+max`` (equal weights) or ``0.3*frac+0.7*max``.

    Example:
        >>> parse_weights("mean+max"), parse_weights("0.3*frac + 0.7*attn_mean")
        ({'mean': 0.5, 'max': 0.5}, {'frac': 0.3, 'attn_mean': 0.7})
    """
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if isinstance(weights, str):
        terms = [t.strip() for t in weights.split("+") if t.strip()]
        parsed: dict[str, float] = {}
        for term in terms:
            match = re.fullmatch(r"(?:([0-9.eE+-]+)\s*\*\s*)?([a-z_]+)", term)
            if not match:
                raise MmlensError(f"cannot read score term {term!r}; write e.g. 0.5*mean+0.5*max")
            parsed[match.group(2)] = float(match.group(1)) if match.group(1) else 1.0 / len(terms)
        weights = parsed
    check_choices(weights, STATISTICS, "statistic", at_least_one=True)
    return {name: float(value) for name, value in weights.items()}


def modality_scores(
    model: "Model",
    samples: Sequence[Sample] | Datasets,
    statistics: Sequence[str] = ("frac", "mean", "max"),
    memory_budget: MemoryBudget = None,
    query: int = -1,
    value: str = "gate",
    progress: bool = True,
) -> ModalityScores:
    """Stream ``samples`` (a list, or ``{dataset: list}``) through the model and score every decoder neuron.

    ``query`` is the position whose attention weights the ``attn_*``
    statistics (prompts are left-padded, so -1 is every row's last token);
    only that row is computed, averaged over heads, at each decoder layer. ``value`` picks what a
    neuron's value is in gated MLPs (see :mod:`mmlens.neurons.sites`).
    ``memory_budget`` (bytes or ``"2GB"``; :mod:`mmlens.budget`) sizes how many samples go through each forward.

    Example:
        >>> scores = modality_scores(model, {"a": make_dataset("val", 2), "b": make_dataset("test", 2)},
        ...                          statistics=("mean", "attn_mean"), progress=False)
        >>> scores.counts.tolist()
        [[2, 2, 2], [2, 2, 2]]
    """
    check_choices(statistics, STATISTICS, "statistic")
    datasets = as_datasets(samples)
    sites = neuron_sites(model, ("lm",))
    width = neuron_width(model, sites[0])
    shape = (len(datasets), len(MODALITIES), len(sites), width)
    sums = {name: torch.zeros(shape, dtype=torch.float64) for name in statistics}
    counts = torch.zeros(shape[:2], dtype=torch.int64)
    state: dict = {"weights": {}}

    def reader(layer: int):
        def read(x: torch.Tensor) -> None:
            stats = layer_statistics(x.detach().float(), state["masks"], state["weights"].get(layer), statistics)
            valid = state["valid"][..., None]  # (M, B, 1)
            for name, value in stats.items():
                normalised = torch.where(valid, minmax(value), 0.0)
                sums[name][state["dataset"], :, layer] += normalised.sum(1).to(torch.float64).cpu()

        return read

    def attention_reader(layer: int):
        def read(probs: torch.Tensor) -> None:
            state["weights"][layer] = probs.detach().float()  # (B, keys): row ``query``, mean over heads

        return read

    attn = any(name.startswith("attn_") for name in statistics)
    total = sum(len(items) for items in datasets.values())
    with progress_bar(progress, "scoring neurons by modality", total) as advance, \
            _reading(model, sites, reader, attn, attention_reader, value, query):
        for d, items in enumerate(datasets.values()):
            for chunk, batch in budget_batches(model, items, memory_budget, "neuron scoring"):
                masks = torch.stack([batch.layout.mask(m) for m in MODALITIES]).to(model.device)  # (M, B, S)
                state.update(dataset=d, masks=masks, valid=masks.any(-1), weights={})
                counts[d] += masks.any(-1).sum(1).cpu()
                with torch.no_grad():
                    model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))
                advance(len(chunk))
    names = [m.name.lower() for m in MODALITIES]
    return ModalityScores(sites, names, list(datasets), {k: v.float() for k, v in sums.items()}, counts)


def layer_statistics(acts: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None,
                     statistics: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per modality, sample and neuron: the statistics of ``acts`` ``(B, S, N)`` over ``masks`` ``(M, B, S)``.

    Returns ``{statistic: (M, B, N)}``; ``weights`` ``(B, S)`` is needed for the ``attn_*`` ones.
    A modality absent from a sample gives 0 (``max``: -inf); callers mask those out.

    Example:
        >>> acts = torch.tensor([[[1.0, -2.0], [3.0, 0.5]]])  # 1 sample, 2 positions, 2 neurons
        >>> layer_statistics(acts, torch.tensor([[[True, True]]]), None, ["frac", "max"])["frac"].tolist()
        [[[1.0, 0.5]]]
    """
    mask = masks.to(acts.dtype)
    count = mask.sum(-1).clamp_min(1)[..., None]  # (M, B, 1)
    active = (acts > 0).to(acts.dtype)
    out: dict[str, torch.Tensor] = {}
    if "frac" in statistics:
        out["frac"] = torch.einsum("mbs,bsn->mbn", mask, active) / count
    if "mean" in statistics:
        out["mean"] = torch.einsum("mbs,bsn->mbn", mask, acts) / count
    if "max" in statistics:  # one pass per modality (three), never per neuron
        out["max"] = torch.stack([acts.masked_fill(~m[..., None], float("-inf")).amax(1) for m in masks])
    if any(name.startswith("attn_") for name in statistics):
        if weights is None:
            raise MmlensError("attention-weighted statistics need the attention weights")
        weighted = mask * weights.to(acts.dtype)[None]  # (M, B, S)
        norm = weighted.sum(-1).clamp_min(1e-12)[..., None]
        if "attn_frac" in statistics:
            out["attn_frac"] = torch.einsum("mbs,bsn->mbn", weighted, active) / norm
        if "attn_mean" in statistics:
            out["attn_mean"] = torch.einsum("mbs,bsn->mbn", weighted, acts) / norm
    return out


def minmax(values: torch.Tensor) -> torch.Tensor:
    """Min-max normalise over the last axis (a layer's neurons) to [0, 1]; a flat row becomes 0.

    Example:
        >>> minmax(torch.tensor([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]])).tolist()
        [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    """
    low = values.amin(-1, keepdim=True)
    span = values.amax(-1, keepdim=True) - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-30), torch.zeros_like(values))


def select_modality_neurons(
    scores: ModalityScores,
    ratio: float = 0.02,
    budget: str = "modality",
    weights: Mapping[str, float] | str | None = None,
    exclusive: bool = False,
) -> NeuronSet:
    """The top ``K = round(ratio x layers x width)`` neurons per the ``budget`` (see :data:`BUDGETS`).

    ``exclusive`` lets a neuron compete only for the modality where its
    combined score is highest (``global`` always does); a modality may then
    get fewer than K. Scores of the set are the combined scores.

    Example:
        >>> chosen = select_modality_neurons(scores, ratio=0.05, budget="layer", weights="mean")
        >>> chosen.metadata["budget"], len(chosen.where(label="image")) == round(0.05 * 2 * 128)
        ('layer', True)
    """
    check_choice(budget, BUDGETS, "budget")
    combined = scores.combined(weights)  # (M, L, N)
    present = [scores.modalities.index(m) for m in scores.present]
    if not present:
        raise MmlensError("no modality was seen in the samples")
    layers, width = combined.shape[1:]
    k = max(1, round(ratio * layers * width))
    best_value = combined[present].max(0)
    best = torch.tensor(present)[best_value.indices]
    picks: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (modality, flat index, score)
    if budget == "global":
        top = best_value.values.flatten().topk(min(k, layers * width))
        for m in present:
            keep = best.flatten()[top.indices] == m
            picks.append((m, top.indices[keep], top.values[keep]))
    else:
        for m in present:
            score = combined[m].clone()
            if exclusive:
                score[best != m] = float("-inf")
            picks.append((m, *_top(score, k, per_layer=budget == "layer")))
    sites, indices, values, labels = [], [], [], []
    for m, flat, value in picks:
        finite = torch.isfinite(value)
        flat, value = flat[finite], value[finite]
        sites += [scores.sites[int(layer)] for layer in (flat // width).tolist()]
        indices.append(flat % width)
        values.append(value)
        labels += [scores.modalities[m]] * len(flat)
    metadata = {"method": "MINER", "score": "combined layer-normalised score", "ratio": ratio, "budget": budget,
                "k": k, "weights": parse_weights(weights), "exclusive": exclusive or budget == "global",
                "datasets": scores.datasets, "samples": dict(zip(scores.modalities, scores.counts.sum(0).tolist()))}
    return NeuronSet(sites, torch.cat(indices), torch.cat(values), labels, metadata)


def _top(score: torch.Tensor, k: int, per_layer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices and values of the top ``k`` of ``(L, N)``, network-wide or split evenly over layers."""
    layers, width = score.shape
    if not per_layer:
        top = score.flatten().topk(min(k, score.numel()))
        return top.indices, top.values
    quota = [k // layers + (layer < k % layers) for layer in range(layers)]  # remainder to the first layers
    top = score.topk(min(max(quota), width), dim=1)
    flat = [top.indices[layer, :q] + layer * width for layer, q in enumerate(quota)]
    values = [top.values[layer, :q] for layer, q in enumerate(quota)]
    return torch.cat(flat), torch.cat(values)


def random_neurons(model: "Model", count: int, seed: int = 0, towers: Sequence[str] = ("lm",),
                   label: str = "random") -> NeuronSet:
    """``count`` neurons drawn uniformly without replacement from the ``towers``' neuron sites.

    Example:
        >>> len(random_neurons(model, 5, seed=1))
        5
    """
    sites = neuron_sites(model, towers)
    widths = torch.tensor([neuron_width(model, site) for site in sites])
    ends = widths.cumsum(0)
    if count > int(ends[-1]):
        raise MmlensError(f"cannot draw {count} neurons from {int(ends[-1])}")
    flat = torch.randperm(int(ends[-1]), generator=torch.Generator().manual_seed(seed))[:count]
    which = torch.bucketize(flat, ends, right=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), ends[:-1]])
    return NeuronSet([sites[int(w)] for w in which], flat - offsets[which], torch.zeros(count),
                     [label] * count, {"method": "random", "seed": seed, "towers": list(towers)})


@contextmanager
def _reading(model: "Model", sites: list[str], reader, attention: bool, attention_reader,
             value: str, query: int = -1) -> Iterator[None]:
    """A neuron reader per decoder layer, plus attention readers (row ``query``, mean over heads) when asked."""
    with ExitStack() as stack:
        if attention:
            request = runtime.RowRequest(rows=query, mean_heads=True)
            for layer in range(len(sites)):
                site = hooks.resolve(model, f"lm.L{layer}.attn_probs")
                stack.enter_context(hooks.attention_reader(model, site, attention_reader(layer), request))
        stack.enter_context(hooks.intervene(model, {site: reader(k) for k, site in enumerate(sites)}, neuron_value=value))
        yield
