"""Sampling from a DALLE: image codes and images from captions, caption completion, the one-position step.

`DALLESampling` is the half of `DALLE` that generates; `models/dalle.py` holds the network and the loss.
Image codes are drawn position by position: a prefill over the caption (and the priming codes), then one
step function, chosen once before the loop, for every later position:

- eager (the default; `use_cache=False` recomputes the whole sequence at every step, DALLE-pytorch's way,
  `use_cache=True` runs only the new position against the key/value cache); on the CPU the weights are
  prepacked for oneDNN for the duration of the loop;
- compiled (`compile=True`, with the cache): `decode_step` through `torch.compile` with static shapes, one
  graph for every position (a CUDA graph with `mode="reduce-overhead"`).

Classifier-free guidance runs the conditional and the unconditional branch as one batch of 2B
(`sampling.with_null_condition`) in every mode; both branches are given the same sampled code.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear import pack_weight, prepacked
from ..sampling import DEFAULT_FILTER_THRES, check_sampling_args, guided_logits, sample_logits, with_null_condition
from ..utils import autocast_dtype, check_int, check_same_batch, eval_decorator
from .cache import KVCache

__all__ = ["DALLESampling", "PRIME_FRACTION"]

PRIME_FRACTION = 14 / 32  # default share of the image codes kept from a priming image: the paper's 14 of 32 rows

StepFunction = Callable[[int], Tensor]  # position -> image logits (B, num_image_tokens) for that position


class DALLESampling:
    """Generation methods of `DALLE` (a mixin: it uses the network methods `DALLE` defines)."""

    # --- the pieces of the decoding loop -------------------------------------------------------------------

    def _image_logits(self, text_ids: Tensor, codes: Tensor, cache: Optional[KVCache],
                      head: Optional[Tensor] = None) -> Tensor:
        """Image logits (B, num_image_tokens) of the position after [text_ids ; codes], computing only the
        positions `cache` lacks (all of them without one). `head`: the output layer's image rows, packed."""
        hidden, _ = self._hidden(text_ids, codes, cache)
        return self._logits(hidden[:, -1], "image", head)

    def prefill(self, text: Tensor, codes: Optional[Tensor] = None, cache: Optional[KVCache] = None) -> Tensor:
        """Image logits (B, num_image_tokens) of the first position after [<bos> text ; codes]: the start of
        decoding. text: caption ids (B, <= text_seq_len); codes: image codes so far (B, m), or None; cache: a
        `make_cache(B)` cache that this fills (continue with `decode_step`)."""
        codes = None if codes is None or codes.shape[1] == 0 else self._image_codes(codes, "codes")
        with torch.no_grad():
            return self._image_logits(self._text_ids(self._check_text(text)), codes, cache)

    def decode_step(self, code: Tensor, position: Union[int, Tensor], cache: KVCache) -> Tensor:
        """One decoding step with static shapes: feed image code `code` (B,) at sequence `position` (text
        positions count from 1 after <bos>; the first image code sits at text_seq_len + 1) into `cache`, which
        holds every earlier position, and return the next position's image logits (B, num_image_tokens).
        Advances the cache by one. `compiled_image_step()` is the same computation through torch.compile."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache from make_cache, got {type(cache).__name__}")
        first = self.text_seq_len + 1
        pos = torch.as_tensor(position, dtype=torch.long, device=code.device).reshape(1)
        if not first <= int(pos) < self.text_seq_len + self.image_seq_len or int(pos) != cache.offset:
            raise ValueError(f"position must be the next one the cache lacks ({cache.offset}), an image position "
                             f"in [{first}, {self.text_seq_len + self.image_seq_len}); got {int(pos)}")
        with torch.no_grad():
            logits = self._image_step(code, pos, cache)
        cache.advance(1)
        return logits

    def _image_step(self, code: Tensor, pos: Tensor, cache: KVCache, head: Optional[Tensor] = None) -> Tensor:
        """`decode_step` without checks and without advancing the cache (the caller does): the function that
        `compiled_image_step` compiles. `pos` is a (1,) long tensor, so that no shape depends on it."""
        x = F.embedding(code[:, None], self._embedding_weight("image"))  # (B, 1, dim)
        if not self.rotary_emb:
            x = x + self._image_positions(x)[0].index_select(0, pos - (self.text_seq_len + 1))
        hidden = self.norm_by_max(self.transformer.step(self._stabilized(x), pos, cache))
        return self._logits(hidden[:, -1], "image", head)

    def compiled_image_step(self, **compile_kwargs: Any):
        """`torch.compile` of the one-position image decoding step (`decode_step` without its checks; the
        caller advances the cache), built on first use and kept (a plain attribute: not a submodule, not
        saved). Every position reuses the one graph, since no shape depends on it. `generate_images(compile=
        True)` uses it; `compile_kwargs` go to torch.compile on the first call (default dynamic=False,
        fullgraph=True; on a GPU, mode="reduce-overhead" replays it as a CUDA graph)."""
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

    def _step_function(self, text_ids: Tensor, codes: Tensor, cache: Optional[KVCache], head: Optional[Tensor],
                       compile: bool) -> StepFunction:
        """The function giving the logits of position `pos` once codes[:, :pos] are known (after the prefill)."""
        if not compile:
            return lambda pos: self._image_logits(text_ids, codes[:, :pos], cache, head)
        compiled = self.compiled_image_step()
        where = torch.zeros(1, dtype=torch.long, device=codes.device)  # one tensor: its address never changes

        def step(pos: int) -> Tensor:
            logits = compiled(codes[:, pos - 1], where.fill_(self.text_seq_len + pos), cache, head)
            cache.advance(1)
            return logits

        return step

    def _decode(self, text: Tensor, codes: Tensor, num_primed: int, *, cond_scale: float, use_cache: bool,
                compile: bool, sample: Callable[[Tensor], Tensor]) -> Tensor:
        """Fill codes[:, num_primed:] (B, image_seq_len) position by position; `sample` draws from logits."""
        batch = text.shape[0]
        guided = cond_scale != 1
        if guided:
            text, codes = with_null_condition(text, codes)
        rows = text.shape[0]
        text_ids = self._text_ids(text)
        # eager decoding on the CPU: weights prepacked for oneDNN (a compiled step leaves that to the compiler)
        packing = contextlib.nullcontext() if compile else prepacked(self.transformer, rows)
        with torch.inference_mode(), packing:  # inference mode: lighter than no_grad; the weights cannot change
            head = None if compile else pack_weight(self.to_logits[1].weight[self.num_text_tokens :], rows)
            cache = None
            if use_cache:
                cache = self._compiled_cache(rows, text.device) if compile else self.make_cache(rows)
            logits = self._image_logits(text_ids, codes[:, :num_primed], cache, head)  # the prefill
            step = self._step_function(text_ids, codes, cache, head, compile)
            for pos in range(num_primed, self.image_seq_len):
                if pos > num_primed:
                    logits = step(pos)
                if guided:
                    logits = guided_logits(logits, cond_scale)
                drawn = sample(logits)
                codes[:, pos] = torch.cat((drawn, drawn)) if guided else drawn
        return codes[:batch].clone()  # a normal tensor again, usable with autograd

    def _primed_codes(self, text: Tensor, img: Optional[Tensor], num_init_img_tokens: Optional[int]
                      ) -> Tuple[Tensor, int]:
        """The code grid to decode into (B, image_seq_len), its first codes taken from `img`, and their count."""
        if num_init_img_tokens is not None:
            if img is None:
                raise ValueError("num_init_img_tokens is the number of codes kept from `img`, but no img was given: "
                                 "pass img=images (or codes) to prime with, or drop num_init_img_tokens")
            check_int("num_init_img_tokens", num_init_img_tokens)
        codes = torch.zeros(text.shape[0], self.image_seq_len, dtype=torch.long, device=text.device)
        if img is None:
            return codes, 0
        if isinstance(img, Tensor):
            check_same_batch(text=text, img=img)
        primed = self._image_codes(img, "img")
        num_primed = num_init_img_tokens if num_init_img_tokens is not None else int(PRIME_FRACTION * self.image_seq_len)
        if not 0 < num_primed < self.image_seq_len:
            raise ValueError(f"num_init_img_tokens must be in (0, {self.image_seq_len}), got {num_primed}")
        if primed.shape[1] < num_primed:
            raise ValueError(f"img holds {primed.shape[1]} codes per image but num_init_img_tokens={num_primed} "
                             f"of them are kept: pass at least {num_primed} codes (or whole images)")
        codes[:, :num_primed] = primed[:, :num_primed].to(codes.device)
        return codes, num_primed

    # --- public API ------------------------------------------------------------------------------------------

    @torch.no_grad()
    @eval_decorator
    def generate_image_codes(
        self,
        text: Tensor,
        *,
        filter_thres: Optional[float] = DEFAULT_FILTER_THRES,
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
        codes, num_primed = self._primed_codes(text, img, num_init_img_tokens)

        def sample(logits: Tensor) -> Tensor:
            return sample_logits(logits, filter_thres=filter_thres, top_p_value=top_p, temperature=temperature,
                                 generator=generator, check=False)

        return self._decode(text, codes, num_primed, cond_scale=cond_scale, use_cache=use_cache, compile=compile,
                            sample=sample)

    @torch.no_grad()
    def generate_images(
        self,
        text: Tensor,
        *,
        clip: Optional[nn.Module] = None,
        filter_thres: Optional[float] = DEFAULT_FILTER_THRES,
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

        filter_thres: top-k keeping the top (1 - filter_thres) of the image vocabulary (default
        `sampling.DEFAULT_FILTER_THRES`, 0.9); top_p: nucleus filtering; img: priming images (or codes) whose
        first `num_init_img_tokens` codes (default `PRIME_FRACTION`, the paper's 14 of 32 rows) are kept;
        cond_scale: classifier-free guidance; use_cache: incremental decoding; compile: run each cached
        decoding step through `torch.compile` (one graph for every position, compiled on the first call: see
        `compiled_image_step`).
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
        filter_thres: Optional[float] = DEFAULT_FILTER_THRES,
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
        vocab = self.text_vocab_size
        if len(prefix) > self.text_seq_len or any(not 0 < i < vocab for i in prefix):
            raise ValueError(f"the tokenized prompt must have at most {self.text_seq_len} ids in [1, {vocab}); "
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
        tokens = tokens.masked_fill(tokens >= vocab, 0)  # padding ids back to 0
        return tokens, [tokenizer.decode(tokens[0].tolist())]
