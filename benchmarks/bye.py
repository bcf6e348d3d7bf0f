"""BYE backdoor filtering checks on ``shapes-llava-ft-backdoor`` (docs/audit.md has the figures).

    nice -n 10 python benchmarks/bye.py --n 2000 --extra-test 8000 --out out/bench/bye.json

1. The published rule (head mean, separation 2) on the model's own
   fine-tuning data (``ft-backdoor:train[0:n]``), and per-layer AUROC of the
   entropies against the poison labels (a diagnostic, labels used afterwards).
2. mmlens' variants, every setting chosen on the first half (validation;
   labels used only to score each setting): the keys (image tokens or the
   whole row), the units (layers, heads, heads at the last 2 or 4 prompt
   positions), log-entropies or not, the separation, how sensitive units
   combine (mean, z-score mean, minimum) and the split (log likelihood ratio
   threshold). The winner is applied once, unchanged, to the second half (the
   test) and to rows ``n:extra_test`` (a fresh, larger test, fitted on its own),
   with bootstrap 95% intervals of F1: resampling the rows and refitting the
   whole rule ("refit"), and resampling the fixed decisions ("fixed").
3. The held-out trigger: the same rows with ``orange-ring`` at the same
   positions (``ft-backdoor-ring``), scored by the same model and rules.
4. Clean ``shapes-llava`` on clean ``shapes:val`` rows: the share removed.
5. Cost: scoring against a bare forward over the same batches, time and peak
   RSS, each in its own process.

``--held-out DATA --model M`` applies the rule chosen on validation
(:data:`CHOSEN`, unchanged: no re-tuning) and the published rule to another
model's own fine-tuning data, e.g. ``shapes-llava-ft-backdoor-stripes`` on
``ft-backdoor-stripes:train[0:8000]`` (a trigger never used while the rule
was chosen), with the same bootstrap intervals and per-layer AUROC.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SEPARATIONS = [round(0.8 + 0.1 * k, 1) for k in range(13)]
THRESHOLDS = [0.0, 1.0, 2.0, 3.0, 4.0]
VIEWS = ("layers", "heads", "positions2", "positions4")  # positionsP: every head at the last P prompt positions
PUBLISHED = {"keys": "image", "view": "layers", "log": False, "separation": 2.0, "combine": "mean", "threshold": 0.0}
# The winner of the validation sweep on shapes-llava-ft-backdoor (rows 0-999; docs/audit.md), frozen here.
CHOSEN = {"keys": "image", "view": "heads", "log": False, "separation": 1.3, "combine": "mean", "threshold": 3.0}


def _table(model_name: str, data: str, keys: str = "image"):
    import mmlens
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.audit import attention_entropies
    from mmlens.data.readers import open_reader

    samples = list(open_reader(data))
    poisoned = [s.id for s in samples if s.meta.get("poisoned")]
    t0 = time.time()
    table = attention_entropies(mmlens.load(model_name), samples, batch_size=16, per_head=True, positions=4,
                                keys=keys)
    return table, poisoned, time.time() - t0


def _view(table, view: str):
    """The table and ``units`` argument of a view (``positions2`` keeps the last two positions)."""
    from mmlens.audit import EntropyTable

    if not view.startswith("positions"):
        return table, view
    return EntropyTable(table.ids, table.layers, table.heads, table.positions[:, -int(view[9:]):]), "positions"


def _subset(table, rows, ids: list[str] | None = None):
    """The table's ``rows`` (under new ``ids`` when rows repeat, as in a bootstrap resample)."""
    from mmlens.audit import EntropyTable

    def pick(a):
        return None if a is None else a[rows]

    return EntropyTable(ids or [table.ids[i] for i in rows], table.layers[rows], pick(table.heads),
                        pick(table.positions), pick(table.shares))


def _filter(table, settings: dict, fits=None):
    from mmlens.audit import bye_filter

    view, units = _view(table, settings["view"])
    return bye_filter(view, units=units, separation=settings["separation"], combine=settings["combine"],
                      threshold=settings["threshold"], log=settings["log"], fits=fits,
                      refine=settings.get("refine", False))


def _f1(removed: np.ndarray, y: np.ndarray) -> float:
    tp = int((removed & y).sum())
    return 2 * tp / (int(removed.sum()) + int(y.sum())) if tp else 0.0


