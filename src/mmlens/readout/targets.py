"""What to explain: the answer tokens of a teacher-forced batch, and how to score them.

Three kinds of target:

- the model's own answer (greedy generation), token by token;
- a given answer, teacher-forced;
- a contrast: the answer's logit minus a foil's (why "red" rather than "blue"?).

Prompts are left-padded and answers appended, so answer token ``j`` is
predicted at the same position in every row: ``positions[j]``.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="is red")
    >>> targets.texts
    [['is', 'red']]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmlens.errors import MmlensError, check_choice
from mmlens.model import Batch, Model
from mmlens.readout.vocabulary import token_ids

SCORES = ("logit", "logprob", "prob")
DEFAULT_ANSWER_LENGTH = 8  # tokens generated for a model that records no answer length


def answer_length(model: Model) -> int:
    """How many tokens the model's answers take at most: its generation config's ``max_new_tokens``, else 8.

    Generation also stops at the model's end tokens (:func:`stop_token_ids`).
    A model trained on answers of fixed length records that length in its
    ``generation_config.json``: the shipped ``shapes-llava`` was trained on
    one-word answers and never learnt an end token, so it records
    ``max_new_tokens: 1``.

    Example:
        >>> import mmlens
        >>> answer_length(mmlens.load("shapes-llava")), answer_length(mmlens.load("tiny-llama"))
        (1, 8)
    """
    config = getattr(model.hf, "generation_config", None)
    length = getattr(config, "max_new_tokens", None)
    return int(length) if isinstance(length, int) and length > 0 else DEFAULT_ANSWER_LENGTH


def stop_token_ids(model: Model) -> set[int]:
    """Token ids that end an answer: the tokenizer's end and padding tokens and the generation config's end tokens.

    Example:
        >>> import mmlens
        >>> sorted(stop_token_ids(mmlens.load("shapes-llava")))  # <pad>, </s>
        [0, 3]
    """
    stops = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    configured = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    stops.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(t) for t in stops if t is not None}


@dataclass
class Targets:
    """Answer tokens to explain, and the teacher-forced batch that predicts them."""

    batch: Batch  # prompt + all answer tokens but the last
    positions: torch.Tensor  # (n,) position predicting answer token j, shared by all rows
    tokens: torch.Tensor  # (batch, n) answer token ids
    real: torch.Tensor  # (batch, n) True where row has an answer token j
    texts: list[list[str]]  # answer token strings per row
    foils: torch.Tensor | None = None  # (batch, n) contrast token ids
    score: str = "logit"

    @property
    def count(self) -> int:
        return self.tokens.shape[1]

    def scores(self, logits: torch.Tensor, j: int) -> torch.Tensor:
        """Per-row score of target ``j`` from the logits at its position, ``(rows, vocab)`` -> ``(rows,)``.

        Rows may be a stack of copies of the batch (``k x batch`` rows); the
        target tokens repeat with them. Scores are fp32 whatever the model's
        dtype, so differences and sums of them (occlusion drops, IG ends) do
        not round at half precision.
        """
        copies = logits.shape[0] // self.tokens.shape[0]
        token = self.tokens[:, j].repeat(copies).to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        if self.foils is not None:
            foil = self.foils[:, j].repeat(copies).to(logits.device)
            return logits[rows, token].float() - logits[rows, foil].float()  # fp32 in half-precision models
        if self.score == "logit":
            return logits[rows, token].float()
        log_probs = torch.log_softmax(logits.float(), dim=-1)[rows, token]
        return log_probs if self.score == "logprob" else log_probs.exp()


def build_targets(
    model: Model,
    batch: Batch,
    answer: str | list[str] | None = None,
    foil: str | list[str] | None = None,
    max_new_tokens: int | None = None,
    score: str = "logit",
) -> Targets:
    """Targets for ``batch``: the generated answer when ``answer`` is None, else the given one.

    ``batch`` must be left-padded (``Model.prepare`` does that by default).
    Generation stops at an end token or after ``max_new_tokens`` (default:
    the model's :func:`answer_length`).
    """
    check_choice(score, SCORES, "score")
    rows = batch.input_ids.shape[0]
    if answer is None:
        tokens, real = _generated(model, batch, max_new_tokens)
    else:
        tokens, real = _tokenised(model, _per_row(answer, rows, "answer"), "answer")
    foils = None
    if foil is not None:
        foil_tokens, foil_real = _tokenised(model, _per_row(foil, rows, "foil"), "foil")
        if foil_tokens.shape[1] == 1:
            foil_tokens = foil_tokens.expand_as(tokens)
        elif foil_tokens.shape != tokens.shape or not torch.equal(foil_real, real):
            raise MmlensError("a foil must be one token, or as many tokens as the answer")
        foils = foil_tokens
        _check_contrast(model, tokens, real, foils, rows)
    if tokens.shape[1] == 0:
        raise MmlensError("nothing to explain: the answer is empty")
    # Answer token j is fed as input only where token j + 1 exists to be predicted.
    texts = [[model.tokenizer.decode([t]) for t, r in zip(row, keep) if r] for row, keep in zip(tokens.tolist(), real.tolist())]
    return same_targets(model, batch, Targets(batch, torch.zeros(0), tokens, real.bool(), texts, foils, score))


def same_targets(model: Model, batch: Batch, targets: Targets) -> Targets:
    """``targets``' answer tokens, teacher-forced on another prompt batch (e.g. resized images)."""
    tokens, real = targets.tokens, targets.real.long()
    # Answer token j is fed as input only where token j + 1 exists to be predicted.
    forced = model.append_tokens(batch, tokens[:, :-1], real[:, 1:]) if tokens.shape[1] > 1 else batch
    start = batch.input_ids.shape[1] - 1
    positions = torch.arange(start, start + tokens.shape[1])
    return Targets(forced, positions, tokens, real.bool(), targets.texts, targets.foils, targets.score)


def _check_contrast(model: Model, tokens: torch.Tensor, real: torch.Tensor, foils: torch.Tensor, rows: int) -> None:
    """Refuse a foil that is the answer itself: answer minus foil would be zero at every token, every map blank."""
    same = ((tokens == foils) | ~real.bool()).all(1) & real.bool().any(1)
    if bool(same.any()):
        row = int(same.nonzero()[0])
        answer = model.tokenizer.decode([t for t, r in zip(tokens[row].tolist(), real[row].tolist()) if r])
        where = f" (prompt {row})" if rows > 1 else ""
        raise MmlensError(f"the foil{where} is the answer itself ({answer.strip()!r}): the contrast answer minus foil "
                          "would be zero everywhere; choose a different foil")


def _per_row(text: str | list[str], rows: int, what: str) -> list[str]:
    texts = [text] * rows if isinstance(text, str) else list(text)
    if len(texts) != rows:
        raise MmlensError(f"{len(texts)} {what}s for {rows} prompts")
    return texts


def _tokenised(model: Model, texts: list[str], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer (or foil) texts to right-padded token ids and a mask of real tokens; unknown words are refused."""
    return _right_padded(model, [token_ids(model, text, what) for text in texts])


def greedy_answers(model: Model, batch: Batch, max_new_tokens: int | None = None) -> list[str]:
    """The model's own greedy answers to a left-padded batch, cut at the first end token.

    Example:
        >>> import mmlens
        >>> model = mmlens.load("shapes-llava")
        >>> from mmlens.data.shapes import make_sample
        >>> s = make_sample("test", 0)
        >>> len(greedy_answers(model, model.prepare(s.prompt, [s.image]))[0].split())
        1
    """
    tokens, real = _generated(model, batch, max_new_tokens)
    return [model.tokenizer.decode([t for t, r in zip(row, keep) if r], skip_special_tokens=True)
            for row, keep in zip(tokens.tolist(), real.tolist())]


def _generated(model: Model, batch: Batch, max_new_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy answers, each cut before its first end token (:func:`stop_token_ids`)."""
    length = answer_length(model) if max_new_tokens is None else max_new_tokens
    with torch.no_grad():
        new = model.generate(batch, max_new_tokens=length).cpu()
    stops = stop_token_ids(model)
    answers = []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        answers.append(row[:cut] or row[:1])
    return _right_padded(model, answers)


def _right_padded(model: Model, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    real = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return tokens, real
