"""``mmlens demo``: the main job on the embedded default, the shipped model and example image.

The demo replaces its own earlier output (a folder whose manifest says
``demo``), so ``make demo`` runs twice; any other non-empty folder needs
``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmlens.cli.explain import SEEDS, explain_into
from mmlens.cli.options import JsonOption, ModelOption, OverwriteOption
from mmlens.report.output import OutputFolder


def demo(
    model: Optional[str] = ModelOption,
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder (an earlier demo's is replaced)."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Answer a question about the shipped example image and explain the answer (report in OUT)."""
    folder = OutputFolder(out, "demo", locals(), overwrite=overwrite, replace_own=True, seeds=SEEDS,
                          result="explanation")
    explain_into(folder, image=None, prompt=None, model=model, methods=None, target=None, foil=None,
                 max_new_tokens=1, as_json=as_json)
