"""Recipe ``pruned``: remove 30% of shapes-llava's decoder MLP neurons, then heal.

``python -m mmlens.zoo.train --recipe pruned [--fraction 0.3] [--steps 100] [...]``

1. **Score** every decoder MLP neuron (a row of ``gate_proj``/``up_proj`` and
   the matching column of ``down_proj``) by its mean absolute activation
   ``|act(gate(x)) * up(x)|`` (the input of ``down_proj``) over every real
   token of ``--n-score`` train samples in the inference format.
2. **Remove** the lowest-scoring ``--fraction`` of neurons in every layer
   (the same count per layer): a new model with a smaller
   ``intermediate_size`` (256 -> 179), the kept rows and columns copied.
3. **Heal**: fine-tune projector and decoder (tower frozen) with
   :func:`.finetune.finetune` on clean packed train samples.

``prune.json`` beside the weights records the score, the kept neuron indices
of every layer, and the accuracy right after removal (before healing).

Example:
    >>> from mmlens.zoo.shapes_llava import load, model_from_config
    >>> model, _ = load()
    >>> keep = [torch.arange(0, 256, 2)] * 4
    >>> smaller = prune_mlp(model, keep)
    >>> smaller.config.text_config.intermediate_size
    128
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from mmlens.data.shapes import make_sample
from mmlens.hooks import intervene
from mmlens.models.loading import wrap
from mmlens.zoo.evaluate import accuracy, encode
from mmlens.zoo.shapes_llava import load, model_from_config
from mmlens.zoo.train.common import _fmt, _log
from mmlens.zoo.train.derivatives import FT_BASE, common_parser, save_model, shapes_example
from mmlens.zoo.train.finetune import FinetuneConfig, finetune

SCORE_BASE = FT_BASE + 1_000_000  # samples that score neurons (not in any fine-tuning set)


@torch.no_grad()
def neuron_scores(model, processor, n: int = 512, batch: int = 64) -> torch.Tensor:
    """Mean ``|act(gate(x)) * up(x)|`` per decoder layer and neuron (``layers x intermediate``).

    Averaged over every non-padding token of train samples ``SCORE_BASE ..``.

    Example:
        >>> scores = neuron_scores(model, processor, n=8)
        >>> tuple(scores.shape)
        (4, 256)
    """
    wrapped = wrap(model, processor)
    sums = torch.zeros(wrapped.n_layers, model.config.text_config.intermediate_size, dtype=torch.float64)
    count = 0
    mask: list[torch.Tensor] = []

    def reader(i: int):
        def read(neurons: torch.Tensor) -> None:  # the input of down_proj: act(gate(x)) * up(x)
            sums[i] += (neurons.abs() * mask[0].unsqueeze(-1)).sum((0, 1)).double()
        return read

    with intervene(wrapped, {f"lm.L{i}.neurons": reader(i) for i in range(wrapped.n_layers)}):
        for start in range(0, n, batch):
            samples = [make_sample("train", SCORE_BASE + k) for k in range(start, min(n, start + batch))]
            enc = encode(processor, [np.asarray(s.image) for s in samples], [s.prompt for s in samples])
            mask[:] = [enc["attention_mask"].float()]
            model(**enc)
            count += int(enc["attention_mask"].sum())
    return (sums / count).float()


def keep_indices(scores: torch.Tensor, fraction: float) -> list[torch.Tensor]:
    """Per layer, the sorted indices of the neurons kept when ``fraction`` of the lowest go.

    Example:
        >>> keep_indices(torch.tensor([[3.0, 1.0, 2.0, 0.5]]), 0.5)[0].tolist()
        [0, 2]
    """
    n_keep = scores.shape[1] - int(round(fraction * scores.shape[1]))
    return [row.topk(n_keep).indices.sort().values for row in scores]


def prune_mlp(model, keep: Sequence[torch.Tensor]) -> LlavaForConditionalGeneration:
    """A copy of ``model`` whose decoder MLPs keep only the neurons ``keep[layer]``.

    Every layer must keep the same number (one ``intermediate_size`` in the config).
    """
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ValueError(f"every layer must keep the same number of neurons, got {sorted(sizes)}")
    config = copy.deepcopy(model.config)
    config.text_config.intermediate_size = sizes.pop()
    small = model_from_config(config)  # the copied config keeps the model's attention implementation
    state = model.state_dict()
    for i, idx in enumerate(keep):
        pre = f"model.language_model.layers.{i}.mlp."
        state[pre + "gate_proj.weight"] = state[pre + "gate_proj.weight"][idx]
        state[pre + "up_proj.weight"] = state[pre + "up_proj.weight"][idx]
        state[pre + "down_proj.weight"] = state[pre + "down_proj.weight"][:, idx]
    small.load_state_dict(state)
    small.generation_config = copy.deepcopy(model.generation_config)
    return small.eval()


def main(argv: Sequence[str]) -> int:
    """``--recipe pruned``: score, remove, heal, save (see the module docstring)."""
    p = common_parser("pruned", steps=100, lr=3e-4)
    p.add_argument("--fraction", type=float, default=0.3, help="share of each layer's MLP neurons removed")
    p.add_argument("--n-score", type=int, default=512, help="train samples that score the neurons")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, processor = load()
    scores = neuron_scores(model, processor, a.n_score)
    keep = keep_indices(scores, a.fraction)
    model = prune_mlp(model, keep)
    before = accuracy(model, processor, n=a.eval_n, split="val")
    _log(f"pruned to {len(keep[0])} of {scores.shape[1]} neurons per layer; "
         f"validation accuracy before healing {_fmt(before)}")
    examples = [shapes_example(FT_BASE + k, a.pack) for k in range(a.n_train)]
    cfg = FinetuneConfig(seed=a.seed, steps=a.steps, batch=a.batch, lr=a.lr)
    log = finetune(model, processor, examples, cfg, a.work)
    log.update(recipe="pruned", base="shapes-llava", first_index=FT_BASE, n_train=a.n_train, pack=a.pack,
               fraction=a.fraction, intermediate_size=len(keep[0]), val_accuracy_before_heal=before,
               wall_seconds=round(time.time() - t0, 1))
    log["val_accuracy"] = accuracy(model, processor, n=a.eval_n, split="val")
    _log(f"validation accuracy after healing {_fmt(log['val_accuracy'])}")
    save_model(model, processor, a.out, log)
    (a.out / "prune.json").write_text(json.dumps({
        "score": "mean |act(gate(x)) * up(x)| over all real tokens (input of down_proj)",
        "score_samples": f"shapes-train-{SCORE_BASE} .. {SCORE_BASE + a.n_score - 1} (inference format)",
        "fraction_removed": a.fraction, "original_intermediate_size": int(scores.shape[1]),
        "kept": [k.tolist() for k in keep]}, separators=(",", ":")))
    _log(f"saved to {a.out} in {(time.time() - t0) / 60:.1f} min")
    return 0
