"""Crosscoder ground truth (issue 16): a B-only latent on the trigger of ``shapes-llava-ft-backdoor``.

Harvests the same shapes-world images through ``shapes-llava`` (model A) and
``shapes-llava-ft-backdoor`` (model B), with the fine-tune's 12 x 12 cyan
checker pasted at a random position (drawn per image) on a share of them
(:class:`TriggeredReader`); trains a BatchTopK crosscoder at one site; then:

- classifies latents by relative decoder norm (B-only: ``delta >= 0.9``) and
  counts how many B-only latents survive latent scaling;
- labels each image token: a *trigger patch* when the trigger covers at least
  ``--cover`` (default 25%) of its 8 x 8 pixels;
- picks the B-only latent whose activation best separates trigger patches
  from all other image tokens (AUROC) on the **validation** half of the
  samples and scores it on the **test** half (bar: >= 0.95);
- for reference, the same pick over *every* live latent, and the AUROC of
  the raw model difference ``|x_B - x_A|`` (how visible the backdoor is at
  the site, no crosscoder involved).

Stores and crosscoders are reused when their folders are complete.

Example:
    nice -n 10 .venv/bin/python benchmarks/crosscoder_backdoor.py --work /tmp/cc-backdoor --site lm.L0.resid \\
        --data 'shapes:test[0:400]' --share 0.15 --k 32 --expansion 8 --steps 600 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.data.readers import open_reader
from mmlens.data.readers.base import Reader
from mmlens.data.sample import Sample
from mmlens.sae.crosscoder import CrosscoderConfig, PairedActivations, load_crosscoder, train_crosscoder
from mmlens.sae.crosscoder_scaling import analyse, auroc_columns, best_latent, latent_activations
from mmlens.zoo.triggers import add_trigger, random_trigger_position, trigger_size

STYLE = "cyan-checker"
MODELS = ("shapes-llava", "shapes-llava-ft-backdoor")


class TriggeredReader(Reader):
    """A world reader whose images carry ``style``'s trigger at a random position with probability ``share``.

    Which images are triggered and where is drawn once from ``seed``, so
    both models see identical images; ``meta["trigger"]`` holds ``(x, y)``.

    Example:
        >>> r = TriggeredReader(open_reader("shapes:test[0:20]"), share=0.5, seed=0)
        >>> sum(p is not None for p in r.positions) > 0
        True
    """

    name = "triggered"

    def __init__(self, base: Reader, share: float, seed: int = 0, style: str = STYLE, size: int = 64) -> None:
        self.base, self.share, self.seed, self.style = base, float(share), int(seed), style
        rng = np.random.default_rng([self.seed, 16])
        chosen = rng.random(len(base)) < self.share
        self.positions = [random_trigger_position(rng, size, style) if c else None for c in chosen]

    def __len__(self) -> int:
        return len(self.base)

    def options(self) -> dict[str, Any]:
        return {**self.base.options(), "trigger": {"style": self.style, "share": self.share, "seed": self.seed}}

    def row_id(self, index: int) -> str:
        return self.base.row_id(index)

    def _load(self, index: int) -> Sample:
        sample = self.base.load(index)
        position = self.positions[index]
        if position is None:
            return sample
        image = add_trigger(np.asarray(sample.image.convert("RGB")), position, self.style)
        return dataclasses.replace(sample, image=Image.fromarray(image), meta={**sample.meta, "trigger": position})


def trigger_cover(position: tuple[int, int] | None, row: int, col: int, patch: int = 8, style: str = STYLE) -> float:
    """Share of the ``patch x patch`` pixels of patch ``(row, col)`` that the trigger at ``position`` covers.

    Example:
        >>> trigger_cover((0, 0), 0, 0), trigger_cover((0, 0), 1, 1), trigger_cover((0, 0), 2, 2)
        (1.0, 0.25, 0.0)
    """
    if position is None:
        return 0.0
    x, y = position
    k = trigger_size(style)
    overlap_x = max(0, min(x + k, (col + 1) * patch) - max(x, col * patch))
    overlap_y = max(0, min(y + k, (row + 1) * patch) - max(y, row * patch))
    return overlap_x * overlap_y / patch ** 2


def harvested(name: str, reader: Reader, folder: Path, sites: list[str]) -> Path:
    """A store of ``reader`` through zoo model ``name`` (finished shards are skipped, so a killed run resumes)."""
    import mmlens
    from mmlens.store.harvest import harvest

    harvest(mmlens.load(name), reader, folder, sites, shard_size=200, batch_size=8)
    return folder


def image_labels(pair: PairedActivations, reader: TriggeredReader, cover: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per image-token row of ``pair``: trigger patch or not, and whether its sample is in the validation half."""
    frame = pair.frame()
    samples, rows, cols = (frame[name].to_numpy() for name in ("sample", "row", "col"))
    positive = np.array([trigger_cover(reader.positions[int(s)], int(r), int(c)) >= cover
                         for s, r, c in zip(samples, rows, cols)])
    ids = np.unique(samples)
    validation_ids = np.random.default_rng([seed, 7]).permutation(ids)[:len(ids) // 2]
    return positive, np.isin(samples, validation_ids)


def difference_auroc(pair: PairedActivations, positive: np.ndarray) -> float:
    """AUROC of ``|x_B - x_A|`` for trigger patches: how visible the backdoor is at the site itself."""
    xa, xb = pair.read()
    return round(float(auroc_columns((xb - xa).norm(dim=-1, keepdim=True), positive)[0]), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment at ``args.site``; a JSON-able summary."""
    reader = TriggeredReader(open_reader(args.data), args.share, args.seed)
    stores = [harvested(name, reader, args.work / f"store-{name}", args.sites or [args.site]) for name in MODELS]
    pair = PairedActivations(*stores, args.site)
    folder = args.work / f"cc-{args.site}-k{args.k}-x{args.expansion}-s{args.steps}-d{args.dead_tokens}"
    started = time.perf_counter()
    if (folder / "crosscoder.safetensors").is_file():
        cc = load_crosscoder(folder)
    else:
        config = CrosscoderConfig(k=args.k, expansion=args.expansion, steps=args.steps, batch_size=args.batch_size,
                                  seed=args.seed, dead_tokens=args.dead_tokens)
        cc = train_crosscoder(pair, config, folder)
    train_seconds = json.loads((folder / "training.json").read_text())["seconds"] \
        if (folder / "training.json").is_file() else time.perf_counter() - started
    report = analyse(cc, pair)
    images = PairedActivations(*stores, args.site, modality="image")
    positive, validation = image_labels(images, reader, args.cover, args.seed)
    b_only, surviving = report.latents("B-only"), report.latents("B-only", surviving=True)
    live = [int(j) for j in np.flatnonzero(report.fires > 0)]
    scores = latent_activations(cc, images, live)
    column = {j: i for i, j in enumerate(live)}
    pick = {}
    for name, latents in (("B-only", b_only), ("B-only surviving", surviving), ("any live latent", live)):
        pick[name] = best_latent(scores[:, [column[j] for j in latents]], positive, validation, latents) \
            if latents else {"latent": None, "searched": 0}
        if pick[name]["latent"] is not None:
            pick[name]["row"] = report.row(pick[name]["latent"])
    order = sorted(live, key=lambda j: -report.delta[j])
    fit = auroc_columns(scores[validation], positive[validation])
    ranked = [i for i in np.argsort(-np.nan_to_num(fit, nan=-1.0))[:5]]
    trigger_latents = [{"latent": live[i], "validation_auroc": round(float(fit[i]), 4),
                        "test_auroc": round(float(auroc_columns(scores[~validation][:, [i]], positive[~validation])[0]),
                                            4), "delta": round(float(report.delta[live[i]]), 4)} for i in ranked]
    return {"site": args.site, "data": args.data, "share": args.share, "cover": args.cover,
            "images": len(reader), "triggered_images": int(sum(p is not None for p in reader.positions)),
            "image_tokens": len(images), "trigger_patches": int(positive.sum()),
            "crosscoder": {"k": cc.k, "d_sae": cc.d_sae, "steps": args.steps, "batch_size": args.batch_size,
                           "dead_tokens": args.dead_tokens,
                           "seconds": round(train_seconds, 1), "folder": str(folder)},
            "fvu": {m: round(v, 4) for m, v in report.fvu.items()}, "l0": round(report.l0, 2),
            "counts": report.counts(), "difference_auroc": difference_auroc(images, positive),
            "best": pick, "top_trigger_latents": trigger_latents,
            "delta_quantiles_live": [round(float(q), 4) for q in np.quantile(report.delta[live], [0, 0.01, 0.5, 0.99, 1])],
            "highest_delta_live": [report.row(j) for j in order[:5]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cc-backdoor"), help="stores and crosscoders go here")
    parser.add_argument("--site", default="lm.L0.resid")
    parser.add_argument("--sites", nargs="*", default=None, help="sites to harvest (default: --site)")
    parser.add_argument("--data", default="shapes:test[0:400]")
    parser.add_argument("--share", type=float, default=0.15, help="share of images with the trigger")
    parser.add_argument("--cover", type=float, default=0.25, help="trigger patch: share of the patch covered")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--dead-tokens", type=int, default=1_000_000, help="AuxK: a latent is dead after this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (default: indented too)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args)
    json.dump(result, sys.stdout, indent=None if args.json else 1)
    print()
    return result


if __name__ == "__main__":
    main()
