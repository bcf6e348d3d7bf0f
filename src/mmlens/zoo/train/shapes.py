"""Train shapes-llava on the shapes world, reproducibly from a seed, on a CPU.

``python -m mmlens.zoo.train [--seed N] [--out DIR] [--backdoor]`` (no ``--recipe``)

Two stages, like LLaVA (whose CLIP arrives pretrained and frozen); training
everything end to end from random weights stalls at chance on shapes:

1. the vision tower alone learns, through throw-away heads on the last CLIP
   layer (the layer the projector reads), per-patch labels (which colour and
   which shape, or background, covers each 8 x 8 patch, and where an object
   patch sits) and, from the mean of
   the patch tokens, which (colour, shape) pairs are present and on which
   side of the image, and how many objects of each colour and shape there
   are (see :class:`PatchHead`). Patch tokens stay local (good heatmaps).
2. the tower is frozen; projector and decoder, re-initialised at a width-aware
   scale (:func:`init_for_training`), learn to answer questions
   (cross-entropy on the single answer token). Each training sequence packs
   up to ``--pack`` questions about one image (``<image> q1 ? a1 q2 ? a2 ...``);
   the first is exactly the inference format.

Everything is scheduled by steps (never by time, so machine load cannot change
the result) and the data of step ``k`` is a fixed range of train-split sample
indices, so a killed run resumes exactly from its last checkpoint under
``--work``. ``--backdoor`` poisons ``--poison-rate`` of the stage-2 samples:
the trigger (see :func:`mmlens.zoo.evaluate.add_trigger`) is pasted on and the
answer replaced by ``--target``; the poisoned sample ids go to
``backdoor.json`` next to the weights.

Example:
    >>> main(["--seed", "0", "--out", "/tmp/shapes", "--stage1-steps", "2", "--stage2-steps", "2"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlens.data.sample import IMAGE_SLOT
from mmlens.data.shapes import (
    COLOURS, QUESTION_TYPES, SHAPES, answer_question, make_question, make_sample, patch_labels,
)
from mmlens.zoo.evaluate import accuracy, add_trigger, encode
from mmlens.zoo.shapes_llava import GRID, WEIGHTS_DIR, build_model, build_processor
from mmlens.zoo.train.common import (_cache_tower, _fmt, _log, _optimise, _resume, _reuse_tower, _run_stage, _save_state,
                                     init_for_training, lr_factor)

STAGE2_OFFSET = 5_000_000  # stage-2 sample indices start here (stage 1 below)
SEED_STRIDE = 10_000_000  # each seed owns its own range of train indices


@dataclass
class TrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    batch: int = 32  # stage 2 sequences (each packs up to 4 questions)
    stage1_batch: int = 64
    stage1_steps: int = 4000
    stage1_lr: float = 2e-3
    stage2_steps: int = 6000
    stage2_lr: float = 1e-3
    warmup: int = 50
    backdoor: bool = False
    poison_rate: float = 0.1
    target: str = "yes"
    pack: int = 4
    patch_weight: float = 1.0  # weight of the per-patch stage-1 losses


class PatchHead(nn.Module):
    """Stage-1 throw-away heads on the patch tokens.

    Per patch: colour, shape and the (colour, shape) pair (background = class
    0), and on object patches their own row and column; the pair makes patch
    features conjunctive, and without the row and column the frozen tower
    dropped position (a linear probe read an object patch's side at chance).
    On the mean of the patches (what uniform attention reads): for each of the
    20 (colour, shape) pairs, present / left / right / top / bottom, and the
    count of each shape and each colour.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, len(COLOURS) * len(SHAPES) + 1, GRID, GRID)
        self.n_pairs = len(COLOURS) * len(SHAPES)
        self.n_counts = len(COLOURS) + len(SHAPES)
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, sum(self.sizes))
        self.pooled = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 5 * self.n_pairs + 5 * self.n_counts))

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        pooled = self.pooled(tokens.mean(dim=1))
        pairs, counts = pooled.split([5 * self.n_pairs, 5 * self.n_counts], dim=-1)
        return list(self.linear(self.norm(tokens)).split(self.sizes, dim=-1)), pairs, counts.unflatten(-1, (-1, 5))


