"""``mmlens circuit``: which heads and MLPs carry the answer (CD-T), and along which edges (EAP).

Writes ``circuit.json``, ``circuit.html`` (a self-contained page) and the
figures ``circuit_cdt.png`` (the source's share per head and MLP),
``circuit_graph.png`` (the circuit: layers in rows) and ``circuit_curve.png``
(edges kept against the clean-corrupt gap recovered) into ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmlens.cli.inside_options import AnswerOption, ObjectBoxOption, counterfactual_images, object_box
from mmlens.cli.options import (
    ImageOption,
    JsonOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    PromptFileOption,
    PromptOption,
    print_json,
    stdout_for_json,
)
from mmlens.cli.samples import load_with_input, read_prompt
from mmlens.errors import MmlensError, check_choice, check_choices
from mmlens.report.figures import token_text
from mmlens.report.files import save_json
from mmlens.report.output import OutputFolder

METHODS = ("cdt", "eap")


def circuit(
    image: Optional[list[Path]] = ImageOption,
    prompt: Optional[str] = PromptOption,
    prompt_file: Optional[Path] = PromptFileOption,
    model: Optional[str] = ModelOption,
    answer: Optional[str] = AnswerOption,
    method: Optional[list[str]] = typer.Option(None, "--method", help="Repeatable; cdt or eap (default: both)."),
    box: Optional[str] = ObjectBoxOption,
    source: str = typer.Option("object", "--source", help="CD-T source: object (the image tokens over "
                               "--object-box; all image tokens when there is none) or image (all image tokens)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="CD-T source as decoder positions, e.g. "
                                            "3,4,5 (instead of --source)."),
    reference: str = typer.Option("mean", "--reference", help="What the source is measured against: mean "
                                  "(the mean image-token embedding) or zero."),
    activation: str = typer.Option("marginal", "--activation", help="How CD-T splits MLPs: marginal or shapley."),
    norms: str = typer.Option("frozen", "--norms", help="How CD-T splits RMSNorms: frozen (the full run's "
                              "scale), marginal or shapley."),
    rest: str = typer.Option("propagated", "--rest", help="CD-T's rest: propagated, or replaced (the model's run "
                             "with the source replaced by the reference)."),
    counterfactual: Optional[Path] = typer.Option(None, "--counterfactual", help="EAP: corrupt with this image "
                                                  "(same size as the first image) instead of pixel noise."),
    noise: float = typer.Option(3.0, "--noise", help="EAP: pixel-noise standard deviation, in units of the input's own."),
    target: float = typer.Option(0.8, "--target", help="EAP: the share of the clean-corrupt gap the circuit keeps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """CD-T shares per head and MLP, and the EAP circuit; write circuit.json, circuit.html and three figures."""
    from mmlens.circuits.cdt import ACTIVATIONS, NORMS, REFERENCES, RESTS

    methods = check_choices(list(dict.fromkeys(method or METHODS)), METHODS, "method")
    check_choice(source, ("object", "image"), "source")
    check_choice(reference, REFERENCES, "reference")
    check_choice(activation, ACTIVATIONS, "activation")
    check_choice(norms, NORMS, "norms")
    check_choice(rest, RESTS, "rest")
    if not 0.0 < target <= 1.0:
        raise MmlensError(f"--target {target} must be in (0, 1]")
    wanted = _parse_positions(positions)
    folder = OutputFolder(out, "circuit", locals(), overwrite=overwrite, seeds={"seed": seed}, result="circuit")
    console = Console(stderr=True)
    prompt = read_prompt(prompt, prompt_file)
    with stdout_for_json(as_json):
        with folder:
            loaded, prompt_text, images = load_with_input(console, model, prompt, image)
            folder.set_model(loaded)
            batch = loaded.prepare(prompt_text, images or None)
            region = object_box(box, image, prompt, loaded.name, first_image=images[0] if images else None)
            with console.status("finding the circuit"):
                summary = run_circuit(loaded, batch, images, methods, region if source == "object" else None,
                                      wanted, answer, reference, (activation, norms, rest), counterfactual, noise,
                                      target, seed, folder.path)
            for line in summary["warnings"]:
                console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
        summary.update(out=str(folder.out), report=str(folder.out / "circuit.html"))
        print_summary(summary)
    if as_json:
        print_json(summary)


def run_circuit(model: Any, batch: Any, images: list, methods: list[str], region: Any, positions: list[int] | None,
                answer: str | None, reference: str, split: tuple[str, str, str], counterfactual: Path | None, noise: float,
                target: float, seed: int, folder: Path) -> dict:
    """Run the chosen methods, write the figures, ``circuit.json`` and ``circuit.html``; return the summary.

    ``split`` is CD-T's (MLP activation rule, norm rule, rest).
    """
    from mmlens.causal import object_positions
    from mmlens.circuits import DecoderGraph, decompose
    from mmlens.report.circuit_pages import cdt_figure, circuit_figure, circuit_section, curve_figure
    from mmlens.report.inside_html import write_sections

    graph = DecoderGraph(model)
    summary: dict[str, Any] = {"model": model.name, "prompt": batch.prompts[0], "warnings": []}
    figures, result, scores, curve = {}, None, None, None
    facts: dict[str, Any] = {"model": model.name, "prompt": batch.prompts[0]}
    if "cdt" in methods:
        if positions is None:
            if not images:
                raise MmlensError("CD-T needs a source: give an image (its tokens are the source) or --positions")
            positions = object_positions(batch.layout, 0, region) if region is not None else []
            if not positions:
                positions = batch.layout.image_positions(0).tolist()
        activation, norms, rest = split
        result = decompose(model, batch, positions, answer=answer, reference=reference, activation=activation,
                           norms=norms, rest=rest, graph=graph)
        figures["cdt"] = cdt_figure(result, graph.n_layers, graph.n_heads)
        answer_text = token_text(model, result.answer_id)
        facts.update({"answer followed": answer_text, "CD-T source": f"{len(result.source_positions)} positions "
                      f"({reference} reference, {activation} MLP split, {norms} norms, {rest} rest)",
                      "answer logit / source's part": f"{result.logit:.3f} / {result.source_logit:.3f}"})
        summary["cdt"] = {"answer": answer_text, "source_positions": result.source_positions,
                          "logit": result.logit, "source_logit": result.source_logit,
                          "ranking": [{"component": n, "total": round(s, 6)} for n, s in result.ranking()],
                          "seconds": round(result.seconds, 4)}
    if "eap" in methods:
        scores, curve, info = _eap(model, batch, images, graph, answer, counterfactual, noise, target, seed)
        summary["eap"] = info
        summary["warnings"] += info.pop("warnings")
        figures["graph"] = circuit_figure(graph.n_layers, graph.n_heads, scores, info["edges_kept"],
                                          node_scores=None if result is None else
                                          dict(zip(result.components, result.total_source.tolist())))
        figures["curve"] = curve_figure({"corrupt": curve}, len(graph.edges), target=target)
        facts.update({"EAP corruption": info["corruption"], "circuit": f"{info['edges_kept']} of "
                      f"{info['edges']} edges recover {info['recovered']:.0%} of the gap"})
    for name, figure in figures.items():
        figure.savefig(folder / f"circuit_{name}.png", format="png")
    payload = {**summary, "cdt_result": None if result is None else result.to_json()}
    if scores is not None:
        payload["edge_scores"] = dict(zip(scores.edge_names(), [round(float(s), 6) for s in scores.scores]))
        payload["curve"] = {"kept": curve.kept, "recovered": [round(float(r), 6) for r in curve.recovered]}
    save_json(payload, folder / "circuit.json", "mmlens.Circuit", indent=1)
    write_sections([circuit_section(facts, result, scores, curve, figures)], folder / "circuit.html",
                   title=f"mmlens circuit · {model.name}")
    return summary


def _eap(model: Any, batch: Any, images: list, graph: Any, answer: str | None, counterfactual: Path | None,
         noise: float, target: float, seed: int) -> tuple[Any, Any, dict]:
    """EAP against a pixel-noise or counterfactual corruption; the circuit is the fewest top edges reaching ``target``."""
    from mmlens.causal import noisy_pixels
    from mmlens.circuits.eap import find_circuit

    if not images:
        raise MmlensError("EAP corrupts the image: give an image and a prompt with an <image> slot (or --method cdt)")
    if counterfactual is not None:
        other = counterfactual_images(counterfactual, images)
        corrupted, corruption = model.prepare(batch.prompts[0], other), f"counterfactual {counterfactual.name}"
    else:
        corrupted, corruption = noisy_pixels(batch, noise, seed)[0], f"pixel noise {noise:g}"
    circuit = find_circuit(model, batch, corrupted, answer=answer, target=target, graph=graph)
    foil = token_text(model, circuit.foil_id)
    warnings = [f"the corruption does not change the answer; EAP contrasts it with the runner-up {foil!r} "
                "(try --noise or --counterfactual)"] if circuit.runner_up else []
    return circuit.scores, circuit.curve, {"corruption": corruption, "foil": foil, **circuit.to_json(),
                                           "warnings": warnings}


def _parse_positions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise MmlensError(f"--positions {text!r}: expected comma-separated integers such as 3,4,5") from None


def print_summary(summary: dict) -> None:
    """The answer, CD-T's top components and the EAP circuit's size."""
    console = Console()
    console.print(f"[bold]model[/bold]   {summary['model']}")
    console.print(f"[bold]prompt[/bold]  {summary['prompt']}")
    if "cdt" in summary:
        cdt = summary["cdt"]
        console.print(f"[bold]CD-T[/bold]    the source's share of the logit of {cdt['answer']!r}: "
                      f"{cdt['source_logit']:.3f} of {cdt['logit']:.3f}")
        table = Table(title="top components by |source share| (total)")
        table.add_column("component")
        table.add_column("logit")
        for row in cdt["ranking"][:8]:
            table.add_row(row["component"], f"{row['total']:.3f}")
        console.print(table)
    if "eap" in summary:
        eap = summary["eap"]
        console.print(f"[bold]EAP[/bold]     {eap['edges_kept']} of {eap['edges']} edges recover "
                      f"{eap['recovered']:.0%} of the gap ({eap['corruption']}, foil {eap['foil']!r})")
    console.print(f"report: {summary['report']}")
