"""DEAN on domains-llava: build a trade-off by fine-tuning on one domain, then switch off the coupled weights.

    python benchmarks/dean_domains.py [--model domains-llava] [--a cells] [--b glyphs] [--json]

1. Fine-tune the model on domain A alone (``--steps`` x ``--batch``, tower
   frozen, :func:`mmlens.zoo.train.finetune.finetune`, work directory
   ``--work``, resumable) and measure on val whether domain B lost at least
   5 points.
2. Weights coupled to A and B but not to the general set (the other domains):
   :func:`mmlens.neurons.coupled_weights` on ``--score-n`` val samples per
   question type, top ``p`` per matrix, ``p`` chosen on val (the most B
   recovered while A and general stay within 1 point; else the most B).
3. Zero them and measure on test: B's recovered share of its loss (the
   claim: at least half), and A's and general accuracy changes (the claim:
   within 1 point), each with a bootstrap 95% interval.

With ``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from neurons_domains import VAL_OFFSET, bootstrap, outcomes, world_sets  # noqa: E402

import mmlens  # noqa: E402
from mmlens.data import domains as world  # noqa: E402
from mmlens.neurons import coupled_weights  # noqa: E402
from mmlens.zoo.train.finetune import FinetuneConfig, finetune  # noqa: E402
from mmlens.zoo.train.ft_domain import domain_example  # noqa: E402

FT_BASE = 96_000_000  # train-split indices of the fine-tuning images (no recipe uses them)
P_GRID = (0.001, 0.003, 0.01, 0.03)


def weights_tag(model) -> str:
    """First 8 hex digits of a hash of the model's weights, so a work directory never resumes another base's fine-tune.

    Example:
        >>> weights_tag(mmlens.load("domains-llava"))  # doctest: +SKIP
        'fb0e6469'
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.hf.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


def groups(arm: dict[str, np.ndarray], a: str, b: str) -> dict[str, float]:
    """Accuracy of A, of B, and of the general set (the other domains, each weighing the same)."""
    general = [v.mean() for d, v in arm.items() if d not in (a, b)]
    return {"a": float(arm[a].mean()), "b": float(arm[b].mean()), "general": float(np.mean(general))}


