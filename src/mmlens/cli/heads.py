"""``mmlens heads``: which attention heads carry the answer: knockout, patching and attribution-patching grids.

Writes ``heads.json``, ``heads.html`` (a self-contained page) and one layer x
head heatmap per grid (``heads_knockout.png``, ``heads_patching.png``,
``heads_attribution.png``) into ``--out``. ``--tower vision`` makes the grids
of the vision tower's heads; ``--positions`` / ``--box`` edit each head only
at chosen positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmlens.causal.attribution_patching import attribution_patching
from mmlens.causal.head_grid import DIRECTIONS, METRICS, HeadGrid
from mmlens.box import Box
from mmlens.causal.head_positions import NAMED, Where
from mmlens.causal.head_runs import TOWERS
from mmlens.causal.heads import ABLATIONS, knockout_heads, parse_heads, patch_heads
from mmlens.cli.inside_options import (AnswerOption, CorruptOption, CounterfactualOption, NoiseOption,
                                      counterfactual_images)
from mmlens.cli.options import (
    ImageOption,
    JsonOption,
    MemoryBudgetOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    PromptFileOption,
    PromptOption,
    memory_budget as parse_memory_budget,
    print_json,
    stdout_for_json,
)
from mmlens.cli.samples import load_with_input, read_prompt
from mmlens.cli.terminal import progress_bar
from mmlens.errors import MmlensError, check_choice, check_choices
from mmlens.report.figures import display_token
from mmlens.report.heads_pages import describe, write_heads_page
from mmlens.report.output import OutputFolder

METHODS = ("knockout", "patching", "attribution")


def heads(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    model: Optional[str] = ModelOption,
    answer: Optional[str] = AnswerOption,
    method: Optional[list[str]] = typer.Option(None, "--method", help="Repeatable; knockout, patching or "
                                               "attribution (default: all three)."),
    ablation: str = typer.Option("zero", "--ablation", help="Knockout: zero, or mean (over the prompt's tokens)."),
    direction: str = typer.Option("clean->corrupt", "--direction", help="Patching: clean->corrupt (restore) "
                                  "or corrupt->clean (damage)."),
    metric: str = typer.Option("probability", "--metric", help="probability or logit of the answer."),
    corrupt: str = CorruptOption,
    counterfactual: Optional[Path] = CounterfactualOption,
    noise: float = NoiseOption,
    head: Optional[list[str]] = typer.Option(None, "--head", help="Repeatable, e.g. L1.H2: these heads are also "
                                             "knocked out or patched together."),
    tower: str = typer.Option("lm", "--tower", help="lm (the language model's heads) or vision (the vision "
                              "tower's)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Edit each head only here: all, image, text "
                                            "or last (lm heads), patches (vision heads: every patch but CLS), or "
                                            "positions like 0,-1 (default: all)."),
    box: Optional[str] = typer.Option(None, "--box", help="Edit each head only at the image patches overlapping "
                                      "X0,Y0,X1,Y1 (pixels of the image; tower patches for --tower vision)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    memory_budget: Optional[str] = MemoryBudgetOption,
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Head knockout, head patching and attribution patching; write heads.json, heads.html and one heatmap per grid."""
    folder = OutputFolder(out, "heads", locals(), overwrite=overwrite, seeds={"seed": seed}, result="heads")
    methods = check_choices(list(dict.fromkeys(method or METHODS)), METHODS, "method")
    check_choice(ablation, ABLATIONS, "ablation")
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(metric, METRICS, "metric")
    check_choice(tower, TOWERS, "tower")
    where = parse_where(positions, box, tower)
    budget = parse_memory_budget(memory_budget)
    console = Console(stderr=True)
    prompt = read_prompt(prompt, prompt_file)
    with stdout_for_json(as_json):
        with folder:
            loaded, prompt_text, images = load_with_input(console, model, prompt, image)
            folder.set_model(loaded)
            group = parse_heads(loaded, head or [], tower)
            corrupting = [m for m in methods if m != "knockout"]
            if tower == "vision" and not images:
                raise MmlensError("vision heads need an image: give one and a prompt with an <image> slot")
            if corrupting and not images:
                raise MmlensError(f"{' and '.join(corrupting)} corrupt the image: give an image and a prompt with "
                                  "an <image> slot (or use --method knockout)")
            batch = loaded.prepare(prompt_text, images or None)
            corruption = corrupt
            if counterfactual is not None:
                other = counterfactual_images(counterfactual, images)
                corruption = loaded.prepare(prompt_text, other)
            grids: dict[str, HeadGrid] = {}
            with progress_bar(console) as bar:
                for name in methods:
                    task = bar.add_task(name, total=None)

                    def progress(done: int, total: int, task=task) -> None:
                        bar.update(task, completed=done, total=total)

                    if name == "knockout":
                        grids[name] = knockout_heads(loaded, batch, ablation=ablation, group=group, answer=answer,
                                                     metric=metric, tower=tower, positions=where,
                                                     memory_budget=budget, progress=progress)
                    elif name == "patching":
                        grids[name] = patch_heads(loaded, batch, direction=direction, corrupt=corruption, noise=noise,
                                                  seed=seed, group=group, answer=answer, metric=metric, tower=tower,
                                                  positions=where, memory_budget=budget, progress=progress)
                    else:
                        grids[name] = attribution_patching(loaded, batch, direction=direction, corrupt=corruption,
                                                           noise=noise, seed=seed, answer=answer, metric=metric,
                                                           group=group, tower=tower, positions=where)
            with console.status("writing figures and report"):
                write_heads_page(grids, folder.path, title=f"mmlens heads · {loaded.name}")
            warning = next((g.warning for g in grids.values() if g.warning), None)
            if warning:
                console.print(f"[yellow]warning:[/yellow] {escape(warning)} (--noise, --corrupt embeddings, "
                              "--counterfactual)", highlight=False, soft_wrap=True)
        print_summary(grids, folder.out / "heads.html")
    if as_json:
        print_json(json_summary(grids, folder.out))


