"""Options and defaults shared by ``mmlens lens`` and ``mmlens trace``: where the asked-about object is.

Example:
    >>> parse_box("10,20,51,61")
    (10.0, 20.0, 51.0, 61.0)
    >>> default_object_words("<image> what colour is the circle ?")
    ['circle']
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from mmlens.causal.groups import ObjectRegion
from mmlens.cli.samples import shipped_example
from mmlens.data.shapes import COLOURS, SHAPES, make_sample
from mmlens.errors import MmlensError

ObjectBoxOption = typer.Option(
    None, "--object-box", help="The asked-about object in the first image as x0,y0,x1,y1 pixels "
    "(default: the object of the shipped example; none for your own images).")
ObjectWordOption = typer.Option(
    None, "--object-word", help="A prompt word naming the object; repeatable (default: colour and shape words).")
AnswerOption = typer.Option(None, "--answer",
                            help="Follow this answer's first token (default: the model's own answer).")

#: The circle of :func:`mmlens.cli.samples.drawn_example` (PIL's ellipse box is inclusive: +1 on the far edges).
DRAWN_CIRCLE_BOX = (10.0, 20.0, 51.0, 61.0)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` to four floats, with a one-line error for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise MmlensError(f"--object-box wants x0,y0,x1,y1 in pixels, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise MmlensError(f"--object-box {text!r} is empty: x1 must exceed x0 and y1 exceed y0")
    return x0, y0, x1, y1


def object_box(box: str | None, images: list[Path] | None, prompt: str | None = None,
               model_name: str | None = None) -> ObjectRegion:
    """The object of the input :func:`~mmlens.cli.samples.sample_input` chose.

    The user's ``--object-box``; else, with no images and no prompt given, the
    object of the model's shipped example (its ``box``, or the asked object of
    the shapes sample it was made from) or the drawn example's circle; for the
    user's own images without a box, None.
    """
    if box is not None:
        return parse_box(box)
    if images:
        return None
    if prompt is None and model_name is not None and shipped_example(model_name) is not None:
        return _shipped_object(model_name)
    return DRAWN_CIRCLE_BOX


def _shipped_object(model_name: str) -> ObjectRegion:
    from importlib import resources

    entry = json.loads((resources.files("mmlens.zoo") / "examples" / f"{model_name}.json").read_text())
    if "box" in entry:
        return tuple(float(v) for v in entry["box"])  # type: ignore[return-value]
    # Examples drawn from the shapes world name their source: regenerate it for the ground-truth mask.
    match = re.search(r"make_sample\('(\w+)', (\d+), '(\w+)'\)", entry.get("source", ""))
    if match is None:
        return None
    sample = make_sample(match.group(1), int(match.group(2)), match.group(3))
    return sample.objects[sample.target_objects[0]].mask if sample.target_objects else None


def default_object_words(prompt: str) -> list[str]:
    """The prompt's colour and shape words (the shapes world's vocabulary), in order."""
    known = set(COLOURS) | set(SHAPES)
    return [w for w in prompt.lower().replace("?", " ").split() if w in known]