def _apply(table, poisoned, settings: dict) -> dict:
    from mmlens.audit import label_scores

    result = _filter(table, settings)
    poisoned = set(poisoned) & set(table.ids)  # this subset's labels (the other half's are not "unknown")
    return {**result.summary(), "settings": settings, "labels": label_scores(result.ids, result.removed, poisoned)}


def _name(s: dict) -> str:
    return f"{s['keys']}/{s['view']}/log={s['log']}/sep={s['separation']}/{s['combine']}/lr>{s['threshold']}"


def sweep(tables: dict, poisoned) -> dict[str, tuple[float, dict]]:
    """Validation F1 of every setting; the per-unit mixtures are fitted once per (keys, view, log)."""
    from mmlens.audit import bye_filter

    scores: dict[str, tuple[float, dict]] = {}
    for keys, view_name, log in itertools.product(tables, VIEWS, (False, True)):
        table = tables[keys]
        y = np.isin(table.ids, list(poisoned))
        view, units = _view(table, view_name)
        fits = bye_filter(view, units=units, log=log, separation=1e9).fits  # no unit passes: fits only
        for combine in ("mean", "zmean", "min"):
            done: dict[tuple, object] = {}
            for sep in SEPARATIONS:
                sensitive = tuple(j for j, f in enumerate(fits) if f.gap() > sep)
                if sensitive not in done:  # separations that pick the same units decide the same
                    done[sensitive] = bye_filter(view, units=units, log=log, separation=sep, combine=combine, fits=fits)
                result = done[sensitive]
                for t in THRESHOLDS:
                    s = {"keys": keys, "view": view_name, "log": log, "separation": sep, "combine": combine,
                         "threshold": t}
                    low = (np.zeros(len(y), bool) if result.score_fit is None
                           else result.score_fit.low_cluster(result.scores, t))  # what bye_filter(threshold=t) removes
                    scores[_name(s)] = (_f1(low, y), s)
    return scores


def choose(scores: dict[str, tuple[float, dict]]) -> dict:
    """Best validation F1; ties go to the setting nearest the published rule (then the larger separation)."""
    def near(s):
        return sum(s[k] == PUBLISHED[k] for k in ("keys", "view", "log", "combine", "threshold"))
    return max(scores.values(), key=lambda v: (round(v[0], 6), near(v[1]), v[1]["separation"]))[1]


def bootstrap(table, poisoned, settings: dict, *, refits: int, resamples: int, seed: int = 0) -> dict:
    """95% percentile intervals of F1: rows resampled and the whole rule refitted, and fixed decisions resampled."""
    y = np.isin(table.ids, list(poisoned))
    whole = _filter(table, settings)
    removed = np.isin(table.ids, whole.removed)
    rng = np.random.default_rng(seed)
    n = len(y)
    fixed = [_f1(removed[i], y[i]) for i in (rng.integers(0, n, n) for _ in range(resamples))]
    refit, same_units = [], 0
    for _ in range(refits):
        i = rng.integers(0, n, n)
        ids = [f"{k}" for k in range(n)]  # resampled rows repeat: ids by position
        result = _filter(_subset(table, i, ids), settings)
        refit.append(_f1(np.isin(ids, result.removed), y[i]))
        same_units += result.sensitive == whole.sensitive

    def interval(v):
        return [round(float(np.percentile(v, 2.5)), 3), round(float(np.percentile(v, 97.5)), 3)] if v else None

    return {"f1": round(_f1(removed, y), 3), "fixed_95": interval(fixed), "fixed_resamples": resamples,
            "refit_95": interval(refit), "refit_resamples": refits,
            "refit_same_units": same_units / refits if refits else None}


def _auroc(table, poisoned) -> list[float]:
    from sklearn.metrics import roc_auc_score

    y = np.array([i in set(poisoned) for i in table.ids])
    return [round(float(roc_auc_score(y, -table.layers[:, j])), 3) for j in range(table.layers.shape[1])]


