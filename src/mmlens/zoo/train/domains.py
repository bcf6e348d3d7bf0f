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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlens.data import domains as world
from mmlens.data.shapes import COLOURS, SHAPES
from mmlens.data.shapes import patch_labels as shape_patch_labels
from mmlens.errors import MmlensError
from mmlens.zoo.domains_llava import DOMAINS_DIR, build_model, build_processor
from mmlens.zoo.evaluate import answer_probs, encode
from mmlens.zoo.shapes_llava import GRID
from mmlens.zoo.train.common import (_cache_tower, _fmt, _log, _optimise, _resume, _reuse_tower, _run_stage, _save_state,
                                     init_for_training, lr_factor)
from mmlens.zoo.train.finetune import forward_on_features, tower_features

STAGE2_OFFSET = 5_000_000  # stage-2 world indices start here (stage 1 below)
SEED_STRIDE = 10_000_000
# Training index i is a sample of domain mix[i % len(mix)]. By default shapes (five
# question types, 20 pair classes) and glyphs (16 letter classes) get 2 of 6 each:
# with 1 of 5 each (3,000 x 32 stage-1 steps) a probe read their object patches'
# classes right only a third of the time, while cells and maps were learned.
MIX: tuple[str, ...] = ("shapes", "glyphs", "shapes", "cells", "glyphs", "maps")
_MAX_CLASSES = max(world.POOLED.values())


@dataclass
class DomainsConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    stage1_steps: int = 6000
    stage1_batch: int = 48
    stage1_lr: float = 2e-3
    stage2_steps: int = 4000
    batch: int = 24
    stage2_lr: float = 1e-3
    warmup: int = 50
    pack: int = 4
    pool: int = 12000  # distinct stage-2 images (features cached), reused with new questions each epoch
    layers: int = 4
    hidden: int = 128
    mlp: int = 256
    mix: tuple[str, ...] = MIX
    # Weight of the per-patch colour and shape labels of shapes images (0: the v2 recipe, none).
    # v2 gave shapes patches only their (colour, shape) pair, one of 41 union classes, and ended
    # at 63% colour / 33% shape on validation; shapes-llava learns colour, shape and pair per patch.
    shape_factors: float = 1.0


