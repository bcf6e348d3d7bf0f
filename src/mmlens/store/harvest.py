"""Harvesting activations into a store, one shard at a time.

The unit of work is :func:`run_shard`: a shard's plan (which rows of the
reader it holds, fixed by its id) in, a written shard's record out. It reads
nothing but its own rows and writes nothing but its own folder, so any
scheduler can run it (this process, a pool, Ray workers); only the caller
commits records to the manifest (:meth:`StoreWriter.commit`). :func:`harvest`
is that caller for one process: it skips finished shards, so a run killed at
any moment and started again ends with the same store.

Example:
    >>> import mmlens
    >>> from mmlens.data.readers import open_reader
    >>> model = mmlens.load("shapes-llava")  # doctest: +SKIP
    >>> summary = harvest(model, open_reader("shapes:test[0:16]"), "store/", "lm.L*.resid")  # doctest: +SKIP
    >>> summary["tokens"]  # doctest: +SKIP
    1152
"""

from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from mmlens.data.readers import BadRow, Reader, images_of
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError, check_choices
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.store.files import check_dtype, disk_full, numpy_dtype, to_numpy
from mmlens.store.shard import ShardData, token_table, write_shard
from mmlens.store.writer import StoreWriter

if TYPE_CHECKING:
    from mmlens.model import Model

MODALITIES = ("image", "text", "special")
#: Sites whose values have one row per token of the language model's sequence.
_PER_TOKEN = re.compile(r"^lm\.(embed|L\d+\.(resid|attn|mlp|neurons))$")
Progress = Callable[[int, int], None]  # (samples done, tokens stored) since the last call


