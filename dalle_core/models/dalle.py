"""DALLE: a decoder-only transformer over [<bos> text ; image codes] with DALLE-pytorch's API.

Differences from DALLE-pytorch 1.6.6 (each covered by a test): the caller's tensors are never mutated;
classifier-free guidance runs both branches in one batch at every step; the key/value cache is used
whenever asked (also at cond_scale 1); top-k filters the image vocabulary only; generate_texts runs on any
device with any dalle_core tokenizer; images come out of the dVAE in [0, 1].
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from axial_positional_embedding import AxialPositionalEmbedding
from torch import Tensor, nn

from ..utils import (autocast_dtype, cast_tuple, check_float, check_images, check_int, check_real_batch,
                     check_same_batch, check_token_ids, default, eval_decorator, set_requires_grad)
from .cache import KVCache
from ..pretrained import PretrainedMixin
from ..ops.linear import pack_weight, packed_linear, prepacked
from ..ops.losses import linear_cross_entropy
from ..sampling import check_sampling_args, classifier_free_guidance, sample_logits
from .transformer import DivideMax, Transformer, check_buffer_bytes

__all__ = ["DALLE"]

CacheArg = Optional[Union[KVCache, dict]]


class DALLE(PretrainedMixin, nn.Module, register=True):
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
        conv_kernel_size: kernel side of the conv_like attention pattern (None: the pattern's default).
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
        fmap = vae.image_size // (2**vae.num_layers)
        # refuse a sequence whose masks and tables would not fit before allocating any weight
        layer_types = [str(t) for t in cast_tuple(default(attn_types, ("full",)))]
        check_buffer_bytes(text_len=text_seq_len + 1, fmap_size=fmap, dim=dim, dim_head=dim_head,
                           attn_types=layer_types[:depth], rotary=bool(rotary_emb), shift=bool(shift_tokens))
        self.image_fmap_size = fmap
        self.text_seq_len = text_seq_len
        self.image_seq_len = fmap * fmap
        self.num_text_tokens = num_text_tokens + text_seq_len  # a unique padding id per text position
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
            self.image_pos_emb = AxialPositionalEmbedding(dim, axial_shape=(fmap, fmap))
        self.transformer = Transformer(
            dim=dim, causal=True, seq_len=self.total_seq_len, depth=depth, heads=heads, dim_head=dim_head,
            reversible=reversible, attn_dropout=attn_dropout, ff_dropout=ff_dropout, attn_types=attn_types,
            image_fmap_size=fmap, stable=stable, sandwich_norm=sandwich_norm, shift_tokens=shift_tokens,
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
        """Validate caption ids (B, <= text_seq_len) in [0, num_text_tokens); right-pad with 0."""
        user_vocab = self.num_text_tokens - self.text_seq_len
        check_real_batch("text", text)
        text = check_token_ids("text", text, vocab_size=user_vocab)
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

    def _image_step(self, code: Tensor, pos: Tensor, cache: KVCache, head: Optional[Tensor] = None) -> Tensor:
        """Image logits (B, num_image_tokens) for the next position after feeding image code `code` (B,) at
        sequence position `pos` (a (1,) long tensor); static shapes, see `Transformer.step`. `head`: the image
        rows of the output layer, packed. The caller advances the cache."""
        x = F.embedding(code[:, None], self._embedding_weight("image"))  # (B, 1, dim)
        if not self.rotary_emb:
            x = x + self._image_positions(x)[0].index_select(0, pos - (self.text_seq_len + 1))
        hidden = self.norm_by_max(self.transformer.step(self._stabilized(x), pos, cache))
        return self._logits(hidden[:, -1], "image", head)

    def compiled_image_step(self, **compile_kwargs: Any):
        """`torch.compile` of the one-position image decoding step, built on first use and kept (a plain
        attribute: not a submodule, not saved). Every position reuses the one graph, since no shape depends on
        it. `generate_images(compile=True)` uses it; `compile_kwargs` go to torch.compile on the first call
        (default dynamic=False, fullgraph=True; on a GPU, mode="reduce-overhead" replays it as a CUDA graph)."""
        compiled = self.__dict__.get("_compiled_image_step")
        if compiled is None:
            compiled = torch.compile(self._image_step, **{"dynamic": False, "fullgraph": True, **compile_kwargs})
            self.__dict__["_compiled_image_step"] = compiled
        return compiled

    def _compiled_cache(self, batch: int, device: torch.device) -> KVCache:
        """The cache the compiled step decodes into, one per (batch, device, dtype), reused by every call so
        that its buffers keep their addresses (a CUDA graph replays on fixed addresses; new tensors would
        make the compiler guard on them again). It is zeroed at every call."""
        caches = self.__dict__.setdefault("_compiled_caches", {})
        key = (batch, str(device), autocast_dtype(device.type) or self.to_logits[1].weight.dtype)
        if key not in caches:
            caches[key] = self.make_cache(batch)
            for buffer in caches[key].buffers():
                torch._dynamo.mark_static_address(buffer)
        caches[key].reset(zero=True)
        return caches[key]

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
                                cache: CacheArg = None, **kwargs) -> Tensor:
        """Guided logits `null + cond_scale * (cond - null)`; both branches run as one batch of 2B (a cache
        passed here must hold 2B sequences: conditional first, then unconditional)."""
        cond_scale = check_float("cond_scale", cond_scale)
        if cond_scale == 1:
            return self(text, image, cache=cache, **kwargs)
        text = self._check_text(text)
        both_text = torch.cat((text, torch.zeros_like(text)))
        both_image = None if image is None else torch.cat((image, image))
        logits = self(both_text, both_image, cache=cache, **kwargs)
        cond, null = logits.chunk(2)
        return classifier_free_guidance(cond, null, cond_scale)

    @torch.no_grad()
    @eval_decorator
    def generate_image_codes(
        self,
        text: Tensor,
        *,
        filter_thres: Optional[float] = 0.5,
        temperature: float = 1.0,
        top_p: Optional[float] = None,
        img: Optional[Tensor] = None,
        num_init_img_tokens: Optional[int] = None,
        cond_scale: float = 1.0,
        use_cache: bool = False,
        generator: Optional[torch.Generator] = None,
        compile: bool = False,
    ) -> Tensor:
        """Sample image codes (B, image_seq_len) for captions `text`; see `generate_images`."""
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached decoding step: pass use_cache=True too")
        # every setting is checked here, once: the decoding loop samples with `sample_logits(check=False)`
        check_sampling_args(temperature=temperature, filter_thres=filter_thres, top_p=top_p, cond_scale=cond_scale)
        text = self._check_text(text)
        batch = text.shape[0]
        if num_init_img_tokens is not None:
            if img is None:
                raise ValueError("num_init_img_tokens is the number of codes kept from `img`, but no img was given: "
                                 "pass img=images (or codes) to prime with, or drop num_init_img_tokens")
            check_int("num_init_img_tokens", num_init_img_tokens)
        codes = torch.zeros(batch, self.image_seq_len, dtype=torch.long, device=text.device)
        num_primed = 0
        if img is not None:
            if isinstance(img, Tensor):
                check_same_batch(text=text, img=img)
            primed = self._image_codes(img, "img")
            num_primed = num_init_img_tokens if num_init_img_tokens is not None else int(0.4375 * self.image_seq_len)
            if not 0 < num_primed < self.image_seq_len:
                raise ValueError(f"num_init_img_tokens must be in (0, {self.image_seq_len}), got {num_primed}")
            if primed.shape[1] < num_primed:
                raise ValueError(f"img holds {primed.shape[1]} codes per image but num_init_img_tokens={num_primed} "
                                 f"of them are kept: pass at least {num_primed} codes (or whole images)")
            codes[:, :num_primed] = primed[:, :num_primed].to(codes.device)

        guided = cond_scale != 1
        if guided:  # conditional and unconditional branch in one batch
            text = torch.cat((text, torch.zeros_like(text)))
            codes = torch.cat((codes, codes))
        text_ids = self._text_ids(text)
        step = self.compiled_image_step() if compile else None
        rows = text.shape[0]
        # eager decoding on the CPU: weights prepacked for oneDNN (a compiled step leaves that to the compiler)
        packing = contextlib.nullcontext() if compile else prepacked(self.transformer, rows)
        with torch.inference_mode(), packing:  # inference mode: lighter than no_grad; the weights cannot change
            head = None if compile else pack_weight(self.to_logits[1].weight[self.num_text_tokens :], rows)
            cache = None
            if use_cache:
                cache = self._compiled_cache(rows, text.device) if compile else self.make_cache(rows)
            where = torch.zeros(1, dtype=torch.long, device=text.device)  # the position fed to `step`
            for pos in range(num_primed, self.image_seq_len):
                if not compile or pos == num_primed:  # the prefill (text and primer), or eager decoding
                    hidden, _ = self._hidden(text_ids, codes[:, :pos], cache)
                    logits = self._logits(hidden[:, -1], "image", head)  # (B', num_image_tokens)
                else:  # compiled: one position, with shapes that never change (one graph serves them all)
                    logits = step(codes[:, pos - 1], where.fill_(self.text_seq_len + pos), cache, head)
                    cache.advance(1)
                if guided:
                    logits = classifier_free_guidance(*logits.chunk(2), cond_scale)
                sample = sample_logits(logits, filter_thres=filter_thres, top_p_value=top_p, temperature=temperature,
                                       generator=generator, check=False)
                codes[:, pos] = torch.cat((sample, sample)) if guided else sample
        return codes[:batch].clone()  # a normal tensor again, usable with autograd

    @torch.no_grad()
    def generate_images(
        self,
        text: Tensor,
        *,
        clip: Optional[nn.Module] = None,
        filter_thres: Optional[float] = 0.5,
        temperature: float = 1.0,
        img: Optional[Tensor] = None,
        num_init_img_tokens: Optional[int] = None,
        cond_scale: float = 1.0,
        use_cache: bool = False,
        top_p: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        compile: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Images (B, C, H, W) in [0, 1] for captions `text` (B, <= text_seq_len); with `clip`, also its scores.

        filter_thres: top-k keeping the top (1 - filter_thres) of the image vocabulary; top_p: nucleus
        filtering; img: priming images whose first `num_init_img_tokens` codes (default 43.75%, the paper's
        14 of 32 rows) are kept; cond_scale: classifier-free guidance; use_cache: incremental decoding;
        compile: run each cached decoding step through `torch.compile` (one graph for every position,
        compiled on the first call: see `compiled_image_step`).
        """
        if clip is not None and not isinstance(clip, nn.Module):  # refused before generating, not after
            raise TypeError(f"clip must be a CLIP module scoring (text, images), got {type(clip).__name__}")
        codes = self.generate_image_codes(
            text, filter_thres=filter_thres, temperature=temperature, top_p=top_p, img=img,
            num_init_img_tokens=num_init_img_tokens, cond_scale=cond_scale, use_cache=use_cache, generator=generator,
            compile=compile,
        )
        images = self.vae.decode(codes)
        if clip is None:
            return images
        return images, clip(self._check_text(text), images)

    @torch.no_grad()
    @eval_decorator
    def generate_texts(
        self,
        tokenizer: Any,
        text: Optional[str] = None,
        *,
        filter_thres: Optional[float] = 0.5,
        temperature: float = 1.0,
        top_p: Optional[float] = None,
        use_cache: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Tensor, List[str]]:
        """Complete the caption `text` (or sample one) to text_seq_len tokens: (ids (1, text_seq_len) with
        padding as 0, [decoded caption]). `tokenizer` follows dalle_core's contract (encode/decode)."""
        for method in ("encode", "decode"):
            if not callable(getattr(tokenizer, method, None)):
                raise TypeError(f"tokenizer must have encode() and decode() (a dalle_core tokenizer), got "
                                f"{type(tokenizer).__name__} without {method}()")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"text must be a string prompt (or None), got {type(text).__name__}")
        check_sampling_args(temperature=temperature, filter_thres=filter_thres, top_p=top_p)
        device = self.to_logits[1].weight.device
        prefix = tokenizer.encode(text) if text else []
        user_vocab = self.num_text_tokens - self.text_seq_len
        if len(prefix) > self.text_seq_len or any(not 0 < i < user_vocab for i in prefix):
            raise ValueError(f"the tokenized prompt must have at most {self.text_seq_len} ids in [1, {user_vocab}); "
                             f"got {len(prefix)} ids (is num_text_tokens >= tokenizer.vocab_size?)")
        ids = torch.zeros(1, self.text_seq_len + 1, dtype=torch.long, device=device)  # <bos> = 0 first
        ids[0, 1 : 1 + len(prefix)] = torch.tensor(prefix, dtype=torch.long, device=device)
        cache = self.make_cache(1) if use_cache else None
        for pos in range(1 + len(prefix), self.text_seq_len + 1):
            hidden, _ = self._hidden(ids[:, :pos], None, cache)
            logits = self._logits(hidden[:, -1], "text")
            ids[:, pos] = sample_logits(logits, filter_thres=filter_thres, top_p_value=top_p,
                                        temperature=temperature, generator=generator, check=False)
        tokens = ids[:, 1:]
        tokens = tokens.masked_fill(tokens >= user_vocab, 0)  # padding ids back to 0
        return tokens, [tokenizer.decode(tokens[0].tolist())]
