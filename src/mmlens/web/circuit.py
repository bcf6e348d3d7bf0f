"""The circuit page's work: CD-T shares and the EAP circuit of one input, as ``mmlens circuit`` finds them.

The source of CD-T is the asked object's image tokens (a shipped example's
box, or a box from the request), or all image tokens. EAP corrupts the image
with pixel noise and keeps the fewest top edges that recover ``keep`` of the
clean-corrupt gap. The result carries the report's figures (the circuit as a
graph: layers in rows, heads and MLPs as nodes) and the same graph as data.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> from mmlens.web.store import Input
    >>> model = mmlens.load("tiny-llava")
    >>> given = Input("<image> what colour is the circle ?", [Image.new("RGB", (64, 64))])
    >>> found = circuit_input(model, given, CircuitOptions(), lambda done, total: None)
    >>> found["cdt"]["components"][0]["rank"], found["eap"]["edges_kept"] > 0
    (1, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.report.figures import png_data_uri, token_text
from mmlens.web.store import Input

SOURCES = ("object", "image")
STEPS = 3  # CD-T, EAP, figures


@dataclass(frozen=True)
class CircuitOptions:
    """What one circuit run asks: the methods, CD-T's source and target, EAP's corruption and faithfulness target."""

    methods: tuple[str, ...] = ("cdt", "eap")
    source: str = "object"  # the asked object's tokens (all image tokens when no box is known), or "image"
    box: tuple[float, float, float, float] | None = None  # overrides the input's own box
    target: str | None = None  # the answer to follow (default: the model's top token)
    foil: str | None = None  # CD-T's target becomes logit(target) - logit(foil)
    reference: str = "mean"
    activation: str = "marginal"
    norms: str = "frozen"  # "marginal" with rest "replaced": the variant that agrees with path patching
    rest: str = "propagated"
    noise: float = 3.0
    keep: float = 0.8
    seed: int = 0


def check_circuit_input(model: Model, given: Input, options: CircuitOptions) -> None:
    """Refuse at once (one line) what the run would refuse later: a decoder circuits cannot split, no image, a bad box.

    Example:
        >>> check_circuit_input(mmlens.load("tiny-gpt2"), given, CircuitOptions())  # doctest: +SKIP
        Traceback (most recent call last):
        mmlens.errors.MmlensError: gpt2: circuits support LLaMA-style decoders only ...
    """
    from mmlens.circuits import DecoderGraph

    DecoderGraph(model)  # its structural check: no model run needed
    if not given.images:
        raise MmlensError("circuits need an image: CD-T's source is its tokens and EAP corrupts it; "
                          "this input has none")
    if options.box is not None:
        box_within(options.box, given.images[0].size)


def box_within(box: tuple[float, float, float, float], size: tuple[int, int]) -> Box:
    """``box`` (pixels) as a :class:`Box` that overlaps an image of ``size`` (width, height); one line otherwise.

    Example:
        >>> box_within((0, 0, 8, 8), (64, 64))
        Box(x0=0.0, y0=0.0, x1=8.0, y1=8.0)
    """
    checked = Box.of(box)
    width, height = size
    if checked.x0 >= width or checked.y0 >= height or checked.x1 <= 0 or checked.y1 <= 0:
        raise MmlensError(f"the box {list(checked)} lies outside the {width}x{height} image")
    return checked


def circuit_input(model: Model, given: Input, options: CircuitOptions,
                  progress: Callable[[int, int], None]) -> dict[str, Any]:
    """CD-T and EAP on ``given``, with the report's figures; ``progress(done, total)`` may raise between steps."""
    from mmlens.causal import noisy_pixels, object_positions
    from mmlens.circuits import DecoderGraph, decompose, find_circuit
    from mmlens.report.circuit_pages import cdt_figure, circuit_figure, curve_figure

    check_circuit_input(model, given, options)
    graph = DecoderGraph(model)
    batch = model.prepare(given.prompt, given.images)
    region = options.box if options.box is not None else given.box
    positions = object_positions(batch.layout, 0, box_within(region, given.images[0].size)) \
        if options.source == "object" and region is not None else []
    source = "object" if positions else "image"
    positions = positions or batch.layout.image_positions(0).tolist()
    found: dict[str, Any] = {"model": model.name, "prompt": given.prompt, "warnings": [],
                             "source": {"kind": source, "positions": positions,
                                        "box": None if source == "image" else list(Box.of(region))}}
    figures, result, scores = {}, None, None
    progress(0, STEPS)
    if "cdt" in options.methods:
        result = decompose(model, batch, positions, answer=options.target, foil=options.foil,
                           reference=options.reference, activation=options.activation, norms=options.norms,
                           rest=options.rest, graph=graph)
        found["cdt"] = cdt_json(result, token_text(model, result.answer_id),
                                None if result.foil_id is None else token_text(model, result.foil_id))
        figures["cdt"] = cdt_figure(result, graph.n_layers, graph.n_heads)
    progress(1, STEPS)
    if "eap" in options.methods:
        circuit = find_circuit(model, batch, noisy_pixels(batch, options.noise, options.seed)[0],
                               answer=options.target, target=options.keep, graph=graph)
        scores, curve, foil = circuit.scores, circuit.curve, token_text(model, circuit.foil_id)
        if circuit.runner_up:
            found["warnings"].append("the corruption does not change the answer; EAP contrasts it with the runner-up "
                                     f"{foil!r} (try a larger noise)")
        recovered = [round(float(r), 6) for r in curve.recovered]
        info = {"corruption": f"pixel noise {options.noise:g}", "foil": foil, **circuit.to_json()}
        found["eap"] = {**info, "curve": {"kept": curve.kept, "recovered": recovered}}
        node_scores = None if result is None else dict(zip(result.components, result.total_source.tolist()))
        figures["graph"] = circuit_figure(graph.n_layers, graph.n_heads, scores, info["edges_kept"], node_scores)
        figures["curve"] = curve_figure({"corrupt": curve}, len(graph.edges), target=options.keep)
        found["graph"] = graph_json(graph.n_layers, graph.n_heads, scores, info["edges_kept"], node_scores)
    progress(2, STEPS)
    found["figures"] = {name: png_data_uri(figure) for name, figure in figures.items()}
    progress(STEPS, STEPS)
    return found


