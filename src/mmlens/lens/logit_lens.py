"""Logit lens on every position, image tokens included: what each hidden state means, layer by layer.

The residual stream after each decoder block (and the decoder's input, where
projected image features enter) goes through the family's final norm and the
unembedding (:func:`mmlens.readout.unembed`). For every layer
and position we keep the top-k tokens with their probabilities and the entropy
of the distribution; for the answer position, the answer token's rank and
probability per layer (when does the answer emerge?).

Layer rows are ``layer_names``: ``"embed"`` (the decoder input) then ``L0`` ..
``L{n-1}`` (block outputs). The last row is the model's own output distribution.
(The attribution method ``logit_lens`` of :func:`mmlens.explain`, one heatmap
per answer token at one layer, is ``logit_lens_map``.)

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> lens = logit_lens(model, model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))]))
    >>> lens.layer_names[:2], int(lens.answer_rank[-1, 0])
    (['embed', 'L0'], 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mmlens.hooks import capture
from mmlens.errors import check_position
from mmlens.layout import TokenLayout
from mmlens.model import Batch, Model
from mmlens.readout import answer_token_ids, logits_at, unembed_blocks


@dataclass
class LogitLens:
    """Top-k tokens and entropy per layer and position; the answer's rank and probability per layer.

    Shapes: ``top_ids``/``top_probs`` ``(layers + 1, batch, seq, k)``;
    ``entropy`` ``(layers + 1, batch, seq)`` in nats; ``answer_rank`` (1 = top)
    and ``answer_prob`` ``(layers + 1, batch)`` at ``position``.
    """

    model: str
    prompts: list[str]
    layer_names: list[str]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    answer_ids: torch.Tensor  # (batch,)
    answer_rank: torch.Tensor
    answer_prob: torch.Tensor
    position: int  # the answer position (non-negative index)
    layout: TokenLayout
    tokens: list[list[str]]  # input token pieces per row
    vocabulary: dict[int, str]  # token piece of every id that appears in top_ids or answer_ids

    def top_words(self, layer: int, row: int = 0) -> list[str]:
        """The top-1 token piece at every position of ``row`` at layer row ``layer``."""
        return [self.vocabulary[int(i)] for i in self.top_ids[layer, row, :, 0]]

    def word_grid(self, layer: int, row: int = 0, image: int = 0, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 words and their probabilities laid on one view's patch grid: ``(rows, cols)`` each.

        Example:
            >>> words, probs = lens.word_grid(layer=-1)
            >>> words.shape == probs.shape
            True
        """
        seq = self.layout.seq_len
        where = self.layout.grid(torch.arange(seq, dtype=torch.float32), row, image, view)
        words = np.full(where.shape, "", dtype=object)
        probs = np.full(where.shape, np.nan, dtype=np.float32)
        for (r, c), position in np.ndenumerate(where):
            if not np.isnan(position):
                words[r, c] = self.vocabulary[int(self.top_ids[layer, row, int(position), 0])]
                probs[r, c] = float(self.top_probs[layer, row, int(position), 0])
        return words, probs

    def emergence_layer(self, row: int = 0) -> int | None:
        """The first layer row from which the answer stays at rank 1 to the end (None if it never does)."""
        ranks = self.answer_rank[:, row].tolist()
        first = None
        for index, rank in enumerate(ranks):
            first = (index if first is None else first) if rank == 1 else None
        return first

    def to_json(self, top_k: int | None = None) -> dict[str, Any]:
        """Plain JSON: per row the tokens, per layer and position the top-k ``[token, prob]`` and the entropy."""
        k = self.top_ids.shape[-1] if top_k is None else min(top_k, self.top_ids.shape[-1])
        rows = []
        for b in range(self.top_ids.shape[1]):
            layers = []
            for layer, name in enumerate(self.layer_names):
                top = [[[self.vocabulary[int(i)], round(float(p), 5)] for i, p in zip(ids[:k], probs[:k])]
                       for ids, probs in zip(self.top_ids[layer, b], self.top_probs[layer, b])]
                layers.append({"layer": name, "top": top,
                               "entropy": [round(float(e), 5) for e in self.entropy[layer, b]]})
            rows.append({
                "prompt": self.prompts[b],
                "tokens": self.tokens[b],
                "modality": self.layout.modality[b].tolist(),
                "answer": self.vocabulary[int(self.answer_ids[b])],
                "answer_rank": self.answer_rank[:, b].tolist(),
                "answer_prob": [round(float(p), 6) for p in self.answer_prob[:, b]],
                "emergence_layer": self.emergence_layer(b),
                "layers": layers,
            })
        return {"model": self.model, "layer_names": self.layer_names, "position": self.position, "rows": rows}


