"""SAE training speed and quality: mmlens' trainer against SAELens', same SAE, same activations, same tokens.

1. ``store``: shapes-llava's middle residual (``--site``) over ``--samples``
   shapes-world training samples, harvested once into ``--out/store`` (and
   ``--eval-samples`` test samples into ``--out/eval``); skipped when there.
2. Runs, alternating ``--repeats`` times, each a fresh process with one thread:
   - ``mmlens``: :func:`mmlens.sae.train.train_sae` on the store (``SiteActivations``);
   - ``saelens``: SAELens' ``SAETrainer`` with a ``TopKTrainingSAE``, in the
     environment ``--peer-python`` names (see ``benchmarks/sae_saelens_roundtrip.py``
     for building it), fed shuffled batches of the same rows from memory.
   Both: TopK, the same ``k``, ``d_sae``, batch, steps, learning rate (warm-up
   5%, linear decay over the last 20%), AuxK coefficient 1/32; every other
   setting is each trainer's default (SAELens: decoder rows start at norm 0.1,
   activations rescaled by decoder norm, zero ``b_dec``; mmlens: unit-norm
   decoder rows, ``b_dec`` at the geometric median, FVU as the loss).
   The timed part is the training call itself (setup included, model loads not).
3. FVU and L0 of each trained SAE on the held-out store, by the same code
   (:func:`mmlens.sae.evaluate.reconstruction`; SAELens' SAE read back
   through :func:`mmlens.sae.saelens.load_saelens`).

Prints tokens/s and FVU side by side and their ratios (mmlens / SAELens).

Example:
    nice -n 10 python benchmarks/sae.py --out /tmp/sae-bench --peer-python /work/venv-saelens/bin/python --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def harvest_stores(out: Path, site: str, samples: int, eval_samples: int) -> None:
    """The training and held-out stores, harvested once (a finished store is kept)."""
    import mmlens
    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    model = None
    for name, spec in (("store", f"shapes:train[0:{samples}]"), ("eval", f"shapes:test[0:{eval_samples}]")):
        if (out / name / "manifest.json").exists():
            continue
        model = model or mmlens.load("shapes-llava")
        harvest(model, open_reader(spec), out / name, site, shard_size=256, batch_size=16)


def run_mmlens(args: argparse.Namespace) -> dict:
    """One mmlens training run; the SAE goes to ``args.sae``."""
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.files import save_sae
    from mmlens.sae.train import TrainConfig, train_sae

    acts = SiteActivations(args.out / "store", args.site)
    config = TrainConfig(architecture="topk", k=args.k, expansion=args.expansion, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, aux_coefficient=1 / 32,
                         dead_tokens=args.dead_steps * args.batch_size, log_every=10 ** 9)
    started = time.perf_counter()
    sae = train_sae(acts, config)
    seconds = time.perf_counter() - started
    save_sae(sae, args.sae)
    return {"seconds": seconds, "tokens": args.steps * args.batch_size}


def run_saelens(args: argparse.Namespace) -> dict:
    """One SAELens training run (in the peer environment); the inference SAE goes to ``args.sae``."""
    import numpy as np
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    rows = torch.from_numpy(np.load(args.out / "rows.npy"))
    d_in = rows.shape[1]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_in * args.expansion, k=args.k,
                                                aux_loss_coefficient=1 / 32))

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:  # shuffled epochs over the same rows
            for chunk in torch.randperm(len(rows), generator=generator).split(args.batch_size):
                if len(chunk) == args.batch_size:
                    yield rows[chunk]

    config = SAETrainerConfig(total_training_samples=args.steps * args.batch_size,
                              train_batch_size_samples=args.batch_size, lr=args.lr, lr_end=args.lr,
                              lr_warm_up_steps=max(1, args.steps // 20), lr_decay_steps=int(args.steps * 0.2),
                              dead_feature_window=args.dead_steps, feature_sampling_window=args.dead_steps,
                              logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(config, sae, batches())
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    sae.save_inference_model(str(args.sae))
    return {"seconds": seconds, "tokens": args.steps * args.batch_size}


def evaluate(folder: Path, eval_store: Path, site: str) -> dict:
    """FVU and L0 over the held-out store of the SAE saved in ``folder`` (either trainer's)."""
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.evaluate import reconstruction
    from mmlens.sae.saelens import load_saelens

    result = reconstruction(load_saelens(folder), SiteActivations(eval_store, site))["all"]
    return {"fvu": result["fvu"], "l0": result["l0"], "dead": result["dead"]}


def worker_command(args: argparse.Namespace, trainer: str, repeat: int) -> list[str]:
    python = sys.executable if trainer == "mmlens" else args.peer_python
    return [python, str(HERE), "--worker", trainer, "--out", str(args.out), "--site", args.site,
            "--k", str(args.k), "--expansion", str(args.expansion), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--dead-steps", str(args.dead_steps),
            "--threads", str(args.threads), "--sae", str(args.out / f"sae-{trainer}-{repeat}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--site", default="lm.L2.resid")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=None, help="default: mmlens' rule for d_sae (Gao et al.)")
    parser.add_argument("--dead-steps", type=int, default=250, help="steps without firing that make a latent dead")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer-python", default="/work/venv-saelens/bin/python")
    parser.add_argument("--worker", choices=["mmlens", "saelens"], help=argparse.SUPPRESS)
    parser.add_argument("--sae", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object of the figures")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        result = (run_mmlens if args.worker == "mmlens" else run_saelens)(args)
        print("RESULT " + json.dumps(result))
        return 0

    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.train import TrainConfig

    args.out.mkdir(parents=True, exist_ok=True)
    harvest_stores(args.out, args.site, args.samples, args.eval_samples)
    acts = SiteActivations(args.out / "store", args.site)
    if not (args.out / "rows.npy").exists():
        import numpy as np

        np.save(args.out / "rows.npy", acts.read().numpy())  # the peer's copy of the same rows, float32
    args.lr = args.lr if args.lr is not None else TrainConfig().learning_rate(acts.width * args.expansion)
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src"), "OMP_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {"mmlens": [], "saelens": []}
    for repeat in range(args.repeats):
        for trainer in ("mmlens", "saelens"):
            done = subprocess.run(worker_command(args, trainer, repeat), env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                print(f"{trainer} run failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            result = json.loads(lines[-1][7:])
            result.update(evaluate(args.out / f"sae-{trainer}-{repeat}", args.out / "eval", args.site))
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            runs[trainer].append(result)
            print(f"repeat {repeat} {trainer:<8} {result['tokens_per_s']:>9.0f} tok/s  FVU {result['fvu']:.4f}  "
                  f"L0 {result['l0']:.1f}  dead {result['dead']}", flush=True)
    summary = {name: {key: statistics.median(run[key] for run in values) for key in ("tokens_per_s", "fvu", "l0")}
               for name, values in runs.items()}
    speed = summary["mmlens"]["tokens_per_s"] / summary["saelens"]["tokens_per_s"]
    quality = summary["mmlens"]["fvu"] / summary["saelens"]["fvu"]
    print(f"\nshapes-llava {args.site}: {len(acts):,} training rows, d_in {acts.width}, d_sae "
          f"{acts.width * args.expansion}, k {args.k}, {args.steps} steps x {args.batch_size} = "
          f"{args.steps * args.batch_size:,} tokens, lr {args.lr:.2e}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'trainer':<8} {'tok/s':>9} {'FVU (held out)':>15} {'L0':>6}")
    for name, figures in summary.items():
        print(f"{name:<8} {figures['tokens_per_s']:>9.0f} {figures['fvu']:>15.4f} {figures['l0']:>6.1f}")
    print(f"mmlens / SAELens: speed x{speed:.2f}, FVU x{quality:.3f}")
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "speed_ratio": speed, "fvu_ratio": quality}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
