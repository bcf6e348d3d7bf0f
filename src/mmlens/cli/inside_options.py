"""Options and defaults shared by ``mmlens lens`` and ``mmlens trace``: where the asked-about object is.

Example:
    >>> parse_box("10,20,51,61")
    Box(x0=10.0, y0=20.0, x1=51.0, y1=61.0)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmlens.box import Box
from mmlens.causal.groups import ObjectRegion
from mmlens.cli.samples import shipped_example
from mmlens.data.shapes_questions import object_region, sample_from_source
from mmlens.errors import MmlensError

ObjectBoxOption = typer.Option(
    None, "--object-box", help="The asked-about object in the first image as X0,Y0,X1,Y1 pixels "
    "(left, top, right, bottom; right and bottom exclusive. Default: the object of the shipped example; "
    "none for your own images).")
ObjectWordOption = typer.Option(
    None, "--object-word", help="A prompt word naming the object; repeatable (default: colour and shape words).")
AnswerOption = typer.Option(None, "--answer",
                            help="Follow this answer's first token (default: the model's own answer).")

#: The circle of :func:`mmlens.cli.samples.drawn_example` (PIL's ellipse box is inclusive: +1 on the far edges).
DRAWN_CIRCLE_BOX = Box(10.0, 20.0, 51.0, 61.0)


def parse_box(text: str) -> Box:
    """``--object-box`` text ``"x0,y0,x1,y1"`` to a :class:`~mmlens.box.Box`, with a one-line error otherwise.

    Example:
        >>> parse_box("1, 2, 3, 4").to_json()
        [1.0, 2.0, 3.0, 4.0]
    """
    try:
        return Box.parse(text)
    except MmlensError as error:
        raise MmlensError(f"--object-box: {error}") from None


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
        return Box.from_json(entry["box"])
    # Examples drawn from the shapes world name their source: regenerate it for the ground-truth mask.
    sample = sample_from_source(entry.get("source", ""))
    return object_region(sample) if sample is not None else None
