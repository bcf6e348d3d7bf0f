"""``mmlens steer``: add a steering vector while the model answers; or build one from two datasets or two models.

Three ways in (the vector is always safetensors, see
:class:`mmlens.represent.steering.SteeringVector`):

- ``mmlens steer --model M --vector FILE --scale S --data SPEC``: answers
  before and after adding ``S`` times the vector (at ``--tokens``).
- ``--from-data A --to-data B --layer L``: the vector is ``mean(B) - mean(A)``
  of the answer-position states (or ``--where image``) and is saved as
  ``vector.safetensors``; then applied as above.
- ``--fine-tuned M2 --shift-data SPEC --layer L``: the shift of means from
  ``M`` to ``M2`` on ``SPEC`` (Khayatan et al.), saved and applied likewise.
- ``--subspace FILE``: a learned MoReS-style subspace steering
  (:mod:`mmlens.represent.subspace_steering`), applied to every image token
  (``--tokens`` does not apply; ``--scale`` multiplies its change).

Writes ``steer.json`` (every answer before and after, the counts) and
``steer.html`` (the before/after page) into ``--out``.

Example:
    mmlens steer --from-data "shapes:train[0:400]" --to-data "shapes:train[400:800]" --layer 2 \\
        --data "shapes:test[0:20]" --scale 0.75 --out out/steer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mmlens.cli.options import JsonOption, ModelOption, OutOption, OverwriteOption, print_json, stdout_for_json
from mmlens.cli.samples import load_model
from mmlens.cli.terminal import progress_console, result_console
from mmlens.data.readers import open_reader
from mmlens.errors import MmlensError, check_choice
from mmlens.model import Model
from mmlens.report.files import save_json
from mmlens.report.output import OutputFolder
from mmlens.report.steer_pages import steer_page
from mmlens.represent.concepts import activations
from mmlens.represent.steering import TOKENS, SteeringVector, answers, mean_difference, shift_vectors
from mmlens.represent.subspace_steering import SubspaceSteering

#: Most samples read from one --data / --from-data / --to-data / --shift-data spec.
MAX_SAMPLES = 2000


def steer(
    model: Optional[str] = ModelOption,
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="A steering vector (.safetensors) to apply."),
    scale: float = typer.Option(1.0, "--scale", "-s", help="Multiply the vector by this."),
    tokens: str = typer.Option("prompt-last", "--tokens", help=f"Where to add it: {', '.join(TOKENS)}."),
    layers: Optional[list[int]] = typer.Option(None, "--layer", "-l",
                                               help="Decoder layer(s) (-1: the input); repeat. Default: all of the vector's."),
    data: str = typer.Option("shapes:test[0:20]", "--data", "-d", help="Samples to answer (a reader spec)."),
    from_data: Optional[str] = typer.Option(None, "--from-data", help="Build the vector: the 'from' samples."),
    to_data: Optional[str] = typer.Option(None, "--to-data", help="Build the vector: the 'to' samples."),
    fine_tuned: Optional[str] = typer.Option(None, "--fine-tuned", help="Build a shift vector: the fine-tuned model."),
    shift_data: Optional[str] = typer.Option(None, "--shift-data", help="Samples the shift of means is taken on."),
    where: str = typer.Option("last", "--where", help="Read states at 'last' (answer position) or 'image' (mean)."),
    max_new_tokens: int = typer.Option(1, "--max-new-tokens", help="Tokens to generate per answer."),
    subspace: Optional[Path] = typer.Option(None, "--subspace",
                                            help="A MoReS-style subspace steering (.safetensors + .json) to apply "
                                                 "to image tokens."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Steer a model with a vector (or build one from two datasets or two models); write JSON and a page."""
    building = [from_data is not None or to_data is not None, fine_tuned is not None]
    if sum(building) + (vector is not None) + (subspace is not None) != 1:
        raise MmlensError("give one of --vector FILE, --subspace FILE, --from-data A --to-data B, "
                          "or --fine-tuned M --shift-data S")
    if building[0] and (from_data is None or to_data is None):
        raise MmlensError("building a vector needs both --from-data and --to-data")
    if building[1] and shift_data is None:
        raise MmlensError("a shift vector needs --shift-data (the samples both models see)")
    if building[0] or building[1]:
        if not layers:
            raise MmlensError("building a vector needs --layer (one or more)")
    check_choice(tokens, TOKENS, "--tokens")
    check_choice(where, ("last", "image"), "--where")
    loaded_vector: SteeringVector | SubspaceSteering | None = SteeringVector.load(vector) if vector is not None else None
    if subspace is not None:
        loaded_vector = SubspaceSteering.load(subspace)
    folder = OutputFolder(out, "steer", locals(), overwrite=overwrite, result="steer")
    console = progress_console()
    with stdout_for_json(as_json):
        with folder:
            loaded = load_model(console, model)
            folder.set_model(loaded)
            if loaded_vector is None:
                loaded_vector = _build(loaded, console, from_data, to_data, fine_tuned, shift_data, layers or [], where)
                loaded_vector.save(folder.path / "vector.safetensors")
            elif layers:
                loaded_vector = loaded_vector.only(layers)
            summary = run_steer(loaded, loaded_vector, _samples(data), scale, tokens, max_new_tokens, folder.path)
        result_console().print(f"{summary['changed']} of {summary['n']} answers changed; written to {folder.out}/",
                               highlight=False)
    if as_json:
        print_json({"out": str(folder.out), **{k: v for k, v in summary.items() if k != "rows"}})


