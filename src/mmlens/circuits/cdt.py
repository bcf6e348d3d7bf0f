"""Contextual decomposition for transformers (CD-T, Hsu et al. 2024): what each head and MLP carries from a source.

The decoder's input is split in two: the *source* (the chosen positions'
embeddings minus a reference) and the *rest* (everything else, the reference
included). Both parts travel through the decoder side by side, and every
activation stays their exact sum:

- linear maps (value and output projections, the unembedding) act on each part;
- RMSNorms are linearised with the full input's scale (``w * part / rms(full)``,
  ``norms="frozen"``, as published), or split like a nonlinearity:
  ``norm(full) - norm(full - part)`` (``"marginal"``: the rest is normed with
  its own RMS, so a source that changes a position's RMS shows downstream),
  or the two-player Shapley value over the norm (``"shapley"``);
- attention probabilities are the full forward's (values are decomposed);
- an MLP, the one nonlinearity left, gives the source its marginal share
  ``f(s + r) - f(r)`` (``activation="marginal"``, what the CD-T authors' code
  does for activations), or the two-player Shapley value
  ``[f(s) - f(0) + f(s + r) - f(r)] / 2`` (``"shapley"``, Singh et al.'s
  linearisation, symmetric: a source and its complement add up to the whole);
  biases go to the rest.

The rest is what propagates by these rules (``rest="propagated"``), or the
model's own run with the source replaced by the reference
(``rest="replaced"``): each component's source part is then exactly its
clean output minus its output in that run (what path patching patches in),
and only its way downstream is decomposed.

Each component's output then has a source part. Its *direct* share of the
answer logit reads that part through the (linearised) final norm and the
unembedding; its *total* share propagates the part through every later layer
(one more decomposition per component, all in one batched pass), the analogue
of path patching the source through that component. With frozen norms and
marginal MLPs it is exactly path patching with the clean run's attention
probabilities and norm scales; with marginal norms, exactly path patching
with the clean attention probabilities only.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> result = decompose(model, model.prepare("a red circle"), source_positions=[2])
    >>> len(result.components) == len(result.total_source)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmlens.circuits.graph import DecoderGraph, GraphRun
from mmlens.models.llama_parts import norm_weight, rms_scale
from mmlens.errors import MmlensError, check_choice
from mmlens.model import Batch, Model
from mmlens.models.decoder import DecoderCall, record_decoder_call
from mmlens.readout.logits import answer_token_ids

REFERENCES = ("mean", "zero")
ACTIVATIONS = ("marginal", "shapley")
NORMS = ("frozen", "marginal", "shapley")
RESTS = ("propagated", "replaced")


@dataclass
class Decomposition:
    """CD-T of one prompt: per component (``L{i}.H{j}``, ``L{i}.MLP``), the source's share of the answer logit."""

    components: list[str]
    source_positions: list[int]
    answer_id: int
    foil_id: int | None
    logit: float  # the full target: answer logit (minus the foil's), without the unembedding's bias
    source_logit: float  # the source's part of it
    embed_source: float  # the source embeddings' own direct share
    direct_source: torch.Tensor  # (components,)
    direct_rest: torch.Tensor  # (components,)
    total_source: torch.Tensor  # (components,): the source's part through the component, to the logit
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def ranking(self, by: str = "total", signed: bool = False) -> list[tuple[str, float]]:
        """Components by decreasing size of their source share (``by`` "total" or "direct").

        Strong negative contributors rank as high as strong positive ones;
        ``signed=True`` ranks by the signed share instead (the most positive first).

        Example:
            >>> result.ranking()[0][0]  # doctest: +SKIP
            'L1.H2'
        """
        check_choice(by, ("total", "direct"), "ranking")
        scores = self.total_source if by == "total" else self.direct_source
        order = torch.argsort(scores if signed else scores.abs(), descending=True, stable=True)
        return [(self.components[i], float(scores[i])) for i in order]

    def to_json(self) -> dict[str, Any]:
        return {"components": self.components, "source_positions": self.source_positions,
                "answer_id": self.answer_id, "foil_id": self.foil_id, "logit": self.logit,
                "source_logit": self.source_logit, "embed_source": self.embed_source,
                "direct_source": self.direct_source.tolist(), "direct_rest": self.direct_rest.tolist(),
                "total_source": self.total_source.tolist(), "seconds": self.seconds, **self.meta}


