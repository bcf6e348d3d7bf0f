"""``mmlens demo``: the main job on the embedded default, the shipped model and example image."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmlens.cli.explain import explain
from mmlens.cli.options import ModelOption


def demo(
    model: Optional[str] = ModelOption,
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder."),
) -> None:
    """Answer a question about the shipped example image and explain the answer (report in OUT)."""
    explain(image=None, prompt=None, model=model, method=None, target=None, foil=None, max_new_tokens=1, out=out)
