"""Domain-specific neurons, after MMNeuron: neurons that fire for one domain of inputs and not the others.

For each neuron and domain ``d``, ``P_d`` is the share of the domain's tokens
where the neuron's activation is > 0. DAPE, the domain activation probability
entropy, is the entropy of ``P`` normalised over domains: low entropy means the
neuron fires mostly for few domains. Selection (:func:`select_domain_neurons`):

1. per tower (``lm``, ``vision``, ``projector``, whose activation scales
   differ), the bar is the 95th percentile of all its ``P_d`` values;
2. drop neurons whose highest ``P_d`` is under the bar;
3. keep the 1% of the tower's neurons with the lowest DAPE (or all survivors,
   if fewer);
4. label each kept neuron with every domain whose ``P_d`` passes the bar.

Tokens counted: in the language model every non-padding position (or only
each prompt's last position, which predicts the answer, or some modalities:
``lm_tokens``); in the vision tower every token of every
image (CLS included); in the projector every image feature.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("tiny-llava")
    >>> scores = domain_scores(model, {"colour": make_dataset("val", 3, question_type="colour"),
    ...                                "count": make_dataset("val", 3, question_type="count")}, progress=False)
    >>> chosen = select_domain_neurons(scores)
    >>> set(chosen.labels) <= {"colour", "count"}
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.budget import MemoryBudget
from mmlens.neurons._batches import Datasets, budget_batches, progress_bar
from mmlens.neurons.neuron_set import NeuronSet
from mmlens.hooks import intervene
from mmlens.neurons.sites import neuron_sites, neuron_width, tower_of

if TYPE_CHECKING:
    from mmlens.layout import TokenLayout
    from mmlens.model import Model


@dataclass
class DomainScores:
    """Activation counts per site and domain: ``active[site]`` ``(domains, width)``, ``tokens[site]`` ``(domains,)``."""

    sites: list[str]
    domains: list[str]
    active: dict[str, torch.Tensor]
    tokens: dict[str, torch.Tensor]

    def probabilities(self, site: str) -> torch.Tensor:
        """``P_d(n)``: share of domain ``d``'s tokens where neuron ``n`` is active, ``(domains, width)``."""
        return self.active[site].to(torch.float64) / self.tokens[site].clamp_min(1).to(torch.float64)[:, None]

    def entropy(self, site: str) -> torch.Tensor:
        """DAPE of every neuron at ``site``, ``(width,)``; a neuron never active gets the maximum, log(domains)."""
        return dape(self.probabilities(site))


