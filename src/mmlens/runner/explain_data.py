"""Explaining a whole dataset: one explanation per sample in a resumable folder, a table, and an index page.

The same runner as :mod:`mmlens.store.harvest`: the reader's rows are cut into
shards by :func:`~mmlens.store.harvest.plan_shards` (a shard's id fixes its
samples), each shard is written whole under a temporary name and renamed,
then the manifest lists it. A run killed at any moment and started again
skips the finished shards and ends with the same explanations. The folder::

    manifest.json                      model, methods, options, sources, finished shards and their checksums
    errors.jsonl                       bad rows (id, reason, shard)
    samples.parquet                    one row per explained sample and method (answer, image share, top cell, ...)
    index.html                         a page linking every sample's report
    shards/<id>/<n>/explanation.json   the explanation (heatmaps per image and view, prompt-word scores)
    shards/<id>/<n>/scores.safetensors the raw per-token scores, one (targets, tokens) tensor per method
    shards/<id>/<n>/report.html        the usual report of ``mmlens explain``

where ``<n>`` is the sample's row number in its reader.

Example:
    >>> import mmlens
    >>> from mmlens.data.readers import open_reader
    >>> model = mmlens.load("shapes-llava")  # doctest: +SKIP
    >>> summary = explain_dataset(model, open_reader("shapes:test[0:8]"), "explained/", ["attention"])  # doctest: +SKIP
    >>> summary["samples"]  # doctest: +SKIP
    8
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mmlens.data.readers import BadRow, Reader, images_of
from mmlens.errors import MmlensError, check_choices
from mmlens.store.files import ERRORS, MANIFEST, SHARDS, TMP_PREFIX, publish, remove_unlisted_shards, \
    write_json_atomic
from mmlens.store.harvest import ShardPlan, plan_shards
from mmlens.store.shard import damage
from mmlens.store.writer import LOCK, exclusive_writer, source_key

if TYPE_CHECKING:
    from mmlens.attribution.explanation import Explanation
    from mmlens.model import Model

FORMAT = "mmlens.ExplanationStore"
LAYOUT_VERSION = 1
TABLE = "samples.parquet"
INDEX = "index.html"
#: What must be equal for a run to add to an existing folder.
SPEC_KEYS = ("model", "methods", "options", "max_new_tokens", "shard_size", "reports")
Progress = Callable[[int], None]  # samples done since the last call


def explain_dataset(model: "Model", reader: Reader, out: str | Path, methods: Sequence[str], *,
                    options: dict[str, dict] | None = None, max_new_tokens: int | None = None,
                    shard_size: int = 16, reports: bool = True, strict: bool = False,
                    progress: Progress | None = None,
                    on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Explain every row of ``reader`` with ``methods`` into the folder ``out``; a summary.

    Each sample's own answer is explained (as ``mmlens explain`` does); its
    expected answer, when the dataset has one, goes into the table beside it.
    Finished shards are skipped, so the same call after a kill continues.
    ``reports=False`` skips the per-sample HTML (the slowest part).

    Example:
        >>> explain_dataset(model, open_reader("shapes:test[0:4]"), "out/", ["attention"], shard_size=2)["shards"]  # doctest: +SKIP
        {'total': 2, 'written': 2, 'skipped': 0}
    """
    from mmlens.attribution.api import METHODS
    from mmlens.models.weights import weights_sha256

    check_choices(methods, METHODS, "method", at_least_one=True)
    if shard_size < 1:
        raise MmlensError("the shard size is at least 1")
    out = Path(out)
    spec = {"model": {"name": model.name, "weights_sha256": weights_sha256(model.hf)}, "methods": list(methods),
            "options": json.loads(json.dumps(options or {}, sort_keys=True)), "max_new_tokens": max_new_tokens,
            "shard_size": shard_size, "reports": reports}
    started = time.perf_counter()
    with exclusive_writer(out):  # one writing job at a time, as for a store
        manifest, source = _open(out, spec, reader.options())
        plans = plan_shards(len(reader), shard_size, source)
        finished = {r["id"] for r in manifest["shards"]}
        todo = [plan for plan in plans if plan.id not in finished]
        if on_start is not None:
            rows = sum(p.stop - p.first for p in todo)
            on_start(rows, sum(p.stop - p.first for p in plans) - rows)
        for plan in todo:
            record = run_shard(model, reader, plan, out, list(methods), options or {}, max_new_tokens,
                               reports=reports, strict=strict, progress=progress)
            commit(out, manifest, record)
        if not todo:
            _write_views(out, manifest)  # a folder from a run killed between its commit and its views
    mine = [r for r in manifest["shards"] if r["source"] == source]
    return {"out": str(out), "model": model.name, "methods": list(methods), "source": source,
            "samples": sum(len(r["samples"]) for r in mine), "bad_rows": sum(len(r["errors"]) for r in mine),
            "shards": {"total": len(plans), "written": len(todo), "skipped": len(plans) - len(todo)},
            "seconds": round(time.perf_counter() - started, 3), "index": str(out / INDEX),
            "table": str(out / TABLE), "errors_file": str(out / ERRORS)}


