"""SAE training speed and quality: mmlens' trainer against SAELens', same SAE, same activations, same tokens.

1. ``store``: shapes-llava's middle residual (``--site``) over ``--samples``
   shapes-world training samples, harvested once into ``--out/store``, the
   next ``--val-samples`` training samples into ``--out/val`` (for choosing
   the learning rate) and ``--eval-samples`` test samples into ``--out/eval``
   (held out, for the figures); skipped when there.
2. Learning rate: each trainer is run once at every rate of ``--lrs``
   (``--jobs`` at a time; default mmlens' rule for ``d_sae`` times 1, 3, 10
   and 30), and each keeps the rate with the lower FVU on ``val``. ``--lr`` skips
   this and gives both trainers that rate.
3. Runs at each trainer's rate, alternating ``--repeats`` times, each a fresh
   process with one thread:
   - ``mmlens``: :func:`mmlens.sae.train.train_sae` on the store (``SiteActivations``);
   - ``saelens``: SAELens' ``SAETrainer`` with a ``TopKTrainingSAE``, in the
     environment ``--peer-python`` names (see ``benchmarks/sae_saelens_roundtrip.py``
     for building it), fed shuffled batches of the same rows from memory.
   Both: TopK, the same ``k``, ``d_sae``, batch, steps, schedule (warm-up
   5%, linear decay over the last 20%), AuxK coefficient 1/32; every other
   setting is each trainer's default.
   The timed part is the training call itself (setup included, model loads not).
4. FVU and L0 of each trained SAE on the held-out store, by the same code
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


def harvest_stores(out: Path, site: str, samples: int, eval_samples: int, val_samples: int) -> None:
    """The training, validation and held-out stores, harvested once (a finished store is kept)."""
    import mmlens
    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    model = None
    for name, spec in (("store", f"shapes:train[0:{samples}]"), ("eval", f"shapes:test[0:{eval_samples}]"),
                       ("val", f"shapes:train[{samples}:{samples + val_samples}]")):
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
                         dead_tokens=args.dead_steps * args.batch_size, decoder_init_norm=args.decoder_init_norm,
                         log_every=10 ** 9)
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


def evaluate(folder: Path, out: Path, site: str) -> dict:
    """FVU and L0 over the held-out store (``fvu``) and FVU over the validation store (``val_fvu``)."""
    from mmlens.sae.activations import SiteActivations
    from mmlens.sae.evaluate import reconstruction
    from mmlens.sae.saelens import load_saelens

    sae = load_saelens(folder)
    result = reconstruction(sae, SiteActivations(out / "eval", site))["all"]
    val = reconstruction(sae, SiteActivations(out / "val", site))["all"]
    return {"fvu": result["fvu"], "l0": result["l0"], "dead": result["dead"], "val_fvu": val["fvu"]}


def worker_command(args: argparse.Namespace, trainer: str, lr: float, name: str) -> list[str]:
    python = sys.executable if trainer == "mmlens" else args.peer_python
    return [python, str(HERE), "--worker", trainer, "--out", str(args.out), "--site", args.site,
            "--k", str(args.k), "--expansion", str(args.expansion), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", repr(lr), "--dead-steps", str(args.dead_steps),
            "--threads", str(args.threads), "--sae", str(args.out / f"sae-{trainer}-{name}")] + (
                ["--decoder-init-norm", repr(args.decoder_init_norm)] if args.decoder_init_norm is not None else [])


def run_all(args: argparse.Namespace, env: dict, jobs: list[tuple[str, float, str]], parallel: int) -> list[dict]:
    """Run ``(trainer, lr, name)`` workers, ``parallel`` at a time, and evaluate each SAE; stops on a failure."""
    results: list[dict] = []
    for start in range(0, len(jobs), parallel):
        batch = jobs[start:start + parallel]
        procs = [subprocess.Popen(worker_command(args, *job), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for job in batch]
        for (trainer, lr, name), proc in zip(batch, procs):
            stdout, stderr = proc.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{trainer} run failed:\n{stderr[-3000:]}")
            result = {"trainer": trainer, "lr": lr, **json.loads(lines[-1][7:])}
            result.update(evaluate(args.out / f"sae-{trainer}-{name}", args.out, args.site))
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            results.append(result)
            print(f"{name:<10} {trainer:<8} lr {lr:.1e} {result['tokens_per_s']:>7.0f} tok/s  "
                  f"FVU val {result['val_fvu']:.4f} held out {result['fvu']:.4f}  L0 {result['l0']:.1f}  "
                  f"dead {result['dead']}", flush=True)
    return results


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
    parser.add_argument("--val-samples", type=int, default=200)
    parser.add_argument("--lr", type=float, default=None, help="one rate for both trainers (no sweep)")
    parser.add_argument("--lrs", default=None,
                        help="rates to choose from on val, comma-separated (default: mmlens' rule x 1, 3, 10, 30)")
    parser.add_argument("--jobs", type=int, default=2, help="sweep runs at a time (their speed is not reported)")
    parser.add_argument("--dead-steps", type=int, default=250, help="steps without firing that make a latent dead")
    parser.add_argument("--repeats", type=int, default=2, help="0: the sweep only")
    parser.add_argument("--trainers", default="mmlens,saelens", help="for a sweep of one trainer")
    parser.add_argument("--decoder-init-norm", type=float, default=None,
                        help="mmlens' TrainConfig.decoder_init_norm (default: unit-norm rows)")
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
    harvest_stores(args.out, args.site, args.samples, args.eval_samples, args.val_samples)
    acts = SiteActivations(args.out / "store", args.site)
    if not (args.out / "rows.npy").exists():
        import numpy as np

        np.save(args.out / "rows.npy", acts.read().numpy())  # the peer's copy of the same rows, float32
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src"), "OMP_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    trainers = tuple(args.trainers.split(","))
    sweep: list[dict] = []
    if args.lr is not None:
        best = {trainer: args.lr for trainer in trainers}
    else:
        rule = TrainConfig().learning_rate(acts.width * args.expansion)
        lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else [rule * factor for factor in (1, 3, 10, 30)]
        try:
            sweep = run_all(args, env, [(t, lr, f"lr{lr:.1e}") for lr in lrs for t in trainers], args.jobs)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        best = {t: min((r for r in sweep if r["trainer"] == t), key=lambda r: r["val_fvu"])["lr"] for t in trainers}
        print("chosen on val: " + ", ".join(f"{t} lr {lr:.1e}" for t, lr in best.items()), flush=True)
    if args.repeats == 0 or len(trainers) < 2:
        if args.json:
            print(json.dumps({"sweep": sweep, "lr": best}))
        return 0
    try:
        done = run_all(args, env, [(t, best[t], f"rep{repeat}") for repeat in range(args.repeats) for t in trainers], 1)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    runs = {t: [r for r in done if r["trainer"] == t] for t in trainers}
    summary = {name: {key: statistics.median(run[key] for run in values) for key in ("tokens_per_s", "fvu", "l0")}
               for name, values in runs.items()}
    speed = summary["mmlens"]["tokens_per_s"] / summary["saelens"]["tokens_per_s"]
    quality = summary["mmlens"]["fvu"] / summary["saelens"]["fvu"]
    print(f"\nshapes-llava {args.site}: {len(acts):,} training rows, d_in {acts.width}, d_sae "
          f"{acts.width * args.expansion}, k {args.k}, {args.steps} steps x {args.batch_size} = "
          f"{args.steps * args.batch_size:,} tokens, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'trainer':<8} {'lr':>8} {'tok/s':>9} {'FVU (held out)':>15} {'L0':>6}")
    for name, figures in summary.items():
        print(f"{name:<8} {best[name]:>8.1e} {figures['tokens_per_s']:>9.0f} {figures['fvu']:>15.4f} "
              f"{figures['l0']:>6.1f}")
    print(f"mmlens / SAELens: speed x{speed:.2f}, FVU x{quality:.3f}")
    if args.json:
        print(json.dumps({"sweep": sweep, "lr": best, "runs": runs, "summary": summary, "speed_ratio": speed,
                          "fvu_ratio": quality}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
