"""The decoder-only transformer: pre-norm blocks with LayerScale, GEGLU feed-forward, token shifting,
rotary embeddings, shared layers, reversible (two-stream) residuals and activation checkpointing.

Module layout and residual arithmetic follow DALLE-pytorch 1.6.6 so weights transfer one to one;
attention runs through `F.scaled_dot_product_attention` with masks built once at construction.
"""
from __future__ import annotations

import math
from itertools import cycle, islice
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import RotaryEmbedding, broadcat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..utils import MAX_BUFFER_BYTES, autocast_dtype, cast_tuple, check_float, check_int, default
from .attention import Attention, AxialPattern, rotary_tables
from .cache import KVCache
from ..ops.linear import Linear
from .masks import ATTN_TYPES, attention_mask

__all__ = ["Transformer", "FeedForward", "TokenShift", "DivideMax", "dalle_rotary_table", "layer_scale_init",
           "buffer_bytes", "check_buffer_bytes"]



def buffer_bytes(*, text_positions: int, fmap_size: Optional[int], dim: int, dim_head: int, attn_types: Sequence[str],
                 rotary: bool, shift: bool) -> int:
    """Bytes of the non-persistent tables a causal `Transformer` builds, with the largest temporary that
    building one of its masks needs."""
    image_seq_len = 0 if fmap_size is None else fmap_size**2
    n = text_positions + image_seq_len
    patterns = set(attn_types) | {"full"}
    total = len(patterns) * n * n  # one dense (n, n) bool mask per pattern
    # `image_visibility` temporaries: int64 offsets for the convolutions, a few bool grids for the others
    per_pixel = max((24 if t.startswith("conv") else 3) for t in patterns - {"full"}) if patterns != {"full"} else 0
    total += per_pixel * image_seq_len * image_seq_len
    if rotary:
        total += n * (dim_head // 2) * 8 + n * dim_head * 4 * 4  # complex64 table, float32 frequencies
    if shift:
        total += n * dim * 8 * 3  # int64 gather indices and their temporaries
    return total


def check_buffer_bytes(**sizes: Any) -> None:
    """Refuse (ValueError naming the sizes) a configuration whose precomputed tables exceed MAX_BUFFER_BYTES."""
    need = buffer_bytes(**sizes)
    if need > MAX_BUFFER_BYTES:
        text_positions, fmap_size = sizes["text_positions"], sizes.get("fmap_size") or 0
        raise ValueError(
            f"sequence too long: {text_positions} text positions and a {fmap_size}x{fmap_size} image grid "
            f"({text_positions + fmap_size**2} positions in all) need {need / 2**30:.1f} GiB of precomputed attention "
            f"masks and position tables, more than the {MAX_BUFFER_BYTES / 2**30:.0f} GiB allowed (they grow with "
            "the square of the length): use a smaller image grid (vae image_size / 2**num_layers) or a shorter "
            "text_seq_len / seq_len")


class DivideMax(nn.Module):
    """Divide by the (detached) maximum along `dim`: DALLE-pytorch's `stable` output normalisation."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x / x.amax(dim=self.dim, keepdim=True).detach()


class _GEGLUOut(torch.autograd.Function):
    """out = Linear(x * gelu(gate)) that saves only its input: the gated activation (half the width of the
    input) is recomputed in backward instead of being stored twice (for the product and for the Linear)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        x, gate = h.chunk(2, dim=-1)
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(x * F.gelu(gate), weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        x, gate = h.chunk(2, dim=-1)
        gelu_gate = F.gelu(gate)
        grad_flat = grad.reshape(-1, grad.shape[-1])
        grad_w = grad_flat.t() @ (x * gelu_gate).reshape(-1, x.shape[-1])
        grad_b = grad_flat.sum(0) if ctx.has_bias else None
        grad_a = grad @ weight
        grad_gate = torch.ops.aten.gelu_backward(grad_a * x, gate)  # the fused kernel autograd itself uses
        return torch.cat((grad_a * gelu_gate, grad_gate), dim=-1), grad_w, grad_b


class FeedForward(nn.Module):
    """GEGLU feed-forward: Linear(dim, 2 * mult * dim) -> x * gelu(gate) -> dropout -> Linear."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = Linear(dim, dim * mult * 2)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        fused = (
            torch.is_grad_enabled() and type(self.proj_out) in (nn.Linear, Linear) and h.dtype == self.proj_out.weight.dtype
            and (self.dropout.p == 0 or not self.training) and autocast_dtype(h.device.type) is None
        )
        if fused:  # same result, less memory kept for backward
            return _GEGLUOut.apply(h, self.proj_out.weight, self.proj_out.bias)
        x, gate = h.chunk(2, dim=-1)
        a = x * F.gelu(gate)
        return self.proj_out(self.dropout(a) if self.dropout.p > 0 else a)


class TokenShift(nn.Module):
    """Token shifting: text positions take the first half of their channels from the previous token; image
    positions take the first quarter from the token above and the second quarter from the token to the left
    (zeros at the image's top row and left column). Works on whole sequences and on cached chunks alike.
    """

    def __init__(self, dim: int, text_positions: int, fmap_size: int):
        super().__init__()
        self.text_positions = text_positions
        self.half = math.ceil(dim / 2)  # torch.chunk(2) sizes
        self.quarter = math.ceil(dim / 4)  # torch.chunk(4) sizes
        pos = torch.arange(text_positions + fmap_size**2)
        img = (pos - text_positions).clamp(min=0)
        is_img = pos >= text_positions
        left = torch.where(is_img & (img % fmap_size == 0), -1, pos - 1)
        top = torch.where(is_img & (img >= fmap_size), pos - fmap_size, -1)
        # indices into a history whose row 0 is zeros (position p lives at row p + 1)
        self.register_buffer("left_src", left + 1, persistent=False)
        self.register_buffer("top_src", top + 1, persistent=False)
        # one-token decoding gathers each position's shifted features from the flattened history at once:
        # gather_index[p, c] = flat index of the feature c that position p reads (history row * dim + c)
        rows = torch.stack((top + 1, left + 1, pos + 1), dim=-1)  # (positions, 3): top, left, itself
        text_rows = torch.stack((left + 1, pos + 1, pos + 1), dim=-1)
        rows = torch.where(is_img[:, None], rows, text_rows)
        feature = torch.arange(dim)
        image_part = torch.bucketize(feature, torch.tensor([self.quarter, 2 * self.quarter]), right=True)
        text_part = (feature >= self.half).long()  # 0: from the left, 1: itself
        part = torch.where(is_img[:, None], image_part[None, :], text_part[None, :])  # (positions, dim)
        self.register_buffer("gather_index", rows.gather(1, part) * dim + feature, persistent=False)

    def forward(self, x: Tensor, *, start: int = 0, history: Optional[Tensor] = None) -> Tensor:
        """Shift `x` (B, n, D), the positions [start, start + n); `history` (B, 1 + max_len, D) holds the
        earlier positions' inputs and receives these (needed whenever start > 0)."""
        n = x.shape[1]
        if n == 1 and history is not None:
            return self.step(x, start, history)
        end = start + n
        h, q = self.half, self.quarter
        if history is None:
            if start != 0:
                raise ValueError("token shifting after cached positions needs their history")
            history = F.pad(x, (0, 0, 1, 0))
        else:
            history[:, 1 + start : 1 + end] = x
        left = history.index_select(1, self.left_src[start:end])
        num_text = max(min(end, self.text_positions) - start, 0)
        parts = []
        if num_text > 0:
            parts.append(torch.cat((left[:, :num_text, :h], x[:, :num_text, h:]), dim=-1))
        if num_text < n:
            top = history.index_select(1, self.top_src[start + num_text : end])
            parts.append(torch.cat((top[..., :q], left[:, num_text:, q : 2 * q], x[:, num_text:, 2 * q :]), dim=-1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def step(self, x: Tensor, pos: Union[int, Tensor], history: Tensor) -> Tensor:
        """Shift one position `pos` (an int, or a (1,) long tensor) of `x` (B, 1, D): write it to `history`,
        then one gather from the flattened history reads every feature it takes from its neighbours."""
        if isinstance(pos, Tensor):  # shapes independent of the position (see Transformer.step)
            history.index_copy_(1, pos + 1, x.to(history.dtype))
            index = self.gather_index.index_select(0, pos)[0]
        else:
            history[:, 1 + pos] = x[:, 0]
            index = self.gather_index[pos]
        return history.flatten(1).index_select(1, index).unsqueeze(1)


@torch.no_grad()
def dalle_rotary_table(dim_head: int, text_positions: int, fmap_size: int) -> Tensor:
    """Rotary frequencies (text_positions + fmap_size**2, rot) as DALLE-pytorch builds them: a 1-D rotary over text
    positions (image tokens sit far away, at 8192) and a 2-D pixel rotary over the image grid (text at -10)."""
    rot_dim = dim_head // 3
    image_seq_len = fmap_size**2
    text_rot = RotaryEmbedding(dim=rot_dim)
    pixel_rot = RotaryEmbedding(dim=rot_dim, freqs_for="pixel")
    text_freqs = torch.cat((text_rot(torch.arange(text_positions)), text_rot(torch.full((image_seq_len,), 8192))))
    axial = pixel_rot(torch.linspace(-1, 1, steps=fmap_size))
    img_freqs = broadcat((rearrange(axial, "i d -> i () d"), rearrange(axial, "j d -> () j d")), dim=-1)
    img_freqs = rearrange(img_freqs, "h w d -> (h w) d")
    text_axial = pixel_rot(torch.full((text_positions,), -10.0))
    img_freqs = torch.cat((torch.cat((text_axial, text_axial), dim=-1), img_freqs), dim=0)
    return torch.cat((text_freqs, img_freqs), dim=-1).detach()


def layer_scale_init(layer_number: int) -> float:
    """LayerScale's initial value for the 1-based layer number (CaiT: deeper layers start smaller)."""
    if layer_number <= 18:
        return 0.1
    return 1e-5 if layer_number <= 24 else 1e-6


class Block(nn.Module):
    """One layer: x + scale * norm_out(attn(shift(norm(x)))), then the same with the feed-forward."""

    def __init__(self, dim: int, layer_number: int, attn: Attention, ff: FeedForward, attn_type: str,
                 sandwich_norm: bool, shift: Optional[TokenShift]):
        super().__init__()
        eps = layer_scale_init(layer_number)
        self.attn_type = attn_type
        self.attn_scale = nn.Parameter(torch.full((1, 1, dim), eps))
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = attn
        self.attn_norm_out = nn.LayerNorm(dim) if sandwich_norm else nn.Identity()
        self.ff_scale = nn.Parameter(torch.full((1, 1, dim), eps))
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = ff
        self.ff_norm_out = nn.LayerNorm(dim) if sandwich_norm else nn.Identity()
        self._shift = [shift]  # shared, parameter-free; kept out of the module tree

    def _shifted(self, x: Tensor, start: Union[int, Tensor], history: Optional[Tensor]) -> Tensor:
        shift = self._shift[0]
        return x if shift is None else shift(x, start=start, history=history)

    def attn_branch(self, x: Tensor, start: Union[int, Tensor], mask: Optional[Tensor], rotary: Optional[Tensor],
                    cache: Optional[KVCache], index: int) -> Tensor:
        """scale * norm_out(attn(shift(norm(x))))."""
        history = cache.layer_history(index, 0) if cache is not None else None
        kv = cache.layer_kv(index) if cache is not None else None
        h = self._shifted(self.attn_norm(x), start, history)
        h = self.attn(h, mask=mask, rotary=rotary, kv_cache=kv, start=start)
        return self.attn_norm_out(h) * self.attn_scale

    def ff_branch(self, x: Tensor, start: Union[int, Tensor], cache: Optional[KVCache], index: int) -> Tensor:
        """scale * norm_out(ff(shift(norm(x))))."""
        history = cache.layer_history(index, 1) if cache is not None else None
        h = self._shifted(self.ff_norm(x), start, history)
        h = self.ff(h)
        return self.ff_norm_out(h) * self.ff_scale


class Transformer(nn.Module):
    """A stack of `Block`s over [<bos> text ; image] (or plain) sequences, with a prebuilt mask per pattern.

    seq_len: every position the stack can run, the image grid's `image_fmap_size**2` included (DALLE passes
    1 + text_seq_len + image_seq_len: <bos>, the caption, the grid); `text_positions = seq_len - image_fmap_size**2`
    positions come before the grid (all of them without one). conv_kernel_size: the window side of the
    convolutional patterns (default `masks.KERNEL_SIZES`).
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        seq_len: int,
        causal: bool = True,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        attn_types: Optional[Sequence[str]] = None,
        image_fmap_size: Optional[int] = None,
        sandwich_norm: bool = False,
        shift_tokens: bool = False,
        rotary_emb: bool = True,
        shared_attn_ids: Optional[Sequence] = None,
        shared_ff_ids: Optional[Sequence] = None,
        reversible: bool = False,
        gradient_checkpointing: bool = False,
        conv_kernel_size: Optional[int] = None,
        conv_dilation: int = 1,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("seq_len", seq_len), ("heads", heads),
                            ("dim_head", dim_head), ("ff_mult", ff_mult), ("conv_dilation", conv_dilation)):
            check_int(name, value)
        for name, value in (("image_fmap_size", image_fmap_size), ("conv_kernel_size", conv_kernel_size)):
            if value is not None:
                check_int(name, value)
        check_float("attn_dropout", attn_dropout, low=0, high=1)
        check_float("ff_dropout", ff_dropout, low=0, high=1)
        attn_types = cast_tuple(default(attn_types, ("full",)))
        for t in attn_types:
            if t == "sparse":
                raise ValueError("attn_types 'sparse' (DeepSpeed block-sparse kernels) is not supported; use "
                                 "'axial_row', 'axial_col', 'conv_like' or the paper's 'row', 'col', 'conv'")
            if t not in ATTN_TYPES:
                raise ValueError(f"unknown attention type {t!r} in attn_types; expected one of {ATTN_TYPES}")
        if image_fmap_size is None and (shift_tokens or rotary_emb or set(attn_types) != {"full"}):
            raise ValueError("shift_tokens, rotary_emb and sparse attention patterns need image_fmap_size")
        if conv_kernel_size is not None and image_fmap_size is not None and conv_kernel_size > 2 * image_fmap_size + 1:
            raise ValueError(f"conv_kernel_size={conv_kernel_size} is wider than the image grid can use (at most "
                             f"2 * image_fmap_size + 1 = {2 * image_fmap_size + 1})")
        if rotary_emb and dim_head < 9:
            raise ValueError(f"rotary_emb rotates dim_head // 3 features per axis and needs dim_head >= 9, got {dim_head}")
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.causal = causal
        self.reversible = reversible
        # reversible residuals keep their memory promise through activation checkpointing
        self.gradient_checkpointing = gradient_checkpointing or reversible
        image_seq_len = 0 if image_fmap_size is None else image_fmap_size**2
        self.seq_len = seq_len
        self.text_positions = seq_len - image_seq_len  # positions before the image grid (<bos> included)
        self.image_fmap_size = image_fmap_size
        if self.text_positions < 1:
            raise ValueError(f"seq_len={seq_len} leaves no position before the image grid ({image_seq_len} "
                             f"positions from image_fmap_size={image_fmap_size}): it counts <bos>, the text and "
                             "the grid")

        layer_types = list(islice(cycle(attn_types), depth))
        if causal:  # before building anything that size
            check_buffer_bytes(text_positions=self.text_positions, fmap_size=image_fmap_size, dim=dim,
                               dim_head=dim_head, attn_types=layer_types, rotary=rotary_emb, shift=shift_tokens)
        self.shift = TokenShift(dim, self.text_positions, image_fmap_size) if shift_tokens else None
        shared_attn: Dict = {}
        shared_ff: Dict = {}
        blocks: List[Block] = []
        attn_ids = cycle(default(shared_attn_ids, range(depth)))
        ff_ids = cycle(default(shared_ff_ids, range(depth)))
        for index, attn_type, attn_id, ff_id in zip(range(depth), layer_types, attn_ids, ff_ids):
            if attn_id not in shared_attn:
                attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout, causal=causal)
                shared_attn[attn_id] = (attn, attn_type)
            attn, shared_type = shared_attn[attn_id]
            if shared_type != attn_type:
                raise ValueError(f"attn_types do not match shared_attn_ids: layer {index} is {attn_type!r} but shares "
                                 f"attention {attn_id!r} with a {shared_type!r} layer")
            if ff_id not in shared_ff:
                shared_ff[ff_id] = FeedForward(dim, mult=ff_mult, dropout=ff_dropout)
            blocks.append(Block(dim, index + 1, attn, shared_ff[ff_id], attn_type, sandwich_norm, self.shift))
        self.layers = nn.ModuleList(blocks)
        self.attn_types = sorted(set(layer_types))

        for t in set(layer_types):
            if causal and t != "full":
                mask = attention_mask(t, self.text_positions, image_fmap_size, kernel_size=conv_kernel_size,
                                      dilation=conv_dilation)
                self.register_buffer(f"mask_{t}", mask, persistent=False)
        if causal:
            self.register_buffer("mask_full", attention_mask("full", self.text_positions, image_fmap_size),
                                 persistent=False)
        self.rotary_emb = rotary_emb
        if rotary_emb:
            self.register_buffer("rotary", self._rotary_table(), persistent=False)

    def _rotary_table(self, device: Optional[torch.device] = None) -> Tensor:
        frequencies = dalle_rotary_table(self.dim_head, self.text_positions, self.image_fmap_size)
        table = rotary_tables(frequencies, self.dim_head)
        return table if device is None else table.to(device)

    def _apply(self, fn: Callable, recurse: bool = True) -> "Transformer":
        """Module.to / .half() / .bfloat16() / .cuda() apply `fn` to every tensor; the complex rotary table only
        follows the device: a dtype cast would drop its imaginary part (`.to(bfloat16)`) or its precision."""
        table = self._buffers.pop("rotary", None)
        try:
            super()._apply(fn, recurse)
        finally:
            if table is not None:
                self._buffers["rotary"] = table
        if table is not None:
            # where `fn` sends tensors: probe it with an integer tensor, which no dtype cast touches
            device = fn(torch.empty(0, dtype=torch.long, device=table.device)).device
            if device != table.device:
                # a table on 'meta' has no values to move (e.g. after `to_empty`): rebuild it
                table = self._rotary_table(device) if table.is_meta else table.to(device)
                self._buffers["rotary"] = table
        return self

    def _mask(self, attn_type: str, start: int, end: int, key_padding_mask: Optional[Tensor]) -> Optional[Tensor]:
        if not self.causal:
            return None if key_padding_mask is None else key_padding_mask[:, None, None, :end]
        if attn_type == "full" and (start == 0 or end - start == 1):
            return None  # SDPA's is_causal, or a single query that sees everything before it
        if attn_type in ("axial_row", "axial_col", "col") and start == 0 and end > self.text_positions + 1:
            # whole sequences: compute only the visible blocks instead of masking a dense product
            return AxialPattern(self.text_positions, self.image_fmap_size, 0 if attn_type == "axial_row" else 1)
        return getattr(self, f"mask_{attn_type}")[start:end, :end]

    def allocate_cache(self, batch: int, *, device=None, dtype=None) -> KVCache:
        """A `KVCache` for `batch` sequences of up to the full length, in the model's (or autocast's) dtype."""
        check_int("batch", batch)
        ref = next(self.parameters())
        device = default(device, ref.device)
        if dtype is None:
            dtype = ref.dtype
            dtype = autocast_dtype(torch.device(device).type) or dtype
        return KVCache.allocate(num_layers=self.depth, batch=batch, heads=self.heads, dim_head=self.dim_head,
                                max_len=self.seq_len, dim=self.dim, shift_tokens=self.shift is not None,
                                device=device, dtype=dtype)

    def forward(self, x: Tensor, *, start: int = 0, cache: Optional[KVCache] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Run positions [start, start + n) of `x` (B, n, dim); with a cache, earlier positions come from it."""
        n = x.shape[1]
        end = start + n
        if end > self.seq_len:
            raise ValueError(f"sequence of {end} positions exceeds the transformer's {self.seq_len}")
        if start > 0 and cache is None:
            raise ValueError("start > 0 needs the cache holding the earlier positions")
        rotary = self.rotary[start:end] if self.rotary_emb else None
        masks = {t: self._mask(t, start, end, key_padding_mask) for t in self.attn_types}
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()

        def run(fn, *args):
            return checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args)

        return self._layers(x, start, masks, rotary, cache, run)

    def step(self, x: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        """Run the one position `pos` (a (1,) long tensor) of `x` (B, 1, dim) after the cached ones, with shapes
        that do not depend on `pos`: keys and values are written into the cache at `pos`, and attention reads
        the whole preallocated buffer under row `pos` of each pattern's mask (unwritten slots are masked).

        Equal to `forward(x, start=pos, cache=cache)`; it is the function `torch.compile` captures once for
        every position. The caller advances `cache.offset`.
        """
        if not self.causal:
            raise ValueError("step() decodes causal sequences; this transformer is not causal")
        rotary = self.rotary.index_select(0, pos) if self.rotary_emb else None  # (1, dim_head // 2)
        masks = {t: getattr(self, f"mask_{t}").index_select(0, pos) for t in self.attn_types}  # (1, max_len)
        return self._layers(x, pos, masks, rotary, cache, lambda fn, *args: fn(*args))

    def _layers(self, x: Tensor, start: Union[int, Tensor], masks: Dict, rotary: Optional[Tensor],
                cache: Optional[KVCache], run: Callable) -> Tensor:
        """The residual stack (plain or reversible) over `x`, each branch called through `run`."""
        if self.reversible:
            x1 = x2 = x
            for i, block in enumerate(self.layers):
                x1 = x1 + run(block.attn_branch, x2, start, masks[block.attn_type], rotary, cache, i)
                x2 = x2 + run(block.ff_branch, x1, start, cache, i)
            return (x1 + x2) / 2
        for i, block in enumerate(self.layers):
            x = x + run(block.attn_branch, x, start, masks[block.attn_type], rotary, cache, i)
            x = x + run(block.ff_branch, x, start, cache, i)
        return x
