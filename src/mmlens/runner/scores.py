"""Per-sample audit scores kept shard by shard, so that an audit killed mid-run continues where it stopped.

``mmlens audit backdoor`` and ``mmlens audit select`` score every sample with
one forward pass; the decision (BYE's mixtures, PRISM's cut) needs them all.
Their scores go to ``<out>/scores/`` the way the dataset runner
(:mod:`mmlens.runner.explain_data`) keeps explanations: the reader's rows are
cut into shards by :func:`~mmlens.store.harvest.plan_shards`, each shard is
written whole under a temporary name, checksummed and renamed, then listed
in the manifest. A rerun of the same command skips the listed shards and
ends with the same scores (a shard's batches are the same whether or not the
run was interrupted). The folder::

    scores/manifest.json                  the job's spec (model and weights, data, options) and finished shards
    scores/shards/<id>/arrays.safetensors per-sample arrays of the shard (row i: the i-th scored id)
    scores/shards/<id>/rows.json          the scored ids, bad rows and what else the job keeps per sample

A folder holding scores of another model, data or options is refused in one line.

Example:
    >>> def score(rows):  # doctest: +SKIP
    ...     return ShardScores([r.id for r in rows], {"x": np.zeros((len(rows), 2), np.float32)})
    >>> scores = run_scores(Path("out/scores"), open_reader("shapes:val[0:8]"), {"job": "demo"}, score)  # doctest: +SKIP
    >>> scores.arrays["x"].shape  # doctest: +SKIP
    (8, 2)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from mmlens.data.readers import BadRow, Reader
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.store.files import MANIFEST, SHARDS, TMP_PREFIX, publish, remove_unlisted_shards, write_json_atomic
from mmlens.store.harvest import ShardPlan, plan_shards
from mmlens.store.shard import damage
from mmlens.store.writer import LOCK, exclusive_writer, source_key

FORMAT = "mmlens.AuditScores"
LAYOUT_VERSION = 1
ARRAYS, ROWS = "arrays.safetensors", "rows.json"


@dataclass
class ShardScores:
    """What a job computed for some samples: their ids, ``(n, ...)`` arrays and JSON facts (``extra``)."""

    ids: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    bad: list[dict[str, str]] = field(default_factory=list)


#: ``score(rows)`` for one shard: its rows in order, each a :class:`Sample` or the reader's :class:`BadRow`.
Score = Callable[[list[Union[Sample, BadRow]]], ShardScores]


def run_scores(folder: Path, reader: Reader, spec: dict[str, Any], score: Score, *, shard_size: int = 64,
               progress: Callable[[int], None] | None = None,
               on_shard: Callable[[str], None] | None = None) -> list[ShardScores]:
    """Score every row of ``reader`` into ``folder``, skipping finished shards; every shard's scores, in row order.

    ``spec`` (JSON) names what the scores depend on (model, options); the
    reader's options join it. ``progress`` gets the rows done per shard,
    ``on_shard`` the id of each shard just finished.

    Example:
        >>> shards = run_scores(Path("bye/scores"), reader, {"model": "m"}, score)  # doctest: +SKIP
    """
    if shard_size < 1:
        raise MmlensError("the shard size is at least 1")
    spec = json.loads(json.dumps({**spec, "data": reader.options(), "shard_size": shard_size}, sort_keys=True))
    with exclusive_writer(folder):  # one writing job at a time
        manifest = _open(folder, spec)
        finished = {r["id"] for r in manifest["shards"]}
        for plan in plan_shards(len(reader), shard_size, source_key(reader.options())):
            if plan.id in finished:
                if progress is not None:
                    progress(plan.stop - plan.first)
                continue
            record = _run_shard(folder, reader, plan, score)
            manifest["shards"].append(record)
            write_json_atomic(folder / MANIFEST, manifest)  # from now on the shard is finished
            if progress is not None:
                progress(plan.stop - plan.first)
            if on_shard is not None:
                on_shard(plan.id)
        return [load_shard(folder, r["id"]) for r in sorted(manifest["shards"], key=lambda r: r["index"])]


def model_spec(model: Any) -> dict[str, str]:
    """What identifies a model's scores: its name and the sha256 of its weights."""
    from mmlens.models.weights import weights_sha256

    return {"name": model.name, "weights_sha256": weights_sha256(model.hf)}


