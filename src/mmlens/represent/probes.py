"""Linear probes on stored activations: logistic (classes) and ridge (scalars), by site, with control tasks.

For each task (:mod:`mmlens.represent.probe_tasks`) and each site, the rows'
activations are read from the store (:class:`mmlens.store.Store`), split **by
sample** (a seeded quarter of the samples is held out; no token of a held-out
sample is trained on), standardised with the training rows' statistics, and
fitted twice: on the task's labels and on its control labels. The result per
site is the held-out accuracy (R^2 for ridge), the control's, and the
selectivity, their difference (Hewitt and Liang 2019).

Example:
    >>> from mmlens.store import Store
    >>> from mmlens.represent.probe_tasks import shapes_tasks
    >>> store = Store.open("store/")  # doctest: +SKIP
    >>> results = train_probes(store, shapes_tasks(store, ["patch-colour"]))  # doctest: +SKIP
    >>> results[0]["best"]["accuracy"] > 0.9  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mmlens.errors import MmlensError
from mmlens.represent.probe_tasks import ProbeTask

if TYPE_CHECKING:
    from mmlens.store import Store


def split_by_sample(samples: np.ndarray, test_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """A boolean mask of held-out rows: every row of a seeded ``test_fraction`` of the samples.

    Example:
        >>> mask = split_by_sample(np.array(["a", "a", "b", "c", "d"]), 0.5)
        >>> bool(mask[0] == mask[1])
        True
    """
    if not 0 < test_fraction < 1:
        raise MmlensError(f"the held-out fraction is between 0 and 1, got {test_fraction}")
    unique = np.asarray(sorted(set(samples.tolist())), dtype=object)
    if unique.size < 2:
        raise MmlensError(f"a split by sample needs at least 2 samples, got {unique.size}")
    order = np.random.default_rng(seed).permutation(unique.size)
    n_test = min(max(1, round(test_fraction * unique.size)), unique.size - 1)
    held = set(unique[order[:n_test]].tolist())
    return np.asarray([s in held for s in samples.tolist()])


def fit_score(x: np.ndarray, y: np.ndarray, test: np.ndarray, kind: str = "classify", c: float = 1.0,
              alpha: float = 1.0) -> float:
    """Held-out accuracy of a logistic probe (``kind="classify"``) or R^2 of a ridge probe (``"regress"``).

    Example:
        >>> rng = np.random.default_rng(0); x = rng.normal(size=(200, 5)); y = (x[:, 0] > 0).astype(int)
        >>> fit_score(x, y, np.arange(200) % 4 == 0) > 0.9
        True
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # BLAS threads spinning against other jobs made a fit ~20x slower (measured)
        return _fit_score(x, y, test, kind, c, alpha)


def _fit_score(x: np.ndarray, y: np.ndarray, test: np.ndarray, kind: str, c: float, alpha: float) -> float:
    from sklearn.linear_model import LogisticRegression, Ridge

    train = ~test
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)  # the training rows' statistics only
    if kind == "regress":
        model = Ridge(alpha=alpha).fit(x[train], y[train])
        return float(model.score(x[test], y[test]))
    if np.unique(y[train]).size < 2:
        return float((y[test] == y[train][0]).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' iteration cap is a probe's regularisation, not an error
        model = LogisticRegression(C=c, max_iter=100, tol=1e-3).fit(x[train], y[train])
    return float(model.score(x[test], y[test]))


def train_probes(store: "Store", tasks: Sequence[ProbeTask], sites: Sequence[str] | None = None, *,
                 test_fraction: float = 0.25, seed: int = 0, c: float = 1.0, alpha: float = 1.0) -> list[dict[str, Any]]:
    """Fit every task's probe and control probe at every site; one result dict per task.

    Each result holds, per site, ``accuracy`` (R^2 for ridge), ``control``
    and ``selectivity``, plus the ``best`` site by accuracy, the counts of
    rows and samples, and the seconds spent reading and fitting.

    Example:
        >>> train_probes(store, tasks, ["lm.L2.resid"])[0]["sites"]  # doctest: +SKIP
        ['lm.L2.resid']
    """
    sites = list(sites) if sites else list(store.sites)
    out = []
    for task in tasks:
        if len(task) == 0:
            raise MmlensError(f"probe task {task.name} has no rows in this store")
        test = split_by_sample(task.samples, test_fraction, seed)
        per_site: dict[str, dict[str, float]] = {}
        read_s = fit_s = 0.0
        for site in sites:
            start = time.perf_counter()
            x = store.read(site, task.rows).float().numpy()
            read_s += time.perf_counter() - start
            start = time.perf_counter()
            accuracy = fit_score(x, task.labels, test, task.kind, c, alpha)
            control = fit_score(x, task.control, test, task.kind, c, alpha)
            fit_s += time.perf_counter() - start
            per_site[site] = {"accuracy": accuracy, "control": control, "selectivity": accuracy - control}
        best = max(per_site, key=lambda s: per_site[s]["accuracy"])
        out.append({"task": task.name, "kind": task.kind, "modality": task.modality, "rows": len(task),
                    "samples": int(np.unique(task.samples).size), "held_out_samples": int(np.unique(task.samples[test]).size),
                    "sites": sites, "by_site": per_site, "best": {"site": best, **per_site[best]},
                    "majority": _majority(task, test), "seconds": {"read": round(read_s, 3), "fit": round(fit_s, 3)}})
    return out


def _majority(task: ProbeTask, test: np.ndarray) -> float | None:
    """Accuracy of always answering the training rows' most common label (None for ridge)."""
    if task.kind == "regress":
        return None
    values, counts = np.unique(task.labels[~test], return_counts=True)
    return float((task.labels[test] == values[counts.argmax()]).mean())