def parse_where(positions: str | None, box: str | None, tower: str) -> Where:
    """``--positions`` / ``--box`` as the ``positions`` of the grids; one line for anything else.

    Example:
        >>> parse_where("0,-1", None, "lm"), parse_where(None, "0,0,8,8", "vision")
        ([0, -1], Box(x0=0.0, y0=0.0, x1=8.0, y1=8.0))
    """
    if positions is not None and box is not None:
        raise MmlensError("give --positions or --box, not both")
    if box is not None:
        try:
            return Box.parse(box)
        except MmlensError as error:
            raise MmlensError(f"--box: {error}") from None
    if positions is None or positions.strip() in NAMED[tower]:
        return None if positions is None else positions.strip()
    try:
        return [int(part) for part in positions.split(",")]
    except ValueError:
        raise MmlensError(f"--positions {positions!r}: choose {', '.join(NAMED[tower])} ({tower} heads) or "
                          "positions like 0,-1") from None


def json_summary(grids: dict[str, HeadGrid], out: Path) -> dict:
    """What ``--json`` prints: where the results are, the answer, and the top heads of each grid."""
    first = next(iter(grids.values()))
    return {"out": str(out), "report": str(out / "heads.html"), "model": first.model, "prompt": first.prompts[0],
            "answer": display_token(first.answers[0]).strip(), "metric": first.metric, "tower": first.tower,
            "positions": first.positions,
            "clean": float(first.clean[0]),
            "warning": next((g.warning for g in grids.values() if g.warning), None),
            "grids": {name: {"meaning": describe(grid), "seconds": round(grid.seconds, 4),
                             "corrupt": None if grid.corrupt is None else float(grid.corrupt[0]),
                             "top": [{"layer": layer, "head": h, "effect": round(value, 6)}
                                     for layer, h, value in grid.top(5)],
                             "group_effect": grid.group_effect}
                      for name, grid in grids.items()}}


def print_summary(grids: dict[str, HeadGrid], report: Path) -> None:
    """The answer, and per grid its strongest heads."""
    console = Console()
    first = next(iter(grids.values()))
    console.print(f"[bold]model[/bold]   {first.model}")
    console.print(f"[bold]prompt[/bold]  {first.prompts[0]}")
    console.print(f"[bold]answer[/bold]  {display_token(first.answers[0]).strip()}")
    table = Table(title="strongest heads per grid")
    for column in ("grid", "head", "effect", "meaning"):
        table.add_column(column)
    for name, grid in grids.items():
        top = grid.top(3) or [(None, None, float("nan"))]
        for k, (layer, h, value) in enumerate(top):
            table.add_row(name if k == 0 else "", "—" if layer is None else grid.head_name(layer, h),
                          "—" if value != value else f"{value:+.3f}", describe(grid) if k == 0 else "")
        if grid.group:
            table.add_row(name, " + ".join(grid.head_name(l, k) for l, k in grid.group), f"{grid.group_effect:+.3f}",
                          "these heads together")
    console.print(table)
    console.print(f"report: {report}")
