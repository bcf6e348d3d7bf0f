"""``mmlens info``: what a model is, which sites it has, and how a sample input is laid out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from mmlens.cli.options import (
    ImageOption,
    JsonOption,
    ModelOption,
    PromptFileOption,
    PromptOption,
    print_json,
    stdout_for_json,
)
from mmlens.cli.samples import read_prompt, sample_input
from mmlens.cli.terminal import result_console
from mmlens.model import Model
from mmlens.models.loading import load


def info(
    model: Optional[str] = ModelOption,
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a model's family, layers, site names and the token layout of a sample input.

    --model takes a zoo name (see docs/zoo.md; an unknown name lists every zoo name), a local folder or a hub id.
    """
    prompt = read_prompt(prompt, prompt_file)
    with stdout_for_json(as_json):  # stdout holds the JSON alone
        loaded = load(model)
        prompt_text, images = sample_input(loaded, prompt, image)
        summary = describe(loaded, prompt_text, images)
    if as_json:
        print_json(summary)
    else:
        _print(summary)


def describe(model: Model, prompt: str, images: list[Any]) -> dict[str, Any]:
    """A JSON-ready description of ``model`` and of the layout of one prepared input.

    Example:
        >>> import mmlens
        >>> describe(mmlens.load("tiny-llama"), "hello", [])["family"]
        'causal-lm'
    """
    batch = model.prepare(prompt, images)
    sites = model.sites()
    return {
        "model": model.name,
        "family": model.adapter.family,
        "model_type": model.hf.config.model_type,
        "class": type(model.hf).__name__,
        "parameters": sum(p.numel() for p in model.hf.parameters()),
        "layers": model.n_layers,
        "vision_layers": model.n_vision_layers,
        "sites": sites,
        "prompt": prompt,
        "tokens": model.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist()),
        "layout": batch.layout.describe(0),
    }


def _print(summary: dict[str, Any], console: Optional[Console] = None) -> None:
    console = console or result_console()
    console.print(f"[bold]{summary['model']}[/bold]  family={summary['family']}  class={summary['class']}")
    console.print(
        f"{summary['parameters']:,} parameters, {summary['layers']} decoder layers, "
        f"{summary['vision_layers']} vision layers, {len(summary['sites'])} sites"
    )
    kinds = sorted({s.split('.')[-1] for s in summary["sites"]})
    # the example first, so that a narrow terminal wraps between kinds, not inside "(e.g. ...)"
    console.print("site kinds (e.g. lm.L0.resid): " + ", ".join(kinds), highlight=False)
    layout = summary["layout"]
    counts = ", ".join(f"{n} {kind}" for kind, n in layout["tokens"].items() if n)
    console.print(f"sample prompt: {summary['prompt']!r} -> {layout['seq_len']} tokens ({counts})", highlight=False)
    table = Table("image", "size (h, w)", "view", "kind", "grid", "box x0,y0–x1,y1", "tokens")
    for i, image in enumerate(layout["images"]):
        for j, view in enumerate(image["views"]):
            table.add_row(str(i), str(tuple(image["size"])), str(j), view["kind"], "x".join(map(str, view["grid"])),
                          compact_box(view["box"]), str(view["tokens"]))
    if layout["images"]:
        console.print(table)


def compact_box(box: list[float]) -> str:
    """A box ``(x0, y0, x1, y1)`` in pixels as ``x0,y0–x1,y1``, one decimal at most, to fit one cell.

    Example:
        >>> compact_box([0.0, 0.0, 42.666, 32.0])
        '0,0–42.7,32'
    """
    x0, y0, x1, y1 = (f"{value:.1f}".removesuffix(".0") for value in box)
    return f"{x0},{y0}–{x1},{y1}"
