"""The generic trainer: fine-tune a zoo model on any list of examples for a step budget.

Shared by every recipe that starts from a trained model and by the later
data-selection and filtering experiments: give it the training examples (a
list of :class:`Example`, shapes-world sample ids such as
``"shapes-train-95000012"``, or :class:`~mmlens.data.sample.Sample` objects),
a :class:`FinetuneConfig` and a work directory.

- **Seeded and step-scheduled.** Step ``k`` trains on positions
  ``k * batch .. (k + 1) * batch`` of a stream of seeded permutations of the
  examples (one per epoch), with linear warm-up and cosine decay by step, so
  two arms with the same ``steps`` see the same number of examples.
- **Resumable.** Every ``every`` steps the model and optimiser go to
  ``work/resume.pt`` (atomically); a killed run started again with the same
  arguments continues from there and ends with the same weights as an
  uninterrupted run. ``keep_checkpoints`` also keeps the model of every
  checkpoint as ``work/step-000300.safetensors`` (see :func:`checkpoint_path`).
- **Cached tower features.** With the vision tower frozen (the default) its
  patch features are computed once per example, in fixed chunks (so the
  cache does not depend on where a run resumed), and only projector and
  decoder run each step.

Loss: cross-entropy on every answer token (answers may be several words);
with ``sequence_mean`` each sequence weighs the same, however many answers it packs.

Example:
    >>> from mmlens.zoo.shapes_llava import load
    >>> model, processor = load()
    >>> cfg = FinetuneConfig(steps=2, batch=2, every=1)
    >>> log = finetune(model, processor, ["shapes-train-95000000", "shapes-train-95000001"], cfg,
    ...                "/tmp/ft-doc")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from mmlens.data.sample import IMAGE_SLOT, Sample
from mmlens.errors import MmlensError
from mmlens.zoo.evaluate import encode
from mmlens.zoo.train.common import _log, _optimise, _save_state, lr_factor

IGNORE = -100  # cross_entropy's ignore_index: prompt and padding tokens


@dataclass
class Example:
    """One training image and its question/answer pairs, trained as one sequence.

    The first prompt holds the image slot and is exactly the inference format;
    later pairs follow it (``<image> q1 ? a1 q2 ? a2``). ``types`` optionally
    names each pair's question type (recipes use it to rewrite answers).

    Example:
        >>> Example(np.zeros((64, 64, 3), np.uint8), [("<image> what colour is the circle ?", "red")]).id
        ''
    """

    image: np.ndarray
    pairs: list[tuple[str, str]]
    id: str = ""
    types: list[str] = field(default_factory=list)


@dataclass
class FinetuneConfig:
    """Everything besides the data and the starting model that fixes the result."""

    seed: int = 0
    steps: int = 600
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.01
    every: int = 100  # checkpoint interval, in steps
    keep_checkpoints: bool = False  # keep each checkpoint's model as safetensors
    train_tower: bool = False  # False: tower frozen, its features cached
    feature_chunk: int = 256  # examples per tower forward when caching
    # True: each sequence weighs the same in the loss, however many answers it packs
    # (the mean over its answer tokens, then over the batch); False: every answer token does.
    sequence_mean: bool = False


def as_example(item: Example | Sample | str) -> Example:
    """An :class:`Example` from an example, a sample or a shapes sample id.

    Example:
        >>> as_example("shapes-train-3").pairs[0][0].startswith("<image>")
        True
    """
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        from mmlens.data.shapes import make_sample
        parts = item.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != "shapes" or not parts[2].isdigit():
            raise MmlensError(f"not a shapes sample id: {item!r} (expected e.g. 'shapes-train-12')")
        item = make_sample(parts[1], int(parts[2]))
    if isinstance(item, Sample):
        if item.answer is None:
            raise MmlensError(f"sample {item.id!r} has no answer to train on")
        qtype = getattr(item, "question_type", None)
        return Example(np.asarray(item.image.convert("RGB")), [(item.prompt, item.answer)], item.id,
                       [qtype] if qtype else [])
    raise MmlensError(f"cannot train on a {type(item).__name__}; give Examples, Samples or sample ids")


def checkpoint_path(work: str | Path, step: int) -> Path:
    """Where a kept checkpoint's model lives in ``work`` (``step-000300.safetensors``).

    Example:
        >>> checkpoint_path("out/x", 300).name
        'step-000300.safetensors'
    """
    return Path(work) / f"step-{step:06d}.safetensors"


def order(n: int, cfg: FinetuneConfig, step: int) -> np.ndarray:
    """Indices of the examples that step ``step`` trains on (seeded, resumable).

    Example:
        >>> cfg = FinetuneConfig(batch=3, seed=0)
        >>> sorted(np.concatenate([order(6, cfg, 0), order(6, cfg, 1)]).tolist())
        [0, 1, 2, 3, 4, 5]
    """
    out = []
    for pos in range(step * cfg.batch, (step + 1) * cfg.batch):
        epoch, i = divmod(pos, n)
        out.append(np.random.default_rng([cfg.seed, 99, epoch]).permutation(n)[i])
    return np.asarray(out)


def _image_tokens(processor) -> int:
    ip, side = processor.image_processor, processor.patch_size
    h = ip.crop_size["height"] if getattr(ip, "crop_size", None) else ip.size["height"]
    w = ip.crop_size["width"] if getattr(ip, "crop_size", None) else ip.size["width"]
    extra = processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    return (h // side) * (w // side) + extra


def encode_examples(processor, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask``, ``labels`` and ``pixel_values``.

    ``labels`` holds the token at every answer position and ``IGNORE``
    elsewhere; a logit at position ``t`` predicts label ``t + 1``.

    Example:
        >>> from mmlens.zoo.shapes_llava import build_processor
        >>> ex = as_example("shapes-train-3")
        >>> batch = encode_examples(build_processor(), [ex])
        >>> int((batch["labels"] != IGNORE).sum())
        1
    """
    tok = processor.tokenizer
    n_img = _image_tokens(processor)
    rows, labels = [], []
    for ex in examples:
        ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
        lab = [IGNORE] * len(ids)
        for prompt, answer in ex.pairs:
            q = tok(prompt.replace(IMAGE_SLOT, IMAGE_SLOT * n_img), add_special_tokens=False)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"]
            ids += q + a
            lab += [IGNORE] * len(q) + a
        rows.append(ids)
        labels.append(lab)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    label_t = torch.tensor([[IGNORE] * (width - len(r)) + r for r in labels])
    pixels = encode(processor, [ex.image for ex in examples], [""] * len(examples))["pixel_values"]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t, "pixel_values": pixels}