def _read_layer(model: Model, hidden: torch.Tensor, top_k: int, index: int,
                answer_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One layer's top ids and probabilities and entropy at every position, and the answer's rank and probability
    at ``index``, unembedded a block of positions at a time (:func:`~mmlens.readout.logits.unembed_blocks`).
    """
    tops, probs, entropies = [], [], []
    for start, logits in unembed_blocks(model, hidden):
        log_probs = torch.log_softmax(logits, dim=-1)
        entropies.append(-(log_probs.exp() * log_probs).sum(-1).cpu())
        top = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        tops.append(top.indices.cpu())
        probs.append(top.values.exp().cpu())
        if start <= index < start + log_probs.shape[1]:
            at = log_probs[:, index - start]  # (batch, vocab)
            own = at.gather(-1, answer_ids[:, None].to(at.device))
            rank, answer_prob = ((at > own).sum(-1) + 1).cpu(), own[:, 0].exp().cpu()
    return torch.cat(tops, 1), torch.cat(probs, 1), torch.cat(entropies, 1), rank, answer_prob


def logit_lens(
    model: Model,
    batch: Batch,
    answer: str | Sequence[str] | torch.Tensor | None = None,
    top_k: int = 5,
    position: int = -1,
) -> LogitLens:
    """Unembed every layer's residual stream at every position; follow the answer token at ``position``.

    ``answer`` is a string (its first token is followed), one per row, a tensor
    of token ids, or None for the model's own top prediction at ``position``.
    The batch should be left-padded so that ``position=-1`` is each row's last token.

    Example:
        >>> lens = logit_lens(model, batch, answer="red", top_k=3)
        >>> lens.top_ids.shape[0] == model.n_layers + 1
        True
    """
    seq = batch.input_ids.shape[1]
    index = check_position(position, seq)
    sites = ["lm.embed"] + [f"lm.L{i}.resid" for i in range(model.n_layers)]
    with torch.no_grad(), capture(model, sites) as captured:
        answer_ids = answer_token_ids(model, answer, logits_at(model, batch, [index])[:, 0], batch.input_ids.shape[0])
        tops, probs, entropies, ranks, answer_probs = [], [], [], [], []
        for site in sites:
            read = _read_layer(model, captured[site], top_k, index, answer_ids)
            for kept, value in zip((tops, probs, entropies, ranks, answer_probs), read):
                kept.append(value)
    top_ids = torch.stack(tops)
    tokenizer = model.tokenizer
    ids = sorted(set(top_ids.unique().tolist()) | set(answer_ids.tolist()))
    vocabulary = dict(zip(ids, tokenizer.convert_ids_to_tokens(ids)))
    return LogitLens(
        model=model.name,
        prompts=list(batch.prompts),
        layer_names=["embed"] + [f"L{i}" for i in range(model.n_layers)],
        top_ids=top_ids,
        top_probs=torch.stack(probs),
        entropy=torch.stack(entropies),
        answer_ids=answer_ids.cpu(),
        answer_rank=torch.stack(ranks),
        answer_prob=torch.stack(answer_probs),
        position=index,
        layout=batch.layout,
        tokens=[tokenizer.convert_ids_to_tokens(row) for row in batch.input_ids.tolist()],
        vocabulary=vocabulary,
    )