def reference_embeds(call: DecoderCall, model: Model, batch: Batch, reference: str | torch.Tensor) -> torch.Tensor:
    """What the source positions hold when the source is taken away: ``(1, seq, hidden)`` for row 0.

    "mean": the mean image-token embedding of the row (the mean embedding where
    it has no image); "zero": zeros; a tensor: used as given.

    Example:
        >>> reference_embeds(call, model, batch, "zero").abs().sum()
        tensor(0.)
    """
    embeds = call.embeds[:1].float()
    if isinstance(reference, torch.Tensor):
        if reference.shape[-2:] != embeds.shape[-2:]:
            raise MmlensError(f"reference of shape {tuple(reference.shape)}; expected (seq, hidden) "
                              f"= {tuple(embeds.shape[-2:])}")
        return reference.float().reshape(1, *embeds.shape[1:]).to(embeds.device)
    if reference == "zero":
        return torch.zeros_like(embeds)
    check_choice(reference, REFERENCES, "reference")
    images = batch.layout.image_positions(0) if batch.layout is not None else torch.tensor([], dtype=torch.long)
    rows = embeds[0, images] if len(images) else embeds[0]
    return rows.mean(0).expand_as(embeds[0]).unsqueeze(0).clone()


def decompose(model: Model, batch: Batch, source_positions: Sequence[int], *, answer: str | int | None = None,
              foil: str | int | None = None, reference: str | torch.Tensor = "mean", activation: str = "marginal",
              norms: str = "frozen", rest: str = "propagated", graph: DecoderGraph | None = None) -> Decomposition:
    """CD-T of the first row of ``batch``: each head's and MLP's share of the answer logit from the source.

    ``source_positions`` are decoder positions (for example the asked
    object's image tokens); ``answer`` defaults to the model's own top token;
    with ``foil`` the target is answer logit minus foil logit; ``activation``
    says how MLPs split, ``norms`` how RMSNorms split and ``rest`` what the
    rest is (see the module docstring).

    Example:
        >>> result = decompose(model, batch, [1, 2, 3], answer="red")
        >>> abs(result.embed_source + float(result.direct_source.sum()) - result.source_logit) < 1e-3
        True
    """
    check_choice(activation, ACTIVATIONS, "activation rule")
    check_choice(norms, NORMS, "norm rule")
    check_choice(rest, RESTS, "rest")
    graph = graph or DecoderGraph(model)
    start = time.perf_counter()
    call, positions, run, answer_id, foil_id = clean_run(model, batch, source_positions, answer, foil, graph)
    with torch.no_grad():
        direction = _direction(graph, answer_id, foil_id)
        embeds = call.embeds.float()
        source = torch.zeros_like(embeds)
        source[0, positions] = embeds[0, positions] - reference_embeds(call, model, batch, reference)[0, positions]
        replaced = graph.run(call, embeds - source) if rest == "replaced" else None
        decomposition = decompose_run(graph, run, source[0], direction, activation, norms, replaced)
    decomposition.update(source_positions=positions, answer_id=answer_id, foil_id=foil_id,
                         seconds=time.perf_counter() - start,
                         meta={"reference": reference if isinstance(reference, str) else "tensor",
                               "activation": activation, "norms": norms, "rest": rest})
    return Decomposition(components=graph.nodes[1:], **decomposition)


def clean_run(model: Model, batch: Batch, source_positions: Sequence[int], answer: str | int | None,
              foil: str | int | None, graph: DecoderGraph) -> tuple[DecoderCall, list[int], GraphRun, int, int | None]:
    """Row 0's recorded call, the checked source positions, the checked clean graph run and the target's token ids.

    Example:
        >>> call, positions, run, answer_id, foil_id = clean_run(model, batch, [2], None, None, DecoderGraph(model))
    """
    call = record_decoder_call(model, batch).row(0)
    positions = _positions(source_positions, call.embeds.shape[1])
    with torch.no_grad():
        run = graph.run(call)
    graph.check(call, run)
    answer_id, foil_id = target_ids(model, run.logits, answer, foil)
    return call, positions, run, answer_id, foil_id


