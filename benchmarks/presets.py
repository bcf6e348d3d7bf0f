"""Random-weight models of released sizes and image geometries, built from configs in code, and prompts for them.

Timings and memory do not depend on the weights, so no download is needed.
Each family has a small preset (the released image geometry, a small tower
and decoder; for the CPU) and a 7B preset (the released config exactly; for a
GPU, built directly on the device in bf16):

- ``small`` / ``llava-1.5-7b``: LLaVA-1.5, CLIP ViT at 336 px with 14 px
  patches: 576 image tokens whatever the image.
- ``llava-next-small`` / ``llava-next-7b``: LLaVA-v1.6 (Vicuna-7B), the same
  tower with anyres tiling over five grid pinpoints: a 672 px square is the
  base view and a 2 x 2 grid of tiles, 2,880 image tokens.
- ``qwen2-vl-small`` / ``qwen2-vl-7b``: Qwen2-VL-7B-Instruct, native
  resolution with the released pixel budget: one token per 28 px square
  (a 1512 px square is 2,916 tokens, 11,664 patches in the tower).

:func:`prepare` picks the image that reaches about the asked length and fills
the rest with words.
"""

from __future__ import annotations

import argparse
import math

import torch

PRESETS = ("small", "llava-1.5-7b", "llava-next-small", "llava-next-7b", "qwen2-vl-small", "qwen2-vl-7b")
WORDS = "what colour is the circle square triangle red green blue shape in image".split()


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`build` every benchmark over these models takes: preset, device, dtype, size."""
    parser.add_argument("--preset", default="small", choices=PRESETS)
    parser.add_argument("--device", default=None, help="cpu (default for small presets) or cuda (default for 7B)")
    parser.add_argument("--dtype", default=None, help="float32 (default on the CPU) or bfloat16 (default on cuda)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (and at most this many vision layers)")
    parser.add_argument("--hidden", type=int, default=256, help="decoder width of the small presets")


def default_device(preset: str) -> str:
    """cuda for the released sizes, the CPU for the small presets."""
    return "cuda" if preset.endswith("-7b") else "cpu"


def build(preset: str, device: str, layers: int | None, hidden: int, dtype: torch.dtype):
    """A random-weight model of ``preset`` wrapped by mmlens, built directly on ``device`` in ``dtype``."""
    if preset.startswith("llava-next"):
        return _llava_next(preset, device, layers, hidden, dtype)
    if preset.startswith("qwen2-vl"):
        return _qwen2_vl(preset, device, layers, hidden, dtype)
    return _llava(preset, device, layers, hidden, dtype)


def prepare(model, tokens: int):
    """One prompt with one image and enough words to reach about ``tokens``.

    LLaVA-1.5 takes a 336 px image (576 tokens); LLaVA-NeXT a 336 px square
    under ~2,000 tokens (1,152 image tokens: its shortest), else a 672 px one
    (2,880); Qwen2-VL the largest square of 28 px cells that fits.
    """
    processor = model.processor.image_processor
    if getattr(processor, "image_grid_pinpoints", None):
        side = 336 if tokens < 2000 else 672
    elif getattr(processor, "merge_size", None):  # Qwen2-VL: one token per (14 x merge) px square
        side = 28 * max(2, math.isqrt(max(4, tokens - 40)))
    else:  # LLaVA-1.5: the prompt the earlier figures were measured on
        return _prompt(model, _image(336), max(8, tokens - 576 - 12))
    image = _image(side)
    short = _prompt(model, image, 8)
    return _prompt(model, image, max(8, 8 + tokens - int(short.input_ids.shape[1])))


def _image(side: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def _prompt(model, image, words: int):
    text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return model.prepare(f"USER: <image>\n{text} ASSISTANT:", [image])


def _clip_tower(released: bool, layers: int | None):
    """CLIP ViT-L/14-336 (LLaVA-1.5's and v1.6's tower), or a small one of the same geometry."""
    from transformers import CLIPVisionConfig

    if released:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    else:
        vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=336, patch_size=14, projection_dim=256)
    if layers is not None:
        vision.num_hidden_layers = min(vision.num_hidden_layers, layers)
    return vision


def _llama_decoder(released: bool, layers: int | None, hidden: int, pad: int):
    """Vicuna-7B / LLaMA-7B's decoder (LLaVA-1.5's and v1.6-Vicuna's), or a small one."""
    from transformers import LlamaConfig

    if released:
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=pad)
    else:
        text = LlamaConfig(vocab_size=32064, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                           num_hidden_layers=2, num_attention_heads=max(1, hidden // 64),
                           max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=pad)
    if layers is not None:
        text.num_hidden_layers = layers
    return text


def _on_device(make, device: str, dtype: torch.dtype):
    """``make()``'s model allocated and randomly initialised on ``device`` in ``dtype``, never on the CPU first."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            return make().eval()
    finally:
        torch.set_default_dtype(default)


def _llava(preset, device, layers, hidden, dtype):
    """LLaVA-1.5 (``small``: its geometry and a small decoder; ``llava-1.5-7b``: llava-hf/llava-1.5-7b-hf)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    import mmlens
    from mmlens.zoo.tiny import llava as tiny

    tokenizer = tiny.build_processor().tokenizer
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tiny.CHAT_TEMPLATE)
    released = preset == "llava-1.5-7b"
    config = LlavaConfig(vision_config=_clip_tower(released, layers),
                         text_config=_llama_decoder(released, layers, hidden, tokenizer.pad_token_id),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         pad_token_id=tokenizer.pad_token_id)
    hf = _on_device(lambda: LlavaForConditionalGeneration(config), device, dtype)
    hf.config._attn_implementation = "sdpa"
    return mmlens.wrap(hf, processor, name=f"llava-1.5 ({preset})")