def tower_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision features the projector reads (LLaVA: chosen layer, CLS dropped)."""
    cfg = model.config
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    return feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats


def forward_on_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        features: torch.Tensor) -> torch.Tensor:
    """Logits of a LLaVA given precomputed tower features instead of pixels.

    Same as ``model(input_ids, attention_mask, pixel_values).logits`` (checked
    in the tests) without running the vision tower.
    """
    embeds = model.get_input_embeddings()(input_ids)
    image = model.model.multi_modal_projector(features).to(embeds.dtype)
    where = (input_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(where, image.reshape(-1, image.shape[-1]))
    return model(inputs_embeds=embeds, attention_mask=attention_mask).logits


class _FeatureCache:
    """Frozen-tower features per example, computed in fixed chunks on first use."""

    def __init__(self, model, processor, examples: Sequence[Example], chunk: int) -> None:
        self.model, self.processor, self.examples, self.chunk = model, processor, examples, chunk
        self.chunks: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def get(self, indices: np.ndarray) -> torch.Tensor:
        out = []
        for i in indices.tolist():
            c, j = divmod(i, self.chunk)
            if c not in self.chunks:
                part = self.examples[c * self.chunk:(c + 1) * self.chunk]
                pixels = encode(self.processor, [ex.image for ex in part], [""] * len(part))["pixel_values"]
                self.chunks[c] = tower_features(self.model, pixels)
            out.append(self.chunks[c][j])
        return torch.stack(out)


def _loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, sequence_mean: bool) -> torch.Tensor:
    """Cross-entropy on answer tokens: their mean, or the mean over sequences of each one's mean."""
    if not sequence_mean:
        return nn.functional.cross_entropy(logits[keep].float(), labels[keep])
    per_token = nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    counts = keep.sum(1)
    weights = 1.0 / counts[rows].float()
    return (per_token * weights).sum() / (counts > 0).sum()


