"""Edge attribution patching (EAP, Syed et al. 2023) on the graph of embeddings, heads, MLPs and logits.

An edge runs from a node (``embed``, ``L{i}.H{j}``, ``L{i}.MLP``) to a later
reader (a head, an MLP, ``logits``). Its score is the first-order estimate of
patching that one edge: ``(corrupt - clean upstream output) . d metric / d reader input``,
from one clean forward and backward pass (each reader has its own input, so a
gradient reaches one reader through one edge) and one corrupt forward pass.
The metric is the answer's logit minus the foil's, summed over rows.

A circuit is the top edges by absolute score. :func:`faithfulness_curve`
keeps the top ``k`` edges and ablates every other edge (the reader receives
the upstream node's ablation value: a mean over samples, or the corrupt
output), for many ``k`` in one batched pass.

Example:
    >>> import mmlens
    >>> from mmlens.models.decoder import record_decoder_call
    >>> model = mmlens.load("tiny-llama")
    >>> clean = record_decoder_call(model, model.prepare("a red circle"))
    >>> corrupt = record_decoder_call(model, model.prepare("a blue circle"))
    >>> scores = edge_scores(model, clean, corrupt, answer=[5], foil=[6])
    >>> scores.scores.shape[0] == len(scores.edges)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from mmlens.circuits.cdt import target_ids
from mmlens.circuits.graph import DecoderGraph
from mmlens.errors import MmlensError
from mmlens.model import Batch, Model
from mmlens.models.decoder import DecoderCall, record_decoder_call


MAX_ROWS = 256  # rows per pass of the faithfulness curve


@dataclass
class EdgeScores:
    """EAP scores of every edge, with the clean and corrupt metric per row."""

    nodes: list[str]
    readers: list[str]
    edges: list[tuple[int, int]]  # (node index, reader index)
    scores: torch.Tensor  # (edges,): summed over rows
    clean: torch.Tensor  # (rows,) metric
    corrupt: torch.Tensor  # (rows,) metric
    seconds: float

    def edge_names(self) -> list[str]:
        return [f"{self.nodes[u]} -> {self.readers[r]}" for u, r in self.edges]

    def top(self, k: int) -> list[int]:
        """Indices of the ``k`` edges of largest absolute score."""
        return torch.argsort(self.scores.abs(), descending=True)[:k].tolist()


@dataclass
class FaithfulnessCurve:
    """Metric when only the top ``k`` edges are kept, per ``k``; recovered = share of the clean-corrupt gap."""

    kept: list[int]
    metric: torch.Tensor  # (len(kept),): mean over rows
    clean: float
    corrupt: float  # the corrupt run's metric (the all-ablated one when no corrupt run is given)
    empty: float  # every edge ablated
    n_edges: int

    @property
    def recovered(self) -> torch.Tensor:
        return (self.metric - self.corrupt) / (self.clean - self.corrupt)

    def smallest(self, target: float) -> int | None:
        """The fewest kept edges whose recovered share reaches ``target`` (None if none does)."""
        hits = [k for k, r in zip(self.kept, self.recovered.tolist()) if r >= target]
        return min(hits) if hits else None


def metric_of(logits: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """Answer logit minus foil logit per row of ``logits`` ``(rows, vocab)``."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer.to(logits.device)] - logits[rows, foil.to(logits.device)]


