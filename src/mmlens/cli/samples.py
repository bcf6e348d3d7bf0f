"""The input a command uses: the user's prompt (``--prompt`` or ``--prompt-file``) and images, or defaults.

Without input, a command uses the model's shipped example or a drawn image.
What the user gives is checked before the model loads: an empty prompt, a
missing prompt file, an image that is a URL, a folder or not an image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from rich.console import Console

from mmlens.data.images import open_image
from mmlens.errors import MmlensError
from mmlens.model import Model, check_prompt
from mmlens.models.loading import load


#: A prompt file larger than this is surely not a prompt (the longest contexts are about a million tokens).
MAX_PROMPT_FILE_BYTES = 16_000_000


def read_prompt(prompt: str | None, prompt_file: Path | None = None) -> str | None:
    """The prompt of ``--prompt`` or ``--prompt-file`` (None if neither); empty prompts are refused.

    A prompt file's trailing newlines are dropped.

    Example:
        >>> read_prompt("<image> what colour ?")
        '<image> what colour ?'
        >>> read_prompt("  ")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: the prompt is empty: write a question or an instruction
    """
    if prompt_file is not None:
        if prompt is not None:
            raise MmlensError("give --prompt or --prompt-file, not both")
        path = Path(prompt_file)
        if path.is_dir():
            raise MmlensError(f"--prompt-file: {path} is a folder, not a text file")
        if not path.is_file():
            raise MmlensError(f"--prompt-file: no such file: {path}")
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise MmlensError(f"--prompt-file: {path} is {path.stat().st_size:,} bytes, too long for a prompt")
        try:
            prompt = path.read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise MmlensError(f"--prompt-file: {path} is not UTF-8 text") from None
        if not prompt.strip():
            raise MmlensError(f"--prompt-file: {path} is empty: write a question or an instruction in it")
    if prompt is not None:
        check_prompt(prompt)
    return prompt


def sample_input(model: Model, prompt: str | None, images: list[Any] | None) -> tuple[str, list[Any]]:
    """The user's prompt and images, or a default pair suited to ``model``.

    A prompt without ``<image>`` slots gets them where the model's chat
    template puts images (:meth:`~mmlens.model.Model.place_images`, one line
    on stderr); a vision model given a prompt and no image runs text-only.

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
    return model.place_images(prompt, len(opened)), opened


def load_model(console: Console, name: str | None) -> Model:
    """Load ``name`` (None: the shipped model) behind a status line on ``console``."""
    with console.status("loading model"):
        return load(name)


def load_with_input(console: Console, name: str | None, prompt: str | None,
                    images: list[Path] | None) -> tuple[Model, str, list[Any]]:
    """The model and the user's prompt and images (or the default pair for that model).

    The prompt and images are checked (and the images opened) before the model loads.

    Example:
        >>> from rich.console import Console
        >>> model, prompt, images = load_with_input(Console(stderr=True), "tiny-llama", None, None)
        >>> prompt
        'what colour is the circle ?'
    """
    prompt = read_prompt(prompt)
    opened = [open_image(path) for path in images] if images else images
    loaded = load_model(console, name)
    return (loaded, *sample_input(loaded, prompt, opened))


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
