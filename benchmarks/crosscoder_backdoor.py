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
  the site, no crosscoder involved);
- the beta view: the same pick over latents whose latent-scaling ratios
  (A's beta over B's) are both at most ``--max-nu`` whatever their ``delta``
  (not "B-only" in the published sense), with a chance baseline;
- 95% bootstrap intervals of each test AUROC (whole test images resampled).

``--modality image`` trains the crosscoder on image tokens only.
``--diagnose`` trains nothing: it harvests every image with and without the
trigger and reports, per site of ``--sites``, each model's trigger effect on
the same patches (:func:`trigger_effects`) and the weight change per module.

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
from mmlens.sae.crosscoder_scaling import analyse, auroc_columns, best_latent, bootstrap_auroc, latent_activations
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
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image-token row of ``pair``: trigger patch or not, whether its sample is validation, its sample."""
    frame = pair.frame()
    samples, rows, cols = (frame[name].to_numpy() for name in ("sample", "row", "col"))
    positive = np.array([trigger_cover(reader.positions[int(s)], int(r), int(c)) >= cover
                         for s, r, c in zip(samples, rows, cols)])
    ids = np.unique(samples)
    validation_ids = np.random.default_rng([seed, 7]).permutation(ids)[:len(ids) // 2]
    return positive, np.isin(samples, validation_ids), samples


def beta_specific(report: Any, latents: list[int], max_nu: float = 0.5) -> list[int]:
    """Latents that latent scaling calls B's own whatever their decoder norms: A's betas at most ``max_nu`` of B's.

    Not "B-only" in the published sense (that is ``delta >= 0.9``): this is
    the rule one would need if the trigger latent's decoder is shared but
    model A's activations do not use it (error and reconstruction ratios both low).
    """
    return [j for j in latents if np.isfinite(report.nu_error[j]) and np.isfinite(report.nu_recon[j])
            and report.nu_error[j] <= max_nu and report.nu_recon[j] <= max_nu]


def chance_of_pick(scores: torch.Tensor, positive: np.ndarray, validation: np.ndarray, size: int, bar: float = 0.95,
                   draws: int = 2000, seed: int = 0) -> float | None:
    """How often the validation-best of ``size`` live latents drawn at random scores test AUROC >= ``bar``.

    The baseline for a rule that picks ``size`` latents: is its pick better than any ``size`` latents would give?
    """
    if size == 0:
        return None
    fit = np.nan_to_num(auroc_columns(scores[validation], positive[validation]), nan=-1.0)
    test = np.nan_to_num(auroc_columns(scores[~validation], positive[~validation]), nan=0.0)
    rng = np.random.default_rng([seed, 5])
    hits = 0
    for _ in range(draws):
        chosen = rng.choice(len(fit), size, replace=False)
        hits += test[chosen[np.argmax(fit[chosen])]] >= bar
    return round(hits / draws, 4)


def difference_auroc(pair: PairedActivations, positive: np.ndarray) -> float:
    """AUROC of ``|x_B - x_A|`` for trigger patches: how visible the backdoor is at the site itself."""
    xa, xb = pair.read()
    return round(float(auroc_columns((xb - xa).norm(dim=-1, keepdim=True), positive)[0]), 4)


def trigger_effects(xa: torch.Tensor, xb: torch.Tensor, xa_clean: torch.Tensor, xb_clean: torch.Tensor
                    ) -> dict[str, float]:
    """What the trigger does to each model on the same patches: ``e_m = x_m(with trigger) - x_m(without)``.

    Medians over the rows of: ``|e_A|``, ``|e_B|``, their cosine, the share of
    B's effect that A lacks (``|e_B - e_A| / |e_B|``) and the relative decoder
    norm ``delta`` a latent decoding exactly ``(e_A, e_B)`` would get (B-only
    needs ``|e_A| <= 0.2 |e_B|``). ``mean_*``: the same of the mean effect vectors.

    Example:
        >>> x = torch.zeros(2, 3)
        >>> trigger_effects(x, x + torch.tensor([0., 0, 1]), x, x)["delta"]
        1.0
    """
    ea, eb = xa - xa_clean, xb - xb_clean
    na, nb = ea.norm(dim=-1), eb.norm(dim=-1)

    def delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((b - a) / torch.maximum(a, b).clamp_min(1e-12) + 1)

    ma, mb = ea.mean(0), eb.mean(0)
    med = lambda t: round(float(t.median()), 4)  # noqa: E731
    return {"effect_A": med(na), "effect_B": med(nb),
            "cosine": med(torch.nn.functional.cosine_similarity(ea, eb, dim=-1)),
            "B_not_A": med((eb - ea).norm(dim=-1) / nb.clamp_min(1e-12)), "delta": med(delta(na, nb)),
            "mean_cosine": round(float(torch.nn.functional.cosine_similarity(ma, mb, dim=0)), 4),
            "mean_B_not_A": round(float((mb - ma).norm() / mb.norm().clamp_min(1e-12)), 4),
            "mean_delta": round(float(delta(ma.norm(), mb.norm())), 4)}


def weight_changes(names: tuple[str, str] = MODELS) -> dict[str, float]:
    """``|W_B - W_A| / |W_A|`` per module (vision tower, projector, each LM layer, ...) of two zoo models' weights.

    Example:
        >>> weight_changes()["vision_tower"]  # doctest: +SKIP
        0.0
    """
    from safetensors.torch import load_file

    from mmlens.zoo.shapes_llava import WEIGHTS_DIR

    a, b = (load_file(str(WEIGHTS_DIR / name / "model.safetensors")) for name in names)
    change: dict[str, list[float]] = {}
    for key, value in a.items():
        parts = key.split(".")
        group = ".".join(parts[:parts.index("layers") + 2]) if "layers" in parts and "language_model" in key \
            else ".".join(parts[:2] if parts[0] in ("vision_tower", "multi_modal_projector") else parts[:3])
        sums = change.setdefault(group, [0.0, 0.0])
        sums[0] += float((b[key].float() - value.float()).pow(2).sum())
        sums[1] += float(value.float().pow(2).sum())
    return {group: round((d / max(n, 1e-12)) ** 0.5, 4) for group, (d, n) in change.items()}


def diagnose(args: argparse.Namespace) -> dict[str, Any]:
    """Per site: ``|x_B - x_A|`` on trigger patches vs other image tokens, and each model's trigger effect.

    Every image of ``args.data`` is harvested twice per model, with the
    trigger (share 1) and without, so the effect of the trigger is measured on
    the very same patch (a counterfactual, no crosscoder involved).
    """
    reader = TriggeredReader(open_reader(args.data), 1.0, args.seed)
    clean = TriggeredReader(open_reader(args.data), 0.0, args.seed)
    sites = args.sites or [args.site]
    stores = {(name, tag): harvested(name, r, args.work / f"diag-{tag}-{name}", sites)
              for name in MODELS for tag, r in (("trigger", reader), ("clean", clean))}
    out: dict[str, Any] = {"data": args.data, "cover": args.cover, "images": len(reader),
                           "weight_change": weight_changes(), "sites": {}}
    for site in sites:
        pair = PairedActivations(stores[MODELS[0], "trigger"], stores[MODELS[1], "trigger"], site, "image")
        base = PairedActivations(stores[MODELS[0], "clean"], stores[MODELS[1], "clean"], site, "image")
        positive = image_labels(pair, reader, args.cover, args.seed)[0]
        (xa, xb), (ca, cb) = pair.read(), base.read()
        relative = (xb - xa).norm(dim=-1) / xa.norm(dim=-1).clamp_min(1e-12)
        out["sites"][site] = {
            "trigger_patches": int(positive.sum()), "other_image_tokens": int((~positive).sum()),
            "norm_A": round(float(xa.norm(dim=-1).median()), 4),
            "diff_over_A_trigger": round(float(relative[positive].median()), 4),
            "diff_over_A_other": round(float(relative[~positive].median()), 4),
            "difference_auroc": round(float(auroc_columns((xb - xa).norm(dim=-1, keepdim=True), positive)[0]), 4),
            "trigger_patches_effect": trigger_effects(xa[positive], xb[positive], ca[positive], cb[positive]),
            "other_patches_effect": trigger_effects(xa[~positive], xb[~positive], ca[~positive], cb[~positive])}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment at ``args.site``; a JSON-able summary."""
    reader = TriggeredReader(open_reader(args.data), args.share, args.seed)
    stores = [harvested(name, reader, args.work / f"store-{name}", args.sites or [args.site]) for name in MODELS]
    pair = PairedActivations(*stores, args.site, modality=args.modality)
    folder = args.work / (f"cc-{args.site}-k{args.k}-x{args.expansion}-s{args.steps}-d{args.dead_tokens}"
                          + ("" if args.modality == "all" else f"-{args.modality}"))
    started = time.perf_counter()
    if (folder / "crosscoder.safetensors").is_file():
        cc = load_crosscoder(folder)
    else:
        config = CrosscoderConfig(k=args.k, expansion=args.expansion, steps=args.steps, batch_size=args.batch_size,
                                  seed=args.seed, dead_tokens=args.dead_tokens, modality=args.modality)
        cc = train_crosscoder(pair, config, folder)
    train_seconds = json.loads((folder / "training.json").read_text())["seconds"] \
        if (folder / "training.json").is_file() else time.perf_counter() - started
    report = analyse(cc, pair)
    images = PairedActivations(*stores, args.site, modality="image")
    positive, validation, samples = image_labels(images, reader, args.cover, args.seed)
    b_only, surviving = report.latents("B-only"), report.latents("B-only", surviving=True)
    live = [int(j) for j in np.flatnonzero(report.fires > 0)]
    by_betas = beta_specific(report, live, args.max_nu)
    scores = latent_activations(cc, images, live)
    column = {j: i for i, j in enumerate(live)}
    pick = {}
    for name, latents in (("B-only", b_only), ("B-only surviving", surviving), ("any live latent", live),
                          ("B-specific by betas (any delta)", by_betas)):
        pick[name] = best_latent(scores[:, [column[j] for j in latents]], positive, validation, latents) \
            if latents else {"latent": None, "searched": 0}
        if pick[name]["latent"] is not None:
            j = pick[name]["latent"]
            pick[name]["row"] = report.row(j)
            pick[name]["test_ci95"] = bootstrap_auroc(scores[~validation][:, column[j]], positive[~validation],
                                                      samples[~validation])
    nu = {name: np.array([getattr(report, name)[j] for j in live]) for name in ("nu_error", "nu_recon")}
    trigger = pick["any live latent"]["latent"]
    betas = {"rule": f"nu_error <= {args.max_nu} and nu_recon <= {args.max_nu} (A's beta over B's), any delta",
             "count": len(by_betas),
             **{f"{name}_quantiles_live": [round(float(q), 4) for q in np.nanquantile(v, [0, 0.01, 0.5, 0.99, 1])]
                for name, v in nu.items()},
             "trigger_latent_nu_error_rank": None if trigger is None or not np.isfinite(report.nu_error[trigger])
             else int((nu["nu_error"] < report.nu_error[trigger]).sum()) + 1,
             "chance_test_auroc_0.95": chance_of_pick(scores, positive, validation, len(by_betas), seed=args.seed)}
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
                           "dead_tokens": args.dead_tokens, "modality": args.modality,
                           "seconds": round(train_seconds, 1), "folder": str(folder)},
            "fvu": {m: round(v, 4) for m, v in report.fvu.items()}, "l0": round(report.l0, 2),
            "counts": report.counts(), "difference_auroc": difference_auroc(images, positive),
            "best": pick, "betas": betas, "top_trigger_latents": trigger_latents,
            "delta_quantiles_live": [round(float(q), 4)
                                     for q in np.quantile(report.delta[live], [0, 0.01, 0.5, 0.99, 1])],
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
    parser.add_argument("--modality", default="all", choices=("all", "image"),
                        help="tokens the crosscoder trains on (image: its budget is not spent on text)")
    parser.add_argument("--max-nu", type=float, default=0.5, help="beta view: A's betas over B's at most this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (default: indented too)")
    parser.add_argument("--diagnose", action="store_true",
                        help="no crosscoder: each model's trigger effect per site of --sites (trigger on every image)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = diagnose(args) if args.diagnose else run(args)
    json.dump(result, sys.stdout, indent=None if args.json else 1)
    print()
    return result


if __name__ == "__main__":
    main()