def cdt_json(result: Any, answer: str, foil: str | None) -> dict[str, Any]:
    """CD-T's figures and every component, ranked by the source's total share (rank 1 first)."""
    rows = []
    for rank, (name, total) in enumerate(result.ranking(), start=1):
        i = result.components.index(name)
        layer, part = name.split(".")
        rows.append({"rank": rank, "component": name, "layer": int(layer[1:]),
                     "kind": "mlp" if part == "MLP" else "head", "head": None if part == "MLP" else int(part[1:]),
                     "total": round(total, 6), "direct": round(float(result.direct_source[i]), 6),
                     "direct_rest": round(float(result.direct_rest[i]), 6)})
    return {"answer": answer, "foil": foil, "logit": round(result.logit, 6),
            "source_logit": round(result.source_logit, 6), "embed_source": round(result.embed_source, 6),
            "seconds": round(result.seconds, 4), **result.meta, "components": rows}


def graph_json(n_layers: int, n_heads: int, scores: Any, k: int,
               node_scores: dict[str, float] | None) -> dict[str, Any]:
    """The circuit figure as data: every node at its place (layer as the row) and the top ``k`` edges."""
    from mmlens.report.circuit_pages import node_position

    kept = scores.top(k)
    used = {name for e in kept for name in (scores.nodes[scores.edges[e][0]], scores.readers[scores.edges[e][1]])}
    names = ["embed"] + [f"L{i}.{p}" for i in range(n_layers) for p in [f"H{j}" for j in range(n_heads)] + ["MLP"]]
    nodes = []
    for name in names + ["logits"]:
        x, y = node_position(name, n_layers, n_heads)
        score = None if node_scores is None or name not in node_scores else round(node_scores[name], 6)
        nodes.append({"name": name, "x": x, "y": y, "in_circuit": name in used, "cdt": score})
    edges = [{"from": scores.nodes[scores.edges[e][0]], "to": scores.readers[scores.edges[e][1]],
              "score": round(float(scores.scores[e]), 6)} for e in kept]
    return {"layers": n_layers, "heads": n_heads, "nodes": nodes, "edges": edges}