def _samples(spec: str) -> list[Any]:
    """Up to :data:`MAX_SAMPLES` samples of a reader spec (one line if it yields none)."""
    reader = open_reader(spec)
    samples = []
    for sample in reader:
        samples.append(sample)
        if len(samples) >= MAX_SAMPLES:
            break
    if not samples:
        raise MmlensError(f"{spec} yields no samples")
    return samples


def _build(loaded: Model, console: Console, from_data: str | None, to_data: str | None, fine_tuned: str | None,
           shift_data: str | None, layers: list[int], where: str) -> SteeringVector:
    """A mean difference of two datasets, or the shift of means from ``loaded`` to ``fine_tuned``."""
    if fine_tuned is not None:
        tuned = load_model(console, fine_tuned)
        return shift_vectors(loaded, tuned, _samples(shift_data or ""), layers, where,
                             {"shift_data": str(shift_data)})
    source, target = _samples(from_data or ""), _samples(to_data or "")
    return mean_difference(activations(loaded, source, layers, where), activations(loaded, target, layers, where),
                           {"kind": "mean-difference", "from": str(from_data), "to": str(to_data), "where": where,
                            "model": loaded.name})


def run_steer(loaded: Model, vector: SteeringVector | SubspaceSteering, samples: list[Any], scale: float, tokens: str,
              max_new_tokens: int, folder: Path) -> dict[str, Any]:
    """Answer ``samples`` before and after steering; write ``steer.json`` and ``steer.html``; return the summary."""
    before = answers(loaded, samples, max_new_tokens=max_new_tokens)
    after = answers(loaded, samples, vector, scale, tokens, max_new_tokens=max_new_tokens)
    rows = [{"id": getattr(s, "id", str(i)), "prompt": s.prompt, "answer": getattr(s, "answer", None),
             "before": b, "after": a} for i, (s, b, a) in enumerate(zip(samples, before, after))]
    summary = {"model": loaded.name, "layers": vector.layers, "scale": scale,
               "tokens": tokens if isinstance(vector, SteeringVector) else "image",
               "vector_metadata": vector.metadata, "n": len(rows),
               "changed": sum(r["before"] != r["after"] for r in rows),
               "after_counts": _counts([r["after"] for r in rows]), "before_counts": _counts([r["before"] for r in rows]),
               "rows": rows}
    save_json(summary, folder / "steer.json", "mmlens.Steer", indent=1)
    facts = {k: summary[k] for k in ("model", "layers", "scale", "tokens", "n", "changed")}
    steer_page(rows, facts, folder / "steer.html")
    return summary


def _counts(words: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in words:
        out[w] = out.get(w, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
