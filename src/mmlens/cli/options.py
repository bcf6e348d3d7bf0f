"""Options every command shares, so ``--model``, ``--image`` and ``--prompt`` mean one thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ModelOption = typer.Option(None, "--model", "-m", help="Zoo name, local folder or hub id (default: the shipped model).")
ImageOption = typer.Option(None, "--image", "-i", help="Image file; repeat for several images.")
PromptOption = typer.Option(None, "--prompt", "-p", help="Prompt text with one <image> slot per image.")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of tables.")
OutOption = typer.Option(Path("out"), "--out", "-o", help="Output folder.")

ModelArg = Optional[str]
ImagesArg = Optional[list[Path]]
