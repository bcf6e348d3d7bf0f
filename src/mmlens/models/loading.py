"""``mmlens.load``: a zoo name, a local folder or a hub id to a :class:`~mmlens.model.Model`.

Offline, a hub id that is not in the local cache gives one clear line, never a
traceback. Weights load from safetensors only; ``trust_remote_code`` stays off
unless the caller asks for it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.models.registry import adapter_for_model_type
from mmlens import zoo


def load(
    name_or_path: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load a model with its processor and family adapter.

    ``None`` loads the shipped default (``shapes-llava``); a zoo name
    (``mmlens.zoo.names()``) builds or loads that model; anything else is a
    local folder or a Hugging Face hub id.

    Example:
        >>> model = load("tiny-llava")
        >>> model.adapter.family
        'llava'
    """
    name = _model_name(name_or_path)
    dtype = _torch_dtype(dtype)
    with _quiet_transformers():  # no "Loading weights" bar: the command line shows its own status
        if name in zoo.names():
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            hf, processor = zoo.build(name, **kwargs)
        else:
            hf, processor = _from_pretrained(name, attn_implementation, trust_remote_code)
    if dtype is not None:
        hf = hf.to(dtype)
    if device is not None:
        try:
            hf = hf.to(device)
        except (AssertionError, RuntimeError, ValueError) as error:  # torch built without CUDA, no such device
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MmlensError(f"cannot put the model on device {str(device)!r}: {first}") from None
    return wrap(hf, processor, name=name)


def wrap(hf: torch.nn.Module, processor: Any, name: str | None = None) -> Model:
    """Wrap a Hugging Face model the user already has (and its processor or tokenizer).

    The model is not copied or changed, only put in eval mode. mmlens
    tokenises prompts (and prepares images) with ``processor``: the
    ``AutoProcessor`` of a vision model, the ``AutoTokenizer`` of a text-only one.

    Example:
        >>> from mmlens.zoo.tiny import gpt2
        >>> hf, tokenizer = gpt2.build()
        >>> wrap(hf, tokenizer).adapter.family
        'gpt2'
    """
    _check_hf_model(hf, processor)
    adapter = adapter_for_model_type(_model_type(hf))
    if processor is None or not callable(processor):
        kind = "AutoProcessor" if adapter.multimodal else "AutoTokenizer"
        got = "None" if processor is None else type(processor).__name__
        raise MmlensError(f"wrap needs the model's processor, got {got}: "
                          f"mmlens.wrap(hf_model, {kind}.from_pretrained(<the model's name or folder>))")
    if adapter.multimodal and getattr(processor, "image_processor", None) is None:
        raise MmlensError(f"{adapter.family} is a vision model: wrap needs its AutoProcessor (image processor and "
                          f"tokenizer), got {type(processor).__name__}")
    hf.eval()
    return Model(hf, processor, adapter, name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__)


#: dtype names ``load`` accepts, and the dtypes they name.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _model_name(name_or_path: Any) -> str:
    """The zoo name, folder or hub id to load; a path object becomes its string."""
    if name_or_path is None or name_or_path == "":
        return zoo.DEFAULT_MODEL
    if isinstance(name_or_path, os.PathLike):
        return os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise MmlensError(f"load takes a model name (a zoo name such as {zoo.DEFAULT_MODEL!r}, a local folder or a "
                          f"hub id like org/name), got {name_or_path!r}")
    return name_or_path


def _torch_dtype(dtype: Any) -> torch.dtype | None:
    """``dtype`` as a floating-point torch dtype (a name or a dtype), else one line naming the choices."""
    if dtype is None:
        return None
    chosen = DTYPES.get(dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    if not isinstance(chosen, torch.dtype) or not chosen.is_floating_point:
        raise MmlensError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} (or a floating torch dtype)")
    return chosen


def _check_hf_model(hf: Any, processor: Any) -> None:
    """Refuse what is not a loaded Hugging Face model: a name (use load) or the arguments swapped."""
    if isinstance(hf, (str, os.PathLike)):
        raise MmlensError(f"wrap takes a loaded Hugging Face model, got the name {os.fspath(hf)!r}: "
                          f"mmlens.load({os.fspath(hf)!r}) loads by name")
    if not isinstance(hf, torch.nn.Module) or not hasattr(hf, "config"):
        swapped = " (the arguments look swapped)" if isinstance(processor, torch.nn.Module) else ""
        raise MmlensError(f"wrap takes (hf_model, processor): the first is a Hugging Face model, got "
                          f"{type(hf).__name__}{swapped}")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and info logs off while loading, restored after."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(max(verbosity, hf_logging.ERROR))
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_type(hf: torch.nn.Module) -> str:
    return getattr(hf.config, "model_type", "")


def _from_pretrained(name: str, attn_implementation: str | None, trust_remote_code: bool) -> tuple[Any, Any]:
    """Load config, model and processor through the Auto classes, with clear errors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    local = Path(name).expanduser().exists()
    if not local and _looks_like_a_path(name):
        raise MmlensError(f"no such folder: {name}")
    if local and not Path(name).expanduser().is_dir():
        raise MmlensError(f"{name} is a file: give the folder that holds config.json and the weights")
    name = str(Path(name).expanduser()) if local else name
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    common = {"trust_remote_code": trust_remote_code, "local_files_only": offline or local}
    if not local and "/" not in name:
        raise MmlensError(
            f"unknown model {name!r}: not a zoo name ({', '.join(zoo.names())}), a local folder or a hub id like org/name"
        )
    try:
        config = AutoConfig.from_pretrained(name, **common)
    except (OSError, ValueError) as error:
        raise MmlensError(_missing_message(name, local, offline, error)) from None
    adapter = adapter_for_model_type(config.model_type)  # fail early for unsupported families
    model_class = AutoModelForImageTextToText if adapter.multimodal else AutoModelForCausalLM
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        hf = model_class.from_pretrained(name, use_safetensors=True, **common, **extra)
        loader = AutoProcessor if adapter.multimodal else AutoTokenizer
        processor = loader.from_pretrained(name, **common)
    except (OSError, ValueError) as error:
        raise MmlensError(_missing_message(name, local, offline, error)) from None
    return hf, processor


def _looks_like_a_path(name: str) -> bool:
    """True for names that can only be local paths: absolute, ``./``, ``~``, or with more than one ``/``.

    A hub id is ``org/name``, exactly one slash.

    Example:
        >>> [_looks_like_a_path(n) for n in ("/abs/path/missing", "./model", "org/name", "a/b/c")]
        [True, True, False, True]
    """
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
            or "\\" in name)


def _missing_message(name: str, local: bool, offline: bool, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if local:
        return f"cannot load model from {name}: {first_line}"
    if offline:
        return (
            f"model {name!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1); "
            f"download it on a machine with network (`hf download {name}`) or pass a local folder"
        )
    return f"cannot load model {name!r}: {first_line}"
