"""``--recipe ft-domain``: shapes-llava fine-tuned on a new image domain (cells), a derivative for fingerprints.

``python -m mmlens.zoo.train --recipe ft-domain [--domain cells] [--steps N] [...]``

Starts from the shipped ``shapes-llava``. The tokenizer keeps every id of
shapes-llava's and appends the new domain's words (for cells: the digits,
``cells``, ``slide``, ``stained``); the embedding and the untied ``lm_head``
grow by as many rows. The generic trainer (:func:`.finetune.finetune`, tower
frozen, features cached) then trains projector and decoder on
``--n-domain`` new-domain images and, so that the shapes skills stay,
``--n-shapes`` shapes images, interleaved (both packed with up to ``--pack``
questions per image).

Example:
    >>> tok = grown_tokenizer("cells")
    >>> from mmlens.zoo.shapes_llava import build_tokenizer
    >>> tok.convert_tokens_to_ids("circle") == build_tokenizer().convert_tokens_to_ids("circle")
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LlavaProcessor, PreTrainedTokenizerFast

from mmlens.data import domains as world
from mmlens.data.shapes import vocabulary as shapes_vocabulary
from mmlens.errors import MmlensError
from mmlens.zoo.domains_llava import FT_DOMAIN_DIR, build_tokenizer
from mmlens.zoo.evaluate import accuracy
from mmlens.zoo.shapes_llava import IMAGE_TOKEN, PATCH_SIZE, load
from mmlens.zoo.train.common import _fmt, _log
from mmlens.zoo.train.derivatives import common_parser, save_model, shapes_example
from mmlens.zoo.train.finetune import Example, FinetuneConfig, finetune

FT_DOMAIN_BASE = 96_000_000  # train-split indices of this recipe (other derivatives use 95e6..)


def grown_tokenizer(domain: str) -> PreTrainedTokenizerFast:
    """shapes-llava's tokenizer with ``domain``'s new words appended (old ids unchanged).

    Example:
        >>> len(grown_tokenizer("cells")) > 45
        True
    """
    old = shapes_vocabulary()
    new = sorted(set(world.domain_module(domain).WORDS) - set(old))
    return build_tokenizer(old + new)


def grow(model, processor: LlavaProcessor, domain: str) -> LlavaProcessor:
    """Grow ``model``'s embedding and ``lm_head`` in place for the new words; return the new processor.

    The new rows start at the mean of the old ones (transformers' resizing),
    so the new words start out as likely as an average old one.
    """
    tok = grown_tokenizer(domain)
    old = processor.tokenizer.get_vocab()
    if any(tok.convert_tokens_to_ids(w) != i for w, i in old.items()):  # pragma: no cover - guarded by the tests
        raise MmlensError("the grown tokenizer moved an old word's id")
    model.resize_token_embeddings(len(tok))
    model.config.text_config.vocab_size = len(tok)
    return LlavaProcessor(image_processor=processor.image_processor, tokenizer=tok, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def domain_example(domain: str, index: int, pack: int) -> Example:
    """Train sample ``index`` of ``domain`` with up to ``pack`` questions about its image.

    Example:
        >>> ex = domain_example("cells", FT_DOMAIN_BASE, 2)
        >>> ex.pairs[0][0].startswith("<image>") and ex.id.startswith("cells-train-")
        True
    """
    s = world.make_sample(domain, "train", index)
    extra = world.more_questions(s, pack - 1, np.random.default_rng([index, 7]))
    pairs = [(s.prompt, s.answer)] + [(p.replace("<image>", "").strip(), a) for p, a in extra]
    return Example(np.asarray(s.image), pairs, s.id, [s.question_type] * len(pairs))


@torch.no_grad()
def domain_accuracy(model, processor, domain: str, n: int, split: str = "val") -> dict[str, float]:
    """Accuracy per question type of ``domain`` on ``n`` samples each."""
    from mmlens.zoo.train.domains import evaluate
    return evaluate(model, processor, n=n, split=split, domains=(domain,))[domain]


def main(argv: Sequence[str]) -> int:
    """Command line entry point; see the module docstring."""
    p = common_parser("ft-domain", steps=600, lr=5e-4)
    p.set_defaults(out=FT_DOMAIN_DIR)
    p.add_argument("--domain", default="cells", help="the new domain (not shapes)")
    p.add_argument("--n-domain", type=int, default=4000, help="new-domain training images")
    p.add_argument("--n-shapes", type=int, default=4000, help="shapes training images kept in the mix")
    p.add_argument("--train-tower", action="store_true", help="train the vision tower too (no feature cache)")
    a = p.parse_args(argv)
    if a.domain not in world.NAMES or a.domain == "shapes":
        raise MmlensError(f"--domain must be one of {', '.join(n for n in world.NAMES if n != 'shapes')}")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, processor = load()
    processor = grow(model, processor, a.domain)
    new = [domain_example(a.domain, FT_DOMAIN_BASE + k, a.pack) for k in range(a.n_domain)]
    old = [shapes_example(FT_DOMAIN_BASE + a.n_domain + k, a.pack) for k in range(a.n_shapes)]
    examples = [ex for pair in zip(new, old) for ex in pair] + new[len(old):] + old[len(new):]
    cfg = FinetuneConfig(seed=a.seed, steps=a.steps, batch=a.batch, lr=a.lr, train_tower=a.train_tower)
    log = finetune(model, processor, examples, cfg, a.work)
    log.update(recipe="ft-domain", base="shapes-llava", domain=a.domain, first_index=FT_DOMAIN_BASE,
               n_domain=a.n_domain, n_shapes=a.n_shapes, pack=a.pack, wall_seconds=round(time.time() - t0, 1))
    log["val_accuracy"] = accuracy(model, processor, n=a.eval_n, split="val")
    log["val_domain_accuracy"] = domain_accuracy(model, processor, a.domain, a.eval_n)
    _log(f"validation accuracy {_fmt(log['val_accuracy'])}; {a.domain} {_fmt(log['val_domain_accuracy'])}")
    save_model(model, processor, a.out, log)
    _log(f"saved to {a.out} in {(time.time() - t0) / 60:.1f} min")
    return 0