def _llava_next(preset, device, layers, hidden, dtype):
    """LLaVA-v1.6 (llava-hf/llava-v1.6-vicuna-7b-hf's config; ``-small``: its geometry, small tower and decoder)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    import mmlens
    from mmlens.zoo.tiny import llava_next as tiny
    from mmlens.zoo.tiny import real_geometry as geometry

    processor = tiny.build_processor(geometry.LLAVA_V16_TILE_SIZE, geometry.LLAVA_V16_PATCH_SIZE,
                                     geometry.LLAVA_V16_GRID_PINPOINTS)
    tokenizer = processor.tokenizer
    released = preset == "llava-next-7b"
    config = LlavaNextConfig(vision_config=_clip_tower(released, layers),
                             text_config=_llama_decoder(released, layers, hidden, tokenizer.pad_token_id),
                             image_token_index=tokenizer.convert_tokens_to_ids(tiny.IMAGE_SLOT),
                             image_grid_pinpoints=geometry.LLAVA_V16_GRID_PINPOINTS, image_seq_length=576,
                             vision_feature_select_strategy="default", vision_feature_layer=-2,
                             pad_token_id=tokenizer.pad_token_id)
    hf = _on_device(lambda: LlavaNextForConditionalGeneration._from_config(config, attn_implementation="sdpa"),
                    device, dtype)
    return mmlens.wrap(hf, processor, name=f"llava-next ({preset})")


def _qwen2_vl(preset, device, layers, hidden, dtype):
    """Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct's config; ``-small``: its geometry, small tower and decoder)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import mmlens
    from mmlens.zoo.tiny import qwen2_vl as tiny
    from mmlens.zoo.tiny import real_geometry as geometry

    processor = tiny.build_processor(geometry.QWEN2_VL_MIN_PIXELS, geometry.QWEN2_VL_MAX_PIXELS)
    tokenizer = processor.tokenizer
    if preset == "qwen2-vl-7b":
        vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16}
        text = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "mrope_section": [16, 24, 24]}
    else:
        heads = max(1, hidden // 64)
        half = hidden // heads // 2  # M-RoPE's sections split head_dim / 2 as the released 16:24:24
        vision = {"depth": 2, "embed_dim": 256, "hidden_size": hidden, "mlp_ratio": 4, "num_heads": 4}
        text = {"hidden_size": hidden, "intermediate_size": hidden * 11 // 4, "num_hidden_layers": 2,
                "num_attention_heads": heads, "num_key_value_heads": heads, "rms_norm_eps": 1e-6,
                "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]}
    if layers is not None:
        text["num_hidden_layers"] = layers
        vision["depth"] = min(vision["depth"], layers)
    section = text.pop("mrope_section")
    config = Qwen2VLConfig(
        vision_config={**vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={**text, "vocab_size": 152064, "max_position_embeddings": geometry.MAX_POSITIONS,
                     "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section}},
        **tiny.vision_token_ids(tokenizer))
    hf = _on_device(lambda: Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="sdpa"),
                    device, dtype)
    return mmlens.wrap(hf, processor, name=f"qwen2-vl ({preset})")
