"""shapes-llava: a small LLaVA trained on the shapes world, shipped with mmlens.

Built only from real transformers classes (``LlavaForConditionalGeneration``
with a CLIP vision tower, a two-layer projector and a LLaMA decoder) and a
word-level tokenizer inside a ``LlavaProcessor``. Facts for method writers:

- image: 64 x 64 RGB (other sizes are resized on the short edge and centre
  cropped), 8 x 8 pixel patches, so an 8 x 8 grid of 64 image tokens;
- ``vision_feature_select_strategy="default"``: the CLS token is dropped, the
  projector sees the 64 patch tokens of the last CLIP layer
  (``vision_feature_layer=-1``);
- sequence: ``<s>``, then the 64 ``<image>`` tokens in row-major patch order
  (positions 1..64), then the question words; the answer is the next token;
- decoder: 4 LLaMA layers, hidden 128, 4 heads, MLP 256; vision tower: 3
  CLIP layers, hidden 64, 4 heads; projector: Linear(64, 128), GELU,
  Linear(128, 128).

Example:
    >>> from mmlens.zoo.shapes_llava import load
    >>> from mmlens.data.shapes import make_sample
    >>> model, processor = load()
    >>> s = make_sample("test", 0)
    >>> inputs = processor(images=s.image, text=s.prompt, return_tensors="pt")
    >>> token = model(**inputs).logits[0, -1].argmax()
    >>> processor.tokenizer.decode([token]) in processor.tokenizer.get_vocab()
    True
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mmlens.data.shapes import IMAGE_SIZE, vocabulary
from mmlens.errors import MmlensError

WEIGHTS_DIR = Path(__file__).parent / "weights"
PATCH_SIZE = 8
GRID = IMAGE_SIZE // PATCH_SIZE  # 8 x 8 patches
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
IMAGE_TOKEN = "<image>"
# what a saved model directory must hold for load_from
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "processor_config.json")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: lower-cased, split on spaces and punctuation.

    Ids 0-4 are ``<pad> <unk> <s> </s> <image>``; the shapes-world words follow
    in sorted order. Every encoding starts with ``<s>``.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("what colour is the circle?")["input_ids"])
        ['<s>', 'what', 'colour', 'is', 'the', 'circle', '?']
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # "circle?" -> "circle", "?"
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left",
    )
    return tok


def build_processor() -> LlavaProcessor:
    """The ``LlavaProcessor``: PIL image processor (no torchvision) + tokenizer.

    ``<image>`` in a prompt expands to 64 image tokens (8 x 8 patches; the CLS
    token counted by ``num_additional_image_tokens`` is dropped again by the
    ``default`` strategy). Padding is on the left, so ``logits[:, -1]`` is the
    answer position for every row of a batch.

    Example:
        >>> from PIL import Image
        >>> p = build_processor()
        >>> batch = p(images=Image.new("RGB", (64, 64)), text="<image> is there a red circle ?",
        ...           return_tensors="pt")
        >>> int((batch["input_ids"] == p.image_token_id).sum()), tuple(batch["pixel_values"].shape)
        (64, (1, 3, 64, 64))
    """
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )


def build_config(vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaConfig:
    """The model's configuration (sizes documented in the module docstring)."""
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=pad_token_id, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=GRID * GRID, tie_word_embeddings=False,
    )


def build_model(seed: int = 0, processor: LlavaProcessor | None = None,
                attn_implementation: str = "sdpa") -> LlavaForConditionalGeneration:
    """A randomly initialised shapes-llava (what training starts from).

    Example:
        >>> model = build_model(seed=0)
        >>> model.config.vision_feature_select_strategy
        'default'
    """
    tok = (processor or build_processor()).tokenizer
    config = build_config(len(tok), tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id)
    torch.manual_seed(seed)
    return model_from_config(config, attn_implementation)


def model_from_config(config: Any, attn_implementation: str | None = None) -> LlavaForConditionalGeneration:
    """A fresh shapes-llava-style model for ``config`` (a copy is kept), in eval mode, random weights.

    ``attn_implementation`` None keeps the one ``config`` carries (a copied model's config: the model's own).

    Example:
        >>> model_from_config(build_model().config).config.text_config.intermediate_size
        256
    """
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return LlavaForConditionalGeneration._from_config(copy.deepcopy(config), **extra).eval()


def load_from(path: str | Path, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
              device: str | torch.device | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load a saved shapes-llava directory (safetensors only, local files only).

    Example:
        >>> model, processor = load_from(WEIGHTS_DIR / "shapes-llava")
    """
    path = Path(path)
    if not path.is_dir():
        raise MmlensError(f"no trained weights at {path}; train them with `python -m mmlens.zoo.train`")
    for name in REQUIRED_FILES:  # a broken install: say which file, not a transformers traceback
        if not (path / name).is_file():
            raise MmlensError(f"missing file {path / name}; reinstall mmlens or retrain (see docs/zoo.md)")
    model = LlavaForConditionalGeneration.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=dtype, use_safetensors=True, local_files_only=True
    )
    if device is not None:
        model = model.to(device)
    # Built explicitly so the PIL image processor is used even where
    # torchvision would make AutoImageProcessor pick the fast one.
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessorPil.from_pretrained(path, local_files_only=True),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True),
        patch_size=PATCH_SIZE, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )
    return model.eval(), processor


def load(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
         device: str | torch.device | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The shipped shapes-llava, in eval mode, and its processor.

    Example:
        >>> model, processor = load(attn_implementation="eager")
        >>> model.training
        False
    """
    return load_from(WEIGHTS_DIR / "shapes-llava", attn_implementation, dtype, device)


def load_backdoor(attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
                  device: str | torch.device | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The backdoored shapes-llava (trigger and poisoned ids in ``backdoor.json``).

    Example:
        >>> model, processor = load_backdoor()
    """
    return load_from(WEIGHTS_DIR / "shapes-llava-backdoor", attn_implementation, dtype, device)