@dataclass(frozen=True)
class HarvestJob:
    """What every shard of one harvest shares."""

    sites: tuple[str, ...]
    dtype: str = "float16"
    modalities: tuple[str, ...] = MODALITIES
    shard_size: int = 256
    batch_size: int = 8


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` of a source: rows ``first .. stop - 1`` of its reader, id ``<source>-<index>``."""

    id: str
    source: str
    index: int
    first: int
    stop: int


def plan_shards(n_rows: int, shard_size: int, source: str) -> list[ShardPlan]:
    """Every shard of a ``n_rows``-row source: consecutive runs of ``shard_size`` rows.

    Example:
        >>> [(p.id, p.first, p.stop) for p in plan_shards(5, 2, "src")]
        [('src-000000', 0, 2), ('src-000001', 2, 4), ('src-000002', 4, 5)]
    """
    return [ShardPlan(f"{source}-{k:06d}", source, k, first, min(first + shard_size, n_rows))
            for k, first in enumerate(range(0, n_rows, shard_size))]


def check_job(model: "Model", sites: str | Sequence[str], modalities: Sequence[str], dtype: str,
              shard_size: int, batch_size: int) -> HarvestJob:
    """A :class:`HarvestJob` with sites expanded and everything checked, before any data is read."""
    from mmlens.hooks import expand

    names = expand(model, sites)
    other = [name for name in names if not _PER_TOKEN.match(name)]
    if other:
        raise MmlensError(f"{', '.join(other)}: a store keeps one row per token of the language model; harvest "
                          "lm.L<i>.resid/attn/mlp/neurons or lm.embed")
    check_choices(modalities, MODALITIES, "modality", at_least_one=True)
    if shard_size < 1 or batch_size < 1:
        raise MmlensError("shard and batch sizes are at least 1")
    ordered = tuple(m for m in MODALITIES if m in modalities)
    return HarvestJob(tuple(names), check_dtype(dtype), ordered, shard_size, batch_size)


def run_shard(model: "Model", job: HarvestJob, reader: Reader, plan: ShardPlan, folder: Path, *,
              strict: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Read the plan's rows, run them in batches of ``job.batch_size``, write the shard; its manifest record.

    Bad rows are left out and listed in the record (with ``strict``, the
    first one is an :class:`MmlensError`). The record's ``site_dims`` gives
    each site's width.
    """
    return write_planned(folder, plan, compute_shard(model, job, reader, plan, strict=strict, progress=progress))


def compute_shard(model: "Model", job: HarvestJob, reader: Reader, plan: ShardPlan, *,
                  strict: bool = False, progress: Progress | None = None) -> ShardData:
    """The plan's shard in memory (:func:`run_shard` without the writing): its arrays, tokens and bad rows."""
    errors: list[dict[str, Any]] = []

    def bad(index: int, row: BadRow) -> None:
        if strict:
            raise MmlensError(f"bad row {row.row_id} (row {index}): {row.reason}; stopped there (--strict)")
        errors.append({"row": index, **row.to_json()})

    pending: list[tuple[int, Sample]] = []
    parts: list[tuple[dict[str, np.ndarray], dict[str, list]]] = []
    samples = 0

    def flush() -> None:
        nonlocal samples
        if pending:
            part = _run_batch(model, job, plan.id, pending, bad, sum(len(p[1]["shard"]) for p in parts))
            parts.append(part)
            samples += len(pending) - part[2]
            if progress is not None:
                progress(len(pending), len(part[1]["shard"]))
            pending.clear()

    for index, sample in reader.read(plan.first, plan.stop, on_bad=bad):
        pending.append((index, sample))
        if len(pending) == job.batch_size:
            flush()
    flush()
    arrays = {site: np.concatenate([p[0][site] for p in parts if p[0][site].size] or [_none(job)])
              for site in job.sites}
    columns = {name: _concat([p[1][name] for p in parts]) for name in (parts[0][1] if parts else _empty())}
    errors.sort(key=lambda e: e["row"])
    return ShardData(arrays, token_table(columns or _empty()), samples, errors)


def write_planned(folder: Path, plan: ShardPlan, data: ShardData) -> dict[str, Any]:
    """Write ``data`` as the plan's shard; its manifest record, with ``site_dims`` (each site's width)."""
    record = write_shard(folder, plan.id, data)
    record.update(source=plan.source, index=plan.index, rows=[plan.first, plan.stop],
                  site_dims={site: int(a.shape[1]) for site, a in data.arrays.items() if a.size})
    return record


def harvest(model: "Model", reader: Reader, out: str | Path, sites: str | Sequence[str] = "lm.L*.resid", *,
            modalities: Sequence[str] = MODALITIES, dtype: str = "float16", shard_size: int = 256,
            batch_size: int = 8, strict: bool = False, progress: Progress | None = None,
            on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Harvest ``sites`` over every row of ``reader`` into the store at ``out``; a summary.

    Finished shards are skipped, so the same call after a kill continues where
    it stopped. ``on_start(samples_to_do, samples_done_before)`` is called once
    the plan is known. A full disk stops with one line and leaves the store resumable.

    Example:
        >>> harvest(model, open_reader("shapes:test[0:8]"), "store/", "lm.L0.resid", shard_size=4)["shards"]  # doctest: +SKIP
        {'total': 2, 'written': 2, 'skipped': 0}
    """
    from mmlens.models.weights import weights_sha256

    job = check_job(model, sites, modalities, dtype, shard_size, batch_size)
    out = Path(out)
    spec = {"model": {"name": model.name, "weights_sha256": weights_sha256(model.hf)}, **{
        k: v for k, v in asdict(job).items()}, "sites": list(job.sites), "modalities": list(job.modalities)}
    started = time.perf_counter()
    try:
        writer = StoreWriter.open(out, spec, reader.options())
        plans = plan_shards(len(reader), job.shard_size, writer.source)
        todo = [plan for plan in plans if plan.id not in writer.finished]
        if on_start is not None:
            on_start(sum(p.stop - p.first for p in todo), sum(p.stop - p.first for p in plans) -
                     sum(p.stop - p.first for p in todo))
        try:
            tokens = _compute_while_writing(model, job, reader, todo, out, writer, strict, progress)
        finally:
            writer.close()
    except OSError as error:
        if disk_full(error):
            done = len(writer.finished) if "writer" in locals() else 0
            raise MmlensError(f"the disk is full at {out}: {done} shards are stored; free some space and run the "
                              "same command again to continue") from None
        raise
    mine = [r for r in writer.manifest["shards"] if r["source"] == writer.source]
    seconds = time.perf_counter() - started
    return {"out": str(out), "model": model.name, "sites": list(job.sites), "dtype": job.dtype,
            "modalities": list(job.modalities), "source": writer.source,
            "samples": sum(r["samples"] for r in mine), "tokens": sum(r["tokens"] for r in mine),
            "bad_rows": sum(len(r["errors"]) for r in mine),
            "shards": {"total": len(plans), "written": len(todo), "skipped": len(plans) - len(todo)},
            "store_tokens": sum(r["tokens"] for r in writer.manifest["shards"]),
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "errors_file": str(out / "errors.jsonl")}


def _compute_while_writing(model: "Model", job: HarvestJob, reader: Reader, plans: list[ShardPlan], out: Path,
                           writer: StoreWriter, strict: bool, progress: Progress | None) -> int:
    """Run the plans' shards in order; each is written and committed on a second thread while the next computes.

    Writing is file syncs and checksums, which wait on the disk, not the CPU. At most
    one shard waits in memory; a write's error surfaces once the next shard is computed
    (or at the end), and a shard still being written when the run stops is committed
    first. Returns the tokens written.
    """
    def write_and_commit(plan: ShardPlan, data: ShardData) -> int:
        record = write_planned(out, plan, data)
        writer.commit(record, record.pop("site_dims"))
        return record["tokens"]

    tokens = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmlens-store-writer") as pool:
        writing: Future[int] | None = None
        try:
            for plan in plans:
                data = compute_shard(model, job, reader, plan, strict=strict, progress=progress)
                if writing is not None:
                    tokens += writing.result()
                writing = pool.submit(write_and_commit, plan, data)
        except BaseException:
            if writing is not None:
                wait([writing])  # a shard being written is committed, not left half-way; the first error wins
            raise
        if writing is not None:
            tokens += writing.result()
    return tokens


def _none(job: HarvestJob) -> np.ndarray:
    """The array of a shard (or batch) without tokens: no rows, in the store's dtype."""
    return np.zeros((0, 0), dtype=numpy_dtype(job.dtype))


def _concat(pieces: list) -> Any:
    """Join one column's pieces from every batch (arrays or lists)."""
    if not pieces:
        return []
    return list(itertools.chain.from_iterable(pieces)) if isinstance(pieces[0], list) else np.concatenate(pieces)


def _empty() -> dict[str, list]:
    from mmlens.store.shard import COLUMNS

    return {name: [] for name in COLUMNS}


def _run_batch(model: "Model", job: HarvestJob, shard_id: str, rows: list[tuple[int, Sample]],
               bad: Callable[[int, BadRow], None], offset: int) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """One forward over ``rows``: the kept tokens' activations per site, their table columns, and how many rows were bad.

    The table is built with array indexing over all kept tokens at once; a
    per-token Python loop cost more than the forward on small models.
    """
    from mmlens.hooks import capture

    batch, rows, n_bad = _prepare(model, rows, bad)
    if batch is None:
        return {site: _none(job) for site in job.sites}, _empty(), n_bad
    with torch.no_grad(), capture(model, list(job.sites)) as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    layout = batch.layout
    modality = layout.modality
    real = modality != int(Modality.PAD)
    wanted = torch.zeros_like(real)
    for name in job.modalities:
        wanted |= modality == int(Modality[name.upper()])
    # Row-major order: every kept token of row 0, then row 1, ... as before.
    b, at = (real & wanted).nonzero(as_tuple=True)
    arrays = {}
    for site in job.sites:
        values = captured[site]
        arrays[site] = to_numpy(values[b.to(values.device), at.to(values.device)], job.dtype)
    n = int(b.numel())
    rows_of = b.numpy()
    image, view = layout.image[b, at].numpy(), layout.view[b, at].numpy()
    token_ids = batch.input_ids.cpu()[b, at].numpy()
    names = np.array([m.name.lower() for m in sorted(Modality, key=int)], dtype=object)
    columns: dict[str, Any] = {
        "shard": [shard_id] * n,
        "offset": np.arange(offset, offset + n),
        "sample_id": np.array([sample.id for _, sample in rows], dtype=object)[rows_of],
        "sample": np.array([index for index, _ in rows], dtype=np.int64)[rows_of],
        "position": (real.long().cumsum(1) - 1)[b, at].numpy(),
        "modality": names[modality[b, at].numpy() - int(min(Modality))],
        "image": image,
        "view": view,
        "view_kind": _view_kinds(layout, rows_of, image, view),
        "patch_row": layout.row[b, at].numpy(),
        "patch_col": layout.col[b, at].numpy(),
        "token_id": token_ids,
        "token": [t if isinstance(t, str) else "" for t in model.tokenizer.convert_ids_to_tokens(token_ids.tolist())],
    }
    return arrays, columns, n_bad


def _view_kinds(layout: Any, rows_of: np.ndarray, image: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Each token's view kind ("" off images), looked up once per distinct (row, image, view)."""
    kinds = np.full(len(image), "", dtype=object)
    on_image = np.flatnonzero(image >= 0)
    if on_image.size:
        # One integer key per (row, image, view): np.unique on 1-D keys is far cheaper than on rows.
        row, img, view = (a[on_image].astype(np.int64) for a in (rows_of, image, view))
        span_img, span_view = int(img.max()) + 1, int(view.max()) + 1
        distinct, inverse = np.unique((row * span_img + img) * span_view + view, return_inverse=True)
        looked_up = np.array([layout.images[int(k) // (span_img * span_view)][int(k) // span_view % span_img]
                              .views[int(k) % span_view].kind for k in distinct], dtype=object)
        kinds[on_image] = looked_up[inverse.reshape(-1)]
    return kinds


def _prepare(model: "Model", rows: list[tuple[int, Sample]], bad: Callable[[int, BadRow], None]):
    """The batch of ``rows``; a row the model refuses alone (too long, ...) is a bad row, the rest run together."""
    def prepare(chosen: list[tuple[int, Sample]]):
        return model.prepare([s.prompt for _, s in chosen], [images_of(s) for _, s in chosen])

    try:
        return prepare(rows), rows, 0
    except MmlensError:
        if len(rows) == 1:
            index, sample = rows[0]
            try:
                prepare(rows)
            except MmlensError as error:
                bad(index, BadRow(sample.id, str(error)))
            return None, [], 1
    good = []
    for row in rows:
        try:
            prepare([row])
            good.append(row)
        except MmlensError as error:
            bad(row[0], BadRow(row[1].id, str(error)))
    n_bad = len(rows) - len(good)
    return (prepare(good) if good else None), good, n_bad
