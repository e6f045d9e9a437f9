"""Small helpers shared by every module: defaults, eval-mode decorator, optional imports, input validation."""
from __future__ import annotations

import functools
import logging
import importlib
import math
from collections.abc import Iterable
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def default(val: Optional[T], d: T) -> T:
    """`val` unless it is None, else `d`."""
    return val if val is not None else d


def cast_tuple(val: Any, length: int = 1) -> tuple:
    """`val` as a tuple: iterables (not strings) are converted, scalars repeated `length` times."""
    if isinstance(val, Iterable) and not isinstance(val, str):
        return tuple(val)
    return (val,) * length


LOGGER_NAME = "dalle_core"


def get_logger() -> logging.Logger:
    """The library's logger, `logging.getLogger("dalle_core")`: its messages (trainers' progress and
    warnings) go through it, never `print`; the `dalle-core` command shows them on stdout."""
    return logging.getLogger(LOGGER_NAME)


def main_process_log(accelerator: Any, message: str, level: int = logging.INFO) -> None:
    """Log `message` on the main process only (every process runs the trainers)."""
    if accelerator is None or accelerator.is_main_process:
        get_logger().log(level, message)


def check_text_mask(text_mask: Any, text: "torch.Tensor") -> None:
    """TypeError / ValueError unless `text_mask` is a bool tensor of `text`'s shape (True on real tokens)."""
    if not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool:
        got = text_mask.dtype if isinstance(text_mask, torch.Tensor) else type(text_mask).__name__
        raise TypeError(f"text_mask must be a bool tensor (True = real token), got {got}")
    if text_mask.shape != text.shape:
        raise ValueError(f"text_mask must have the text's shape {tuple(text.shape)}, got {tuple(text_mask.shape)}")


def stepwise(context: Callable[[], Any], items: Iterator[T]) -> Iterator[T]:
    """`items` driven one step at a time, each step inside a fresh `context()` (e.g. `torch.inference_mode`).

    Grad and inference modes are per thread: a generator that holds one across its yields leaks it into its
    caller's code between steps, and loses it when a step is resumed on another thread (a web server's worker
    pool), where its in-place updates of inference tensors then fail. Entered around each step instead, the
    mode holds exactly while the generator runs, on whichever thread resumes it. Closing this generator (a consumer
    that stops early) closes `items` at once, inside `context()`, so its own cleanup runs then."""
    try:
        while True:
            with context():
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            with context():
                close()


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


def optional_import(module: str, needed_by: str, install: str, package: Optional[str] = None) -> Any:
    """Import an optional dependency, or raise an ImportError naming what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{needed_by} needs {package or module}, which is not installed. Install it with: "
                          f"{install}") from err


def set_requires_grad(module: torch.nn.Module, value: bool) -> None:
    """Freeze or unfreeze every parameter of `module`."""
    for param in module.parameters():
        param.requires_grad = value


# --- input validation: every user-facing tensor goes through one of these -------------------------------


def check_real_batch(name: str, tensor: Any) -> None:
    """Refuse a tensor on the 'meta' device (it has no values) or with an empty batch (batch size 0), naming it."""
    if isinstance(tensor, Tensor):
        if tensor.is_meta:
            raise ValueError(f"{name} is on the 'meta' device (it has no values); move it to a real device first")
        if tensor.ndim > 0 and tensor.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(tensor.shape)}): give at least one sample")


def check_token_ids(name: str, ids: Any, *, vocab_size: int, ndim: int = 2) -> Tensor:
    """Check that `ids` is an integer tensor of `ndim` dims with values in [0, vocab_size)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long) of token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (batch, sequence), got shape {tuple(ids.shape)}")
    if ids.is_meta:
        raise ValueError(f"{name} is on the 'meta' device (it has no values); move it to a real device first")
    if ids.numel() > 0:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} ids must lie in [0, {vocab_size}), got values in [{lo}, {hi}]")
    return ids.long()


def check_int(name: str, value: Any, minimum: Optional[int] = 1) -> int:
    """Check that `value` is an int (not a bool, not a float such as 8.5) that is at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """Check that `value` is a finite real number (not NaN, not inf, not a bool or a string) within
    [low, high] (an open end with `low_open` / `high_open`); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex()):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


# The precomputed tables of a Transformer (dense boolean masks, rotary table, token-shift indices) grow with the
# square of the sequence length; a configuration past this would exhaust memory while building them, so it is
# refused first (by the constructor and by checkpoint loading).
MAX_BUFFER_BYTES = 16 * 2**30

IMAGE_RANGE_TOLERANCE = 1e-3  # images may overshoot [0, 1] by this much (resampling, float rounding)


def check_images(name: str, images: Any, *, channels: int, image_size: int) -> Tensor:
    """Check that `images` is a float tensor (batch, channels, image_size, image_size) of finite values in
    [0, 1] (within IMAGE_RANGE_TOLERANCE), on a real device (not 'meta'); an empty batch is refused."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
    expected = (channels, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (batch, {channels}, {image_size}, {image_size}), got {tuple(images.shape)}"
        )
    check_real_batch(name, images)
    lo, hi = torch.aminmax(images.detach())
    lo, hi = float(lo), float(hi)  # NaN fails both comparisons below
    tol = IMAGE_RANGE_TOLERANCE
    if not (lo >= -tol and hi <= 1 + tol):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or infinite values; images must be finite, in [0, 1]")
        raise ValueError(f"{name} must hold values in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(pixels in [0, 255]? divide by 255; normalised to [-1, 1]? map with (x + 1) / 2)")
    return images


def images_for(name: str, images: Any, weight: Tensor, *, channels: int, image_size: int, model: str) -> Tensor:
    """`images` checked as `check_images` does, refused (naming `model`) when they are not on `weight`'s device,
    and cast to its dtype (float64 input to a float32 model, float32 into a bf16 one)."""
    images = check_images(name, images, channels=channels, image_size=image_size)
    if images.device != weight.device:
        raise ValueError(f"{name} {'are' if name.endswith('s') else 'is'} on {images.device} but the {model}'s "
                         f"weights are on {weight.device}; move one of them")
    return images.to(weight.dtype)


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
