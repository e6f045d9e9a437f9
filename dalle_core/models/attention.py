"""Multi-head self-attention on `F.scaled_dot_product_attention`, with rotary embeddings and a KV cache.

The visibility pattern arrives as a prebuilt boolean mask (see `dalle_core.models.masks`); no score tensor is
ever formed in Python.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear import Linear

__all__ = ["Attention", "AxialPattern", "apply_rotary", "rotary_tables", "axial_attention"]


def rotary_tables(freqs: Tensor, dim_head: int) -> Tensor:
    """Unit complex rotations (n, dim_head // 2), one per feature pair, from rotary frequencies (n, rot_dim)
    (which repeat each angle for the two features of a pair); pairs past rot_dim get 1 and pass unchanged."""
    n, rot = freqs.shape
    angles = torch.zeros(n, dim_head // 2)
    angles[:, : rot // 2] = freqs[:, 0::2]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(t: Tensor, rotations: Tensor) -> Tensor:
    """Rotary embedding of `t` (..., n, d): each feature pair (x0, x1) times e^(i angle), which is
    rotary-embedding-torch's `t * cos + rotate_half(t) * sin` as a single complex multiplication."""
    d = t.shape[-1]
    even = t.float() if d % 2 == 0 else t[..., :-1].float().contiguous()  # complex views need even strides
    pairs = torch.view_as_complex(even.unflatten(-1, (-1, 2)))
    out = torch.view_as_real(pairs * rotations[..., : pairs.shape[-1]]).flatten(-2).to(t.dtype)
    return out if d % 2 == 0 else torch.cat((out, t[..., -1:]), dim=-1)


class AxialPattern(NamedTuple):
    """Row (axis 0) or column (axis 1) attention over a `fmap_size` x `fmap_size` image after `text_positions`:
    image tokens see all text and the earlier tokens of their own row or column; text is causal."""

    text_positions: int
    fmap_size: int
    axis: int


def axial_attention(q: Tensor, k: Tensor, v: Tensor, pattern: AxialPattern) -> Tensor:
    """SDPA for an axial pattern over whole sequences (B, h, n, d) starting at position 0, computing only the
    visible blocks: text against text, and each image row (or column) against [text ; that row]."""
    t, f = pattern.text_positions, pattern.fmap_size
    n = q.shape[-2]
    text_out = F.scaled_dot_product_attention(q[..., :t, :], k[..., :t, :], v[..., :t, :], is_causal=True)
    if n <= t:
        return text_out
    pad = t + f * f - n  # training drops the last image token: pad the grid (causality keeps padding unseen)

    def grid(x: Tensor) -> Tensor:  # (B, h, m, d) -> (B, h, lines, f, d), one line per row or column
        x = F.pad(x[..., t:, :], (0, 0, 0, pad)).unflatten(-2, (f, f))
        return x if pattern.axis == 0 else x.transpose(-3, -2)

    qi, ki, vi = grid(q), grid(k), grid(v)
    lines = (*k.shape[:2], f, t, k.shape[-1])
    keys = torch.cat((k[..., None, :t, :].expand(lines), ki), dim=-2)  # (B, h, f, t + f, d)
    values = torch.cat((v[..., None, :t, :].expand(lines), vi), dim=-2)
    visible = torch.ones(f, t + f, dtype=torch.bool, device=q.device)
    visible[:, t:] = torch.ones(f, f, dtype=torch.bool, device=q.device).tril_()
    img_out = F.scaled_dot_product_attention(qi, keys, values, attn_mask=visible)  # (B, h, f, f, d)
    if pattern.axis == 1:
        img_out = img_out.transpose(-3, -2)
    img_out = img_out.flatten(-3, -2)[..., : n - t, :]
    return torch.cat((text_out, img_out), dim=-2)


class Attention(nn.Module):
    """Multi-head attention: `to_qkv` (no bias) -> rotary -> SDPA -> `to_out` -> dropout."""

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.causal = causal
        self.to_qkv = Linear(dim, inner_dim * 3, bias=False)
        self.to_out = Linear(inner_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Optional[Union[Tensor, AxialPattern]] = None,
        rotary: Optional[Tensor] = None,
        kv_cache: Optional[Tensor] = None,
        start: Union[int, Tensor] = 0,
    ) -> Tensor:
        """Attend from `x` (B, n, dim), the positions [start, start + n), to every visible position.

        mask: bool, broadcastable to (B, heads, n, start + n); None means plain causal (or no mask when
        the module is not causal); an `AxialPattern` (whole sequences only) computes just the visible blocks.
        rotary: `rotary_tables` rows for these positions. kv_cache: this layer's preallocated keys and values
        (2, B, heads, max_len, dim_head); the new ones are written at [start, start + n) and attention reads
        [0, start + n). A (1,) tensor `start` (one position) reads the whole buffer under `mask`, a (1, max_len)
        row, so that no shape depends on the position.
        """
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (3, B, h, n, d)
        if rotary is not None:
            qkv = apply_rotary(qkv, rotary)  # DALLE-pytorch rotates the values too; kept for weight compatibility
        if isinstance(start, Tensor):  # one position, static shapes: the whole buffer, under `mask`'s row
            if kv_cache is None or mask is None or n != 1:
                raise ValueError("a tensor `start` decodes one position and needs kv_cache and its mask row")
            kv_cache.index_copy_(3, start, qkv[1:].to(kv_cache.dtype))
            q, (k, v) = qkv[0], kv_cache
        elif kv_cache is not None:
            kv_cache[:, :, :, start : start + n] = qkv[1:]
            q, (k, v) = qkv[0], kv_cache[:, :, :, : start + n]
        else:
            q, k, v = qkv.unbind(0)

        if isinstance(mask, AxialPattern):
            out = axial_attention(q, k, v, mask)
            out = self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
            return self.dropout(out) if self.dropout.p > 0 else out
        is_causal = False
        if mask is None and self.causal and n > 1:
            if start != 0:
                raise ValueError("a causal chunk after cached positions needs an explicit mask")
            is_causal = True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, h, n, d)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
        return self.dropout(out) if self.dropout.p > 0 else out