def checks(n: int, extra_test: int, refits: int) -> dict:
    model = "shapes-llava-ft-backdoor"
    tables, poisoned = {}, []
    for keys in ("image", "all"):
        tables[keys], poisoned, seconds = _table(model, f"ft-backdoor:train[0:{n}]", keys)
    image = tables["image"]
    out = {"n": n, "scoring_seconds": round(seconds, 1), "auroc_per_layer_head_mean": _auroc(image, poisoned),
           "published_all": _apply(image, poisoned, PUBLISHED)}
    half = n // 2
    val = {k: _subset(t, list(range(half))) for k, t in tables.items()}
    test = {k: _subset(t, list(range(half, n))) for k, t in tables.items()}
    scores = sweep(val, poisoned)
    chosen = choose(scores)
    out["validation_top"] = sorted(([round(f, 3), _name(s)] for f, s in scores.values()), reverse=True)[:25]
    out["validation_best_per_family"] = _families(scores)
    out["chosen"] = {**chosen, "validation_f1": round(scores[_name(chosen)][0], 3)}
    out["published_test"] = _apply(test["image"], poisoned, PUBLISHED)
    out["chosen_test"] = _apply(test[chosen["keys"]], poisoned, chosen)
    previous = {**PUBLISHED, "view": "heads", "separation": 1.3}  # the variant before the split threshold
    out["previous_variant_test"] = _apply(test["image"], poisoned, previous)
    out["chosen_test_bootstrap"] = bootstrap(test[chosen["keys"]], poisoned, chosen, refits=refits, resamples=2000)
    out["published_test_bootstrap"] = bootstrap(test["image"], poisoned, PUBLISHED, refits=0, resamples=2000)
    if extra_test > n:
        fresh, fresh_poisoned, _ = _table(model, f"ft-backdoor:train[{n}:{extra_test}]", chosen["keys"])
        out["fresh_test"] = {"rows": [n, extra_test], "published": _apply(fresh, fresh_poisoned, PUBLISHED),
                             "chosen": _apply(fresh, fresh_poisoned, chosen),
                             "chosen_bootstrap": bootstrap(fresh, fresh_poisoned, chosen, refits=0, resamples=2000)}
    ring, ring_poisoned, _ = _table(model, f"ft-backdoor-ring:train[{half}:{n}]", chosen["keys"])
    out["ring_auroc_per_layer"] = _auroc(ring, ring_poisoned)
    out["ring_published"] = _apply(ring, ring_poisoned, PUBLISHED)
    out["ring_chosen"] = _apply(ring, ring_poisoned, chosen)
    clean, _, _ = _table("shapes-llava", f"shapes:val[0:{half}]", chosen["keys"])
    out["clean_published"] = _apply(clean, [], PUBLISHED)
    out["clean_chosen"] = _apply(clean, [], chosen)
    return out


def held_out(model: str, data: str, refits: int) -> dict:
    """The frozen :data:`CHOSEN` rule and the published one on ``model``'s data ``data``, labels used afterwards."""
    table, poisoned, seconds = _table(model, data)
    return {"model": model, "data": data, "n": len(table.ids), "poisoned": len(poisoned),
            "scoring_seconds": round(seconds, 1), "auroc_per_layer_head_mean": _auroc(table, poisoned),
            "published": _apply(table, poisoned, PUBLISHED), "chosen": _apply(table, poisoned, CHOSEN),
            "chosen_bootstrap": bootstrap(table, poisoned, CHOSEN, refits=refits, resamples=2000),
            "published_bootstrap": bootstrap(table, poisoned, PUBLISHED, refits=0, resamples=2000)}


def _families(scores: dict[str, tuple[float, dict]]) -> dict[str, list]:
    """The best validation F1 within each family of one idea (keys, view, log, combine, threshold)."""
    best: dict[str, list] = {}
    for f, s in scores.values():
        for k in ("keys", "view", "log", "combine", "threshold"):
            name = f"{k}={s[k]}"
            if f > best.get(name, [-1.0])[0]:
                best[name] = [round(f, 3), _name(s)]
    return best


def _best_f1(score: np.ndarray, y: np.ndarray) -> float:
    """The best F1 of any cut "remove score <= c" (labels choose the cut: a ceiling, not a method)."""
    tp = np.cumsum(y[np.argsort(score, kind="stable")])
    return round(float((2 * tp / (np.arange(1, len(y) + 1) + y.sum())).max()), 3)


