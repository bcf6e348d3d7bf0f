"""Options and defaults shared by ``mmlens lens``, ``trace``, ``heads`` and ``circuit``: the asked-about object, the corruption.

Example:
    >>> parse_box("10,20,51,61")
    Box(x0=10.0, y0=20.0, x1=51.0, y1=61.0)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from PIL import Image

from mmlens.box import Box
from mmlens.causal.groups import ObjectRegion
from mmlens.cli.samples import shipped_example
from mmlens.data.images import open_image, resized_to
from mmlens.data.shapes_questions import object_region, sample_from_source
from mmlens.errors import MmlensError
from mmlens.notices import notice

ObjectBoxOption = typer.Option(
    None, "--object-box", help="The asked-about object in the first image as X0,Y0,X1,Y1 pixels "
    "(left, top, right, bottom; right and bottom exclusive. Default: the object of the shipped example; "
    "none for your own images).")
ObjectWordOption = typer.Option(
    None, "--object-word", help="A prompt word naming the object; repeatable (default: colour and shape words).")
AnswerOption = typer.Option(None, "--answer",
                            help="Follow this answer's first token (default: the model's own answer).")
CorruptOption = typer.Option("noise", "--corrupt", help="noise (on pixels) or embeddings (on image-token inputs).")
CounterfactualOption = typer.Option(None, "--counterfactual", help="Corrupt with this image instead "
                                    "(same size as the first image).")
NoiseOption = typer.Option(3.0, "--noise", help="Noise standard deviation, in units of the input's own.")

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


def box_in_image(box: Box, size: tuple[int, int]) -> Box:
    """``--object-box`` within an image of ``size`` (width, height): clipped with a notice, refused if outside.

    Example:
        >>> box_in_image(Box(-5.0, 20.0, 51.0, 61.0), (128, 96))  # notice: clipped to 0,20,51,61
        Box(x0=0.0, y0=20.0, x1=51.0, y1=61.0)
        >>> box_in_image(Box(200, 0, 300, 10), (128, 96))
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: --object-box 200,0,300,10 lies outside the 128x96 image (x 0..128, y 0..96)
    """
    width, height = size
    clipped = Box(float(max(box.x0, 0)), float(max(box.y0, 0)), float(min(box.x1, width)), float(min(box.y1, height)))
    text = ",".join(f"{v:g}" for v in box)
    if clipped.x1 <= clipped.x0 or clipped.y1 <= clipped.y0:
        raise MmlensError(f"--object-box {text} lies outside the {width}x{height} image (x 0..{width}, y 0..{height})")
    if clipped != box:
        notice(f"--object-box {text} reaches past the {width}x{height} image: clipped to "
               + ",".join(f"{v:g}" for v in clipped))
    return clipped


def object_box(box: str | None, images: list[Path] | None, prompt: str | None = None,
               model_name: str | None = None, first_image: Image.Image | None = None) -> ObjectRegion:
    """The object of the input :func:`~mmlens.cli.samples.sample_input` chose.

    The user's ``--object-box``, checked against ``first_image`` (the image
    the command uses; see :func:`box_in_image`); else, with no images and no prompt given, the
    object of the model's shipped example (its ``box``, or the asked object of
    the shapes sample it was made from) or the drawn example's circle; for the
    user's own images without a box, None.
    """
    if box is not None:
        parsed = parse_box(box)
        return parsed if first_image is None else box_in_image(parsed, first_image.size)
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


def counterfactual_images(counterfactual: Path, images: list[Image.Image]) -> list[Image.Image]:
    """``images`` with the first replaced by the ``--counterfactual`` image, resized to its size (one line if it cannot be)."""
    return [resized_to(open_image(counterfactual), images[0].size, "--counterfactual")] + list(images[1:])