def recovered(base, tuned, zeroed, b: str) -> float:
    """Share of B's fine-tuning loss that zeroing the coupled weights gives back."""
    lost = base[b].mean() - tuned[b].mean()
    return float((zeroed[b].mean() - tuned[b].mean()) / lost) if lost > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="domains-llava", help="zoo name or folder")
    parser.add_argument("--a", default="cells", help="the domain fine-tuned on")
    parser.add_argument("--b", default="glyphs", help="the domain that should degrade")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=2000, help="fine-tuning images of domain A")
    parser.add_argument("--work", type=Path, default=Path("out/dean-domains"))
    parser.add_argument("--score-n", type=int, default=30, help="val samples per question type for importance")
    parser.add_argument("--val-n", type=int, default=50)
    parser.add_argument("--eval-n", type=int, default=100)
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.a == args.b or not {args.a, args.b} <= set(world.NAMES):
        print(f"error: --a and --b are two different domains of {', '.join(world.NAMES)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model = mmlens.load(args.model)
    val, test = world_sets("val", args.val_n, VAL_OFFSET), world_sets("test", args.eval_n)
    base_val, base_test = outcomes(model, val), outcomes(model, test)
    cfg = FinetuneConfig(steps=args.steps, batch=args.batch, lr=args.lr)
    examples = [domain_example(args.a, FT_BASE + k, 4) for k in range(args.n_train)]
    # the weights' hash in the name: a replaced zoo model keeps its name, and resuming would reuse the old base's fine-tune
    work = args.work / f"{Path(args.model).name}-{weights_tag(model)}-{args.a}-{args.steps}x{args.batch}-lr{args.lr:g}"
    ft_log = finetune(model.hf, model.processor, examples, cfg, work)
    model.hf.eval()
    tuned_val, tuned_test = outcomes(model, val), outcomes(model, test)
    score = world_sets("val", args.score_n)
    general = [s for d, items in score.items() if d not in (args.a, args.b) for s in items]
    grid = {}
    for p in P_GRID:
        chosen = coupled_weights(model, score[args.a], score[args.b], general, p=p, progress=False)
        with chosen.zeroed(model):
            zeroed = outcomes(model, val)
        g, t = groups(zeroed, args.a, args.b), groups(tuned_val, args.a, args.b)
        grid[str(p)] = {"weights": len(chosen), "b_recovered": round(recovered(base_val, tuned_val, zeroed, args.b), 3),
                        "a_change": round(g["a"] - t["a"], 4), "general_change": round(g["general"] - t["general"], 4)}
    fine = [p for p, r in grid.items() if abs(r["a_change"]) <= 0.01 and abs(r["general_change"]) <= 0.01]
    best = max(fine or grid, key=lambda p: np.nan_to_num(grid[p]["b_recovered"], nan=-1.0))
    chosen = coupled_weights(model, score[args.a], score[args.b], general, p=float(best), progress=False)
    with chosen.zeroed(model):
        zeroed_test = outcomes(model, test)
    arms = [base_test, tuned_test, zeroed_test]
    g = {name: groups(arm, args.a, args.b) for name, arm in zip(("base", "tuned", "zeroed"), arms)}
    change = lambda key: lambda t, z: groups(z, args.a, args.b)[key] - groups(t, args.a, args.b)[key]  # noqa: E731
    figures = {
        "model": args.model, "a": args.a, "b": args.b, "finetune": {**ft_log, "work": str(work)},
        "val": {"base": groups(base_val, args.a, args.b), "tuned": groups(tuned_val, args.a, args.b)},
        "b_drop_val": round(float(base_val[args.b].mean() - tuned_val[args.b].mean()), 4),
        "p_grid_val": grid, "p_chosen": float(best), "weights": len(chosen),
        "test": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in g.items()},
        "b_drop_test": round(g["base"]["b"] - g["tuned"]["b"], 4),
        "b_recovered": round(recovered(*arms, args.b), 3),
        "b_recovered_ci": bootstrap(lambda base, t, z: recovered(base, t, z, args.b), arms, args.boot),
        "a_change": round(g["zeroed"]["a"] - g["tuned"]["a"], 4),
        "a_change_ci": bootstrap(change("a"), arms[1:], args.boot),
        "general_change": round(g["zeroed"]["general"] - g["tuned"]["general"], 4),
        "general_change_ci": bootstrap(change("general"), arms[1:], args.boot),
    }
    figures["trade_off_built"] = figures["b_drop_val"] >= 0.05
    figures["holds"] = bool(figures["b_recovered_ci"][0] >= 0.5 and -0.01 <= figures["a_change_ci"][0]
                            and figures["a_change_ci"][1] <= 0.01 and -0.01 <= figures["general_change_ci"][0]
                            and figures["general_change_ci"][1] <= 0.01)
    print(f"DEAN on {args.model}: fine-tuned on {args.a} ({args.steps} x {args.batch}, lr {args.lr:g}); "
          f"{args.b} fell {figures['b_drop_val']:.3f} on val, {figures['b_drop_test']:.3f} on test")
    print(f"p chosen on val: {best} ({figures['weights']} weights); val grid {grid}")
    print(f"test accuracy (A / B / general): base {g['base']}, tuned {g['tuned']}, zeroed {g['zeroed']}")
    print(f"B recovered {figures['b_recovered']} {figures['b_recovered_ci']}; A change {figures['a_change']} "
          f"{figures['a_change_ci']}; general change {figures['general_change']} {figures['general_change_ci']}; "
          f"claim holds: {figures['holds']}")
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
