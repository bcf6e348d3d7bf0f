"""Token groups for causal tracing: object image tokens, other image tokens, question, object words, last token.

Groups are ``(batch, seq)`` boolean masks, disjoint except for the control:

- ``object image``: image tokens whose patch overlaps the object (its pixel
  mask or :class:`~mmlens.box.Box`, in original image pixels);
- ``other image``: every other image token;
- ``control image``: a seeded random subset of ``other image`` of the same
  size as ``object image``, the same-count control;
- ``object words``: prompt tokens spelling one of ``object_words``;
- ``question``: the remaining text tokens, the last one excluded;
- ``last``: the last position (the answer is predicted there).

Special tokens (BOS, image markers) belong to no group.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("tiny-llava")
    >>> s = make_sample("test", 0, "colour")
    >>> batch = model.prepare(s.prompt, [s.image])
    >>> groups = token_groups(model, batch, [s.objects[s.target_objects[0]].mask], [["colour"]])
    >>> list(groups)[:3]
    ['object image', 'other image', 'control image']
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mmlens.box import Box
from mmlens.layout import Modality, TokenLayout
from mmlens.model import Batch, Model

GROUPS: tuple[str, ...] = ("object image", "other image", "control image", "question", "object words", "last")

#: An object given as a pixel mask ``(H, W)``, a :class:`~mmlens.box.Box` ``(x0, y0, x1, y1)``, or None.
ObjectRegion = np.ndarray | Box | None  # a plain (x0, y0, x1, y1) tuple works too


def object_positions(layout: TokenLayout, row: int, region: ObjectRegion, image: int = 0) -> list[int]:
    """Image-token positions of ``row`` whose patch overlaps ``region`` in image ``image``.

    Example:
        >>> object_positions(batch.layout, 0, (0, 0, 8, 8))  # the top-left patch of a 64 x 64 image
        [1]
    """
    if region is None:
        return []
    height, width = layout.images[row][image].size
    if isinstance(region, np.ndarray):
        mask = region.astype(bool)
    else:
        mask = Box.of(region).mask((height, width))  # the pixels whose centres lie in the box
    hits = []
    for position, (owner, (x0, y0, x1, y1)) in layout.token_boxes(row).items():
        if owner != image:
            continue
        # A patch covers the pixels whose centres lie inside its box.
        ys = slice(max(0, int(np.ceil(y0 - 0.5))), max(0, int(np.ceil(y1 - 0.5))))
        xs = slice(max(0, int(np.ceil(x0 - 0.5))), max(0, int(np.ceil(x1 - 0.5))))
        if mask[ys, xs].any():
            hits.append(position)
    return hits


def word_positions(model: Model, batch: Batch, row: int, words: Sequence[str]) -> list[int]:
    """Text positions of ``row`` whose tokens spell one of ``words`` (case-insensitive; subword pieces joined).

    Example:
        >>> word_positions(model, batch, 0, ["colour"])  # <s>, 16 image tokens, "what", "colour"
        [18]
    """
    wanted = {w.lower() for w in words}
    if not wanted:
        return []
    text = set(batch.layout.text_positions(row).tolist())
    pieces = [_piece(model, int(t)) for t in batch.input_ids[row].tolist()]
    longest = max(len(w) for w in wanted)
    hits: set[int] = set()
    for start in range(len(pieces)):
        if start not in text:
            continue
        joined = ""
        for end in range(start, len(pieces)):
            if end not in text:
                break
            joined += pieces[end] if end > start else pieces[end].lstrip()
            if joined.lower() in wanted:
                hits.update(range(start, end + 1))
            if len(joined) > longest:
                break
    return sorted(hits)


def token_groups(
    model: Model,
    batch: Batch,
    regions: Sequence[ObjectRegion],
    object_words: Sequence[Sequence[str]] | Sequence[str],
    seed: int = 0,
    image: int = 0,
) -> dict[str, torch.Tensor]:
    """The tracing groups of every row of ``batch`` as ``(batch, seq)`` bool masks, in :data:`GROUPS` order.

    ``regions[b]`` is row ``b``'s object (mask, box or None) in image
    ``image``; ``object_words`` is one word list for every row or one per row.

    Example:
        >>> {name: int(mask.sum()) for name, mask in token_groups(model, batch, [(0, 0, 8, 8)], ["colour"]).items()}
        {'object image': 1, 'other image': 15, 'control image': 1, 'question': 3, 'object words': 1, 'last': 1}
    """
    layout = batch.layout
    rows, seq = batch.input_ids.shape
    per_row_words = _words_per_row(object_words, rows)
    groups = {name: torch.zeros(rows, seq, dtype=torch.bool) for name in GROUPS}
    generator = torch.Generator().manual_seed(seed)
    last = seq - 1
    for b in range(rows):
        image_mask = layout.modality[b] == int(Modality.IMAGE)
        inside = object_positions(layout, b, regions[b], image)
        groups["object image"][b, inside] = True
        groups["other image"][b] = image_mask & ~groups["object image"][b]
        others = groups["other image"][b].nonzero().flatten()
        pick = others[torch.randperm(len(others), generator=generator)[: len(inside)]]
        groups["control image"][b, pick] = True
        words = word_positions(model, batch, b, per_row_words[b])
        groups["object words"][b, words] = True
        groups["last"][b, last] = True
        text = layout.modality[b] == int(Modality.TEXT)
        groups["question"][b] = text & ~groups["object words"][b] & ~groups["last"][b]
        groups["object words"][b, last] = False  # the last token is its own group
    return groups


def _words_per_row(words: Sequence[Sequence[str]] | Sequence[str], rows: int) -> list[list[str]]:
    if not words:
        return [[] for _ in range(rows)]
    if isinstance(words[0], str):
        return [list(words)] * rows  # type: ignore[arg-type]
    return [list(w) for w in words]  # type: ignore[union-attr]


def _piece(model: Model, token_id: int) -> str:
    """A token as the text it adds (decoded alone, SentencePiece/byte-BPE markers as spaces)."""
    piece = model.tokenizer.convert_ids_to_tokens(token_id) or ""
    return piece.replace("▁", " ").replace("Ġ", " ")
