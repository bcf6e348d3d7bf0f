"""Unlearning audits end to end: unlearn a colour from shapes-llava with each method, then audit every model.

Trains gradient ascent, gradient difference, NPO and NPO + retain loss
(``--steps`` each, 1 thread) into ``OUT/models/<method>`` (reused when
there), audits them and the base model with every prompt and perturbation
audit, and writes ``OUT/table.md``, ``OUT/summary.json``, ``OUT/recovery.png``
and ``OUT/index.html`` (:mod:`mmlens.cli.audit_unlearning`). A killed run
resumes: finished models and audit rows are reused.

Example:
    nice -n 10 python benchmarks/unlearning.py --out out/unlearning
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/unlearning"))
    parser.add_argument("--base", default="shapes-llava")
    parser.add_argument("--forget", default="purple")
    parser.add_argument("--methods", default="ga,gd,npo,npo-rt")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--n-val", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rich.console import Console

    from mmlens.cli.audit_unlearning import audit_unlearning, train_methods

    console = Console(stderr=True)
    t0 = time.time()
    models = train_methods(args.base, args.forget, args.methods.split(","), args.out / "models", args.steps, console)
    trained = time.time() - t0
    summary = audit_unlearning([str(m) for m in models], args.base, args.forget, args.out, n_val=args.n_val,
                               n_test=args.n_test, console=console)
    summary["seconds"] = {"unlearning": round(trained, 1), "total": round(time.time() - t0, 1)}
    summary["unlearning"] = {m.name: json.loads((m / "unlearning.json").read_text()) for m in models}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print((args.out / "table.md").read_text())
    print(json.dumps(summary["seconds"]))


if __name__ == "__main__":
    main()
