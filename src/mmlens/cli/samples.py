"""The input a command uses when the user gives none: the shipped example, or a drawn image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from rich.console import Console

from mmlens.data.images import open_image
from mmlens.model import Model
from mmlens.models.loading import load


def sample_input(model: Model, prompt: str | None, images: list[Path] | None) -> tuple[str, list[Any]]:
    """The user's prompt and images, or a default pair suited to ``model``.

    Example:
        >>> import mmlens
        >>> sample_input(mmlens.load("tiny-llama"), None, None)
        ('what colour is the circle ?', [])
    """
    opened = [open_image(path) for path in images or []]
    if prompt is None and not images and model.adapter.multimodal:
        shipped = shipped_example(model.name)
        if shipped is not None:
            return shipped
    if prompt is None:
        if not model.adapter.multimodal:
            return "what colour is the circle ?", opened
        prompt = " ".join(["<image>"] * max(1, len(opened))) + " what colour is the circle ?"
    if model.adapter.multimodal and not opened and images is None:
        opened = [drawn_example()] * prompt.count("<image>")
    return prompt, opened


def load_model(console: Console, name: str | None) -> Model:
    """Load ``name`` (None: the shipped model) behind a status line on ``console``."""
    with console.status("loading model"):
        return load(name)


def load_with_input(console: Console, name: str | None, prompt: str | None,
                    images: list[Path] | None) -> tuple[Model, str, list[Any]]:
    """The model and the user's prompt and images (or the default pair for that model).

    Example:
        >>> from rich.console import Console
        >>> model, prompt, images = load_with_input(Console(stderr=True), "tiny-llama", None, None)
        >>> prompt
        'what colour is the circle ?'
    """
    loaded = load_model(console, name)
    return (loaded, *sample_input(loaded, prompt, images))


def shipped_example(model_name: str) -> tuple[str, list[Any]] | None:
    """The example a zoo model ships with (``zoo/examples/<model>.json``), if any."""
    from importlib import resources

    folder = resources.files("mmlens.zoo") / "examples"
    entry = folder / f"{model_name}.json"
    if not entry.is_file():
        return None
    example = json.loads(entry.read_text())
    return example["prompt"], [open_image(Path(str(folder / example["image"])))]


def drawn_example(size: tuple[int, int] = (96, 128)) -> Image.Image:
    """A small deterministic picture: a red circle and a blue square on grey."""
    height, width = size
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 20, 50, 60), fill=(220, 30, 30))
    draw.rectangle((70, 40, 110, 80), fill=(30, 60, 220))
    return image