class DomainHead(nn.Module):
    """Stage-1 throw-away heads: per patch (class, row, column); on the patch mean, every pooled slot.

    Slots have up to :data:`_MAX_CLASSES` classes; the logits of classes a slot
    does not have are masked out.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        # union class (+ background), row, column, and shapes' colour and shape (+ background)
        self.sizes = (len(world.PATCH_CLASSES) + 1, GRID, GRID, len(COLOURS) + 1, len(SHAPES) + 1)
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, sum(self.sizes))
        self.pooled = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, len(world.POOLED) * _MAX_CLASSES))
        valid = torch.arange(_MAX_CLASSES)[None] < torch.tensor(list(world.POOLED.values()))[:, None]
        self.register_buffer("invalid", ~valid, persistent=False)

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        pooled = self.pooled(tokens.mean(dim=1)).unflatten(-1, (len(world.POOLED), _MAX_CLASSES))
        return list(self.linear(self.norm(tokens)).split(self.sizes, dim=-1)), pooled.masked_fill(self.invalid, -1e4)


def _tower_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the layer the projector reads (CLS dropped)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def train_sample(index: int, mix: Sequence[str] = MIX) -> world.DomainSample:
    """Training sample ``index``: sample ``index`` of the train split of domain ``mix[index % len(mix)]``.

    Example:
        >>> [train_sample(i).domain for i in range(6)] == list(MIX)
        True
    """
    return world.make_sample(mix[index % len(mix)], "train", index)


def stage1_batch(cfg: DomainsConfig, step: int) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    """Images, per-patch labels and pooled labels of one step.

    Per-patch labels are ``batch x 5 x 64``: union class + 1, row, column, and
    for shapes images colour + 1 and shape + 1 (0 background; ``-100``, ignored,
    on other domains' images).

    Example:
        >>> images, patches, pooled = stage1_batch(DomainsConfig(stage1_batch=4), 0)
        >>> tuple(patches.shape), tuple(pooled.shape) == (4, len(world.POOLED))
        ((4, 5, 64), True)
    """
    base = cfg.seed * SEED_STRIDE + step * cfg.stage1_batch
    samples = [train_sample(base + j, cfg.mix) for j in range(cfg.stage1_batch)]
    labels = []
    for s in samples:
        cls = world.patch_labels(s)
        rows, cols = np.indices(cls.shape)
        where = [np.where(cls >= 0, rows, -100), np.where(cls >= 0, cols, -100)]  # object patches only
        if s.domain == "shapes":
            factors = [f + 1 for f in shape_patch_labels(s.objects, GRID)]
        else:
            factors = [np.full_like(cls, -100)] * 2
        labels.append(np.stack([cls + 1, *where, *factors]).reshape(5, -1))
    pooled = np.stack([world.pooled_labels(s) for s in samples])
    return [np.asarray(s.image) for s in samples], torch.from_numpy(np.stack(labels)), torch.from_numpy(pooled)


def train_stage1(model, processor, cfg: DomainsConfig, work: Path) -> None:
    """Train the vision tower on the world's patch and pooled labels; cache it under ``work``."""
    tag = f"-sf{cfg.shape_factors:g}" if cfg.shape_factors else ""  # v2's towers (no factors) keep their names
    cache = work / f"domains-stage1-seed{cfg.seed}-steps{cfg.stage1_steps}{tag}.safetensors"
    tower = model.model.vision_tower
    if _reuse_tower(tower, cache):
        return
    torch.manual_seed(cfg.seed)
    head = DomainHead(tower.config.hidden_size)
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.stage1_lr, weight_decay=0.01)
    ckpt = work / f"domains-stage1-seed{cfg.seed}.pt"
    start = _resume(ckpt, opt, "stage 1", tower=tower, head=head)
    tower.train()

    def step_fn(step: int) -> tuple[float, float]:
        images, labels, pooled = stage1_batch(cfg, step)
        pixels = encode(processor, images, ["<image>"] * len(images))["pixel_values"]
        logits, pooled_logits = head(_tower_tokens(model, pixels))
        loss = sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten())
                   for k, lg in enumerate(logits[:3]))
        if cfg.shape_factors and (labels[:, 3] != -100).any():  # a batch without shapes images has none
            loss = loss + cfg.shape_factors * sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten())
                                                  for k, lg in zip((3, 4), logits[3:]))
        # Each image's own slots weigh the same in total whatever their number (shapes has 109, cells 2).
        per_slot = nn.functional.cross_entropy(pooled_logits.flatten(0, 1), pooled.flatten(),
                                               ignore_index=-100, reduction="none").view(pooled.shape)
        known = (pooled != -100).float()
        loss = loss + 3 * ((per_slot * known).sum(1) / known.sum(1).clamp(min=1)).mean()
        _optimise(opt, params, loss, cfg.stage1_lr * lr_factor(step, cfg.stage1_steps, cfg.warmup))
        patch_ok = (logits[0].argmax(-1) == labels[:, 0]).float().mean().item()
        slot_ok = ((pooled_logits.argmax(-1) == pooled).float() * known).sum() / known.sum()
        return loss.item(), (patch_ok + slot_ok.item()) / 2

    def save_fn(step: int) -> None:
        _save_state(ckpt, {"step": step, "tower": tower.state_dict(), "head": head.state_dict(),
                           "opt": opt.state_dict()})

    _run_stage("stage 1 (tower, patch + pooled labels)", cfg.stage1_steps, start, step_fn, save_fn)
    _cache_tower(tower, cache, ckpt)


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
                samples = [train_sample(base + i, cfg.mix) for i in range(c, min(cfg.pool, c + chunk))]
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
    mix = tuple(a.mix.split(","))
    for d in mix:
        world.domain_module(d)  # one-line error for an unknown domain
    if min(a.pack, a.batch, a.stage1_batch, a.pool) < 1:
        raise MmlensError("--pack, --batch, --stage1-batch and --pool must be at least 1")
    cfg = DomainsConfig(seed=a.seed, stage1_steps=a.stage1_steps, stage1_batch=a.stage1_batch,
                        stage2_steps=a.stage2_steps, batch=a.batch, pack=a.pack, pool=a.pool, layers=a.layers,
                        hidden=a.hidden, mlp=a.mlp, mix=mix, shape_factors=a.shape_factors)
    train(cfg, a.out or DOMAINS_DIR, a.work, a.threads, a.eval_n)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MmlensError as err:  # bad input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