def ceiling(n: int) -> dict:
    """Validation rows ``0:n``: each head's best-cut F1 and mixture gap, for its image-token entropy and its
    image attention share."""
    import mmlens
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.audit.backdoor_mixture import fit_mixtures
    from mmlens.data.readers import open_reader
    from mmlens.hooks import capture
    from mmlens.models.runtime import last_logits_only

    model = mmlens.load("shapes-llava-ft-backdoor")
    samples = list(open_reader(f"ft-backdoor:train[0:{n}]"))
    table, poisoned, _ = _table("shapes-llava-ft-backdoor", f"ft-backdoor:train[0:{n}]")
    y = np.isin(table.ids, poisoned)
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    share = []
    for k in range(0, n, 16):  # the image tokens' share of the last row, before BYE renormalises it away
        chunk = samples[k:k + 16]
        batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
        with torch.no_grad(), capture(model, sites, query=-1) as captured:
            model.forward(batch, use_cache=False, **last_logits_only(model.hf))
        share += [torch.stack([captured[s][r][..., batch.layout.image_positions(r)].sum(-1) for s in sites]).numpy()
                  for r in range(len(chunk))]
    heads, names = table.units("heads")
    share = np.stack(share).reshape(n, -1)
    return {"rows": [0, n],
            "entropy_best_cut_f1": dict(zip(names, (_best_f1(heads[:, j], y) for j in range(len(names))))),
            "share_best_cut_f1": dict(zip(names, (_best_f1(-share[:, j], y) for j in range(len(names))))),
            "share_gap": dict(zip(names, (round(f.gap(), 2) for f in fit_mixtures(share)))),
            "entropy_gap": dict(zip(names, (round(f.gap(), 2) for f in fit_mixtures(heads))))}


def head_ceiling(audit_dir: Path, data: str) -> dict:
    """Each head of an ``mmlens audit backdoor --units heads`` run (its ``entropy.npz``) against ``data``'s
    poison labels: AUROC, best-cut F1 (labels choose the cut: a ceiling for any one-head rule) and mixture gap;
    and the ceiling of any linear rule over all heads: a discriminant fitted with labels on the first half,
    its best cut on the second."""
    import mmlens.audit.ft_data  # noqa: F401
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import roc_auc_score

    from mmlens.audit.backdoor_mixture import fit_mixtures
    from mmlens.data.readers import open_reader

    table = _saved_table(audit_dir)
    poisoned = [s.id for s in open_reader(data) if s.meta.get("poisoned")]
    y = np.isin(table.ids, poisoned)
    heads, names = table.units("heads")
    n = len(y)
    rows = [{"head": name, "auroc": round(float(roc_auc_score(y, -heads[:, j])), 3),
             "best_cut_f1": _best_f1(heads[:, j], y), "gap": round(fit.gap(), 2)}
            for j, (name, fit) in enumerate(zip(names, fit_mixtures(heads)))]
    half = n // 2
    linear = LinearDiscriminantAnalysis().fit(heads[:half], y[:half])
    return {"audit": str(audit_dir), "data": data, "heads": sorted(rows, key=lambda r: -r["best_cut_f1"]),
            "all_heads_linear_best_cut_f1": _best_f1(-linear.decision_function(heads[half:]), y[half:]),
            "linear_rows": {"fit": [0, half], "cut": [half, n]}}


RECALL_THRESHOLDS = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]


def recall_split(audit_dir: Path, data: str, validation: int = 1000, goal: float = 0.99,
                 removed_out: Path | None = None, refine: bool = False, shares: Path | None = None) -> dict:
    """The split chosen for the retrain's goal (recall), on validation only, then fitted on every row.

    The rule is :data:`CHOSEN`'s (heads, separation 1.3) with the split ``T`` left open, read from an
    ``mmlens audit backdoor --units heads`` folder's ``entropy.npz``. Predeclared (docs/audit.md): fit
    it without labels on the first ``validation`` rows for each ``T`` in :data:`RECALL_THRESHOLDS`; keep
    the largest ``T`` whose validation recall is >= ``goal``, or, if none is, the largest ``T`` of the
    highest recall. That ``T`` is then fitted (no labels) on all rows; its removed ids go to ``removed_out``.
    """
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.audit import bye_filter, label_scores
    from mmlens.data.readers import open_reader

    table = _saved_table(audit_dir, shares)
    ids = table.ids
    heads, names = table.units("heads")
    poisoned = [s.id for s in open_reader(data) if s.meta.get("poisoned")]
    options = {"units": "heads", "separation": CHOSEN["separation"], "combine": CHOSEN["combine"], "refine": refine}
    held = set(ids[:validation])
    rows, poisoned_validation = [], [i for i in poisoned if i in held]
    for t in RECALL_THRESHOLDS:  # labels only score each decision, after it is made
        r = bye_filter(_subset(table, list(range(validation))), threshold=t, **options)
        rows.append({"threshold": t, "sensitive": [names[j] for j in r.sensitive],
                     **label_scores(ids[:validation], r.removed, poisoned_validation)})
    passing = [r for r in rows if r["recall"] >= goal]
    if passing:
        best = max(passing, key=lambda r: r["threshold"])
    else:
        best = max(rows, key=lambda r: (r["recall"], r["threshold"]))
    full = bye_filter(table, threshold=best["threshold"], **options)
    if removed_out is not None:
        removed_out.parent.mkdir(parents=True, exist_ok=True)
        removed_out.write_text("".join(f"{i}\n" for i in full.removed))
    scores = label_scores(ids, full.removed, poisoned)
    return {"audit": str(audit_dir), "data": data, "refine": refine, "shares": str(shares) if shares else None,
            "validation_rows": [0, validation],
            "goal_recall": goal,
            "validation": rows, "chosen_threshold": best["threshold"], "goal_reached": bool(passing),
            "all_rows": {"sensitive": [names[j] for j in full.sensitive], **scores,
                         "poisoned_left": scores["poisoned"] - scores["true_positives"]},
            "removed_file": str(removed_out) if removed_out is not None else None}


