"""Probe tasks on a store of shapes-world activations, each with its control task (Hewitt and Liang 2019).

A :class:`ProbeTask` names the store rows to read, one label per row, the
sample each row comes from (splits are by sample, never by token) and the
control labels: a random label per *type*, drawn once from the task's own
label distribution, so a probe can get the control right only by memorising
types. Types are the analogue of Hewitt and Liang's word types:

- ``patch-colour``: the colour of the object under an image patch (object
  patches only; an object covers at least a quarter of the patch). Type: the
  patch's (colour, shape, row, column).
- ``object-count``: how many objects the scene holds (1-4), at the last
  prompt token. Type: the prompt text.
- ``object-count-scalar``: the same count, as a number (ridge).
- ``asked-row`` / ``asked-col``: the row / column (0-7 of the 8 x 8 grid) of
  the centre of the object the question asks about, at the last prompt token
  (the ``?`` that ends the question), for questions with one target object.
  Type: the prompt text. ``asked-row-scalar`` / ``asked-col-scalar``: the
  same, as a number of patches (ridge).

Example:
    >>> from mmlens.store import Store
    >>> tasks = shapes_tasks(Store.open("store/"), ["patch-colour"])  # doctest: +SKIP
    >>> tasks[0].labels[:3]  # doctest: +SKIP
    array([2, 2, 0])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from mmlens.errors import MmlensError, check_choices

if TYPE_CHECKING:
    from mmlens.store import Store

TASKS = ("patch-colour", "object-count", "object-count-scalar", "asked-row", "asked-col", "asked-row-scalar",
         "asked-col-scalar")
_SHAPES_ID = re.compile(r"^shapes-(train|val|test)-(\d+)$")
GRID, PATCH = 8, 8


@dataclass
class ProbeTask:
    """Rows of a store, their labels and control labels, and the sample of each row."""

    name: str
    modality: str
    rows: np.ndarray
    samples: np.ndarray
    labels: np.ndarray
    control: np.ndarray
    kind: str = "classify"  # or "regress"

    def __len__(self) -> int:
        return int(self.rows.size)


def control_labels(types: Sequence[Hashable], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """One random label per distinct type, drawn from the empirical distribution of ``labels``.

    Example:
        >>> c = control_labels(["a", "b", "a"], np.array([0, 1, 1]))
        >>> bool(c[0] == c[2])
        True
    """
    rng = np.random.default_rng(seed)
    keys = {t: k for k, t in enumerate(dict.fromkeys(types))}
    drawn = rng.choice(labels, size=len(keys), replace=True)
    return np.asarray([drawn[keys[t]] for t in types])


def _sample(sample_id: str):
    from mmlens.data.shapes import make_sample

    match = _SHAPES_ID.match(sample_id)
    if not match:
        raise MmlensError(f"probe labels come from the shapes world; the store holds sample {sample_id!r} "
                          "(harvest with --data shapes:test[a:b])")
    return make_sample(match.group(1), int(match.group(2)))


def _last_tokens(table) -> tuple[np.ndarray, np.ndarray]:
    """Store index and sample id of each sample's last token (its highest position)."""
    frame = table.select(["index", "sample_id", "position"]).to_pandas()
    last = frame.loc[frame.groupby("sample_id", sort=False)["position"].idxmax()]
    return last["index"].to_numpy(np.int64), last["sample_id"].to_numpy(object)


def shapes_tasks(store: "Store", names: Sequence[str] = TASKS, seed: int = 0) -> list[ProbeTask]:
    """The named probe tasks over every sample of a shapes-world store.

    Example:
        >>> [t.name for t in shapes_tasks(store, ["asked-row"])]  # doctest: +SKIP
        ['asked-row']
    """
    check_choices(names, TASKS, "probe task")
    tokens = store.tokens
    ids = list(dict.fromkeys(tokens.column("sample_id").to_pylist()))
    if not ids:
        raise MmlensError("the store holds no tokens")
    made = {sid: _sample(sid) for sid in ids}
    out = []
    for name in names:
        if name == "patch-colour":
            out.append(_patch_colour(store, made, seed))
        else:
            out.append(_last_token_task(name, tokens, made, seed))
    return out


def _patch_colour(store: "Store", made: dict, seed: int) -> ProbeTask:
    from mmlens.data.shapes import SHAPES, patch_labels

    image = store.select(modality="image").select(["index", "sample_id", "patch_row", "patch_col"]).to_pandas()
    if image.empty:
        raise MmlensError("patch-colour needs image tokens: harvest with --modalities image,text")
    grids = {sid: patch_labels(s.objects) for sid, s in made.items()}
    rows, samples, labels, types = [], [], [], []
    for index, sid, r, c in image.itertuples(index=False):
        colours, shapes = grids[sid]
        if 0 <= r < GRID and 0 <= c < GRID and colours[r, c] >= 0:
            rows.append(index)
            samples.append(sid)
            labels.append(int(colours[r, c]))
            types.append((int(colours[r, c]), SHAPES[shapes[r, c]], int(r), int(c)))
    labels_arr = np.asarray(labels, dtype=np.int64)
    return ProbeTask("patch-colour", "image", np.asarray(rows, np.int64), np.asarray(samples, object),
                     labels_arr, control_labels(types, labels_arr, seed))


def _last_token_task(name: str, tokens, made: dict, seed: int) -> ProbeTask:
    text = tokens.filter(_is_text(tokens))
    if text.num_rows == 0:
        raise MmlensError(f"{name} needs text tokens: harvest with --modalities image,text")
    index, sids = _last_tokens(text)
    rows, samples, labels, types = [], [], [], []
    for i, sid in zip(index, sids):
        s = made[sid]
        if name.startswith("object-count"):
            label: float = len(s.objects)
        else:
            if len(s.target_objects) != 1:
                continue
            x, y = s.objects[s.target_objects[0]].centre
            label = int(min(y // PATCH, GRID - 1)) if name.startswith("asked-row") else int(min(x // PATCH, GRID - 1))
        rows.append(i)
        samples.append(sid)
        labels.append(label)
        types.append(s.prompt)
    regress = name.endswith("-scalar")
    labels_arr = np.asarray(labels, dtype=np.float64 if regress else np.int64)
    return ProbeTask(name, "text", np.asarray(rows, np.int64), np.asarray(samples, object), labels_arr,
                     control_labels(types, labels_arr, seed), "regress" if regress else "classify")


def _is_text(table):
    import pyarrow.compute as pc

    return pc.equal(table.column("modality"), "text")
