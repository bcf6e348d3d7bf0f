"""Options every command shares, so ``--model``, ``--image`` and ``--prompt`` mean one thing everywhere."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import typer


ModelOption = typer.Option(None, "--model", "-m", help="Zoo name, local folder or hub id (default: the shipped model).")
ImageOption = typer.Option(None, "--image", "-i", help="Image file; repeat for several images.")
PromptOption = typer.Option(None, "--prompt", "-p", help="Prompt text; <image> marks where each image goes "
                            "(without slots, images go where the model's chat template puts them).")
PromptFileOption = typer.Option(None, "--prompt-file", help="Read the prompt from this UTF-8 text file "
                                "(for long prompts; instead of --prompt).")
JsonOption = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else "
                          "(tables and progress go to stderr).")
OutOption = typer.Option(Path("out"), "--out", "-o", help="Output folder: new or empty (see --overwrite); "
                         "it appears only when the run completes, with a manifest.json.")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder; the old one stays "
                               "untouched until the new run is complete.")
MemoryBudgetOption = typer.Option(
    None, "--memory-budget", help="Memory the stacked rows of one pass may use: bytes or a size such as 2GB, "
    "512MiB or unlimited (default: 80% of the free GPU memory, or 25% of the available RAM on the CPU).")

ModelArg = Optional[str]
ImagesArg = Optional[list[Path]]


@contextlib.contextmanager
def stdout_for_json(as_json: bool) -> Iterator[None]:
    """With ``--json``, whatever prints on stdout (tables, summaries, other libraries) goes to stderr instead.

    Print the JSON itself with :func:`print_json` after the block.

    Example:
        >>> with stdout_for_json(True):
        ...     print("a table")  # on stderr
        >>> print_json({"answer": "red"})
        {"answer": "red"}
    """
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(payload: Any) -> None:
    """The one JSON object of a ``--json`` run, on one line of stdout; strict JSON: NaN and infinities are null.

    Example:
        >>> print_json({"recovered": float("nan"), "losses": [0.5, float("inf")]})
        {"recovered": null, "losses": [0.5, null]}
    """
    sys.stdout.write(json.dumps(_finite(payload), allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN: an undefined loss recovered, say)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def memory_budget(value: Optional[str]) -> Optional[int]:
    """``--memory-budget`` in bytes (None: each method's default), checked before the model loads.

    Example:
        >>> memory_budget("2GB"), memory_budget(None)
        (2000000000, None)
    """
    from mmlens.budget import parse_budget

    return parse_budget(value)
