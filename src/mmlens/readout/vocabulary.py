"""Answers and foils the user types, as token ids: refused where a word is outside the vocabulary.

A word-level tokenizer turns a word it does not know into its unknown token
(``<unk>``); explaining ``<unk>`` as if it were the user's answer would
explain nothing. Byte-level tokenizers never produce it, so they pass through.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> len(token_ids(model, "red", "answer"))
    1
    >>> token_ids(model, "quokka", "answer")
    Traceback (most recent call last):
    ...
    mmlens.errors.MmlensError: the answer 'quokka' is not in tiny-llama's vocabulary: 'quokka' becomes <unk>
"""

from __future__ import annotations

from mmlens.errors import MmlensError
from mmlens.model import Model


def token_ids(model: Model, text: str, what: str = "answer") -> list[int]:
    """Token ids of ``text`` (no special tokens added); :class:`MmlensError` if empty or unknown to the model.

    ``what`` names the text in the message (``"answer"``, ``"foil"``, ``"target"``).

    Example:
        >>> import mmlens
        >>> token_ids(mmlens.load("tiny-llama"), "", "foil")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: the foil '' tokenises to nothing
    """
    tokenizer = model.tokenizer
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded.get("offset_mapping")
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        encoded, offsets = tokenizer(text, add_special_tokens=False), None
    ids = list(encoded["input_ids"])
    if not ids:
        raise MmlensError(f"the {what} {text!r} tokenises to nothing")
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and unknown in ids:
        words = [text[a:b] for (a, b), i in zip(offsets, ids) if i == unknown] if offsets else [text]
        unk = getattr(tokenizer, "unk_token", None) or "the unknown token"
        named = [repr(w) for w in dict.fromkeys(words) if w] or [repr(text)]
        verb = "becomes" if len(named) == 1 else "become"
        raise MmlensError(f"the {what} {text!r} is not in {model.name}'s vocabulary: {', '.join(named)} {verb} {unk}")
    return ids