def edge_scores(model: Model, clean: DecoderCall, corrupt: DecoderCall, answer: Sequence[int] | torch.Tensor,
                foil: Sequence[int] | torch.Tensor, graph: DecoderGraph | None = None) -> EdgeScores:
    """EAP scores of every edge for the rows of ``clean`` against those of ``corrupt`` (same shapes).

    Example:
        >>> result = edge_scores(model, clean, corrupt, answer=[5], foil=[6])
        >>> result.edge_names()[0]
        'embed -> L0.H0'
    """
    graph = graph or DecoderGraph(model)
    if clean.embeds.shape != corrupt.embeds.shape:
        raise MmlensError(f"clean and corrupt inputs differ in shape: {tuple(clean.embeds.shape)} and "
                          f"{tuple(corrupt.embeds.shape)}; give a corruption of the same prompt and image size")
    start = time.perf_counter()
    answer, foil = torch.as_tensor(answer).long(), torch.as_tensor(foil).long()
    with torch.no_grad():
        corrupt_run = graph.run(corrupt)
    inputs: list[torch.Tensor] = []
    embeds = clean.embeds.float().detach().requires_grad_(True)
    with torch.enable_grad():
        clean_run = graph.run(clean, embeds, keep_inputs=inputs)
        graph.check(clean, clean_run)
        metric = metric_of(clean_run.logits, answer, foil)
        metric.sum().backward()
    grads = _reader_grads(inputs)  # (readers, rows, seq, hidden)
    delta = corrupt_run.outputs - clean_run.outputs.detach()  # (nodes, rows, seq, hidden)
    matrix = torch.einsum("nbsd,rbsd->nr", delta, grads)
    scores = torch.stack([matrix[u, r] for u, r in graph.edges])
    return EdgeScores(graph.nodes, graph.readers, list(graph.edges), scores, metric.detach(),
                      metric_of(corrupt_run.logits, answer, foil), time.perf_counter() - start)


def _reader_grads(inputs: list[torch.Tensor]) -> torch.Tensor:
    """Gradients of the readers' inputs in reader order: head inputs come per layer as (rows, heads, seq, hidden)."""
    grads = []
    for x in inputs:
        grad = x.grad if x.grad is not None else torch.zeros_like(x)
        grads += list(grad.unbind(1)) if x.ndim == 4 else [grad]
    return torch.stack(grads)