def dape(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over domains (axis 0) of activation probabilities normalised to sum 1 per neuron.

    Example:
        >>> dape(torch.tensor([[0.5, 0.2], [0.5, 0.0]])).tolist()  # doctest: +ELLIPSIS
        [0.693..., 0.0]
    """
    total = probabilities.sum(0, keepdim=True)
    shares = probabilities / total.clamp_min(1e-30)
    entropy = -(shares * torch.log(shares.clamp_min(1e-30))).sum(0)  # 0 log 0 = 0
    entropy = entropy.clamp_min(0.0) + 0.0  # no rounding below zero, and -0.0 + 0.0 is +0.0
    return torch.where(total[0] > 0, entropy, torch.full_like(entropy, math.log(probabilities.shape[0])))


def domain_scores(
    model: "Model",
    datasets: Datasets,
    towers: Sequence[str] = ("lm", "vision", "projector"),
    lm_tokens: str | Sequence[Modality] = "all",
    memory_budget: MemoryBudget = None,
    value: str = "gate",
    progress: bool = True,
) -> DomainScores:
    """Count, per domain (``{domain: samples}``), how often each neuron of the ``towers`` is active.

    ``value`` picks what a neuron's value is in gated MLPs (see
    :mod:`mmlens.neurons.sites`): by default a decoder neuron is active when
    ``act(gate_proj x) > 0``, as in LAPE and MMNeuron. ``memory_budget`` (bytes or ``"2GB"``; :mod:`mmlens.budget`) sizes how many samples go through each forward.

    Example:
        >>> scores = domain_scores(model, {"a": make_dataset("val", 2), "b": make_dataset("test", 2)},
        ...                        towers=("projector",), progress=False)
        >>> scores.probabilities("projector.neurons").shape
        torch.Size([2, 64])
    """
    if len(datasets) < 2:
        raise MmlensError("domain-specific neurons need at least two domains")
    sites = neuron_sites(model, towers)
    domains = list(datasets)
    active = {site: torch.zeros(len(domains), neuron_width(model, site), dtype=torch.int64) for site in sites}
    tokens = {site: torch.zeros(len(domains), dtype=torch.int64) for site in sites}
    state: dict = {}

    def reader(site: str):
        language = tower_of(site) == "lm"

        def read(x: torch.Tensor) -> None:
            positive = x.detach() > 0
            if language:  # padding (and unwanted modalities) do not count
                keep = state["mask"][..., None]
                active[site][state["domain"]] += (positive & keep).sum((0, 1)).cpu()
                tokens[site][state["domain"]] += int(state["mask"].sum())
            else:
                active[site][state["domain"]] += positive.flatten(0, -2).sum(0).cpu()
                tokens[site][state["domain"]] += positive[..., 0].numel()

        return read

    total = sum(len(items) for items in datasets.values())
    with progress_bar(progress, "counting neuron activations per domain", total) as advance, \
            intervene(model, {site: reader(site) for site in sites}, neuron_value=value):
        for d, items in enumerate(datasets.values()):
            for chunk, batch in budget_batches(model, items, memory_budget, "neuron scoring"):
                layout = batch.layout
                mask = _token_mask(layout, lm_tokens)
                state.update(domain=d, mask=mask.to(model.device))
                with torch.no_grad():
                    model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))
                advance(len(chunk))
    return DomainScores(sites, domains, active, tokens)


def _token_mask(layout: "TokenLayout", lm_tokens: str | Sequence[Modality]) -> torch.Tensor:
    """Which decoder positions count: all real ones, each row's last one (left padding), or some modalities."""
    if lm_tokens == "all":
        return ~layout.mask(Modality.PAD)
    if lm_tokens == "last":
        mask = torch.zeros(layout.modality.shape, dtype=torch.bool)
        mask[:, -1] = True
        return mask
    if isinstance(lm_tokens, str):
        raise MmlensError(f"lm_tokens is 'all', 'last' or a list of modalities, not {lm_tokens!r}")
    return torch.stack([layout.mask(m) for m in lm_tokens]).any(0)


def select_domain_neurons(scores: DomainScores, ratio: float = 0.01, quantile: float = 0.95) -> NeuronSet:
    """Low-DAPE neurons among the frequently active ones, labelled with their domains (see the module doc).

    Scores of the set are the DAPE entropies (lower = more domain-specific).

    Example:
        >>> chosen = select_domain_neurons(scores, ratio=0.05)
        >>> chosen.metadata["method"]
        'MMNeuron'
    """
    if not 0 < quantile < 1:
        raise MmlensError("quantile must lie strictly between 0 and 1")
    sites, indices, values, labels = [], [], [], []
    bars: dict[str, float] = {}
    for tower in dict.fromkeys(tower_of(site) for site in scores.sites):
        group = [site for site in scores.sites if tower_of(site) == tower]
        probs = torch.cat([scores.probabilities(site) for site in group], dim=1)  # (D, tower width)
        entropy = torch.cat([scores.entropy(site) for site in group])
        owner = torch.cat([torch.full((scores.active[s].shape[1],), k) for k, s in enumerate(group)])
        offset = torch.cat([torch.arange(scores.active[s].shape[1]) for s in group])
        bar = float(torch.quantile(probs.flatten().float(), quantile))
        bars[tower] = bar
        candidate = (probs.max(0).values >= bar) & (probs.max(0).values > 0)
        k = max(1, round(ratio * probs.shape[1]))
        ranked = torch.where(candidate, entropy, torch.full_like(entropy, float("inf")))
        order = ranked.argsort(stable=True)[:k]
        order = order[torch.isfinite(ranked[order])]
        passes = probs[:, order] >= bar  # (D, kept): a neuron may serve several domains
        for d, domain in enumerate(scores.domains):
            chosen = order[passes[d]]
            sites += [group[int(o)] for o in owner[chosen]]
            indices.append(offset[chosen])
            values.append(entropy[chosen].float())
            labels += [domain] * len(chosen)
    metadata = {"method": "MMNeuron", "score": "DAPE entropy (nats; lower is more specific)", "ratio": ratio,
                "quantile": quantile, "bars": bars, "domains": scores.domains,
                "tokens": {site: scores.tokens[site].tolist() for site in scores.sites}}
    empty = torch.zeros(0, dtype=torch.int64)
    return NeuronSet(sites, torch.cat(indices) if indices else empty,
                     torch.cat(values) if values else empty.float(), labels, metadata)
