"""``mmlens demo``: the main job on the embedded default model and example image."""

from __future__ import annotations

from typing import Optional

from rich.console import Console

from mmlens.cli.info import info
from mmlens.errors import MmlensError
from mmlens.models.loading import load
from mmlens.cli.options import ModelOption


def demo(model: Optional[str] = ModelOption) -> None:
    """Load the default model and answer a question about the shipped example image."""
    console = Console()
    try:
        from mmlens.zoo.examples import example
    except ImportError:
        example = None
    if example is None or model is not None and not model.startswith("shapes"):
        info(model=model or "tiny-llava", image=None, prompt=None, as_json=False)
        return
    try:
        loaded = load(model)
    except MmlensError as error:
        console.print(f"[yellow]default model unavailable ({error}); showing a tiny built-in model[/yellow]")
        info(model="tiny-llava", image=None, prompt=None, as_json=False)
        return
    image, question = example()
    batch = loaded.prepare(question, [image])
    answer = loaded.decode(loaded.generate(batch, max_new_tokens=1))[0]
    console.print(f"[bold]model[/bold]    {loaded.name}")
    console.print(f"[bold]question[/bold] {question}")
    console.print(f"[bold]answer[/bold]   {answer}")
