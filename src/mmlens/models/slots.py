"""Where images go when a prompt has no ``<image>`` slot: where the model's chat template puts them.

Chat front ends never ask for an image slot: they hand the user's text and
images to the processor's chat template, which writes each image's
placeholder where the model was trained to see it. :func:`place_images` asks
the same template (with a marker for the user's text) where that is, before or
after the text and with which separators, and writes ``<image>`` slots into
the user's own prompt there. The rest of the prompt is left as written: a
prompt that already carries the template's turn marker (``USER:``) gets its
images right after that marker, as the template would put them. A model
without a chat template gets the slots before the text.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llava")
    >>> place_images("what colour is the circle ?", 1, model.processor, model.adapter)
    ('<image>\\nwhat colour is the circle ?', "before the text, as the model's chat template puts them")
    >>> place_images("USER: what colour ? ASSISTANT:", 1, model.processor, model.adapter)[0]
    'USER: <image>\\nwhat colour ? ASSISTANT:'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmlens.models.adapter import IMAGE_SLOT, Adapter, tokenizer_of

#: Stands for the user's text while the chat template is rendered.
_TEXT = "MMLENSUSERTEXTMARKER"


@dataclass(frozen=True)
class _Placement:
    """What the chat template writes around ``n`` images: before or after the text."""

    images: str  # the images' text, slots written as <image>, separators included
    before: bool  # images before the text (else after it)
    marker: str  # the turn marker right before the images ("USER:"), or ""
    gap: str  # whitespace between the marker and the images


def place_images(prompt: str, n_images: int, processor: Any, adapter: Adapter) -> tuple[str, str]:
    """``prompt`` with ``n_images`` ``<image>`` slots where the chat template puts images, and where that is.

    The second value completes "put N images ...", for a notice.

    Example:
        >>> from mmlens.zoo.shapes_llava import load  # no chat template
        >>> from mmlens.models.llava import LLAVA
        >>> place_images("what colour ?", 2, load()[1], LLAVA)
        ('<image> <image> what colour ?', 'before the text (the model has no chat template)')
    """
    placement = _template_placement(n_images, processor, adapter)
    if placement is None:
        slots = " ".join([IMAGE_SLOT] * n_images)
        return f"{slots} {prompt.lstrip()}", "before the text (the model has no chat template)"
    if not placement.before:
        return prompt.rstrip() + placement.images, "after the text, as the model's chat template puts them"
    if placement.marker and placement.marker in prompt:
        cut = prompt.index(placement.marker) + len(placement.marker)
        placed = prompt[:cut] + placement.gap + placement.images + prompt[cut:].lstrip()
        return placed, f"after {placement.marker!r}, as the model's chat template puts them"
    return placement.images + prompt.lstrip(), "before the text, as the model's chat template puts them"


def _template_placement(n_images: int, processor: Any, adapter: Adapter) -> _Placement | None:
    """Render the chat template for ``n_images`` images and a marker text; None where that tells nothing."""
    owner = processor if getattr(processor, "chat_template", None) else tokenizer_of(processor)
    if not getattr(owner, "chat_template", None):
        return None
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": _TEXT}]
    try:
        rendered = owner.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=False)
    except Exception:  # any template error (jinja, a template for strings only): fall back to slots before the text
        return None
    if not isinstance(rendered, str) or rendered.count(_TEXT) != 1:
        return None
    slot = adapter.processor_slot if adapter.processor_slot in rendered else IMAGE_SLOT
    starts = _occurrences(rendered, slot)
    if len(starts) != n_images:
        return None
    text_at = rendered.index(_TEXT)
    if all(start < text_at for start in starts):
        images, head = rendered[starts[0]:text_at], rendered[:starts[0]]
        lines = head.rstrip().splitlines()
        marker = lines[-1].strip() if lines else ""
        return _Placement(images.replace(slot, IMAGE_SLOT), True, marker, head[len(head.rstrip()):] or "")
    if all(start > text_at for start in starts):
        images = rendered[text_at + len(_TEXT):starts[-1] + len(slot)]
        return _Placement(images.replace(slot, IMAGE_SLOT), False, "", "")
    return None


def _occurrences(text: str, part: str) -> list[int]:
    """Start of every non-overlapping occurrence of ``part`` in ``text``.

    Example:
        >>> _occurrences("<image>a<image>", "<image>")
        [0, 8]
    """
    starts, at = [], text.find(part)
    while at >= 0:
        starts.append(at)
        at = text.find(part, at + len(part))
    return starts