def run_shard(model: "Model", reader: Reader, plan: ShardPlan, out: Path, methods: list[str],
              options: dict[str, dict], max_new_tokens: int | None, *, reports: bool = True, strict: bool = False,
              progress: Progress | None = None) -> dict[str, Any]:
    """Explain the plan's rows into ``shards/<id>`` (written whole, then renamed); the shard's manifest record."""
    from mmlens.attribution.api import explain

    errors: list[dict[str, Any]] = []

    def bad(index: int, row: BadRow) -> None:
        if strict:
            raise MmlensError(f"bad row {row.row_id} (row {index}): {row.reason}; stopped there (--strict)")
        errors.append({"row": index, **row.to_json()})

    tmp = out / SHARDS / f"{TMP_PREFIX}{plan.id}"
    final = out / SHARDS / plan.id
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    samples = []
    try:
        for index, sample in reader.read(plan.first, plan.stop, on_bad=bad):
            try:
                explanation = explain(model, sample.prompt, images_of(sample), methods=methods,
                                      max_new_tokens=max_new_tokens, options=options)
            except MmlensError as error:  # a prompt the model refuses is a bad row like a missing image
                bad(index, BadRow(sample.id, str(error)))
                continue
            folder = tmp / str(index)
            _save(explanation, folder, reports)
            samples.append(_row(explanation, index, sample.id, sample.answer, f"{SHARDS}/{plan.id}/{index}"))
            if progress is not None:
                progress(1)
        files = publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    errors.sort(key=lambda e: e["row"])
    return {"id": plan.id, "source": plan.source, "index": plan.index, "rows": [plan.first, plan.stop],
            "samples": samples, "errors": errors, "files": files}


def commit(out: Path, manifest: dict[str, Any], record: dict[str, Any]) -> None:
    """List a written shard in the manifest (from now on it is finished), then rewrite the table and index."""
    order = {s["key"]: i for i, s in enumerate(manifest["sources"])}
    shards = [r for r in manifest["shards"] if r["id"] != record["id"]] + [record]
    manifest["shards"] = sorted(shards, key=lambda r: (order[r["source"]], r["index"]))
    _save_manifest(out, manifest)
    _write_views(out, manifest)


