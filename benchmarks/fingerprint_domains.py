"""Post-hoc look at the fingerprint ground truth: the fixed score within each off-task domain.

Not the scoring rule (that is fixed in ``docs/represent.md`` and scored by
``mmlens fingerprint``): this runs the same rule on the samples of one
domain at a time (glyphs, cells, maps), which removes the between-domain
spread from CKA, and on the off-task set without cells (the domain
``shapes-llava-ft-domain`` was fine-tuned on). It explains a result; it does
not replace it.

Example:
    nice -n 10 python benchmarks/fingerprint_domains.py --n 200 --victim shapes-llava \
        --suspect shapes-llava-ft-domain --suspect out/represent/seed1-step3200 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402


def subset(reps, keep):
    from mmlens.represent.fingerprint import Representations

    ids = [i for i in reps.ids if keep(i)]
    return Representations(reps.model, ids, reps.only(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--victim", default="shapes-llava")
    parser.add_argument("--suspect", action="append", required=True)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import mmlens
    from mmlens.represent.fingerprint import OFF_TASK_DOMAINS, collect_last_token, fingerprint, probe_samples

    samples = probe_samples("off-task", args.n)
    victim = collect_last_token(mmlens.load(args.victim), samples)
    views = {d: (lambda i, d=d: i.startswith(d + "-")) for d in OFF_TASK_DOMAINS}
    views["no-cells"] = lambda i: not i.startswith("cells-")
    rows = []
    for name in args.suspect:
        reps = collect_last_token(mmlens.load(name), samples)
        for view, keep in views.items():
            r = fingerprint(subset(victim, keep), subset(reps, keep), n_boot=args.boot, kinds=("unbiased",))
            rows.append({"suspect": name, "view": view, "samples": r.n, "score": round(r.score, 4),
                         "interval": [round(r.low, 4), round(r.high, 4)]})
            print(f"{Path(name).name:26s} {view:9s} n={r.n:3d} {r.score:.3f} [{r.low:.3f}, {r.high:.3f}]")
    emit({"victim": args.victim, "n": args.n, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