REFINE_THRESHOLDS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]


def _saved_table(audit_dir: Path, shares: Path | None = None):
    """The entropy table of an ``mmlens audit backdoor --units heads`` folder (its ``entropy.npz``), with the
    heads' image shares of ``shares`` (a ``--shares`` file of the same rows) when given."""
    from mmlens.audit import EntropyTable

    arrays = np.load(audit_dir / "entropy.npz", allow_pickle=False)
    ids = [str(i) for i in arrays["ids"]]
    table = EntropyTable(ids, arrays["layers"], arrays["heads"])
    if shares is not None:
        saved = np.load(shares, allow_pickle=False)
        if [str(i) for i in saved["ids"]] != ids:
            raise SystemExit(f"{shares} holds other rows than {audit_dir}")
        table.shares = saved["shares"]
    return table


def save_shares(model_name: str, data: str, out: Path) -> dict:
    """Each head's image share of the last prompt row for every row of ``data`` (``attention_entropies``'
    ``shares``, batches of 16 as the audits score them), saved with the ids to ``out`` (``.npz``)."""
    import mmlens
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.audit import attention_entropies
    from mmlens.data.readers import open_reader

    table = attention_entropies(mmlens.load(model_name), open_reader(data), batch_size=16, shares=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, ids=np.array(table.ids), shares=table.shares)
    return {"rows": len(table.ids), "shape": list(table.shares.shape), "out": str(out)}


def refine_check(audit_dir: Path, data: str, held_out: list[tuple[Path, str, Path | None]], refits: int,
                 validation: int = 1000, test: int = 2000, shares: Path | None = None) -> dict:
    """``--refine``'s split threshold chosen by F1 on rows ``0:validation``, then tested on ``validation:test``
    and on ``test:`` (each fitted on its own rows), and frozen on other models' folders (``held_out``)."""
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.data.readers import open_reader

    table = _saved_table(audit_dir, shares)
    poisoned = [s.id for s in open_reader(data) if s.meta.get("poisoned")]
    base = {**CHOSEN, "refine": True}
    val = _subset(table, list(range(validation)))
    sweep_rows = {t: _apply(val, poisoned, {**base, "threshold": t})["labels"] for t in REFINE_THRESHOLDS}
    best = max(REFINE_THRESHOLDS, key=lambda t: (round(sweep_rows[t]["f1"], 6), -abs(t)))
    chosen = {**base, "threshold": best}
    out = {"chosen": chosen, "shares": str(shares) if shares else None,
           "validation": {str(t): sweep_rows[t] for t in REFINE_THRESHOLDS}}
    for name, rows in (("test", range(validation, test)), ("fresh", range(test, len(table.ids)))):
        part = _subset(table, list(rows))
        out[name] = {"rows": [rows.start, rows.stop], **_apply(part, poisoned, chosen),
                     "bootstrap": bootstrap(part, poisoned, chosen, refits=refits, resamples=2000),
                     "unrefined": bootstrap(part, poisoned, CHOSEN, refits=0, resamples=2000)}
    for folder, other_data, other_shares in held_out:
        other = _saved_table(folder, other_shares)
        other_poisoned = [s.id for s in open_reader(other_data) if s.meta.get("poisoned")]
        out[other_data] = {**_apply(other, other_poisoned, chosen),
                           "bootstrap": bootstrap(other, other_poisoned, chosen, refits=refits, resamples=2000)}
    return out