def rows_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: one per finished sample and method, in shard order.

    Example:
        >>> rows_of({"shards": []})
        []
    """
    rows = []
    for record in manifest["shards"]:
        for sample in record["samples"]:
            for method, facts in sample["methods"].items():
                rows.append({key: value for key, value in sample.items() if key != "methods"} |
                            {"shard": record["id"], "method": method, **facts})
    return rows


# ---- internals ----------------------------------------------------------
def _save(explanation: "Explanation", folder: Path, reports: bool) -> None:
    from safetensors.torch import save_file

    from mmlens.report.files import save_explanation
    from mmlens.report.html import write_html_report

    save_explanation(explanation, folder, figures=False)
    save_file({m: s.detach().float().contiguous().cpu() for m, s in explanation.scores.items()},
              str(folder / "scores.safetensors"))
    if reports:
        write_html_report(explanation, folder / "report.html", compact=True)


def _row(e: "Explanation", index: int, sample_id: str, expected: str | None, folder: str) -> dict[str, Any]:
    """One sample's line of the table (its per-method facts nested under ``methods``)."""
    methods = {}
    for method in e.methods:
        share, cell, words = _facts(e, method)
        methods[method] = {"image_share": share, "top_row": None if cell is None else cell[0],
                           "top_col": None if cell is None else cell[1], "top_words": " ".join(words)}
    correct = None if expected is None else e.answer.strip().lower() == str(expected).strip().lower()
    return {"sample": index, "sample_id": sample_id, "prompt": e.prompt, "answer": e.answer,
            "expected": expected, "correct": correct, "folder": folder, "methods": methods}


def _facts(e: "Explanation", method: str) -> tuple[float | None, list[int] | None, list[str]]:
    """The first token's image share, strongest image cell (row, col) and three strongest prompt words."""
    import numpy as np

    share = e.image_share(method, 0)
    cell = None
    if e.layout.images[0]:
        grid = e.image_grid(method, 0)
        if np.isfinite(grid).any():
            cell = [int(v) for v in np.unravel_index(np.nanargmax(grid), grid.shape)]
    words = sorted(e.prompt_scores(method, 0), key=lambda pair: -pair[1])[:3]
    return (float(share) if np.isfinite(share) else None), cell, [word for word, _ in words]


def _open(out: Path, spec: dict[str, Any], reader_options: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The folder's manifest (created, or checked against ``spec``) with stale shard folders removed; the source key."""
    if out.exists() and not out.is_dir():
        raise MmlensError(f"{out} is a file, not an output folder")
    manifest = _read_manifest(out)
    if manifest is None:
        if out.exists() and any(p.name != LOCK for p in out.iterdir()):
            raise MmlensError(f"{out} is not empty and holds no explanations of a dataset: use a new or empty --out")
        manifest = {"format": FORMAT, "layout_version": LAYOUT_VERSION, **spec, "sources": [], "shards": []}
    else:
        for key in SPEC_KEYS:
            if manifest.get(key) != json.loads(json.dumps(spec[key])):
                raise MmlensError(f"{out} holds explanations with {key} {json.dumps(manifest.get(key))}; this run "
                                  f"asks for {json.dumps(spec[key])}: use another --out")
    key = source_key(reader_options)
    if key not in [s["key"] for s in manifest["sources"]]:
        manifest["sources"].append({"key": key, "reader": reader_options})
    out.mkdir(parents=True, exist_ok=True)
    manifest["shards"] = [r for r in manifest["shards"] if not damage(out, r)]  # a damaged shard is redone
    _save_manifest(out, manifest)
    remove_unlisted_shards(out, {r["id"] for r in manifest["shards"]})
    return manifest, key


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MmlensError(f"{path} is not readable JSON ({error}); use another --out") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MmlensError(f"{out} holds something other than explanations of a dataset: use another --out")
    if manifest.get("layout_version") != LAYOUT_VERSION:
        raise MmlensError(f"{out} is of layout version {manifest.get('layout_version')}; this mmlens writes "
                          f"version {LAYOUT_VERSION}: use another --out")
    return manifest


def _save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(out / MANIFEST, manifest)
    lines = [json.dumps({**error, "shard": r["id"]}, sort_keys=True) for r in manifest["shards"] for error in r["errors"]]
    tmp = out / (ERRORS + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(out / ERRORS)


def _write_views(out: Path, manifest: dict[str, Any]) -> None:
    """``samples.parquet`` and ``index.html`` from the manifest (each replaced in one step)."""
    from mmlens.report.dataset_index import write_index, write_table

    rows = rows_of(manifest)
    write_table(rows, out / TABLE)
    write_index(manifest, out / INDEX)
