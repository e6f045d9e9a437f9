"""The inference cache: preallocated keys, values and token-shift history for incremental decoding."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Per-layer keys and values `kv` (L, 2, B, heads, max_len, dim_head) and, with token shifting, the
    normalised inputs of every position (L, 2, B, 1 + max_len, dim): row 0 stays zero so a missing
    neighbour reads 0.

    `offset` is the number of positions already processed; `tokens_processed` counts every position run
    through the transformer with this cache (a cache that works processes each position once).
    """

    kv: Tensor
    shift_history: Optional[Tensor] = None
    offset: int = 0
    tokens_processed: int = field(default=0)

    def __post_init__(self) -> None:
        # per-layer views, made once: decoding a token then indexes no tensors to find its buffers
        self._kv: List[Tensor] = list(self.kv.unbind(0))
        self._history = None if self.shift_history is None else [tuple(h.unbind(0)) for h in self.shift_history.unbind(0)]

    @classmethod
    def allocate(
        cls,
        *,
        num_layers: int,
        batch: int,
        heads: int,
        dim_head: int,
        max_len: int,
        dim: int,
        shift_tokens: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> "KVCache":
        """Allocate every buffer once for sequences of up to `max_len` positions."""
        kv = torch.zeros((num_layers, 2, batch, heads, max_len, dim_head), device=device, dtype=dtype)
        history = None
        if shift_tokens:
            history = torch.zeros((num_layers, 2, batch, 1 + max_len, dim), device=device, dtype=dtype)
        return cls(kv=kv, shift_history=history)

    @property
    def batch_size(self) -> int:
        """Number of sequences the buffers hold."""
        return self.kv.shape[2]

    @property
    def max_len(self) -> int:
        """Longest sequence the buffers hold."""
        return self.kv.shape[4]

    def layer_kv(self, layer: int) -> Tensor:
        """The (2, B, heads, max_len, dim_head) keys-and-values buffer of one layer."""
        return self._kv[layer]

    def layer_history(self, layer: int, branch: int) -> Optional[Tensor]:
        """Token-shift history of one layer's attention (branch 0) or feed-forward (branch 1)."""
        return None if self._history is None else self._history[layer][branch]

    def advance(self, n: int) -> None:
        """Record that `n` more positions went through the transformer with this cache."""
        self.offset += n
        self.tokens_processed += n

    def rewind(self, offset: int) -> None:
        """Forget the positions from `offset` on (speculative decoding rejects drafted positions this way):
        the next call writes over them. `tokens_processed` keeps counting the work already done."""
        if not 0 <= offset <= self.offset:
            raise ValueError(f"can rewind only to an offset in [0, {self.offset}], got {offset}")
        self.offset = offset

    def buffers(self) -> List[Tensor]:
        """The preallocated tensors: keys and values, and the token-shift history when there is one."""
        return [self.kv] if self.shift_history is None else [self.kv, self.shift_history]

    def reset(self, zero: bool = False) -> None:
        """Forget every position (the buffers are reused; `zero` also clears their contents)."""
        self.offset = 0
        self.tokens_processed = 0
        if zero:
            for buffer in self.buffers():
                buffer.zero_()