def faithfulness_curve(model: Model, clean: DecoderCall, ablation: torch.Tensor, scores: EdgeScores,
                       kept: Sequence[int], answer: Sequence[int] | torch.Tensor, foil: Sequence[int] | torch.Tensor,
                       corrupt: DecoderCall | None = None, graph: DecoderGraph | None = None) -> FaithfulnessCurve:
    """The metric when only the top ``k`` edges (for each ``k`` in ``kept``) carry clean values.

    ``ablation`` holds what an ablated edge carries, per node: ``(nodes, seq,
    hidden)`` (a mean over samples) or ``(nodes, rows, seq, hidden)`` (the
    corrupt run's outputs). Readers of ablated edges get the ablation value;
    nodes still compute from their (partly ablated) inputs. The gap is
    measured against the ``corrupt`` run (default: every edge ablated).

    Example:
        >>> curve = faithfulness_curve(model, clean, corrupt_outputs, scores, [0, 10, 54], [5], [6])
        >>> float(curve.recovered[-1])  # every edge kept: the clean run
        1.0
    """
    graph = graph or DecoderGraph(model)
    answer, foil = torch.as_tensor(answer).long(), torch.as_tensor(foil).long()
    rows = clean.batch_size
    if ablation.ndim == 3:
        ablation = ablation.unsqueeze(1).expand(-1, rows, -1, -1)
    ablation = ablation.float()
    order = torch.argsort(scores.scores.abs(), descending=True)
    per_pass = max(1, MAX_ROWS // rows)  # bounds memory: every reader stacks all node outputs of all rows
    metric = torch.cat([_kept_metric(graph, clean, ablation, order, list(kept[i : i + per_pass]), answer, foil)
                        for i in range(0, len(kept), per_pass)])
    with torch.no_grad():
        full = graph.run(clean)
        empty = graph.run(clean, inputs=lambda s, r: ablation[: graph.upstream[r]].sum(0))
        other = empty if corrupt is None else graph.run(corrupt)
    mean = lambda run: float(metric_of(run.logits, answer, foil).mean())  # noqa: E731
    return FaithfulnessCurve(list(kept), metric, mean(full), mean(other), mean(empty), len(graph.edges))


def _kept_metric(graph: DecoderGraph, clean: DecoderCall, ablation: torch.Tensor, order: torch.Tensor,
                 kept: list[int], answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """Mean metric over rows with only the first ``k`` edges of ``order`` clean, for each ``k`` in ``kept``."""
    rows, copies = clean.batch_size, len(kept)
    keep = torch.zeros(copies, len(graph.nodes), len(graph.readers))
    for c, k in enumerate(kept):
        for e in order[:k].tolist():
            u, r = graph.edges[e]
            keep[c, u, r] = 1.0
    keep = keep.repeat_interleave(rows, 0).to(ablation.device)  # (copies * rows, nodes, readers)
    alt_all = ablation.repeat(1, copies, 1, 1)  # (nodes, copies * rows, seq, hidden)

    def rule(stacked: torch.Tensor, reader: int) -> torch.Tensor:
        n = graph.upstream[reader]
        alt = alt_all[:n]
        return alt.sum(0) + torch.einsum("nbsd,bn->bsd", stacked[:n] - alt, keep[:, :n, reader])

    with torch.no_grad():
        run = graph.run(clean, clean.embeds.float().repeat(copies, 1, 1), inputs=rule)
    return metric_of(run.logits, answer.repeat(copies), foil.repeat(copies)).view(copies, rows).mean(1)


@dataclass
class Circuit:
    """The EAP circuit of one input: the edge scores, the faithfulness curve, and the fewest edges reaching the target.

    ``runner_up`` says the corruption left the answer unchanged, so the foil
    is the clean run's second token instead of the corrupted run's answer.
    """

    scores: EdgeScores
    curve: FaithfulnessCurve
    answer_id: int
    foil_id: int
    runner_up: bool
    edges_kept: int

    @property
    def recovered(self) -> float:
        """The share of the clean-corrupt gap the kept edges recover."""
        kept = self.curve.kept
        return float(self.curve.recovered[kept.index(self.edges_kept)]) if self.edges_kept in kept else 1.0

    def to_json(self) -> dict:
        """The metric at both ends, the circuit's size and share, its edges by score, and EAP's time."""
        return {"metric_clean": self.curve.clean, "metric_corrupt": self.curve.corrupt,
                "edges": len(self.scores.edges), "edges_kept": self.edges_kept, "recovered": self.recovered,
                "top_edges": [{"edge": self.scores.edge_names()[e], "score": round(float(self.scores.scores[e]), 6)}
                              for e in self.scores.top(self.edges_kept)],
                "seconds": round(self.scores.seconds, 4)}


def find_circuit(model: Model, clean: Batch, corrupted: Batch, *, answer: str | int | None = None,
                 target: float = 0.8, graph: DecoderGraph | None = None) -> Circuit:
    """EAP of ``clean`` against ``corrupted`` (first rows); the circuit is the fewest top edges recovering ``target``.

    The metric is the answer's logit (default: the clean run's top token)
    minus the corrupted run's answer, or the clean runner-up when the
    corruption does not change the answer.

    Example:
        >>> circuit = find_circuit(model, batch, noisy_pixels(batch, 3.0, 0)[0], target=0.8)  # doctest: +SKIP
        >>> circuit.edges_kept <= len(circuit.scores.edges)
        True
    """
    graph = graph or DecoderGraph(model)
    clean_call, corrupt_call = record_decoder_call(model, clean).row(0), record_decoder_call(model, corrupted).row(0)
    with torch.no_grad():
        clean_logits, corrupt_run = graph.run(clean_call).logits, graph.run(corrupt_call)
    answer_id, _ = target_ids(model, clean_logits, answer, None)
    foil_id = int(corrupt_run.logits[0].argmax())
    runner_up = foil_id == answer_id
    if runner_up:
        foil_id = int(clean_logits[0].topk(2).indices[1])
    scores = edge_scores(model, clean_call, corrupt_call, [answer_id], [foil_id], graph=graph)
    total = len(graph.edges)
    kept = sorted({round(total * f / 100) for f in range(0, 101, 5)} | {1, 2, 5, 10})
    curve = faithfulness_curve(model, clean_call, corrupt_run.outputs, scores, kept, [answer_id], [foil_id],
                               corrupt_call, graph)
    return Circuit(scores, curve, answer_id, foil_id, runner_up, curve.smallest(target) or total)