def cost_child(mode: str, n: int) -> None:
    """One measurement in this process: ``bare`` forwards or BYE ``score``; prints seconds and peak RSS."""
    import mmlens
    from mmlens.audit import attention_entropies
    from mmlens.data.readers import open_reader
    from mmlens.models.runtime import last_logits_only

    model = mmlens.load("shapes-llava-ft-backdoor")
    samples = list(open_reader(f"shapes:val[0:{n}]"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    if mode == "bare":
        for k in range(0, n, 16):
            chunk = samples[k:k + 16]
            batch = model.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
            with torch.no_grad():
                model.forward(batch, use_cache=False, **last_logits_only(model.hf))
    else:
        attention_entropies(model, samples, batch_size=16, per_head=mode == "score-heads")
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mib": peak / 1024,
                      "growth_mib": (peak - base) / 1024}))


def cost(n: int) -> dict:
    out = {}
    for mode in ("bare", "score", "score-heads", "bare"):
        line = subprocess.run([sys.executable, __file__, "--cost-child", mode, "--n", str(n)], check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out.setdefault(mode, []).append(json.loads(line))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--cost-n", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("out/bench/bye.json"))
    p.add_argument("--cost-child")
    p.add_argument("--extra-test", type=int, default=0, help="also test on rows n:extra_test (fitted on their own)")
    p.add_argument("--refits", type=int, default=200, help="bootstrap resamples that refit the whole rule")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--ceiling", type=int, default=0, help="only the best-cut diagnostic on rows 0:N")
    p.add_argument("--held-out", metavar="DATA", help="only the frozen chosen rule on DATA, scored by --model")
    p.add_argument("--model", default="shapes-llava-ft-backdoor", help="zoo name or folder (with --held-out)")
    p.add_argument("--head-ceiling", nargs=2, metavar=("AUDIT_DIR", "DATA"),
                   help="only the per-head diagnosis of an `mmlens audit backdoor --units heads` folder")
    p.add_argument("--recall-split", nargs=2, metavar=("AUDIT_DIR", "DATA"),
                   help="only the split chosen for recall on rows 0:1000 of an `--units heads` folder, "
                        "then fitted on every row (writes --removed-out)")
    p.add_argument("--removed-out", type=Path, default=None, help="removed ids of --recall-split, one a line")
    p.add_argument("--refine", action="store_true", help="--recall-split with the refined split (bye_filter refine)")
    p.add_argument("--refine-check", nargs=2, metavar=("AUDIT_DIR", "DATA"),
                   help="only: the refined split's threshold chosen on rows 0-999 of an --units heads folder, "
                        "tested on 1000-1999 and 2000-; --also AUDIT_DIR DATA SHARES adds frozen held-out models")
    p.add_argument("--also", nargs=3, action="append", default=[], metavar=("AUDIT_DIR", "DATA", "SHARES"),
                   help="SHARES: a --shares file of the same rows, or - for entropies only")
    p.add_argument("--with-shares", type=Path, default=None, help="--refine-check reads these image shares too")
    p.add_argument("--shares", nargs=2, metavar=("DATA", "OUT"), help="only: save each head's image share of "
                   "DATA's rows, scored by --model, to OUT (.npz)")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.cost_child:
        cost_child(a.cost_child, a.n)
        return
    if a.ceiling:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(ceiling(a.ceiling), indent=1))
        print(a.out.read_text())
        return
    if a.head_ceiling:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(head_ceiling(Path(a.head_ceiling[0]), a.head_ceiling[1]), indent=1))
        print(a.out.read_text())
        return
    if a.recall_split:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        result = recall_split(Path(a.recall_split[0]), a.recall_split[1], removed_out=a.removed_out, refine=a.refine,
                              shares=a.with_shares)
        a.out.write_text(json.dumps(result, indent=1))
        print(a.out.read_text())
        return
    if a.shares:
        print(json.dumps(save_shares(a.model, a.shares[0], Path(a.shares[1]))))
        return
    if a.refine_check:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        also = [(Path(d), x, None if f == "-" else Path(f)) for d, x, f in a.also]
        result = refine_check(Path(a.refine_check[0]), a.refine_check[1], also, a.refits, shares=a.with_shares)
        a.out.write_text(json.dumps(result, indent=1))
        print(a.out.read_text())
        return
    if a.held_out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(held_out(a.model, a.held_out, a.refits), indent=1))
        print(a.out.read_text())
        return
    result = {} if a.skip_checks else checks(a.n, a.extra_test, a.refits)
    if not a.skip_cost:
        result["cost"] = cost(a.cost_n)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "validation_top"}, indent=1))


if __name__ == "__main__":
    main()
