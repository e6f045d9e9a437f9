"""Multi-head self-attention on `F.scaled_dot_product_attention`, with rotary embeddings and a KV cache.

The visibility pattern arrives as a prebuilt boolean mask (see `dalle_core.masks`); no score tensor is
ever formed in Python.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import apply_rotary_emb
from torch import Tensor, nn

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head attention: `to_qkv` (no bias) -> rotary -> SDPA -> `to_out` -> dropout."""

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.causal = causal
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Optional[Tensor] = None,
        rotary: Optional[Tensor] = None,
        kv_cache: Optional[Tuple[Tensor, Tensor]] = None,
        start: int = 0,
    ) -> Tensor:
        """Attend from `x` (B, n, dim), the positions [start, start + n), to every visible position.

        mask: bool, broadcastable to (B, heads, n, start + n); None means plain causal (or no mask when
        the module is not causal). rotary: frequencies (n, rot_dim) for these positions. kv_cache: the
        preallocated (keys, values) buffers (B, heads, max_len, dim_head) of this layer; the new keys
        and values are written at [start, start + n) and attention reads [0, start + n).
        """
        n = x.shape[1]
        q, k, v = rearrange(self.to_qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.heads)
        if rotary is not None:
            # DALLE-pytorch rotates the values too; kept for weight compatibility
            q, k, v = (apply_rotary_emb(rotary, t) for t in (q, k, v))

        if kv_cache is not None:
            k_buf, v_buf = kv_cache
            k_buf[:, :, start : start + n] = k
            v_buf[:, :, start : start + n] = v
            k, v = k_buf[:, :, : start + n], v_buf[:, :, : start + n]

        is_causal = False
        if mask is None and self.causal and n > 1:
            if start != 0:
                raise ValueError("a causal chunk after cached positions needs an explicit mask")
            is_causal = True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, h, n, d)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.dropout(self.to_out(out))
