"""Pieces the tiny-model builders share: a word-level tokenizer and seeded init.

Everything here works offline: the tokenizer is built from a word list in code
and models are instantiated from configs, never downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

ModelT = TypeVar("ModelT", bound=PreTrainedModel)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

# Words prompts in tests, docs and the shapes world use; anything else maps to UNK.
WORDS: tuple[str, ...] = tuple(
    """
    a an the this that these those it its is are was were be been being am do does did
    what which who whom whose where when why how there here of in on at to from by with
    without for about into onto over under above below between behind near left right top
    bottom middle center centre corner side front back and or not no yes but if then so
    as than too very more most less least many much few some any all each every both
    one two three four five six seven eight nine ten zero first second third last other
    image picture photo photograph scene view frame video pixel pixels region area part
    shape shapes circle circles square squares triangle triangles rectangle star star
    ellipse oval line lines dot dots box boxes object objects thing things item items
    colour color colours colors red green blue yellow orange purple pink brown black
    white gray grey cyan magenta dark light bright big small large tiny little huge
    size sized round flat thin thick tall short long wide narrow empty full
    describe description answer question caption explain show tell name count list
    say see look find point give write read identify locate compare
    user assistant system human bot you your i me my we our they them he she his her
    can could would should will shall may might must have has had make made get got
    cat dog cow bird car tree house sky sun sea water grass road person people man woman
    child table chair bench ball apple banana cup book
    background foreground edge border outline filled solid striped pattern texture
    same different similar only also just again still even next before after
    ? . , ! : ; ' " - ( ) [ ] / 0 1 2 3 4 5 6 7 8 9
    """.split()
)


def unique(items: Iterable[str]) -> list[str]:
    """Keep the first occurrence of each item, in order.

    Example:
        >>> unique(["a", "b", "a"])
        ['a', 'b']
    """
    return list(dict.fromkeys(items))


def build_tokenizer(
    *,
    special_tokens: Sequence[str] = (),
    extra_tokens: Sequence[str] = (),
    words: Sequence[str] = WORDS,
    bos_token: str | None = BOS,
    eos_token: str = EOS,
    pad_token: str = PAD,
    unk_token: str = UNK,
    add_bos_token: bool = True,
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Build a lowercasing WordLevel tokenizer with the family's special tokens.

    ``special_tokens`` are special added tokens (skipped when decoding with
    ``skip_special_tokens``); ``extra_tokens`` are plain added tokens such as
    ``"\\n"`` that processors insert and decoding must keep. Both match before
    whitespace/punctuation splitting. Padding is on the left so that batched
    ``generate`` continues every row from its last real token.

    Example:
        >>> tok = build_tokenizer(special_tokens=["<image>"])
        >>> tok.convert_ids_to_tokens(tok("<image>What colour?")["input_ids"])
        ['<s>', '<image>', 'what', 'colour', '?']
    """
    named = [t for t in (pad_token, unk_token, bos_token, eos_token) if t is not None]
    vocab_list = unique([*named, *special_tokens, *extra_tokens, *words])
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token=unk_token))
    backend.normalizer = normalizers.Lowercase()
    # Punctuation after Whitespace so that "colour?." becomes "colour", "?", ".".
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in unique([*named, *special_tokens])]
    )
    if extra_tokens:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    kwargs: dict[str, Any] = {}
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        extra_special_tokens=list(special_tokens),
        add_bos_token=add_bos_token and bos_token is not None,
        add_eos_token=False,
        padding_side="left",
        chat_template=chat_template,
        **kwargs,
    )


def instantiate(
    model_cls: type[ModelT], config: PreTrainedConfig, *, seed: int, attn_implementation: str
) -> ModelT:
    """Instantiate ``model_cls`` from ``config`` with seeded random float32 weights, in eval mode.

    The global RNG state is restored afterwards so building a model never
    perturbs the caller's randomness.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
        ...                   num_hidden_layers=1, num_attention_heads=2)
        >>> model = instantiate(LlamaForCausalLM, cfg, seed=0, attn_implementation="eager")
        >>> model.training
        False
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def token_ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    """Ids of single tokens, failing loudly if one is missing from the vocabulary.

    Example:
        >>> tok = build_tokenizer(special_tokens=["<image>"])
        >>> token_ids(tok, "<image>")
        [4]
    """
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.unk_token_id
    missing = [t for t, i in zip(tokens, ids) if i is None or (i == unk and t != tokenizer.unk_token)]
    if missing:
        raise ValueError(f"tokens missing from the tiny vocabulary: {missing}")
    return list(ids)


def vision_config(model_type: str, image_size: int, patch_size: int) -> dict[str, Any]:
    """A tiny CLIP (``clip_vision_model``) or SigLIP (``siglip_vision_model``) tower config.

    Example:
        >>> vision_config("clip_vision_model", 32, 8)["num_hidden_layers"]
        2
    """
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    # CLIP has a projection head dimension; SigLIP's pooling head is not used by VLMs.
    cfg.update({"projection_dim": 32} if model_type.startswith("clip") else {"vision_use_head": False})
    return cfg


def llama_text_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a tiny LLaMA-style decoder (also used as Idefics3/LLaVA text configs).

    Example:
        >>> tok = build_tokenizer()
        >>> llama_text_config(len(tok), tok)["num_hidden_layers"]
        2
    """
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg
