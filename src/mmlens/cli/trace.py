"""``mmlens trace``: causal tracing: which component, at which layer and token group, carries the answer?

Writes ``trace.json``, ``trace.html`` (a self-contained section) and one
layer-by-group recovery-rate heatmap per component (``trace_resid.png``,
``trace_attn.png``, ``trace_mlp.png``) into ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmlens.causal import COMPONENTS, CausalTrace, token_groups
from mmlens.causal import trace as run_trace
from mmlens.causal.trace_result import MIN_RECOVERY
from mmlens.cli.inside_options import (AnswerOption, CorruptOption, CounterfactualOption, NoiseOption,
                                      ObjectBoxOption, ObjectWordOption, counterfactual_images, object_box)
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
from mmlens.data.shapes_questions import prompt_object_words
from mmlens.errors import MmlensError, check_choices
from mmlens.report.figures import display_token
from mmlens.report.inside import COMPONENT_TITLES, trace_figures
from mmlens.report.files import save_trace
from mmlens.report.inside_html import section_html, write_sections
from mmlens.report.output import OutputFolder


def trace(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    model: Optional[str] = ModelOption,
    answer: Optional[str] = AnswerOption,
    corrupt: str = CorruptOption,
    counterfactual: Optional[Path] = CounterfactualOption,
    noise: float = NoiseOption,
    window: int = typer.Option(1, "--window", help="Layers restored together around each layer."),
    component: Optional[list[str]] = typer.Option(None, "--component", help="Repeatable; resid, attn or mlp."),
    box: Optional[str] = ObjectBoxOption,
    object_word: Optional[list[str]] = ObjectWordOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the noise and of the control tokens."),
    memory_budget: Optional[str] = MemoryBudgetOption,
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Causal tracing (clean, corrupted, patched runs); write trace.json, trace.html and one heatmap per component."""
    folder = OutputFolder(out, "trace", locals(), overwrite=overwrite, seeds={"seed": seed}, result="trace")
    components = check_choices(list(component or COMPONENTS), COMPONENTS, "component")
    budget = parse_memory_budget(memory_budget)
    console = Console(stderr=True)
    prompt = read_prompt(prompt, prompt_file)
    with stdout_for_json(as_json):
        with folder:
            loaded, prompt_text, images = load_with_input(console, model, prompt, image)
            folder.set_model(loaded)
            if not images:
                raise MmlensError("causal tracing corrupts the image: give an image and a prompt with an <image> slot")
            batch = loaded.prepare(prompt_text, images)
            words = list(object_word) if object_word else prompt_object_words(prompt_text)
            region = object_box(box, image, prompt, loaded.name, first_image=images[0])
            groups = token_groups(loaded, batch, [region], [words], seed=seed)
            corruption = corrupt
            if counterfactual is not None:
                other = counterfactual_images(counterfactual, images)
                corruption = loaded.prepare(prompt_text, other)
            with progress_bar(console) as bar:
                task = bar.add_task("tracing", total=None)
                result = run_trace(loaded, batch, groups, answer=answer, corrupt=corruption, noise=noise,
                                   components=components, window=window, seed=seed, memory_budget=budget,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
            with console.status("writing figures and report"):
                figures = trace_figures(result)
                for name, figure in figures.items():
                    figure.savefig(folder.path / f"trace_{name}.png", format="png")
                save_trace(result, folder.path)
                write_sections([trace_section(result, figures)], folder.path / "trace.html",
                               title=f"mmlens trace · {loaded.name}")
            if result.warning:
                console.print(f"[yellow]warning:[/yellow] {escape(result.warning)} (--noise, --corrupt embeddings, "
                              "--counterfactual)", highlight=False, soft_wrap=True)
        print_summary(result, folder.out / "trace.html")
    if as_json:
        print_json(json_summary(result, folder.out))


def trace_section(result: CausalTrace, figures: dict) -> str:
    """The HTML section of one ``mmlens trace`` run."""
    facts = {"model": result.model, "prompt": result.prompts[0],
             "answer followed": display_token(result.answers[0]).strip(),
             "P clean / corrupted": f"{float(result.p_clean[0]):.3f} / {float(result.p_corrupt[0]):.3f}",
             "corruption": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in result.corruption.items()),
             "tokens per group": ", ".join(f"{g}: {int(n)}" for g, n in zip(result.groups, result.group_sizes[0]))}
    if result.warning:
        facts["warning"] = result.warning
    note = ("Recovery rates are left out (—, grey cells): the corruption barely moves the answer, so they divide "
            "by noise." if result.weak else "")
    shown = [(f"Recovery rate when the {COMPONENT_TITLES[c]} of one layer and token group is restored.", figures[c])
             for c in result.components]
    return section_html("causal tracing", facts, shown, [_best_table(result)], note=note)


def _best_table(result: CausalTrace) -> dict:
    """Per component and group the layer that recovers most; "—" where none does or the corruption is weak."""
    rows = []
    for component in result.components:
        for group, (layer, rate) in zip(result.groups, result.strongest(component)):
            if layer is not None:
                rows.append([COMPONENT_TITLES[component], group, f"L{layer}", f"{rate:.2f}"])
            elif rate != rate:  # NaN: the corruption is weak
                rows.append([COMPONENT_TITLES[component], group, "—", "—"])
            else:
                rows.append([COMPONENT_TITLES[component], group, "none", f"< {MIN_RECOVERY:.2f}"])
    why = ("—: left out, the corruption barely moves the answer" if result.weak
           else f"none: no layer restores {MIN_RECOVERY:.0%} of the gap")
    return {"title": f"strongest layer per component and group ({why})", "note": why,
            "columns": ["component", "group", "layer", "RR"], "rows": rows}


def json_summary(result: CausalTrace, out: Path) -> dict:
    """What ``--json`` prints: where the results are, the three runs' probabilities and the strongest layers."""
    strongest = [{"component": component, "group": group, "layer": layer,
                  "recovery": None if rate != rate else round(float(rate), 6)}  # NaN: the corruption is weak
                 for component in result.components
                 for group, (layer, rate) in zip(result.groups, result.strongest(component))]
    return {"out": str(out), "report": str(out / "trace.html"), "model": result.model, "prompt": result.prompts[0],
            "answer": display_token(result.answers[0]).strip(), "p_clean": float(result.p_clean[0]),
            "p_corrupt": float(result.p_corrupt[0]), "warning": result.warning or None,
            "seconds": round(result.seconds, 4), "strongest": strongest}


def print_summary(result: CausalTrace, report: Path) -> None:
    """Probabilities of the three runs, and per component and group the layer that recovers most."""
    console = Console()
    console.print(f"[bold]model[/bold]     {result.model}")
    console.print(f"[bold]prompt[/bold]    {result.prompts[0]}")
    console.print(f"[bold]answer[/bold]    {display_token(result.answers[0]).strip()}")
    console.print(f"[bold]P(answer)[/bold] clean {float(result.p_clean[0]):.3f} · corrupted "
                  f"{float(result.p_corrupt[0]):.3f} · {result.seconds * 1000:.0f} ms")
    best = _best_table(result)
    table = Table(title="recovery rate: best layer per component and group", caption=best["note"])
    for column in ("component", "group", "layer", "RR"):
        table.add_column(column)
    for row in best["rows"]:
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {report}")
