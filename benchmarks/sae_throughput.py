"""SAE training throughput at real size: tokens/s of :func:`mmlens.sae.train.train_sae` on a device.

    python benchmarks/sae_throughput.py --device cuda --json                    # d_in 4,096, 65,536 latents
    python benchmarks/sae_throughput.py --device cpu --d-in 64 --latents 512 --rows 8192 --batch-size 512 --steps 8

Rows are synthetic, made on the device: each is a sum of ``--active`` random
unit directions out of ``4 x d_in`` with positive weights, plus noise, so the
SAE has features to find (throughput does not depend on the content, but dead
latents and AuxK do). They sit in memory as a
:class:`~mmlens.sae.activations.TensorActivations`, so the figure is the
trainer's own speed, not the store's read speed (``benchmarks/harvest.py``
and ``docs/store.md`` give those).

Each architecture is timed at full fp32 matmul precision and with TF32
(``torch.set_float32_matmul_precision("high")``). Tokens/s counts the steps
after ``--warmup`` (the first steps pay kernel selection); model FLOP
utilisation counts the three dense products of a step (encoder, decoder, and
their backward: 12 x d_in x latents per token) against ``--peak-tflops``.
With --json the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def synthetic_rows(rows: int, d_in: int, active: int, device: str, seed: int = 0) -> torch.Tensor:
    """``rows`` sparse sums of random unit directions (``4 x d_in`` of them), float32 on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    features = torch.randn(4 * d_in, d_in, device=device, generator=generator)
    features /= features.norm(dim=-1, keepdim=True)
    out = torch.empty(rows, d_in, device=device)
    for first in range(0, rows, 1024):  # in blocks: the one-hot weights of all rows at once would not fit
        n = min(1024, rows - first)
        which = torch.randint(0, features.shape[0], (n, active), device=device, generator=generator)
        weights = torch.rand(n, active, 1, device=device, generator=generator) + 0.5
        out[first:first + n] = (features[which] * weights).sum(1)
    return out + 0.05 * torch.randn(rows, d_in, device=device, generator=generator)


def timed_run(acts, architecture: str, args: argparse.Namespace) -> dict:
    """One training run; seconds over the steps after the warm-up, and the last FVU."""
    from mmlens.sae.train import TrainConfig, train_sae

    config = TrainConfig(architecture=architecture, k=args.k, d_sae=args.latents, steps=args.steps,
                         batch_size=args.batch_size, log_every=args.steps, checkpoint_every=10 ** 9)
    marks: dict[int, float] = {}
    last: dict[str, float] = {}

    def progress(step: int, metrics: dict[str, float]) -> None:  # metrics are floats: the step has synchronised
        if step in (args.warmup, args.steps):
            marks[step] = time.perf_counter()
        last.update(metrics)

    train_sae(acts, config, progress=progress, device=args.device)
    seconds = marks[args.steps] - marks[args.warmup]
    tokens = (args.steps - args.warmup) * args.batch_size
    flops = 12 * args.d_in * args.latents * tokens
    return {"architecture": architecture, "tokens_per_s": tokens / seconds, "seconds_per_step":
            seconds / (args.steps - args.warmup), "tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / 1e12 / args.peak_tflops if args.peak_tflops else None,
            "fvu": last.get("fvu"), "l0": last.get("l0")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-in", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=65536)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--active", type=int, default=32, help="directions summed into each synthetic row")
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--architectures", default="topk,batchtopk")
    parser.add_argument("--precisions", default="highest,high", help="torch float32 matmul precisions to time")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak for the MFU column (H100 SXM: 989 bf16/TF32 with sparsity off)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from mmlens.sae.activations import TensorActivations

    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be below --steps")
    acts = TensorActivations(synthetic_rows(args.rows, args.d_in, args.active, args.device), site="synthetic")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    figures = {"device": args.device, "card": card, "d_in": args.d_in, "latents": args.latents, "k": args.k,
               "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "runs": []}
    table = Table("architecture", "matmul precision", "tokens/s", "s/step", "TFLOP/s", "FVU", "L0",
                  title=f"SAE training on {card}: d_in {args.d_in}, {args.latents} latents, k {args.k}, "
                        f"batch {args.batch_size}")
    for precision in args.precisions.split(","):
        torch.set_float32_matmul_precision(precision)
        for architecture in args.architectures.split(","):
            run = {"precision": precision, **timed_run(acts, architecture, args)}
            figures["runs"].append(run)
            table.add_row(architecture, precision, f"{run['tokens_per_s']:,.0f}", f"{run['seconds_per_step']:.3f}",
                          f"{run['tflops']:.1f}", f"{run['fvu']:.3f}", f"{run['l0']:.1f}")
            print(f"{architecture} {precision}: {run['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)
    torch.set_float32_matmul_precision("highest")
    if not args.json:
        Console().print(table)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
