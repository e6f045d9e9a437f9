"""`Linear`: `nn.Linear` that can run on a weight prepacked for oneDNN while sampling on the CPU.

Decoding multiplies a few rows (the batch) by every weight once per token. MKL's general GEMM is slow at that
shape; oneDNN's, on a weight reordered once into its blocked layout, is faster (docs/measurements.md,
`benchmarks/prepacked_linear.py`). `prepacked(module, batch)` packs every `Linear` of a module
for the length of a `with` block and drops the packs when it ends, so a pack never outlives the weights it was
made from: sampling runs under `torch.inference_mode()`, where the weights cannot change. Outside such a block,
with autograd or under autocast, `Linear` is exactly `nn.Linear`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import autocast_dtype

__all__ = ["Linear", "pack_weight", "packed_linear", "prepacked"]


def _pointwise(*args):  # oneDNN's linear on a packed weight (what torch.compile's CPU freezing pass emits)
    return torch.ops.mkldnn._linear_pointwise(*args)


def _packing_supported(weight: Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_weight(weight: Tensor, batch: int) -> Optional[Tensor]:
    """`weight` (out, in) reordered for oneDNN's matmul at about `batch` rows, or None where that is not
    available (not a float32 CPU tensor, or a torch build without oneDNN)."""
    if not _packing_supported(weight):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch)
    except RuntimeError:  # an op this torch build lacks in practice
        return None


def packed_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], packed: Optional[Tensor]) -> Tensor:
    """`F.linear(x, weight, bias)`, on `packed` (from `pack_weight(weight)`) where it applies: a float32 input
    with autograd and CPU autocast off. The two agree to float32 rounding (tests/test_linear.py)."""
    if packed is None or x.dtype != torch.float32 or torch.is_grad_enabled() or autocast_dtype("cpu") is not None:
        return F.linear(x, weight, bias)
    return _pointwise(x, packed, bias, "none", [], "")


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) that uses a prepacked weight inside `prepacked`."""

    packed: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        return packed_linear(x, self.weight, self.bias, self.packed)


@contextlib.contextmanager
def prepacked(module: nn.Module, batch: int) -> Iterator[None]:
    """Pack the weight of every `Linear` in `module` for matmuls of about `batch` rows while the block runs."""
    layers = [m for m in module.modules() if isinstance(m, Linear)]
    try:
        for layer in layers:
            layer.packed = pack_weight(layer.weight, batch)
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("packed", None)
