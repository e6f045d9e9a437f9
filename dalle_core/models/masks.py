"""Attention patterns over the [<bos> text ; image] sequence, as boolean visibility masks.

`True` at (i, j) means query position i may attend to key position j. Text is always causal and every
image token sees all of the text; the patterns differ only in which earlier image tokens are visible.

DALLE-pytorch's patterns (kept for drop-in parity):
- ``full``: causal over the whole sequence.
- ``axial_row``: earlier image tokens of the same row.
- ``axial_col``: earlier image tokens of the same column.
- ``conv_like``: a causal ``k x k`` window above and to the left ((k-1)*dilation rows up and columns left).

The paper's patterns (Ramesh et al. 2021, Fig. 11, raster order with wraparound):
- ``row``: the previous ``fmap_size`` image tokens (so the farthest is the same column one row up).
- ``col``: earlier image tokens of the same column (identical to ``axial_col``).
- ``conv``: a ``k x k`` kernel centred on the token in raster order with wraparound, causal part only.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["ATTN_TYPES", "KERNEL_SIZES", "attention_mask", "image_visibility"]

ATTN_TYPES = ("full", "axial_row", "axial_col", "conv_like", "row", "col", "conv")
# default window side of the convolutional patterns: DALLE-pytorch's conv_like uses 5, the paper's conv 11 (Fig. 11)
KERNEL_SIZES = {"conv_like": 5, "conv": 11}


def image_visibility(attn_type: str, fmap_size: int, *, kernel_size: Optional[int] = None, dilation: int = 1) -> Tensor:
    """Image-to-image visibility (fmap_size**2, fmap_size**2), True where query i may see key j (`kernel_size`:
    the window side of the convolutional patterns, default `KERNEL_SIZES[attn_type]`)."""
    kernel_size = KERNEL_SIZES.get(attn_type, 0) if kernel_size is None else kernel_size
    n = fmap_size * fmap_size
    i = torch.arange(n).view(n, 1)  # query raster index
    j = torch.arange(n).view(1, n)  # key raster index
    ri, ci, rj, cj = i // fmap_size, i % fmap_size, j // fmap_size, j % fmap_size
    causal = j <= i
    if attn_type == "full":
        return causal
    if attn_type == "axial_row":
        return causal & (ri == rj)
    if attn_type in ("axial_col", "col"):
        return causal & (ci == cj)
    if attn_type == "conv_like":
        reach = (kernel_size - 1) * dilation
        dr, dc = ri - rj, ci - cj
        return (dr >= 0) & (dr <= reach) & (dc >= 0) & (dc <= reach) & (dr % dilation == 0) & (dc % dilation == 0)
    if attn_type == "row":
        return causal & (i - j <= fmap_size)
    if attn_type == "conv":
        r = kernel_size // 2
        offsets = {dr * fmap_size + dc for dr in range(-r, r + 1) for dc in range(-r, r + 1)}
        allowed = torch.tensor(sorted(o for o in offsets if o >= 0))
        return causal & torch.isin(i - j, allowed)
    raise ValueError(f"unknown attention type {attn_type!r}; expected one of {ATTN_TYPES}")


def attention_mask(
    attn_type: str,
    text_positions: int,
    fmap_size: Optional[int],
    *,
    kernel_size: Optional[int] = None,
    dilation: int = 1,
) -> Tensor:
    """Full (text_positions + fmap_size**2) square visibility mask for one attention pattern.

    `text_positions` counts every position before the first image token (the `<bos>` included).
    """
    if attn_type != "full" and fmap_size is None:
        raise ValueError(f"attention type {attn_type!r} needs image_fmap_size")
    image_seq_len = 0 if fmap_size is None else fmap_size * fmap_size
    total = text_positions + image_seq_len
    mask = torch.ones(total, total, dtype=torch.bool).tril_()
    if image_seq_len and attn_type != "full":
        t = text_positions
        mask[t:, t:] = image_visibility(attn_type, fmap_size, kernel_size=kernel_size, dilation=dilation)
    return mask
