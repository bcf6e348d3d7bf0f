"""Train domains-llava from scratch on the multi-domain world, and evaluate it per domain.

``python -m mmlens.zoo.train --recipe domains-llava [--seed N] [--out DIR] [--work DIR] [...]``
``python -m mmlens.zoo.train.domains --evaluate [--model NAME|DIR] [--n N] [--json]``

shapes-llava's two-stage recipe on :mod:`mmlens.data.domains`.

Index ``i`` of the training data is a sample of domain ``mix[i % len(mix)]``
(``--mix``; by default :data:`MIX`: shapes and glyphs twice, cells and maps once).

1. the vision tower alone learns per-patch labels (the union of every
   domain's patch classes: (colour, shape) pairs, letters and framed
   letters, stained and clear cells, roads, rivers and fields; and each
   object patch's row and column) and, from the mean of the patch tokens,
   each domain's whole-image slots (:data:`mmlens.data.domains.POOLED`:
   counts, the framed letter, orientations, the field's side ...);
2. the tower is frozen and its features of ``--pool`` images are cached
   (:class:`FeaturePool`); projector and decoder, re-initialised with std
   ``1/sqrt(fan_in)``, learn to answer packed questions (up to ``--pack``
   per image, the first in the inference format, new ones each epoch).

Scheduled by steps, seeded, checkpoints every 100 steps under ``--work``;
a killed run resumes where it stopped.

Example:
    >>> main(["--stage1-steps", "2", "--stage2-steps", "2", "--out", "/tmp/dl"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlens.data import domains as world
from mmlens.errors import MmlensError
from mmlens.zoo.domains_llava import DOMAINS_DIR, build_model, build_processor
from mmlens.zoo.evaluate import answer_probs, encode
from mmlens.zoo.shapes_llava import GRID
from mmlens.zoo.train.common import _fmt, _log, _optimise, _resume, _run_stage, _save_state, init_for_training, lr_factor
from mmlens.zoo.train.domains_stage1 import (  # noqa: F401  (re-exported: the recipe's public names)
    MIX, MIX_1B, SEED_STRIDE, STAGE1B_OFFSET, STAGE2_OFFSET, DomainHead, DomainsConfig, stage1_batch, train_sample,
    train_stage1,
)
from mmlens.zoo.train.finetune import forward_on_features, tower_features

class FeaturePool:
    """The stage-2 images: their frozen-tower features (float16, computed once) and their scenes.

    Step ``k`` trains on positions ``k * batch .. (k + 1) * batch`` of a stream of
    seeded permutations of the pool (one per epoch); each epoch asks each image
    new questions, so the decoder runs on cached features and the tower and
    the renderer run once per image.
    """

    def __init__(self, model, processor, cfg: DomainsConfig, chunk: int = 256) -> None:
        base = cfg.seed * SEED_STRIDE + STAGE2_OFFSET
        self.cfg, self.items, feats = cfg, [], []
        with torch.no_grad():
            for c in range(0, cfg.pool, chunk):
                samples = [train_sample(base + i, cfg.stage2_mix or cfg.mix) for i in range(c, min(cfg.pool, c + chunk))]
                pixels = encode(processor, [np.asarray(s.image) for s in samples], [""] * len(samples))
                feats.append(tower_features(model, pixels["pixel_values"]).half())
                self.items += [(base + c + j, s.domain, s.meta["scene"]) for j, s in enumerate(samples)]
        self.features = torch.cat(feats)
        self._perms: dict[int, np.ndarray] = {}

    def positions(self, step: int) -> list[int]:
        """Pool indices of step ``step``."""
        out = []
        for pos in range(step * self.cfg.batch, (step + 1) * self.cfg.batch):
            epoch, i = divmod(pos, len(self.items))
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng([self.cfg.seed, 99, epoch]).permutation(len(self.items))}
            out.append(int(self._perms[epoch][i]))
        return out

    def text(self, k: int, epoch: int) -> tuple[str, list[int], list[str]]:
        """Packed questions about pool image ``k`` in ``epoch``: text, answer word indices, answers."""
        index, domain, scene = self.items[k]
        module = world.domain_module(domain)
        rng = np.random.default_rng([index, epoch, 7])
        words: list[str] = []
        where: list[int] = []
        answers: list[str] = []
        seen: set[str] = set()
        types = module.QUESTION_TYPES
        for t in np.concatenate([rng.permutation(len(types)), rng.permutation(len(types))]):
            asked = module.ask(scene, types[int(t)], rng)
            if asked is None or asked[0] in seen:
                continue
            seen.add(asked[0])
            words += asked[0].split() if not words else asked[0].replace("<image>", "").split()
            where.append(len(words))
            words.append(asked[1])
            answers.append(asked[1])
            if len(answers) >= self.cfg.pack:
                break
        return " ".join(words), where, answers


def train_stage2(model, processor, cfg: DomainsConfig, work: Path) -> None:
    """Freeze the tower; train projector and decoder on packed questions of every domain."""
    model.model.vision_tower.requires_grad_(False).eval()
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    torch.manual_seed(cfg.seed + 1)
    init_for_training(model.model.multi_modal_projector, model.model.language_model)
    opt = torch.optim.AdamW(params, lr=cfg.stage2_lr, weight_decay=0.01)
    ckpt = work / f"domains-stage2-seed{cfg.seed}.pt"
    start = _resume(ckpt, opt, "stage 2", model=model)
    if start >= cfg.stage2_steps:
        return
    t0 = time.time()
    pool = FeaturePool(model, processor, cfg)
    _log(f"stage 2: cached tower features of {cfg.pool} images in {time.time() - t0:.0f} s")
    tok = processor.tokenizer
    n_image = GRID * GRID
    model.model.multi_modal_projector.train(), model.model.language_model.train()

    def step_fn(step: int) -> tuple[float, float]:
        idx = pool.positions(step)
        epochs = [(step * cfg.batch + j) // len(pool.items) for j in range(cfg.batch)]
        texts, places, answers = zip(*(pool.text(k, e) for k, e in zip(idx, epochs)))
        batch = tok([t.replace("<image>", "<image>" * n_image) for t in texts], padding=True, return_tensors="pt")
        pad = batch["input_ids"].shape[1] - batch["attention_mask"].sum(1)
        # word w >= 1 of a text is token 64 + w (<s>, then 64 image tokens); predicted one token earlier
        rows = torch.tensor([i for i, ws in enumerate(places) for _ in ws])
        cols = torch.tensor([63 + w for ws in places for w in ws]) + pad[rows]
        target = torch.tensor(tok.convert_tokens_to_ids([a for ans in answers for a in ans]))
        feats = pool.features[torch.tensor(idx)].float()
        logits = forward_on_features(model, batch["input_ids"], batch["attention_mask"], feats)[rows, cols]
        loss = nn.functional.cross_entropy(logits, target)
        _optimise(opt, params, loss, cfg.stage2_lr * lr_factor(step, cfg.stage2_steps, cfg.warmup))
        return loss.item(), (logits.argmax(-1) == target).float().mean().item()

    def save_fn(step: int) -> None:
        _save_state(ckpt, {"step": step, "model": model.state_dict(), "opt": opt.state_dict()})
        if step % 500 == 0:
            model.eval()
            acc = evaluate(model, processor, n=20, split="val")
            _log(f"stage 2: validation accuracy {_fmt({d: a['all'] for d, a in acc.items()})}")
            model.model.multi_modal_projector.train(), model.model.language_model.train()

    _run_stage("stage 2 (projector + decoder, questions)", cfg.stage2_steps, start, step_fn, save_fn)
    ckpt.unlink(missing_ok=True)


@torch.no_grad()
def evaluate(model, processor, n: int = 100, split: str = "test",
             domains: Sequence[str] = world.NAMES) -> dict[str, dict[str, float]]:
    """Accuracy per domain and question type on ``n`` samples of each type; ``all`` is their mean.

    Example:
        >>> acc = evaluate(*mmlens.zoo.build("domains-llava"), n=10, domains=("cells",))  # doctest: +SKIP
        >>> sorted(acc["cells"])  # doctest: +SKIP
        ['all', 'count', 'stained']
    """
    tok = processor.tokenizer
    out: dict[str, dict[str, float]] = {}
    for d in domains:
        out[d] = {}
        for qt in world.question_types(d):
            samples = [world.make_sample(d, split, i, qt) for i in range(n)]
            words = tok.convert_ids_to_tokens(answer_probs(model, processor, samples).argmax(-1).tolist())
            out[d][qt] = float(np.mean([w == s.answer for w, s in zip(words, samples)]))
        out[d]["all"] = float(np.mean(list(out[d].values())))
    return out


def train(cfg: DomainsConfig, out: Path, work: Path, threads: int = 1, eval_n: int = 100) -> dict:
    """Run both stages; save the model, processor and ``train_log.json`` to ``out``."""
    torch.set_num_threads(threads)  # one thread: on the busy 2-core box two threads ran 10x slower
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    processor = build_processor(world.vocabulary())
    model = build_model(processor, cfg.seed, cfg.layers, cfg.hidden, cfg.mlp)
    train_stage1(model, processor, cfg, work)
    t1 = time.time()
    train_stage2(model, processor, cfg, work)
    t2 = time.time()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.max_new_tokens = 1  # one-word answers, no end token
    model.save_pretrained(out)
    processor.save_pretrained(out)
    val = evaluate(model, processor, n=eval_n, split="val")
    _log("validation accuracy " + _fmt({d: a["all"] for d, a in val.items()}))
    log = {"config": asdict(cfg), "stage1_seconds": round(t1 - t0, 1), "stage2_seconds": round(t2 - t1, 1),
           "val_accuracy": val, "torch_threads": torch.get_num_threads()}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    _log(f"saved to {out} in {(time.time() - t0) / 60:.1f} min")
    return log


def _print_eval(name: str, acc: dict[str, dict[str, float]], n: int, as_json: bool) -> None:
    print(f"held-out accuracy of {name} ({n} per question type, test split):")
    for d, a in acc.items():
        kinds = "  ".join(f"{k} {v:6.1%}" for k, v in a.items() if k != "all")
        print(f"  {d:<7} {a['all']:6.1%}   ({kinds})")
    if as_json:
        print(json.dumps({d: {k: round(v, 4) for k, v in a.items()} for d, a in acc.items()}))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m mmlens.zoo.train --recipe domains-llava",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="where to save (default: the package's weights)")
    p.add_argument("--work", type=Path, default=Path("out/zoo-train-domains"), help="checkpoints, for resuming")
    for name in ("stage1_steps", "stage1_batch", "stage2_steps", "batch", "pack", "pool", "layers", "hidden", "mlp"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(DomainsConfig, name))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mix", default=",".join(MIX), help="domains in the order training indices cycle through")
    p.add_argument("--shape-factors", type=float, default=DomainsConfig.shape_factors,
                   help="weight of shapes images' per-patch colour and shape labels in stage 1 (0: v2 recipe)")
    p.add_argument("--stage1b-steps", type=int, default=DomainsConfig.stage1b_steps,
                   help="continue the stage-1 tower this many steps (0: none, the v3 recipe)")
    p.add_argument("--stage1b-mix", default=",".join(MIX_1B), help="domains of the stage-1b continuation")
    p.add_argument("--stage1b-lr", type=float, default=DomainsConfig.stage1b_lr)
    p.add_argument("--stage2-mix", default=None, help="domains of the stage-2 images (default: --mix)")
    p.add_argument("--evaluate", action="store_true", help="only evaluate --model per domain")
    p.add_argument("--model", default="domains-llava", help="zoo name or saved directory (with --evaluate)")
    p.add_argument("--n", type=int, default=200, help="held-out samples per question type (with --evaluate)")
    p.add_argument("--json", action="store_true", help="end with one JSON line (with --evaluate)")
    p.add_argument("--eval-n", type=int, default=100, help="validation samples per question type in the log")
    a = p.parse_args(argv)
    if a.evaluate:
        torch.set_num_threads(a.threads)
        from mmlens.zoo import build
        from mmlens.zoo.shapes_llava import load_from
        model, processor = load_from(a.model) if Path(a.model).is_dir() else build(a.model)
        _print_eval(a.model, evaluate(model, processor, n=a.n), a.n, a.json)
        return 0
    mix, mix_1b = tuple(a.mix.split(",")), tuple(a.stage1b_mix.split(","))
    mix_2 = tuple(a.stage2_mix.split(",")) if a.stage2_mix else None
    for d in mix + mix_1b + (mix_2 or ()):
        world.domain_module(d)  # one-line error for an unknown domain
    if a.stage1_steps * a.stage1_batch > STAGE1B_OFFSET or a.stage1b_steps * a.stage1_batch > STAGE2_OFFSET - STAGE1B_OFFSET:
        raise MmlensError("too many stage-1 images: the phases' training indices would overlap")
    if min(a.pack, a.batch, a.stage1_batch, a.pool) < 1:
        raise MmlensError("--pack, --batch, --stage1-batch and --pool must be at least 1")
    cfg = DomainsConfig(seed=a.seed, stage1_steps=a.stage1_steps, stage1_batch=a.stage1_batch,
                        stage2_steps=a.stage2_steps, batch=a.batch, pack=a.pack, pool=a.pool, layers=a.layers,
                        hidden=a.hidden, mlp=a.mlp, mix=mix, shape_factors=a.shape_factors,
                        stage1b_steps=a.stage1b_steps, stage1b_mix=mix_1b, stage1b_lr=a.stage1b_lr, stage2_mix=mix_2)
    train(cfg, a.out or DOMAINS_DIR, a.work, a.threads, a.eval_n)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MmlensError as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
