"""Tiny random-weight models of each supported family, built offline.

Each module (``llava``, ``llava_next``, ``llava_onevision``, ``qwen2_vl``,
``qwen2_5_vl``, ``idefics3``, ``paligemma``, ``llama``) exposes
``build(seed=0, attn_implementation="sdpa") -> (model, processor)`` plus the
constants ``IMAGE_SLOT`` (text that marks where one image goes in a prompt, or
``None`` for text-only models) and ``EXAMPLE_PROMPT``.

Example:
    >>> from mmlens.zoo.tiny import llava
    >>> model, processor = llava.build(seed=0)
    >>> llava.IMAGE_SLOT
    '<image>'
"""
