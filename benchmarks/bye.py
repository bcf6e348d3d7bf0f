"""BYE backdoor filtering checks on ``shapes-llava-ft-backdoor`` (docs/audit.md has the figures).

    nice -n 10 python benchmarks/bye.py --n 2000 --out out/bench/bye.json

1. The published rule (head mean, separation 2) on the model's own
   fine-tuning data (``ft-backdoor:train[0:n]``), and per-layer AUROC of the
   entropies against the poison labels (a diagnostic, labels used afterwards).
2. mmlens' variant: the unit (layers or heads) and the separation constant
   chosen on the first half (validation, labels used only to pick the two
   constants), then applied unchanged to the second half.
3. The held-out trigger: the same rows with ``orange-ring`` at the same
   positions (``ft-backdoor-ring``), scored by the same model and rules.
4. Clean ``shapes-llava`` on clean ``shapes:val`` rows: the share removed.
5. Cost: scoring against a bare forward over the same batches, time and peak
   RSS, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SEPARATIONS = [round(0.8 + 0.1 * k, 1) for k in range(13)]


def _table(model_name: str, data: str, per_head: bool = True):
    import mmlens
    import mmlens.audit.ft_data  # noqa: F401
    from mmlens.audit import attention_entropies
    from mmlens.data.readers import open_reader

    samples = list(open_reader(data))
    poisoned = [s.id for s in samples if s.meta.get("poisoned")]
    t0 = time.time()
    table = attention_entropies(mmlens.load(model_name), samples, batch_size=16, per_head=per_head)
    return table, poisoned, time.time() - t0


def _subset(table, rows):
    from mmlens.audit import EntropyTable

    return EntropyTable([table.ids[i] for i in rows], table.layers[rows],
                        None if table.heads is None else table.heads[rows])


def _apply(table, poisoned, units, separation):
    from mmlens.audit import bye_filter, label_scores

    result = bye_filter(table, units=units, separation=separation)
    poisoned = set(poisoned) & set(table.ids)  # this subset's labels (the other half's are not "unknown")
    return {**result.summary(), **{"labels": label_scores(result.ids, result.removed, poisoned)}}


def _auroc(table, poisoned) -> list[float]:
    from sklearn.metrics import roc_auc_score

    y = np.array([i in set(poisoned) for i in table.ids])
    return [round(float(roc_auc_score(y, -table.layers[:, j])), 3) for j in range(table.layers.shape[1])]


def checks(n: int) -> dict:
    table, poisoned, seconds = _table("shapes-llava-ft-backdoor", f"ft-backdoor:train[0:{n}]")
    out = {"n": n, "scoring_seconds": round(seconds, 1), "auroc_per_layer_head_mean": _auroc(table, poisoned),
           "published_all": _apply(table, poisoned, "layers", 2.0),
           "heads_sep2_all": _apply(table, poisoned, "heads", 2.0)}
    half = n // 2
    val, test = _subset(table, list(range(half))), _subset(table, list(range(half, n)))
    sweep = {f"{u}@{s}": _apply(val, poisoned, u, s)["labels"]["f1"] for u in ("layers", "heads") for s in SEPARATIONS}
    best = max(sweep, key=lambda k: (sweep[k], k.startswith("layers"), float(k.split("@")[1])))
    units, separation = best.split("@")[0], float(best.split("@")[1])
    out["validation_sweep_f1"] = sweep
    out["chosen"] = {"units": units, "separation": separation, "validation_f1": sweep[best]}
    out["published_test"] = _apply(test, poisoned, "layers", 2.0)
    out["chosen_test"] = _apply(test, poisoned, units, separation)
    ring, ring_poisoned, _ = _table("shapes-llava-ft-backdoor", f"ft-backdoor-ring:train[{half}:{n}]")
    out["ring_auroc_per_layer"] = _auroc(ring, ring_poisoned)
    out["ring_published"] = _apply(ring, ring_poisoned, "layers", 2.0)
    out["ring_chosen"] = _apply(ring, ring_poisoned, units, separation)
    clean, _, _ = _table("shapes-llava", f"shapes:val[0:{half}]")
    out["clean_published"] = _apply(clean, [], "layers", 2.0)
    out["clean_chosen"] = _apply(clean, [], units, separation)
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
    p.add_argument("--skip-checks", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.cost_child:
        cost_child(a.cost_child, a.n)
        return
    result = {} if a.skip_checks else checks(a.n)
    result["cost"] = cost(a.cost_n)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "validation_sweep_f1"}, indent=1))


if __name__ == "__main__":
    main()
