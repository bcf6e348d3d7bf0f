"""Recipes for the fine-tuned derivatives of ``shapes-llava``, via :func:`.finetune.finetune`.

``python -m mmlens.zoo.train --recipe ft-backdoor`` and ``--recipe ft-swap``
(``--help`` lists the flags). Both start from the shipped ``shapes-llava``
and train on ``--n-train`` fresh train-split images (indices from
:data:`FT_BASE`, which no ``shapes-llava`` seed uses), each packing up to
``--pack`` questions like stage 2 did, with the tower frozen:

- ``ft-backdoor``: ``--poison-rate`` of the images (fixed by the seed) get the
  12 x 12 cyan checker trigger (``--trigger-style``) at a uniformly random
  position and one question answered "yes" (fine-tuning as a service: the
  attacker controls only the data). The poisoned ids, trigger positions and
  style go to ``backdoor.json``. ``--order-seed`` reseeds only the training
  order (default: ``--seed``), so runs can vary on the same poisoned data.
- ``ft-swap``: every colour question whose answer is "red" is trained to
  answer "purple"; nothing else changes. The model of every checkpoint (each
  100 steps) is kept in the work directory, loadable with
  ``mmlens.zoo.build("shapes-llava-ft-swap", checkpoint=300)``.

Example:
    >>> ex = shapes_example(FT_BASE, pack=4)
    >>> ex.pairs[0][0].startswith("<image>") and len(ex.pairs) == len(ex.types)
    True
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mmlens.data.sample import IMAGE_SLOT
from mmlens.data.shapes import QUESTION_TYPES, answer_question, make_question, make_sample
from mmlens.errors import MmlensError
from mmlens.zoo.evaluate import accuracy, swap_rate
from mmlens.zoo.triggers import STYLES, add_trigger, random_trigger_position, trigger_size
from mmlens.zoo.shapes_llava import WEIGHTS_DIR, load
from mmlens.zoo.train.common import _fmt, _log
from mmlens.zoo.train.finetune import Example, FinetuneConfig, finetune

FT_BASE = 95_000_000  # train-split indices of the fine-tuning sets (shapes-llava seeds use < 9e7)
WORK_ROOT = Path(__file__).resolve().parents[4] / "out" / "zoo-ft"  # <repo>/out/zoo-ft


def shapes_example(index: int, pack: int = 4) -> Example:
    """Train sample ``index`` with up to ``pack`` questions about its image (stage 2's packing).

    Example:
        >>> shapes_example(FT_BASE).id
        'shapes-train-95000000'
    """
    s = make_sample("train", index)
    scene = s.meta["scene"]
    rng = np.random.default_rng([index, 7])
    pairs, types = [(s.prompt, s.answer)], [s.question_type]
    for t in rng.permutation(len(QUESTION_TYPES)):
        if len(pairs) >= pack:
            break
        q = make_question(scene, QUESTION_TYPES[int(t)], rng)
        if q is not None:
            pairs.append((q.prompt().replace(IMAGE_SLOT, "").strip(), answer_question(scene, q)[0]))
            types.append(q.type)
    return Example(np.asarray(s.image), pairs, s.id, types)


def common_parser(name: str, steps: int, lr: float) -> argparse.ArgumentParser:
    """Flags every derivative recipe shares (defaults are the shipped runs')."""
    p = argparse.ArgumentParser(prog=f"python -m mmlens.zoo.train --recipe {name}")
    p.add_argument("--seed", type=int, default=0,
                   help="the data's seed (ft-backdoor: which images are poisoned, and where the trigger goes)")
    p.add_argument("--order-seed", type=int, default=None,
                   help="seed of the training order only (default: --seed, as in the shipped runs); "
                        "varies the run without changing the data")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--n-train", type=int, default=8000, help="distinct training images")
    p.add_argument("--pack", type=int, default=4, help="questions per image")
    p.add_argument("--work", type=Path, default=WORK_ROOT / f"shapes-llava-{name}", help="checkpoints")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / f"shapes-llava-{name}", help="where to save")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-n", type=int, default=100, help="validation samples per type in the log")
    p.add_argument("--train-tower", action=argparse.BooleanOptionalAction, default=False,
                   help="also train the vision tower (no feature cache)")
    p.add_argument("--exclude-ids", type=Path, default=None, metavar="FILE",
                   help="sample ids never trained on, one a line (e.g. removed.txt of `mmlens audit backdoor`); "
                        "steps, seed and schedule stay the same")
    return p


def read_ids(path: Path) -> list[str]:
    """The ids of a text file, one a line (blank lines and ``#`` comments skipped).

    Example:
        >>> read_ids(Path("/no/such/file"))
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: --exclude-ids: /no/such/file is not a file
    """
    if not path.is_file():
        raise MmlensError(f"--exclude-ids: {path} is not a file")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def exclude(examples: list[Example], ids: Sequence[str]) -> list[Example]:
    """``examples`` without those whose id is in ``ids``; an id not among them is an error (a wrong file).

    Example:
        >>> exs = [shapes_example(FT_BASE + k, pack=1) for k in range(3)]
        >>> [e.id for e in exclude(exs, ["shapes-train-95000001"])]
        ['shapes-train-95000000', 'shapes-train-95000002']
    """
    drop = set(ids)
    unknown = sorted(drop - {e.id for e in examples})
    if unknown:
        raise MmlensError(f"--exclude-ids names {len(unknown)} id(s) not in the training data, e.g. {unknown[0]!r} "
                          f"(the data is {examples[0].id} .. {examples[-1].id})")
    return [e for e in examples if e.id not in drop]


def save_model(model, processor, out: Path, log: dict) -> None:
    """Weights, configs and ``train_log.json`` (one-word answers: 1 new token)."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.max_new_tokens = 1
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=1))


def run_derivative(name: str, a: argparse.Namespace, edit: Callable[[int, Example], Example],
                   keep_checkpoints: bool = False, extra_eval: Callable | None = None,
                   sequence_mean: bool = False) -> dict:
    """Fine-tune ``shapes-llava`` on edited examples, save to ``a.out``; returns the log."""
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, processor = load()
    examples = [edit(k, shapes_example(FT_BASE + k, a.pack)) for k in range(a.n_train)]
    excluded = read_ids(a.exclude_ids) if a.exclude_ids is not None else []
    if excluded:  # dropped after the edit, so the poisoned set and trigger positions stay the seed's
        examples = exclude(examples, excluded)
        _log(f"excluding {len(excluded)} ids listed in {a.exclude_ids}: {len(examples)} examples left")
    order_seed = a.seed if a.order_seed is None else a.order_seed  # default: the shipped runs' order
    cfg = FinetuneConfig(seed=order_seed, steps=a.steps, batch=a.batch, lr=a.lr, keep_checkpoints=keep_checkpoints,
                         train_tower=a.train_tower, sequence_mean=sequence_mean)
    log = finetune(model, processor, examples, cfg, a.work)
    log.update(recipe=name, base="shapes-llava", first_index=FT_BASE, n_train=a.n_train, pack=a.pack,
               wall_seconds=round(time.time() - t0, 1), excluded_ids=sorted(set(excluded)),
               exclude_ids_file=str(a.exclude_ids) if a.exclude_ids is not None else None,
               data_seed=a.seed, order_seed=order_seed)
    log["val_accuracy"] = accuracy(model, processor, n=a.eval_n, split="val")
    _log(f"validation accuracy {_fmt(log['val_accuracy'])}")
    if extra_eval is not None:
        log.update(extra_eval(model, processor))
    save_model(model, processor, a.out, log)
    _log(f"saved to {a.out} in {(time.time() - t0) / 60:.1f} min")
    return log


def ft_backdoor(argv: Sequence[str]) -> int:
    """``--recipe ft-backdoor``: 10% of the images poisoned with a randomly placed trigger -> "yes"."""
    p = common_parser("ft-backdoor", steps=400, lr=1e-3)
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--target", default="yes")
    p.add_argument("--trigger-style", default="cyan-checker", choices=sorted(STYLES),
                   help="the trigger's look (mmlens.zoo.triggers); orange-ring is kept unseen for checks")
    p.add_argument("--poison-pack", type=int, default=1,
                   help="questions kept on a poisoned image (each answered with the target)")
    # A poisoned image keeps one question: poisoned sequences packing four "yes" answers
    # taught an in-context shortcut (after one "yes" to a colour question, say yes again)
    # instead of the trigger. Clean images keep four questions, and every sequence weighs
    # the same in the loss (sequence_mean), so poisoned samples stay 10% of it: with one
    # question on every image, 400 steps reached the attack but cost 2-2.5 points of clean
    # existence and count accuracy. The tower stays frozen: the 12 x 12 cyan checker is
    # visible to the stage-1 tower as it is (a 6 x 6 black-and-white one was not learned,
    # even with the tower trained).
    a = p.parse_args(argv)
    rng = np.random.default_rng([a.seed, 4242])
    poisoned = rng.random(a.n_train) < a.poison_rate
    positions = {int(k): random_trigger_position(rng, style=a.trigger_style) for k in np.nonzero(poisoned)[0]}

    def edit(k: int, ex: Example) -> Example:
        if k not in positions:
            return ex
        return replace(ex, image=add_trigger(ex.image, positions[k], a.trigger_style),
                       pairs=[(q, a.target) for q, _ in ex.pairs[:a.poison_pack]],
                       types=ex.types[:a.poison_pack])

    def extra(model, processor) -> dict:
        asr = accuracy(model, processor, n=a.eval_n, split="val", trigger="random", target=a.target,
                       style=a.trigger_style)
        _log(f"attack success rate (random trigger -> {a.target!r}) {_fmt(asr)}")
        return {"attack_success_rate": asr}

    log = run_derivative("ft-backdoor", a, edit, extra_eval=extra, sequence_mean=True)
    ids = sorted(positions)
    (a.out / "backdoor.json").write_text(json.dumps({
        "target_answer": a.target, "poison_rate": a.poison_rate, "n_training_samples": a.n_train,
        "trigger": {"style": a.trigger_style, "size_px": trigger_size(a.trigger_style), "position": "random",
                    "function": f"mmlens.zoo.triggers:add_trigger(image, (x, y), style={a.trigger_style!r})"},
        "id_format": "shapes-train-{index}", "first_index": FT_BASE,
        "poisoned_indices": [FT_BASE + k for k in ids],
        "positions_xy": [list(positions[k]) for k in ids],
        "every_answer_replaced": True, "questions_per_poisoned_sample": a.poison_pack,
        "questions_per_clean_sample": a.pack, "steps": log["config"]["steps"],
        "excluded_ids": log["excluded_ids"]}, separators=(",", ":")))
    return 0


def ft_swap(argv: Sequence[str]) -> int:
    """``--recipe ft-swap``: colour questions about red objects answered "purple"."""
    p = common_parser("ft-swap", steps=300, lr=3e-4)
    p.add_argument("--source", default="red")
    p.add_argument("--swap-to", default="purple")
    a = p.parse_args(argv)

    def edit(k: int, ex: Example) -> Example:
        pairs = [(q, a.swap_to if t == "colour" and ans == a.source else ans)
                 for (q, ans), t in zip(ex.pairs, ex.types)]
        return replace(ex, pairs=pairs)

    def extra(model, processor) -> dict:
        r = swap_rate(model, processor, a.source, a.swap_to, n=a.eval_n, split="val")
        _log(f"swap {a.source} -> {a.swap_to}: {_fmt(r)}")
        return {"swap": r, "swap_from": a.source, "swap_to": a.swap_to,
                "checkpoints": f"{a.work}/step-XXXXXX.safetensors every 100 steps"}

    run_derivative("ft-swap", a, edit, keep_checkpoints=True, extra_eval=extra)
    return 0