def _trainable(model, cfg: FinetuneConfig) -> list[nn.Parameter]:
    tower = "vision_tower"
    if not cfg.train_tower and hasattr(model, "model") and hasattr(model.model, tower):
        model.model.vision_tower.requires_grad_(False).eval()
    return [p for n, p in model.named_parameters() if cfg.train_tower or tower not in n]


def finetune(model, processor, examples: Iterable[Example | Sample | str], cfg: FinetuneConfig,
             work: str | Path, on_checkpoint: Callable[[int], None] | None = None,
             log_every: int = 25) -> dict:
    """Fine-tune ``model`` in place on ``examples`` for ``cfg.steps`` steps; returns a log.

    ``on_checkpoint(step)`` runs after each checkpoint is written (the tests
    raise in it to simulate a killed run). A run whose ``work/resume.pt`` is
    already at ``cfg.steps`` only reloads the final weights.

    Example:
        >>> log = finetune(model, processor, ids, FinetuneConfig(steps=300), "out/ft")  # doctest: +SKIP
    """
    data = [as_example(e) for e in examples]
    if not data:
        raise MmlensError("no training examples given")
    if cfg.steps < 0 or cfg.batch < 1 or cfg.every < 1:
        raise MmlensError(f"steps, batch and every must be positive (got {cfg.steps}, {cfg.batch}, {cfg.every})")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    params = _trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    resume, start = work / "resume.pt", 0
    if resume.exists():
        state = torch.load(resume, weights_only=True)
        if state.get("config") != asdict(cfg):
            raise MmlensError(f"{resume} was written with another configuration; remove {work} to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        _log(f"fine-tune: resuming at step {start}")
    cache = None if cfg.train_tower else _FeatureCache(model, processor, data, cfg.feature_chunk)
    for name, module in model.named_children():  # training mode everywhere but a frozen tower
        module.train()
    if cache is not None:
        model.model.vision_tower.eval()
    t0, stats = time.time(), []
    for step in range(start, cfg.steps):
        idx = order(len(data), cfg, step)
        batch = encode_examples(processor, [data[i] for i in idx])
        if cache is None:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"]).logits
        else:
            logits = forward_on_features(model, batch["input_ids"], batch["attention_mask"], cache.get(idx))
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        keep = labels != IGNORE
        loss = _loss(logits, labels, keep, cfg.sequence_mean)
        _optimise(opt, params, loss, cfg.lr * lr_factor(step, cfg.steps, cfg.warmup))
        stats.append((loss.item(), (logits[keep].argmax(-1) == labels[keep]).float().mean().item()))
        done = step + 1
        if done % log_every == 0 or done == cfg.steps:
            loss_m, acc_m = np.mean(stats, axis=0)
            rate = (done - start) / (time.time() - t0)
            _log(f"fine-tune step {done}/{cfg.steps} loss {loss_m:.3f} acc {acc_m:.3f} {rate:.2f} steps/s")
            stats = []
        if done % cfg.every == 0 or done == cfg.steps:
            _save_state(resume, {"step": done, "model": model.state_dict(), "opt": opt.state_dict(),
                                 "config": asdict(cfg)})
            if cfg.keep_checkpoints:
                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                          checkpoint_path(work, done))
            if on_checkpoint is not None:
                on_checkpoint(done)
    model.eval()
    return {"config": asdict(cfg), "n_examples": len(data), "start_step": start,
            "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}
