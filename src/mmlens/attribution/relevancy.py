"""Relevancy propagation for decoder-only VLMs (Chefer et al., 2021).

Start with ``R = I``; for each layer in forward order,
``A_bar = mean_heads(clamp(dA * A, min=0))`` with ``dA`` the gradient of the
target score with respect to that layer's attention probabilities, then
``R = R + A_bar @ R``. The explanation is ``R[target]``.

One forward pass of the decoder (the vision tower runs once, without
gradients), then one backward pass per target token. No layer keeps its
probabilities: the decoder attentions save Q, K and V, and their backward
recomputes the probabilities a chunk of query rows at a time and carries the
target's row ``e_t^T R`` from the last layer down
(:mod:`mmlens.models.runtime.relevance`), so memory stays near one forward +
backward of the model.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> relevancy(model, targets).scores.shape[-1] == targets.batch.input_ids.shape[1]
    True
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores
from mmlens.errors import MmlensError
from mmlens.hooks import resolve
from mmlens.model import Model
from mmlens.models.decoder import record_decoder_call
from mmlens.models.runtime.attention import relevance_rows
from mmlens.models.runtime.relevance import RelevanceRow
from mmlens.readout import Targets


def relevancy(model: Model, targets: Targets) -> Attribution:
    """Gradient-weighted attention relevancy from each answer position."""
    call = record_decoder_call(model, targets.batch, run_decoder=False)  # the vision tower and the merge only
    # A leaf of its own: gradients flow through the decoder even when the user froze every weight,
    # and autograd.grad to it computes no weight gradients.
    embeds = call.embeds.detach()
    if not embeds.is_floating_point():  # a text-only decoder called with its token ids: embed them here
        embeds = model.hf.get_input_embeddings()(embeds).detach()
    embeds.requires_grad_(True)
    row = RelevanceRow()
    scores = empty_scores(targets)
    with ExitStack() as stack, torch.enable_grad():
        for i in range(model.n_layers):
            stack.enter_context(relevance_rows(model.hf, resolve(model, f"lm.L{i}.attn_probs").module, row))
        logits = call.logits(embeds, positions=targets.positions)  # (batch, n, vocab): the answer positions only
        for j in range(targets.count):
            row.start(embeds.shape[0], embeds.shape[1], int(targets.positions[j]), embeds.device)
            score = targets.scores(logits[:, j], j).sum()
            torch.autograd.grad(score, embeds, retain_graph=j + 1 < targets.count)
            if row.layers != model.n_layers:  # a decoder attention that bypassed transformers' attention interface
                raise MmlensError(f"relevancy: {row.layers} of {model.n_layers} decoder attentions carried the "
                                  f"relevance row; {type(model.hf).__name__} is not supported")
            scores[:, j] = row.value.float().cpu()
    return Attribution(causal_cut(scores, targets))
