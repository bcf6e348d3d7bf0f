"""domains-llava and shapes-llava-ft-domain: small LLaVAs that read the multi-domain world.

``domains-llava`` is trained from scratch on the four domains of
:mod:`mmlens.data.domains` (shapes, glyphs, cells, maps); its tokenizer covers
the union vocabulary. ``shapes-llava-ft-domain`` is ``shapes-llava``
fine-tuned on one new domain (glyphs): its tokenizer keeps shapes-llava's ids
and appends the new words, and its embedding and ``lm_head`` grow with it.
Both use shapes-llava's geometry (64 x 64 images, an 8 x 8 grid of 64
image tokens at positions 1-64, answer = the next single token) and are
stored the same way (safetensors + configs, :func:`mmlens.zoo.shapes_llava.load_from`).

Example:
    >>> from mmlens.zoo.domains_llava import build_tokenizer
    >>> tok = build_tokenizer(["what", "letter", "?"])
    >>> tok.convert_ids_to_tokens(tok("what letter ?")["input_ids"])
    ['<s>', 'what', 'letter', '?']
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mmlens.data.shapes import IMAGE_SIZE
from mmlens.errors import MmlensError
from mmlens.zoo.shapes_llava import (
    IMAGE_TOKEN, PATCH_SIZE, SPECIAL_TOKENS, WEIGHTS_DIR, build_config, load_from,
)

DOMAINS_DIR = WEIGHTS_DIR / "domains-llava"
FT_DOMAIN_DIR = WEIGHTS_DIR / "shapes-llava-ft-domain"


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer like shapes-llava's: ids 0-4 special, then ``words`` in the given order.

    Lower-cased, split on spaces and punctuation, ``<s>`` prepended, padding on the left.

    Example:
        >>> len(build_tokenizer(["yes", "no"]))
        7
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left",
    )


def build_processor(words: Sequence[str]) -> LlavaProcessor:
    """shapes-llava's processor (PIL image processor, 64 image tokens) over a tokenizer of ``words``.

    Example:
        >>> from mmlens.data.domains import vocabulary
        >>> build_processor(vocabulary()).tokenizer.convert_tokens_to_ids("north") > 4
        True
    """
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(words), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )


def build_model(processor: LlavaProcessor, seed: int = 0, layers: int = 4, hidden: int = 128,
                mlp: int = 256, attn_implementation: str = "sdpa") -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA with shapes-llava's tower and projector and a decoder of the given size.

    Example:
        >>> from mmlens.data.domains import vocabulary
        >>> m = build_model(build_processor(vocabulary()), layers=2)
        >>> m.config.text_config.num_hidden_layers
        2
    """
    tok = processor.tokenizer
    config = build_config(len(tok), tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id)
    config.text_config.num_hidden_layers = layers
    config.text_config.hidden_size = hidden
    config.text_config.intermediate_size = mlp
    config.text_config.head_dim = hidden // config.text_config.num_attention_heads
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation=attn_implementation)
    return model.eval()


def _load(path: Path, name: str, **kwargs) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    if not (path / "model.safetensors").is_file():
        raise MmlensError(f"{name}: missing {path / 'model.safetensors'}; "
                          f"train it with `python -m mmlens.zoo.train --recipe {name}`")
    return load_from(path, **kwargs)


def load(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
         device: str | torch.device | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The shipped domains-llava, in eval mode, and its processor.

    Example:
        >>> model, processor = load()  # doctest: +SKIP
    """
    return _load(DOMAINS_DIR, "domains-llava", attn_implementation=attn_implementation, dtype=dtype, device=device)


def load_ft_domain(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
                   device: str | torch.device | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The shipped shapes-llava-ft-domain (shapes-llava fine-tuned on glyphs) and its processor.

    Example:
        >>> model, processor = load_ft_domain()  # doctest: +SKIP
    """
    return _load(FT_DOMAIN_DIR, "shapes-llava-ft-domain", attn_implementation=attn_implementation,
                 dtype=dtype, device=device)
