"""Models that mmlens builds or ships, loadable by name without any hub.

- ``tiny-<family>``: tiny random-weight models of each supported family, built
  from configs in code (real transformers classes, offline tokenizers and
  processors). They exercise every code path in tests.
  ``tiny-<family>-real-geometry``: the same, with a released checkpoint's
  image geometry, so large images give thousands of tokens.
- ``shapes-llava``: a small LLaVA trained on the shapes world, shipped as
  safetensors inside the package. It is the default model.

Example:
    >>> from mmlens.zoo import build, names
    >>> "tiny-llava" in names()
    True
    >>> model, processor = build("tiny-llava")
    >>> example_image().name
    'colour_question.png'
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from mmlens.errors import MmlensError, check_choice

# name -> "module:function"; the function takes no arguments and returns
# (model, processor). Imported lazily so that listing names costs nothing.
# Names are listed once their weights ship.
_BUILDERS: dict[str, str] = {
    "tiny-llava": "mmlens.zoo.tiny.llava:build",
    "tiny-llava-next": "mmlens.zoo.tiny.llava_next:build",
    "tiny-llava-onevision": "mmlens.zoo.tiny.llava_onevision:build",
    "tiny-qwen2-vl": "mmlens.zoo.tiny.qwen2_vl:build",
    "tiny-qwen2.5-vl": "mmlens.zoo.tiny.qwen2_5_vl:build",
    "tiny-llava-next-real-geometry": "mmlens.zoo.tiny.real_geometry:llava_next",
    "tiny-qwen2-vl-real-geometry": "mmlens.zoo.tiny.real_geometry:qwen2_vl",
    "tiny-idefics3": "mmlens.zoo.tiny.idefics3:build",
    "tiny-paligemma": "mmlens.zoo.tiny.paligemma:build",
    "tiny-llama": "mmlens.zoo.tiny.llama:build",
    "tiny-gpt2": "mmlens.zoo.tiny.gpt2:build",
    "shapes-llava": "mmlens.zoo.shapes_llava:load",
    "shapes-llava-backdoor": "mmlens.zoo.shapes_llava:load_backdoor",
    "shapes-llava-ft-swap": "mmlens.zoo.derivatives:load_ft_swap",
    "shapes-llava-ft-backdoor": "mmlens.zoo.derivatives:load_ft_backdoor",
    "shapes-llava-ft-backdoor-stripes": "mmlens.zoo.derivatives:load_ft_backdoor_stripes",
    "shapes-llava-pruned": "mmlens.zoo.derivatives:load_pruned",
    "shapes-llava-seed1": "mmlens.zoo.derivatives:load_seed1",
    "shapes-llava-caption": "mmlens.zoo.train.caption:load",
    "shapes-llava-ft-domain": "mmlens.zoo.domains_llava:load_ft_domain",
    "domains-llava": "mmlens.zoo.domains_llava:load",
}

DEFAULT_MODEL = "shapes-llava"
EXAMPLES_DIR = Path(__file__).parent / "examples"


def names() -> list[str]:
    """Names of every model the zoo can build, for ``mmlens.load(name)``."""
    return sorted(_BUILDERS)


def build(name: str, **kwargs: Any) -> tuple[Any, Any]:
    """Build or load a zoo model by name and return ``(model, processor)``.

    Example:
        >>> model, processor = build("tiny-llama")
    """
    check_choice(name, names(), "zoo model")
    module_name, function_name = _BUILDERS[name].split(":")
    return getattr(import_module(module_name), function_name)(**kwargs)


def example_image(name: str = "colour_question.png") -> Path:
    """Path of an example image shipped with mmlens (``zoo/examples/``, listed in ``examples.json``).

    The default is a held-out shapes-world scene that ``shapes-llava`` answers
    right: ``<image> what colour is the circle ?`` -> ``purple``.

    Example:
        >>> import mmlens
        >>> batch = mmlens.load().prepare("<image> what colour is the circle ?", [example_image()])
    """
    path = EXAMPLES_DIR / name
    if path.suffix != ".png" or not path.is_file():
        shipped = ", ".join(sorted(p.name for p in EXAMPLES_DIR.glob("*.png")))
        raise MmlensError(f"no shipped example image {name!r}; shipped: {shipped}")
    return path
