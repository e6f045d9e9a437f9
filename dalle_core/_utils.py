"""Small helpers shared by every module: existence checks, eval-mode decorator, input validation."""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def exists(val: Any) -> bool:
    """True when `val` is not None."""
    return val is not None


def default(val: Optional[T], d: T) -> T:
    """`val` unless it is None, else `d`."""
    return val if val is not None else d


def cast_tuple(val: Any, length: int = 1) -> tuple:
    """`val` as a tuple: iterables (not strings) are converted, scalars repeated `length` times."""
    if isinstance(val, Iterable) and not isinstance(val, str):
        return tuple(val)
    return (val,) * length


def eval_decorator(fn: Callable) -> Callable:
    """Run a method with the module in eval mode, restoring the previous mode afterwards."""

    @functools.wraps(fn)
    def inner(model: torch.nn.Module, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return inner


def set_requires_grad(module: torch.nn.Module, value: bool) -> None:
    """Freeze or unfreeze every parameter of `module`."""
    for param in module.parameters():
        param.requires_grad = value


# --- input validation: every user-facing tensor goes through one of these -------------------------------


def check_token_ids(name: str, ids: Any, *, vocab_size: int, ndim: int = 2) -> Tensor:
    """Check that `ids` is an integer tensor of `ndim` dims with values in [0, vocab_size)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long) of token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (batch, sequence), got shape {tuple(ids.shape)}")
    if ids.numel() > 0:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} ids must lie in [0, {vocab_size}), got values in [{lo}, {hi}]")
    return ids.long()


def check_images(name: str, images: Any, *, channels: int, image_size: int) -> Tensor:
    """Check that `images` is a float tensor of shape (batch, channels, image_size, image_size)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
    expected = (channels, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (batch, {channels}, {image_size}, {image_size}), got {tuple(images.shape)}"
        )
    return images


def check_same_batch(**tensors: Optional[Tensor]) -> None:
    """Check that all given tensors share their first (batch) dimension."""
    sizes = {k: v.shape[0] for k, v in tensors.items() if v is not None}
    if len(set(sizes.values())) > 1:
        described = ", ".join(f"{k} has {n}" for k, n in sizes.items())
        raise ValueError(f"batch sizes must match: {described}")


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes in on `device_type` ('cpu', 'cuda', ...), or None when it is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()
