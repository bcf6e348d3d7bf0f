"""Reading the vocabulary off hidden states: unembedding, the answer's token id, its probability.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> batch = model.prepare("a red circle")
    >>> with mmlens.capture(model, "lm.L1.resid") as captured:
    ...     logits = model.forward(batch).logits
    >>> torch.allclose(unembed(model, captured["lm.L1.resid"]), logits, atol=1e-5)
    True
    >>> answer = answer_token_ids(model, None, logits[:, -1], rows=1)
    >>> bool(token_probabilities(logits[:, -1], answer) > 0)
    True
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.readout.vocabulary import token_ids


def unembed(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm then unembedding of residual-stream vectors: ``(..., hidden) -> (..., vocab)``.

    At the last layer this is the model's own output logits; at earlier layers
    it is the logit lens.

    Example:
        >>> unembed(model, torch.zeros(2, model.hf.config.hidden_size)).shape[0]
        2
    """
    norm = model.module(model.adapter.final_norm)
    return model.module(model.adapter.unembed)(norm(hidden))


def answer_token_ids(
    model: Model, answer: str | Sequence[str] | torch.Tensor | None, logits: torch.Tensor | None, rows: int
) -> torch.Tensor:
    """The token id to follow per row: the first token of each answer, or the argmax of ``logits`` ``(rows, vocab)``.

    ``answer`` is one string for every row, one string per row, a tensor of
    token ids (one for every row, or one per row), or None for the model's own
    top prediction.

    Example:
        >>> answer_token_ids(model, "red", None, 2).shape
        torch.Size([2])
    """
    if answer is None:
        if logits is None:
            raise MmlensError("no answer given and no logits to take the model's own answer from")
        return logits.argmax(-1).cpu()
    if isinstance(answer, torch.Tensor):
        ids = answer.flatten().cpu().long()
        return ids.expand(rows).clone() if ids.numel() == 1 else ids
    texts = [answer] * rows if isinstance(answer, str) else list(answer)
    if len(texts) != rows:
        raise MmlensError(f"{len(texts)} answers for {rows} prompts")
    return torch.tensor([token_ids(model, text, "answer")[0] for text in texts])


def token_probabilities(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``token_ids[row]`` in each row of ``logits`` ``(rows, vocab)``, on the CPU.

    ``logits`` may hold several stacked copies of the batch (``copies x batch``
    rows); the token ids repeat with them.

    Example:
        >>> token_probabilities(torch.zeros(4, 10), torch.tensor([1, 2]))
        tensor([0.1000, 0.1000, 0.1000, 0.1000])
    """
    copies = logits.shape[0] // token_ids.shape[0]
    ids = token_ids.repeat(copies).to(logits.device)
    return torch.softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0].cpu()
