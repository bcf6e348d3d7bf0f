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

from typing import Any, Iterator, Sequence

import torch

from mmlens.errors import MmlensError, check_position
from mmlens.model import Batch, Model
from mmlens.models import runtime
from mmlens.readout.vocabulary import token_ids

_UNEMBED_ELEMENTS = 1 << 24  # logits unembedded at once by unembed_blocks (rows x positions x vocabulary): 64 MB


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


def unembed_blocks(model: Model, hidden: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`unembed` ``hidden`` ``(rows, seq, width)`` a block of positions at a time, in fp32: yields each
    block's first position and its ``(rows, positions, vocab)`` logits, about 64 MB of them. A whole layer's
    ``(seq, vocab)`` logits are 1.8 GB of fp32 at 3,000 tokens and Qwen2-VL's 152k words.

    Example:
        >>> sum(block.shape[1] for _, block in unembed_blocks(model, torch.zeros(1, 5, width)))
        5
    """
    rows, seq = hidden.shape[:2]
    vocabulary = unembed(model, hidden[:1, :1]).shape[-1]
    step = max(1, _UNEMBED_ELEMENTS // (rows * vocabulary))
    for start in range(0, seq, step):
        yield start, unembed(model, hidden[:, start:start + step]).float()


def logits_at(model: Model, batch: Batch, positions: Sequence[int] | torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The model's own logits at ``positions`` only, ``(rows, len(positions), vocab)``, from one forward pass of
    ``batch`` (``kwargs`` go to it): where the model takes ``logits_to_keep``, it unembeds from the first of
    the positions on, not every position.

    Example:
        >>> logits_at(model, batch, [-1]).shape[:2]
        torch.Size([1, 1])
    """
    seq = batch.input_ids.shape[1]
    wanted = torch.tensor([check_position(int(p), seq) for p in torch.as_tensor(positions).flatten()])
    keep = runtime.last_logits_only(model.hf, seq - int(wanted.min()))
    logits = model.forward(batch, use_cache=False, **keep, **kwargs).logits
    return logits[:, (wanted - (seq - logits.shape[1])).to(logits.device)]  # shifted where fewer came back


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
