"""Computing a half-precision model's decoder in float32, one module at a time.

bf16 keeps 8 bits of mantissa: a residual-stream add rounds away changes
smaller than 1/256 of the stream, which is what one occluded patch of 576
moves. Upcasting every weight would double the model's memory; here each
module is upcast as it is called and cast back when it returns, so the extra
memory is one module's float32 weights. Casting back is exact (the float32
values came from the half ones), so the model is unchanged after the block.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(4, 4).to(torch.bfloat16)
    >>> with compute_in_float32([layer]):
    ...     out = layer(torch.ones(1, 4, dtype=torch.bfloat16))
    >>> out.dtype, layer.weight.dtype
    (torch.float32, torch.bfloat16)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

HALF = (torch.bfloat16, torch.float16)


def is_half(module: torch.nn.Module) -> bool:
    """Whether ``module``'s first floating parameter is bf16 or fp16."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype in HALF
    return False


@contextmanager
def compute_in_float32(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Inside the block each of ``modules`` computes in float32 when called, and holds its own dtype otherwise.

    Floating inputs are upcast on the way in, so a module after an upcast one
    receives float32 and the precision carries through; outputs stay float32.
    """
    handles = []
    try:
        for module in modules:
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
            if dtype not in HALF:
                continue
            handles.append(module.register_forward_pre_hook(_upcast, with_kwargs=True))
            handles.append(module.register_forward_hook(_cast_back(dtype), always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _upcast(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    module.to(torch.float32)
    return tuple(_float(a) for a in args), {k: _float(v) for k, v in kwargs.items()}


def _cast_back(dtype: torch.dtype):
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        module.to(dtype)
    return hook


def _float(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in HALF:
        return value.float()
    if isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):  # (cos, sin) of rotary layers
        return tuple(_float(v) for v in value)
    return value