def concat(shards: list[ShardScores], name: str) -> np.ndarray | None:
    """The shards' ``name`` arrays stacked in row order (None when no shard has one).

    Example:
        >>> concat([ShardScores(["a"], {"x": np.ones((1, 2))}), ShardScores([], {})], "x").shape
        (1, 2)
    """
    parts = [s.arrays[name] for s in shards if name in s.arrays]
    return np.concatenate(parts) if parts else None


def unreadable(data: str, bad: list[dict[str, str]]) -> MmlensError:
    """The one line for data whose rows were all unreadable: how many, and the first one's reason.

    Example:
        >>> str(unreadable("d.jsonl", [{"id": "a", "reason": "no such image file: a.png"}]))
        'no sample of d.jsonl could be scored (1 bad rows; a: no such image file: a.png)'
    """
    return MmlensError(f"no sample of {data} could be scored ({len(bad)} bad rows; {bad[0]['id']}: "
                       f"{bad[0]['reason']})")


def load_shard(folder: Path, shard_id: str) -> ShardScores:
    """One finished shard's scores, read back (safetensors and JSON only)."""
    from safetensors.numpy import load_file

    path = folder / SHARDS / shard_id
    rows = json.loads((path / ROWS).read_text(encoding="utf-8"))
    arrays = load_file(str(path / ARRAYS)) if (path / ARRAYS).is_file() else {}
    return ShardScores(rows["ids"], arrays, rows["extra"], rows["bad"])


def _run_shard(folder: Path, reader: Reader, plan: ShardPlan, score: Score) -> dict[str, Any]:
    """Score the plan's rows into ``shards/<id>`` (written whole, then renamed); the shard's manifest record."""
    from safetensors.numpy import save_file

    rows: list[Union[Sample, BadRow]] = []
    for _, sample in reader.read(plan.first, plan.stop, on_bad=lambda _, row: rows.append(row)):
        rows.append(sample)
    scores = score(rows)
    tmp, final = folder / SHARDS / f"{TMP_PREFIX}{plan.id}", folder / SHARDS / plan.id
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if scores.arrays:
            save_file({k: np.ascontiguousarray(v) for k, v in scores.arrays.items()}, str(tmp / ARRAYS))
        rows = {"ids": scores.ids, "extra": scores.extra, "bad": scores.bad}
        (tmp / ROWS).write_text(json.dumps(rows, sort_keys=True), encoding="utf-8")
        files = publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"id": plan.id, "index": plan.index, "rows": [plan.first, plan.stop], "files": files}


def _open(folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest (created, or checked against ``spec``); damaged and unlisted shards removed."""
    path = folder / MANIFEST
    if not path.is_file():
        if any(p.name not in (LOCK, SHARDS, MANIFEST + ".tmp") for p in folder.iterdir()):
            raise MmlensError(f"{folder} is not empty and holds no audit scores: use another --out")
        manifest = {"format": FORMAT, "layout_version": LAYOUT_VERSION, "spec": spec, "shards": []}
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MmlensError(f"{path} is not readable JSON ({error}); use another --out") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MmlensError(f"{folder} holds something other than audit scores: use another --out")
        if manifest.get("layout_version") != LAYOUT_VERSION or manifest.get("spec") != spec:
            differ = sorted(k for k in set(spec) | set(manifest.get("spec") or {})
                            if (manifest.get("spec") or {}).get(k) != spec.get(k))
            raise MmlensError(f"{folder} holds scores of another run (its {', '.join(differ) or 'layout'} "
                              f"{'differ' if len(differ) > 1 else 'differs'} from this one's): use another --out, "
                              "or the same options to continue")
        manifest["shards"] = [r for r in manifest["shards"] if not damage(folder, r)]  # a damaged shard is redone
    write_json_atomic(path, manifest)
    remove_unlisted_shards(folder, {r["id"] for r in manifest["shards"]})
    return manifest
