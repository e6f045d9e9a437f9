"""DALLE: a decoder-only transformer over [<bos> text ; image codes] with DALLE-pytorch's API.

This module holds the network and the loss; generation is `DALLESampling` (codes, the decoding step,
`generate_texts`: `dalle_sampling.py`) and `DALLEImages` (`generate_images`, streaming, reranking, `score`:
`dalle_images.py`).

Differences from DALLE-pytorch 1.6.6 (each covered by a test): the caller's tensors are never mutated;
classifier-free guidance runs both branches in one batch at every step; the key/value cache is used
whenever asked (also at cond_scale 1); top-k filters the image vocabulary only; generate_texts runs on any
device with any dalle_core tokenizer; images come out of the dVAE in [0, 1].
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from axial_positional_embedding import AxialPositionalEmbedding
from torch import Tensor, nn

from ..ops.linear import packed_linear
from ..ops.losses import linear_cross_entropy
from ..pretrained import PretrainedMixin
from ..sampling import DEFAULT_GUIDANCE_SPACE, check_guidance_space, guided_logits, with_null_condition
from ..utils import (cast_tuple, check_float, check_images, check_int, check_real_batch, check_same_batch,
                     check_token_ids, default, set_requires_grad)
from .cache import KVCache
from .dalle_images import DALLEImages
from .dalle_sampling import DALLESampling
from .transformer import DivideMax, Transformer, check_buffer_bytes
from .reference_names import rename_reference_keys

__all__ = ["DALLE"]

CacheArg = Optional[Union[KVCache, dict]]


class DALLE(PretrainedMixin, DALLESampling, DALLEImages, nn.Module, register=True):
    """Text-to-image transformer: models p(text, image codes) autoregressively; the dVAE `vae` is frozen.

    Args:
        dim: model width.
        vae: the trained image tokenizer (a DiscreteVAE); frozen, and saved with the DALLE.
        num_text_tokens: caption vocabulary size (the tokenizer's vocab_size).
        text_seq_len: caption tokens.
        depth: transformer layers.
        heads: attention heads.
        dim_head: size of each head.
        reversible: reversible layers (less activation memory).
        attn_dropout: attention dropout.
        ff_dropout: feed-forward dropout.
        sparse_attn: accepted for DALLE-pytorch compatibility; does nothing (choose patterns with attn_types).
        attn_types: attention patterns cycled over the layers (full, axial_row, axial_col, conv_like, row, col,
            conv); None means full.
        loss_img_weight: image loss weight against the text loss (the paper: 7).
        stable: the CogView stabilisation tricks.
        sandwich_norm: sandwich layer norm.
        shift_tokens: token shifting.
        rotary_emb: rotary position embeddings (else learned text and axial image position embeddings).
        shared_attn_ids: layers with the same id share their attention weights (None: none shared).
        shared_ff_ids: layers with the same id share their feed-forward weights (None: none shared).
        share_input_output_emb: tie the input embeddings to the output layer.
        optimize_for_inference: accepted for DALLE-pytorch compatibility; does nothing.
        gradient_checkpointing: recompute activations in the backward pass.
        conv_kernel_size: window side of the convolutional patterns conv_like and conv (None: their defaults
            in `masks.KERNEL_SIZES`, 5 and 11).

    Attributes (sizes): text_seq_len and text_vocab_size (the caption's length and vocabulary, as given);
    num_text_tokens = text_vocab_size + text_seq_len (the text rows of the embedding and the output layer: a
    padding id per text position, as in DALLE-pytorch); image_fmap_size (the code grid's side), image_seq_len =
    image_fmap_size**2, num_image_tokens (the VAE's codebook), total_seq_len = text_seq_len + image_seq_len.
    """

    MODULE_ARGS = ("vae",)  # saved as its own {class, config} beside the DALLE's

    def __init__(
        self,
        *,
        dim: int,
        vae: nn.Module,
        num_text_tokens: int = 10000,
        text_seq_len: int = 256,
        depth: int,
        heads: int = 8,
        dim_head: int = 64,
        reversible: bool = False,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        sparse_attn: Union[bool, Sequence[bool]] = False,
        attn_types: Union[str, Sequence[str], None] = None,
        loss_img_weight: float = 7,
        stable: bool = False,
        sandwich_norm: bool = False,
        shift_tokens: bool = True,
        rotary_emb: bool = True,
        shared_attn_ids: Optional[Sequence[int]] = None,
        shared_ff_ids: Optional[Sequence[int]] = None,
        share_input_output_emb: bool = False,
        optimize_for_inference: bool = False,
        gradient_checkpointing: bool = False,
        conv_kernel_size: Optional[int] = None,
    ):
        super().__init__()
        self.register_load_state_dict_pre_hook(rename_reference_keys)  # DALLE-pytorch's names load too
        for name in ("image_size", "num_tokens", "num_layers", "channels", "get_codebook_indices", "decode"):
            if not hasattr(vae, name):
                raise TypeError(f"vae must be a DiscreteVAE (or provide {name!r}), got {type(vae).__name__}")
        if any(sparse_attn if isinstance(sparse_attn, (tuple, list)) else (sparse_attn,)):
            warnings.warn("sparse_attn does nothing (it was unused in DALLE-pytorch too); choose the pattern "
                          "with attn_types", UserWarning, stacklevel=2)
        if optimize_for_inference:
            warnings.warn("optimize_for_inference has no effect: dalle_core always runs cache-friendly masked "
                          "SDPA attention", UserWarning, stacklevel=2)
        # sizes first, before any weight exists (the Transformer checks its own other arguments itself)
        for name, value in dict(dim=dim, depth=depth, heads=heads, dim_head=dim_head, text_seq_len=text_seq_len,
                                num_text_tokens=num_text_tokens).items():
            check_int(name, value)
        check_float("loss_img_weight", loss_img_weight, low=0)
        fmap_size = vae.image_size // (2**vae.num_layers)
        # refuse a sequence whose masks and tables would not fit before allocating any weight
        layer_types = [str(t) for t in cast_tuple(default(attn_types, ("full",)))]
        check_buffer_bytes(text_positions=text_seq_len + 1, fmap_size=fmap_size, dim=dim, dim_head=dim_head,
                           attn_types=layer_types[:depth], rotary=bool(rotary_emb), shift=bool(shift_tokens))
        self.image_fmap_size = fmap_size
        self.text_seq_len = text_seq_len
        self.image_seq_len = fmap_size * fmap_size
        # the caption vocabulary (the tokenizer's) and, as in DALLE-pytorch, `num_text_tokens` the text rows of
        # the embedding and the output layer: that vocabulary plus a unique padding id per text position
        self.text_vocab_size = num_text_tokens
        self.num_text_tokens = num_text_tokens + text_seq_len
        self.num_image_tokens = vae.num_tokens
        self.total_tokens = self.num_text_tokens + self.num_image_tokens
        self.total_seq_len = text_seq_len + self.image_seq_len
        self.loss_img_weight = loss_img_weight
        self.stable = stable
        self.share_input_output_emb = share_input_output_emb

        self.vae = vae
        set_requires_grad(self.vae, False)  # the dVAE is trained separately and stays frozen

        self.rotary_emb = rotary_emb
        if not rotary_emb:
            self.text_pos_emb = nn.Embedding(text_seq_len + 1, dim)  # +1 for <bos>
            self.image_pos_emb = AxialPositionalEmbedding(dim, axial_shape=(fmap_size, fmap_size))
        self.transformer = Transformer(
            dim=dim, causal=True, seq_len=1 + self.total_seq_len, depth=depth, heads=heads, dim_head=dim_head,
            reversible=reversible, attn_dropout=attn_dropout, ff_dropout=ff_dropout, attn_types=attn_types,
            image_fmap_size=fmap_size, sandwich_norm=sandwich_norm, shift_tokens=shift_tokens,
            rotary_emb=rotary_emb, shared_attn_ids=shared_attn_ids, shared_ff_ids=shared_ff_ids,
            gradient_checkpointing=gradient_checkpointing, conv_kernel_size=conv_kernel_size,
        )
        self.norm_by_max = DivideMax(dim=-1) if stable else nn.Identity()
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.total_tokens))
        if not share_input_output_emb:
            self.text_emb = nn.Embedding(self.num_text_tokens, dim)
            self.image_emb = nn.Embedding(self.num_image_tokens, dim)
        self.register_buffer("text_pad_ids", torch.arange(text_seq_len) + num_text_tokens, persistent=False)

    # --- inputs ---------------------------------------------------------------------------------------

    def _check_text(self, text: Any) -> Tensor:
        """Validate caption ids (B, <= text_seq_len) in [0, text_vocab_size); right-pad with 0."""
        check_real_batch("text", text)
        text = check_token_ids("text", text, vocab_size=self.text_vocab_size)
        if text.shape[1] > self.text_seq_len:
            raise ValueError(f"text has {text.shape[1]} tokens but this DALLE takes at most text_seq_len="
                             f"{self.text_seq_len}; truncate the caption when tokenizing")
        return F.pad(text, (0, self.text_seq_len - text.shape[1]))

    def _image_codes(self, image: Tensor, name: str = "image") -> Tensor:
        """Image codes (B, m <= image_seq_len) from codes or raw images (B, C, H, W) in [0, 1]."""
        if isinstance(image, Tensor) and image.ndim == 4:
            check_images(name, image, channels=self.vae.channels, image_size=self.vae.image_size)
            return self.vae.get_codebook_indices(image)
        check_real_batch(f"{name} codes", image)
        if isinstance(image, Tensor) and image.is_floating_point() and image.ndim != 4:
            raise ValueError(f"{name} must be images (batch, {self.vae.channels}, {self.vae.image_size}, "
                             f"{self.vae.image_size}) or integer codes (batch, <= {self.image_seq_len}), "
                             f"got a float tensor of shape {tuple(image.shape)}")
        codes = check_token_ids(f"{name} codes", image, vocab_size=self.num_image_tokens)
        if codes.shape[1] > self.image_seq_len:
            raise ValueError(f"{name} has {codes.shape[1]} codes but the image sequence holds {self.image_seq_len}")
        return codes

    def _text_ids(self, text: Tensor) -> Tensor:
        """Padding (0) -> the position's unique padding id, then <bos> (id 0) in front: (B, text_seq_len + 1)."""
        text = torch.where(text == 0, self.text_pad_ids[: text.shape[1]], text)
        return F.pad(text, (1, 0), value=0)

    # --- the network ----------------------------------------------------------------------------------

    def _embedding_weight(self, vocab: str) -> Tensor:
        """The input embedding table of one modality ('text' or 'image'), shared with the output layer's rows
        with `share_input_output_emb`."""
        if self.share_input_output_emb:
            rows = slice(0, self.num_text_tokens) if vocab == "text" else slice(self.num_text_tokens, None)
            return self.to_logits[1].weight[rows]
        return self.text_emb.weight if vocab == "text" else self.image_emb.weight

    def _image_positions(self, like: Tensor) -> Tensor:
        """Absolute (axial) positional embeddings of every image position, (1, image_seq_len, dim)."""
        return self.image_pos_emb(like.new_empty((1, self.image_seq_len, like.shape[-1])))

    def _stabilized(self, tokens: Tensor) -> Tensor:
        """DALLE-pytorch's `stable` trick: the same values, a tenth of the gradient into the embeddings."""
        return tokens * 0.1 + tokens.detach() * 0.9 if self.stable else tokens

    def _embed(self, text_ids: Tensor, codes: Optional[Tensor], start: int) -> Tensor:
        """Embeddings of positions [start, n) of [text_ids ; codes] (positional embeddings included)."""
        t1 = text_ids.shape[1]
        parts = []
        if start < t1:
            ids = text_ids[:, start:]
            emb = F.embedding(ids, self._embedding_weight("text"))
            if not self.rotary_emb:
                emb = emb + self.text_pos_emb(torch.arange(start, t1, device=ids.device))
            parts.append(emb)
        if codes is not None and codes.shape[1] > 0 and start < t1 + codes.shape[1]:
            first = max(start - t1, 0)
            ids = codes[:, first:]
            emb = F.embedding(ids, self._embedding_weight("image"))
            if not self.rotary_emb:
                emb = emb + self._image_positions(emb)[:, first : codes.shape[1]]
            parts.append(emb)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _hidden(self, text_ids: Tensor, codes: Optional[Tensor], cache: Optional[KVCache]) -> Tuple[Tensor, int]:
        """Transformer output for the positions not yet in `cache` (all of them without one), and their start."""
        n = text_ids.shape[1] + (0 if codes is None else codes.shape[1])
        if n > self.total_seq_len:  # the last image code is only ever a target
            codes = codes[:, :-1]
            n -= 1
        start = 0
        if cache is not None:
            if cache.batch_size != text_ids.shape[0]:
                raise ValueError(f"cache holds a batch of {cache.batch_size}, the input has {text_ids.shape[0]}")
            start = cache.offset
            if start >= n:
                raise ValueError(f"the cache already holds {start} positions; the input has only {n}")
        tokens = self._stabilized(self._embed(text_ids, codes, start))
        out = self.transformer(tokens, start=start, cache=cache)
        if cache is not None:
            cache.advance(n - start)
        return self.norm_by_max(out), start

    def _logits(self, hidden: Tensor, vocab: str, packed: Optional[Tensor] = None) -> Tensor:
        """Logits of one modality only ('text' or 'image'): the rows of the output layer for its vocabulary
        (`packed`: those rows from `linear.pack_weight`, for sampling on the CPU)."""
        norm, proj = self.to_logits
        rows = slice(0, self.num_text_tokens) if vocab == "text" else slice(self.num_text_tokens, None)
        return packed_linear(norm(hidden), proj.weight[rows], proj.bias[rows], packed)

    def _masked_logits(self, hidden: Tensor, start: int) -> Tensor:
        """Full-vocabulary logits, with the other modality's entries at the dtype's lowest value."""
        logits = self.to_logits(hidden)
        num_text_pos = max(min(self.text_seq_len - start, hidden.shape[1]), 0)
        neg = -torch.finfo(logits.dtype).max
        logits[:, :num_text_pos, self.num_text_tokens :] = neg
        logits[:, num_text_pos:, : self.num_text_tokens] = neg
        return logits

    def _resolve_cache(self, cache: CacheArg, batch: int) -> Optional[KVCache]:
        if cache is None or isinstance(cache, KVCache):
            return cache
        if isinstance(cache, dict):  # DALLE-pytorch style: pass the same dict to every call
            if "kv" not in cache:
                cache["kv"] = self.transformer.allocate_cache(batch)
            return cache["kv"]
        raise TypeError(f"cache must be a dalle_core KVCache or a dict, got {type(cache).__name__}")

    def make_cache(self, batch: int) -> KVCache:
        """A preallocated cache for `batch` sequences (pass it as `cache=` to successive forward calls)."""
        return self.transformer.allocate_cache(batch)  # which checks `batch`

    # --- public API -----------------------------------------------------------------------------------

    def forward(
        self,
        text: Tensor,
        image: Optional[Tensor] = None,
        return_loss: bool = False,
        null_cond_prob: float = 0.0,
        cache: CacheArg = None,
    ) -> Tensor:
        """Logits (B, n, total_tokens) for [<bos> text ; image], or the loss with `return_loss=True`.

        text: caption ids (B, <= text_seq_len), 0 = padding. image: codes (B, m) or images (B, C, H, W) in
        [0, 1]. null_cond_prob: probability of dropping each caption (classifier-free guidance training).
        cache: a `KVCache` (or a dict) reused across calls; then only the positions it lacks are computed.
        """
        text = self._check_text(text)
        null_cond_prob = check_float("null_cond_prob", null_cond_prob, low=0, high=1)
        codes = None
        # codes (B, 0) mean "no image yet"; anything else, an empty batch included, is checked
        if image is not None and not (isinstance(image, Tensor) and image.ndim == 2 and image.shape[1] == 0
                                      and image.shape[0] == text.shape[0]):
            if isinstance(image, Tensor):
                check_same_batch(text=text, image=image)  # before encoding images through the dVAE
            codes = self._image_codes(image)
            check_same_batch(text=text, image=codes)
        if null_cond_prob > 0:
            keep = torch.rand(text.shape[0], device=text.device) >= null_cond_prob
            text = text * keep[:, None]  # a new tensor: the caller's stays untouched
        kv = self._resolve_cache(cache, text.shape[0])
        hidden, start = self._hidden(self._text_ids(text), codes, kv)
        if not return_loss:
            return self._masked_logits(hidden, start)

        if codes is None or codes.shape[1] != self.image_seq_len or kv is not None:
            raise ValueError(f"the loss needs the whole image ({self.image_seq_len} codes, or an image) and no cache")
        # each modality's cross-entropy over its own vocabulary only: the logits mask would zero the rest anyway
        normed = self.to_logits[0](hidden)
        weight, bias = self.to_logits[1].weight, self.to_logits[1].bias
        t = self.num_text_tokens
        text_labels = self._text_ids(text)[:, 1:]
        loss_text = linear_cross_entropy(normed[:, : self.text_seq_len].flatten(0, 1), weight[:t], bias[:t],
                                         text_labels.flatten())
        loss_img = linear_cross_entropy(normed[:, self.text_seq_len :].flatten(0, 1), weight[t:], bias[t:],
                                        codes.flatten())
        return (loss_text + self.loss_img_weight * loss_img) / (self.loss_img_weight + 1)

    def forward_with_cond_scale(self, text: Tensor, image: Optional[Tensor] = None, *, cond_scale: float = 1.0,
                                guidance_space: str = DEFAULT_GUIDANCE_SPACE, cache: CacheArg = None,
                                **kwargs) -> Tensor:
        """Guided logits (`sampling.token_guidance` in `guidance_space`; "logits" gives DALLE-pytorch's
        `null + cond_scale * (cond - null)`); both branches run as one batch of 2B (a cache passed here must hold
        2B sequences: conditional first, then unconditional)."""
        cond_scale = check_float("cond_scale", cond_scale)
        check_guidance_space(guidance_space)
        if cond_scale == 1:
            return self(text, image, cache=cache, **kwargs)
        both_text, both_image = with_null_condition(self._check_text(text), image)
        return guided_logits(self(both_text, both_image, cache=cache, **kwargs), cond_scale, guidance_space)
