"""Options every command shares, so ``--model``, ``--image`` and ``--prompt`` mean one thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmlens.errors import MmlensError

ModelOption = typer.Option(None, "--model", "-m", help="Zoo name, local folder or hub id (default: the shipped model).")
ImageOption = typer.Option(None, "--image", "-i", help="Image file; repeat for several images.")
PromptOption = typer.Option(None, "--prompt", "-p", help="Prompt text with one <image> slot per image.")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of tables.")
OutOption = typer.Option(Path("out"), "--out", "-o", help="Output folder.")

ModelArg = Optional[str]
ImagesArg = Optional[list[Path]]


def check_choices(chosen: list[str], known, noun: str) -> list[str]:
    """``chosen`` if every entry is in ``known``, else one clear error naming the strays.

    Example:
        >>> check_choices(["resid"], ("resid", "attn"), "component")
        ['resid']
    """
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise MmlensError(f"unknown {noun}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen
