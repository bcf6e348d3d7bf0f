"""Harvesting on a Ray cluster: the same shards as :func:`mmlens.store.harvest.harvest`, run by Ray workers.

Ray Data maps :func:`~mmlens.store.harvest.run_shard` over the shard plans
(``map_batches`` with one plan per batch) through a callable class that loads
the model once per worker, with one GPU per worker where the cluster has
GPUs. Each worker writes its shard under the shard's deterministic id
(``shards/<id>``, renamed into place once complete); only this process, the
driver, commits records to the manifest, as they arrive. A shard is thus part
of the store only once the driver has committed it, and a restart (or a
retry after a lost worker) skips finished shards and redoes the rest: the
store ends the same as the one an in-process harvest writes.

Ray is an optional extra: ``pip install 'mmlens[ray]'``.

Example:
    >>> import mmlens
    >>> model = mmlens.load("shapes-llava")  # doctest: +SKIP
    >>> summary = harvest_on_ray(model, "shapes:test[0:64]", "store/", "lm.L*.resid", shard_size=16)  # doctest: +SKIP
    >>> summary["backend"]  # doctest: +SKIP
    {'name': 'ray', 'address': 'local', 'workers': 2, 'gpus_per_worker': 0, 'attempts': 1}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mmlens.errors import MmlensError
from mmlens.store.harvest import MODALITIES, HarvestJob, Progress, ShardPlan, check_job, plan_shards, run_shard
from mmlens.store.files import disk_full
from mmlens.store.writer import StoreWriter

if TYPE_CHECKING:
    from mmlens.model import Model


def import_ray():
    """The ``ray`` module with Ray Data, or one clear line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MmlensError("--ray needs Ray (with Ray Data): pip install 'mmlens[ray]'") from None
    return ray


class ShardWorker:
    """Ray Data's callable class: loads the model and the reader once per worker, then runs shard plans.

    Each input row is one plan as JSON (column ``plan``); each output row the
    written shard's manifest record as JSON (column ``record``).
    """

    def __init__(self, model: str, weights_sha256: str, data: str, reader_options: dict[str, Any],
                 job: dict[str, Any], out: str, strict: bool, threads: int, device: str | None,
                 exit_once: str | None = None) -> None:
        import torch

        import mmlens
        from mmlens.data.readers import open_reader
        from mmlens.models.weights import weights_sha256 as digest

        if threads > 0:
            torch.set_num_threads(threads)  # the same kernels as the driver's run: the same bytes
        self.model = mmlens.load(model, device=device)
        if digest(self.model.hf) != weights_sha256:
            raise MmlensError(f"the worker loaded {model} with other weights than the driver's: one model per store")
        self.reader = open_reader(data, **reader_options)
        self.job = HarvestJob(**{k: tuple(v) if isinstance(v, list) else v for k, v in job.items()})
        self.out, self.strict, self.exit_once = Path(out), strict, exit_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for text in batch["plan"]:
            plan = ShardPlan(**json.loads(str(text)))
            self._maybe_exit()
            record = run_shard(self.model, self.job, self.reader, plan, self.out, strict=self.strict)
            records.append(json.dumps(record, sort_keys=True))
        return {"record": np.array(records, dtype=object)}

    def _maybe_exit(self) -> None:
        """Test hook: the first worker to get here ends its process (a lost worker), once per marker file."""
        if self.exit_once is None:
            return
        try:
            fd = os.open(self.exit_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def harvest_on_ray(model: "Model", data: str, out: str | Path, sites: str | Sequence[str] = "lm.L*.resid", *,
                   reader_options: dict[str, Any] | None = None, modalities: Sequence[str] = MODALITIES,
                   dtype: str = "float16", shard_size: int = 256, batch_size: int = 8, strict: bool = False,
                   address: str | None = None, workers: int | None = None, threads: int = 1,
                   attempts: int = 3, progress: Progress | None = None,
                   on_start: Callable[[int, int], None] | None = None,
                   exit_once: str | None = None) -> dict[str, Any]:
    """Harvest like :func:`~mmlens.store.harvest.harvest`, with the shards run by Ray workers; a summary.

    ``model`` is the driver's copy (it names the model, fixes the weights hash
    and expands ``sites``); each worker loads ``model.name`` itself.
    ``data`` and ``reader_options`` are :func:`~mmlens.data.readers.open_reader`'s
    arguments, opened again on each worker. ``address`` joins a running
    cluster (None starts a local Ray, or uses the one already initialised).
    ``workers`` is the number of model copies (default: one per GPU, else per
    CPU, at most one per shard). A run whose workers are lost beyond Ray's own
    retries is started again on the unfinished shards, up to ``attempts`` times.
    ``exit_once`` (a marker path) makes the first worker exit mid-run: a test hook.

    Example:
        >>> harvest_on_ray(model, "shapes:test[0:8]", "store/", "lm.L0.resid", shard_size=4)["shards"]  # doctest: +SKIP
        {'total': 2, 'written': 2, 'skipped': 0}
    """
    from mmlens.data.readers import open_reader
    from mmlens.models.weights import weights_sha256

    ray = import_ray()
    reader_options = dict(reader_options or {})
    if Path(data).exists():  # workers may start in another folder (or machine with the same mounts)
        data = str(Path(data).resolve())
    reader = open_reader(data, **reader_options)
    job = check_job(model, sites, modalities, dtype, shard_size, batch_size)
    out = Path(out)
    sha = weights_sha256(model.hf)
    spec = {"model": {"name": model.name, "weights_sha256": sha}, **asdict(job), "sites": list(job.sites),
            "modalities": list(job.modalities)}
    started_ray = _start(ray, address)
    started = time.perf_counter()
    try:
        writer = StoreWriter.open(out, spec, reader.options())
        plans = plan_shards(len(reader), job.shard_size, writer.source)
        todo = [plan for plan in plans if plan.id not in writer.finished]
        first_todo = len(todo)
        if on_start is not None:
            rows = sum(p.stop - p.first for p in todo)
            on_start(rows, sum(p.stop - p.first for p in plans) - rows)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        count = workers or int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1)) or 1
        count = max(1, min(count, len(todo) or 1))
        worker_args = dict(model=model.name, weights_sha256=sha, data=data, reader_options=reader_options,
                           job=asdict(job), out=str(out.resolve()), strict=strict, threads=threads,
                           device="cuda" if gpus else None, exit_once=exit_once)
        tokens, tries = 0, 0
        while todo:
            tries += 1
            try:
                tokens += _run(ray, todo, worker_args, count, gpus, writer, progress)
            except MmlensError:
                raise
            except Exception as error:  # a lost cluster or workers: retry the unfinished shards
                user = _user_error(error)
                if user is not None:
                    raise user from None
                if tries >= attempts:
                    raise MmlensError(f"the Ray run failed {tries} times ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0] if str(error) else ''}); "
                                      f"{len(writer.finished)} shards are stored: run the same command again "
                                      "to continue") from None
            todo = [plan for plan in plans if plan.id not in writer.finished]
    except OSError as error:
        if disk_full(error):
            raise MmlensError(f"the disk is full at {out}: free some space and run the same command again "
                              "to continue") from None
        raise
    finally:
        if "writer" in locals():
            writer.close()  # the store's lock: another job may write to it now
        if started_ray:
            ray.shutdown()
    seconds = time.perf_counter() - started
    mine = [r for r in writer.manifest["shards"] if r["source"] == writer.source]
    return {"out": str(out), "model": model.name, "sites": list(job.sites), "dtype": job.dtype,
            "modalities": list(job.modalities), "source": writer.source,
            "samples": sum(r["samples"] for r in mine), "tokens": sum(r["tokens"] for r in mine),
            "bad_rows": sum(len(r["errors"]) for r in mine),
            "shards": {"total": len(plans), "written": first_todo, "skipped": len(plans) - first_todo},
            "store_tokens": sum(r["tokens"] for r in writer.manifest["shards"]),
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "errors_file": str(out / "errors.jsonl"),
            "backend": {"name": "ray", "address": address or "local", "workers": count, "gpus_per_worker": gpus,
                        "attempts": tries}}


def _start(ray, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray (unless one is running here); whether this call started it."""
    if ray.is_initialized():
        return False
    import logging

    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as error:
        raise MmlensError(f"no Ray cluster at {address}: {error}") from None
    return True


def _run(ray, todo: list[ShardPlan], worker_args: dict[str, Any], workers: int, gpus: int, writer: StoreWriter,
         progress: Progress | None) -> int:
    """One Ray Data pass over ``todo``; commits each record as it arrives; tokens written."""
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver shows its own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"plan": json.dumps(asdict(plan), sort_keys=True)} for plan in todo]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    records = dataset.map_batches(ShardWorker, fn_constructor_kwargs=worker_args, batch_size=1,
                                  batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                                  num_cpus=1, num_gpus=gpus)
    tokens = 0
    for row in records.iter_rows():
        record = json.loads(str(row["record"]))
        writer.commit(record, record.pop("site_dims"))  # only the driver writes the manifest
        tokens += record["tokens"]
        if progress is not None:
            progress(record["samples"] + len(record["errors"]), record["tokens"])
    return tokens


def _user_error(error: BaseException) -> MmlensError | None:
    """The :class:`MmlensError` a worker raised (a --strict bad row, another model), found in Ray's wrapping."""
    seen = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MmlensError):
            return MmlensError(str(current).splitlines()[0])
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    text = str(error)
    marker = "MmlensError: "
    if marker in text:
        return MmlensError(text.split(marker, 1)[1].splitlines()[0])
    return None