def decompose_run(graph: DecoderGraph, run: GraphRun, source: torch.Tensor, direction: torch.Tensor,
                  activation: str = "marginal", norms: str = "frozen", replaced: GraphRun | None = None) -> dict:
    """The decomposition itself, on a one-row clean ``run``: ``source`` ``(seq, hidden)`` is the source part.

    Row 0 of the propagated state carries the source; row ``c`` (one per
    component) carries component ``c``'s source part from where it is written.
    Direct shares read through the final norm at the full run's scale (so
    that they add up to the linearised source logit); the source and total
    shares read through it by ``norms``. With ``replaced`` (the run with the
    source replaced), row 0 is the clean run minus that run, node by node.
    """
    components = len(graph.nodes) - 1
    beta = source.new_zeros(1 + components, *source.shape)
    beta[0] = source
    own = source.new_zeros(components, *source.shape)  # each component's source part (row 0's view)
    for i, layer in enumerate(graph.layers):
        first = graph.node_index(i, 0)
        normed = _norm_share(graph, run, first - 1, beta, run.attn_scale[i][0], layer.attn_norm, norms)
        values = graph.values(layer, normed, bias=False)  # biases belong to the rest
        heads = graph.write(layer, torch.einsum("hqk,rhke->rhqe", run.probs[i][0], values))
        if replaced is not None:
            heads[0] = run.outputs[first:first + graph.n_heads, 0] - replaced.outputs[first:first + graph.n_heads, 0]
        written = heads.sum(1)
        for j in range(graph.n_heads):
            own[first + j - 1] = heads[0, j]
            written[first + j] = written[first + j] + heads[0, j]
        beta = beta + written
        node = graph.node_index(i, None)
        normed = _norm_share(graph, run, node - 1, beta, run.mlp_scale[i][0], layer.mlp_norm, norms)
        part = _mlp_share(layer.mlp, normed, run.mlp_inputs[i][0], run.outputs[node, 0], activation == "shapley")
        if replaced is not None:
            part[0] = run.outputs[node, 0] - replaced.outputs[node, 0]
        own[node - 1] = part[0]
        part[node] = part[node] + part[0]
        beta = beta + part
    weight = norm_weight(graph.final_norm)
    read = run.final_scale[0, -1] * weight * direction  # the last position's linearised read-out
    full_direct = run.outputs[1:, 0, -1] @ read
    direct_source = own[:, -1] @ read
    totals = _norm_share(graph, run, len(graph.readers) - 1, beta[:, -1:], run.final_scale[0, -1:], graph.final_norm,
                         norms)[:, 0] @ direction
    return {"logit": float(run.final[0, -1] @ read), "source_logit": float(totals[0]),
            "embed_source": float(source[-1] @ read), "direct_source": direct_source,
            "direct_rest": full_direct - direct_source, "total_source": totals[1:]}


def _norm_share(graph: DecoderGraph, run: GraphRun, reader: int, part: torch.Tensor, scale: torch.Tensor,
                norm: torch.nn.Module, rule: str) -> torch.Tensor:
    """The share of ``part`` ``(rows, seq, hidden)`` in the RMSNorm of reader ``reader``'s input, the rest being full - part.

    ``scale`` is the full input's ``1 / rms`` ``(seq, 1)``; "frozen" uses it
    for every part, "marginal" gives ``norm(full) - norm(full - part)``,
    "shapley" the mean of that and ``norm(part) - norm(0)``.
    """
    weight = norm_weight(norm)
    if rule == "frozen":
        return part * scale * weight
    full = graph.residual(run, reader)[0, -part.shape[1]:]
    rest = full - part
    marginal = weight * (full * scale - rest * rms_scale(rest, norm))
    if rule == "marginal":
        return marginal
    return 0.5 * marginal + 0.5 * weight * part * rms_scale(part, norm)


def _mlp_share(mlp: torch.nn.Module, part: torch.Tensor, full_in: torch.Tensor, full_out: torch.Tensor,
               shapley: bool) -> torch.Tensor:
    """The share of ``part`` (rows, seq, hidden) in ``mlp(full_in)``, the rest being ``full_in - part``."""
    dtype = next(mlp.parameters()).dtype
    f = lambda x: mlp(x.to(dtype)).float()  # noqa: E731
    marginal = full_out[None] - f(full_in[None] - part)
    if not shapley:
        return marginal
    return 0.5 * (f(part) - f(torch.zeros_like(full_in[None]))) + 0.5 * marginal


def target_ids(model: Model, logits: torch.Tensor, answer: str | int | None,
               foil: str | int | None) -> tuple[int, int | None]:
    """Token ids of the answer (default: the top token of ``logits`` ``(1, vocab)``) and the foil (or None)."""
    def one(value: str | int | None) -> int:
        if isinstance(value, int):
            return value
        return int(answer_token_ids(model, value, logits, 1)[0])
    return one(answer), (None if foil is None else one(foil))


def _direction(graph: DecoderGraph, answer_id: int, foil_id: int | None) -> torch.Tensor:
    weight = graph.unembed.weight.float()
    return weight[answer_id] - (weight[foil_id] if foil_id is not None else 0.0)


def _positions(positions: Sequence[int], seq: int) -> list[int]:
    raw = [int(p) for p in positions]
    if not raw or any(not -seq <= p < seq for p in raw) or len({p % seq for p in raw}) != len(raw):
        raise MmlensError(f"source positions must be distinct decoder positions in [0, {seq}); got {raw}")
    return sorted(p % seq for p in raw)