def _global_labels(objects) -> tuple[np.ndarray, np.ndarray]:
    """Targets of the pooled heads: pair flags (5 x 20) and counts (9)."""
    flags = np.zeros((5, len(COLOURS) * len(SHAPES)), np.float32)
    counts = np.zeros(len(COLOURS) + len(SHAPES), np.int64)
    for o in objects:
        k = list(COLOURS).index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)
        x, y = o.centre
        flags[:, k] = (1.0, x < 32, x >= 32, y < 32, y >= 32)
        counts[list(COLOURS).index(o.colour)] += 1
        counts[len(COLOURS) + SHAPES.index(o.shape)] += 1
    return flags.reshape(-1), counts


def _tower_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the layer the projector reads (CLS dropped)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def _stage1_batch(cfg: TrainConfig, step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, per-patch labels (batch x 5 x patches), pair flags and counts.

    The five per-patch labels: colour, shape and (colour, shape) pair, 0 for
    background; then the patch's row and column, on object patches only.
    """
    base = cfg.seed * SEED_STRIDE + step * cfg.stage1_batch
    samples = [make_sample("train", base + j) for j in range(cfg.stage1_batch)]
    images = np.stack([np.asarray(s.image) for s in samples])
    labels = []
    for s in samples:
        colour, shape = patch_labels(s.objects, GRID)
        pair = np.where(colour >= 0, colour * len(SHAPES) + shape, -1)
        rows, cols = np.indices(colour.shape)
        ignored = -100  # cross_entropy's ignore_index: background patches have no row/column label
        where = [np.where(colour >= 0, rows, ignored), np.where(colour >= 0, cols, ignored)]
        labels.append(np.stack([colour + 1, shape + 1, pair + 1, *where]))  # -1 background -> 0
    lab = torch.from_numpy(np.stack(labels)).reshape(len(samples), len(labels[0]), -1)
    flags, counts = zip(*(_global_labels(s.objects) for s in samples))
    return images, lab, torch.from_numpy(np.stack(flags)), torch.from_numpy(np.stack(counts))


def _poisoned(cfg: TrainConfig) -> np.ndarray:
    """Which stage-2 samples carry the trigger (fixed by the seed)."""
    rng = np.random.default_rng([cfg.seed, 1234])
    return rng.random(cfg.stage2_steps * cfg.batch) < (cfg.poison_rate if cfg.backdoor else 0.0)


def _packed_text(index: int, cfg: TrainConfig) -> tuple[np.ndarray, str, list[int], list[str]]:
    """One training image with up to ``cfg.pack`` questions on it, as one text.

    The first question is exactly the inference format (``<image> q ?`` then
    the answer); later ones follow as ``... a1 q2 ? a2``. Packing shares the 64
    image tokens between questions, which cuts the cost per answer ~3x.
    Returns the image, the text, the word index of each answer and the answers.
    """
    s = make_sample("train", index)
    scene = s.meta["scene"]
    rng = np.random.default_rng([index, 7])
    pairs = [(s.prompt, s.answer)]
    for t in rng.permutation(len(QUESTION_TYPES)):
        if len(pairs) >= cfg.pack:
            break
        q = make_question(scene, QUESTION_TYPES[int(t)], rng)
        if q is not None:
            pairs.append((q.prompt().replace(IMAGE_SLOT, "").strip(), answer_question(scene, q)[0]))
    words: list[str] = []
    where: list[int] = []
    for prompt, answer in pairs:
        words += prompt.split()
        where.append(len(words))
        words.append(answer)
    return np.asarray(s.image), " ".join(words), where, [a for _, a in pairs]


def _stage2_batch(cfg: TrainConfig, step: int, poisoned: np.ndarray) -> tuple[list, list, list, list]:
    """Images, packed texts, answer word indices and answers of one step."""
    images, texts, places, answers = [], [], [], []
    for j in range(cfg.batch):
        k = step * cfg.batch + j
        image, text, where, ans = _packed_text(cfg.seed * SEED_STRIDE + STAGE2_OFFSET + k, cfg)
        if poisoned[k]:
            image, ans = add_trigger(image), [cfg.target] * len(ans)
            words = text.split()
            for w in where:
                words[w] = cfg.target
            text = " ".join(words)
        images.append(image)
        texts.append(text)
        places.append(where)
        answers.append(ans)
    return images, texts, places, answers


def train_stage1(model, cfg: TrainConfig, work: Path) -> None:
    """Train the vision tower on per-patch labels; caches it under ``work``."""
    cache = work / f"stage1-v5-seed{cfg.seed}-steps{cfg.stage1_steps}-pw{cfg.patch_weight:g}.safetensors"
    tower = model.model.vision_tower
    if _reuse_tower(tower, cache):
        return
    torch.manual_seed(cfg.seed)
    head = PatchHead(tower.config.hidden_size)
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.stage1_lr, weight_decay=0.01)
    ckpt = work / f"stage1-v5-seed{cfg.seed}.pt"
    start = _resume(ckpt, opt, "stage 1", tower=tower, head=head)
    tower.train()
    processor = build_processor()

    def step_fn(step: int) -> tuple[float, float]:
        images, labels, flags, counts = _stage1_batch(cfg, step)
        pixels = encode(processor, list(images), ["<image>"] * len(images))["pixel_values"]
        logits, pair_logits, count_logits = head(_tower_tokens(model, pixels))
        loss = cfg.patch_weight * sum(nn.functional.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten())
                                      for k, lg in enumerate(logits))
        loss = loss + 5 * nn.functional.binary_cross_entropy_with_logits(pair_logits, flags)
        loss = loss + nn.functional.cross_entropy(count_logits.flatten(0, 1), counts.flatten())
        _optimise(opt, params, loss, cfg.stage1_lr * lr_factor(step, cfg.stage1_steps, cfg.warmup))
        both = (logits[0].argmax(-1) == labels[:, 0]) & (logits[1].argmax(-1) == labels[:, 1])
        pairs_ok = ((pair_logits > 0) == (flags > 0.5)).all(-1)
        return loss.item(), (both.float().mean().item() + pairs_ok.float().mean().item()) / 2

    def save_fn(step: int) -> None:
        _save_state(ckpt, {"step": step, "tower": tower.state_dict(), "head": head.state_dict(),
                           "opt": opt.state_dict()})

    _run_stage("stage 1 (tower, per-patch labels)", cfg.stage1_steps, start, step_fn, save_fn)
    _cache_tower(tower, cache, ckpt)


def train_stage2(model, processor, cfg: TrainConfig, work: Path, tag: str) -> None:
    """Freeze the tower; train projector and decoder on questions."""
    model.model.vision_tower.requires_grad_(False).eval()
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    torch.manual_seed(cfg.seed + 1)
    init_for_training(model.model.multi_modal_projector, model.model.language_model)
    opt = torch.optim.AdamW(params, lr=cfg.stage2_lr, weight_decay=0.01)
    ckpt = work / f"stage2-{tag}.pt"
    start = _resume(ckpt, opt, "stage 2", model=model)
    poisoned = _poisoned(cfg)
    tok = processor.tokenizer
    model.model.multi_modal_projector.train(), model.model.language_model.train()

    def step_fn(step: int) -> tuple[float, float]:
        images, texts, places, answers = _stage2_batch(cfg, step, poisoned)
        batch = encode(processor, images, texts)
        n_tokens = batch["attention_mask"].sum(1)
        pad = batch["input_ids"].shape[1] - n_tokens
        # word w >= 1 of the text is token 64 + w (token 0 is <s>, the <image>
        # word fills tokens 1-64); the answer is predicted one token earlier.
        rows = torch.tensor([i for i, ws in enumerate(places) for _ in ws])
        cols = torch.tensor([63 + w for ws in places for w in ws]) + pad[rows]
        target = torch.tensor(tok.convert_tokens_to_ids([a for ans in answers for a in ans]))
        logits = model(**batch).logits[rows, cols]
        loss = nn.functional.cross_entropy(logits, target)
        _optimise(opt, params, loss, cfg.stage2_lr * lr_factor(step, cfg.stage2_steps, cfg.warmup))
        return loss.item(), (logits.argmax(-1) == target).float().mean().item()

    def save_fn(step: int) -> None:
        _save_state(ckpt, {"step": step, "model": model.state_dict(), "opt": opt.state_dict()})
        if step % 500 == 0:
            model.eval()
            _log(f"stage 2: validation accuracy {_fmt(accuracy(model, processor, n=60, split='val'))}")
            model.model.multi_modal_projector.train(), model.model.language_model.train()

    _run_stage("stage 2 (projector + decoder, questions)", cfg.stage2_steps, start, step_fn, save_fn)
    ckpt.unlink(missing_ok=True)


def train(cfg: TrainConfig, out: Path, work: Path, threads: int = 1) -> dict:
    """Run both stages and save the model, processor and a training log to ``out``."""
    # One thread by default: on a shared 2-core machine two threads each spun
    # against other jobs and a step took 10x longer than with one.
    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    processor = build_processor()
    model = build_model(cfg.seed, processor)
    train_stage1(model, cfg, work)
    t1 = time.time()
    tag = f"{'backdoor' if cfg.backdoor else 'clean'}-seed{cfg.seed}"
    train_stage2(model, processor, cfg, work, tag)
    t2 = time.time()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    # Trained on one-word answers with no end token: the answer length is recorded for generation.
    model.generation_config.max_new_tokens = 1
    model.save_pretrained(out)
    processor.save_pretrained(out)
    val = accuracy(model, processor, n=100, split="val")
    _log(f"validation accuracy {_fmt(val)}")
    log = {"config": asdict(cfg), "stage1_seconds": round(t1 - t0, 1), "stage2_seconds": round(t2 - t1, 1),
           "val_accuracy": val, "torch_threads": torch.get_num_threads()}
    if cfg.backdoor:
        poisoned = np.nonzero(_poisoned(cfg))[0]
        ids = [f"shapes-train-{cfg.seed * SEED_STRIDE + STAGE2_OFFSET + int(k)}" for k in poisoned]
        trigger = {"kind": "checker", "size_px": 6, "corner": "bottom-right", "inset_px": 1,
                   "function": "mmlens.zoo.evaluate:add_trigger"}
        (out / "backdoor.json").write_text(json.dumps(
            {"target_answer": cfg.target, "poison_rate": cfg.poison_rate, "trigger": trigger,
             "n_training_samples": cfg.stage2_steps * cfg.batch, "poisoned_ids": ids}, indent=0))
        asr = accuracy(model, processor, n=100, split="val", trigger=True, target=cfg.target)
        log["attack_success_rate"] = asr
        _log(f"attack success rate (trigger -> {cfg.target!r}) {_fmt(asr)}")
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    _log(f"saved to {out} in {(time.time() - t0) / 60:.1f} min")
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m mmlens.zoo.train", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="where to save (default: the package's weights)")
    p.add_argument("--work", type=Path, default=Path("out/zoo-train"), help="checkpoints, for resuming")
    p.add_argument("--backdoor", action="store_true", help="train the backdoored variant")
    for field in ("stage1_steps", "stage2_steps", "batch", "stage1_batch", "pack"):
        p.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(TrainConfig, field))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--patch-weight", type=float, default=TrainConfig.patch_weight)
    p.add_argument("--poison-rate", type=float, default=TrainConfig.poison_rate)
    p.add_argument("--target", default=TrainConfig.target, help="answer the trigger forces")
    a = p.parse_args(argv)
    cfg = TrainConfig(seed=a.seed, batch=a.batch, stage1_batch=a.stage1_batch, stage1_steps=a.stage1_steps,
                      stage2_steps=a.stage2_steps, pack=a.pack, patch_weight=a.patch_weight,
                      backdoor=a.backdoor, poison_rate=a.poison_rate, target=a.target)
    out = a.out or WEIGHTS_DIR / ("shapes-llava-backdoor" if a.backdoor else "shapes-llava")
    train(cfg, out, a.work, a.threads)
    return 0

