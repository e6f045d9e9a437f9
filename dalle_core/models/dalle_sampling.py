"""Sampling from a DALLE: image codes and images from captions, caption completion, the one-position step.

`DALLESampling` is the half of `DALLE` that generates; `models/dalle.py` holds the network and the loss.
Image codes are drawn position by position: a prefill over the caption (and the priming codes), then one
step function, chosen once before the loop, for every later position:

- eager (the default; `use_cache=False` recomputes the whole sequence at every step, DALLE-pytorch's way,
  `use_cache=True` runs only the new position against the key/value cache); on the CPU the weights are
  prepacked for oneDNN for the duration of the loop;
- compiled (`compile=True`, with the cache): `decode_step` through `torch.compile` with static shapes, one
  graph for every position (a CUDA graph with `mode="reduce-overhead"`).

Classifier-free guidance runs the conditional and the unconditional branch (the empty caption, or
`negative_text`) as one batch of 2B (`sampling.with_null_condition`) in every mode; both branches are given the
same sampled code; `cfg_interval` guides only some positions; `guidance_space` picks how the two are combined
(`sampling.token_guidance`: on probabilities by default, or on logits).

What to decode is a `DecodePlan`: the code grid with the codes kept from an image (a prefix when priming, any
`mask` when inpainting) and the first position to draw. The loop is a generator yielding after each position,
so that `generate_images_stream` can decode rows as they come; `speculative=k` swaps in the speculative Jacobi
loop of `models/speculative.py`. Images, streaming, reranking and `score`: `dalle_images.py`.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.linear import pack_weight, prepacked
from ..sampling import (DEFAULT_FILTER_THRES, DEFAULT_GUIDANCE_SPACE, check_guidance_space, check_sampling_args,
                        filtered_probs, guided_logits, sample_logits, with_null_condition)
from ..utils import autocast_dtype, check_int, check_same_batch, eval_decorator, stepwise
from .cache import KVCache
from .speculative import speculative_decode

__all__ = ["DALLESampling", "DecodePlan", "PRIME_FRACTION"]

PRIME_FRACTION = 14 / 32  # default share of the image codes kept from a priming image: the paper's 14 of 32 rows

StepFunction = Callable[[int], Tensor]  # position -> image logits (B, num_image_tokens) for that position


class DecodePlan(NamedTuple):
    """What a decoding loop fills: captions `text` (B, text_seq_len), the code grid `codes` (B, image_seq_len)
    holding the codes kept from an image, `known` (B, image_seq_len), True where a row keeps its code (None:
    only the prefix before `first` is kept), and `first`, the first position any row draws."""

    text: Tensor
    codes: Tensor
    known: Optional[Tensor]
    first: int


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
        """The function giving the logits of image position `pos` once codes[:, :pos] are known (after the
        prefill); eager, it runs every position the cache lacks at once, compiled, one position per call."""
        if not compile:
            return lambda pos: self._image_logits(text_ids, codes[:, :pos], cache, head)
        compiled = self.compiled_image_step()
        where = torch.zeros(1, dtype=torch.long, device=codes.device)  # one tensor: its address never changes

        def step(pos: int) -> Tensor:
            while True:  # feed the codes the cache lacks one by one, up to codes[:, pos - 1]
                fed = cache.offset - (self.text_seq_len + 1)
                logits = compiled(codes[:, fed], where.fill_(cache.offset), cache, head)
                cache.advance(1)
                if fed == pos - 1:
                    return logits

        return step

    def _decode(self, plan: "DecodePlan", **options: Any) -> Iterator[Tuple[int, Tensor]]:
        """`_decode_steps` with each step in inference mode (lighter than no_grad; the weights cannot change),
        entered per step so that it neither leaks into the caller nor is lost when a step runs on another thread."""
        return stepwise(torch.inference_mode, self._decode_steps(plan, **options))

    def _decode_steps(self, plan: "DecodePlan", *, scales: List[float], space: str, negative: Optional[Tensor],
                      use_cache: bool, compile: bool, sample: Callable[[Tensor], Tensor]
                      ) -> Iterator[Tuple[int, Tensor]]:
        """Fill the positions of `plan.codes` that `plan.known` leaves free, in raster order; yields (positions
        done, codes (B, image_seq_len)) after each position (a view that keeps filling: clone to keep it).

        scales: the guidance scale of every image position (1 = the conditional logits alone); the batch is
        doubled (conditional ; `negative` or empty captions) when any of them is not 1, and the two combined in
        `space` (`sampling.GUIDANCE_SPACES`). `sample` draws codes
        (B,) from logits (B, num_image_tokens)."""
        text, codes, known, first = plan.text, plan.codes, plan.known, plan.first
        batch = text.shape[0]
        doubled = any(scale != 1 for scale in scales[first:])
        if doubled:
            text, codes = with_null_condition(text, codes, null_text=negative)
        rows = text.shape[0]
        text_ids = self._text_ids(text)
        # eager decoding on the CPU: weights prepacked for oneDNN (a compiled step leaves that to the compiler)
        packing = contextlib.nullcontext() if compile else prepacked(self.transformer, rows)
        with packing:
            head = None if compile else pack_weight(self.to_logits[1].weight[self.num_text_tokens :], rows)
            cache = None
            if use_cache:
                cache = self._compiled_cache(rows, text.device) if compile else self.make_cache(rows)
            logits = self._image_logits(text_ids, codes[:, :first], cache, head)  # the prefill
            have = first  # the position `logits` belong to
            step = self._step_function(text_ids, codes, cache, head, compile)
            for pos in range(first, self.image_seq_len):
                if known is not None and bool(known[:, pos].all()):
                    yield pos + 1, codes[:batch]  # every row keeps its own code here: nothing to draw
                    continue
                if pos != have:
                    logits, have = step(pos), pos
                if doubled:
                    logits = guided_logits(logits, scales[pos], space) if scales[pos] != 1 else logits[:batch]
                drawn = sample(logits)
                if known is not None:
                    drawn = torch.where(known[:, pos], codes[:batch, pos], drawn)
                codes[:, pos] = torch.cat((drawn, drawn)) if doubled else drawn
                yield pos + 1, codes[:batch]

    def _plan(self, text: Tensor, img: Optional[Tensor], mask: Optional[Tensor],
              num_init_img_tokens: Optional[int]) -> "DecodePlan":
        """What to decode: the code grid (B, image_seq_len) with the codes kept from `img`, which positions
        are kept (`known`, None when only a prefix is), and the first position to draw."""
        codes = torch.zeros(text.shape[0], self.image_seq_len, dtype=torch.long, device=text.device)
        if mask is None:
            num_primed = self._prime(text, img, num_init_img_tokens, codes)
            return DecodePlan(text, codes, None, num_primed)
        if num_init_img_tokens is not None:
            raise ValueError("pass either mask= (the codes to regenerate) or num_init_img_tokens= (keep a prefix), "
                             "not both; a mask that is False on the first rows keeps them")
        if img is None:
            raise ValueError("mask marks the part of `img` to regenerate, but no img was given: pass img=images "
                             "(or codes) to edit")
        if isinstance(img, Tensor):
            check_same_batch(text=text, img=img)
        image_codes = self._image_codes(img, "img").to(codes.device)
        if image_codes.shape[1] != self.image_seq_len:
            raise ValueError(f"with a mask, img must be whole images or all {self.image_seq_len} codes, got "
                             f"{image_codes.shape[1]} codes per image")
        regenerate = self._code_mask(mask, text.shape[0]).to(codes.device)  # (B, image_seq_len)
        known = ~regenerate
        codes = torch.where(known, image_codes, codes)
        free = regenerate.any(0)
        first = int(free.nonzero()[0]) if bool(free.any()) else self.image_seq_len
        return DecodePlan(text, codes, known, first)

    def _code_mask(self, mask: Any, batch: int) -> Tensor:
        """A boolean mask over pixels (B or 1, H, W) or over the code grid (B or 1, fmap, fmap), True =
        regenerate, as (batch, image_seq_len) over the codes: a code is redrawn when any pixel of its cell is."""
        fmap, size = self.image_fmap_size, self.vae.image_size
        expected = (f"a boolean tensor (batch or 1, {size}, {size}) over pixels or (batch or 1, {fmap}, {fmap}) "
                    f"over the code grid, True = regenerate")
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be {expected}, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be {expected}, got dtype {mask.dtype} (use mask > 0.5 or mask.bool())")
        if mask.ndim != 3 or tuple(mask.shape[1:]) not in ((size, size), (fmap, fmap)) or mask.shape[0] not in (1, batch):
            raise ValueError(f"mask must be {expected}, got shape {tuple(mask.shape)}")
        if mask.shape[1] == size:
            cell = size // fmap
            mask = mask.reshape(mask.shape[0], fmap, cell, fmap, cell).any(dim=4).any(dim=2)
        return mask.reshape(mask.shape[0], -1).expand(batch, -1)

    def _prime(self, text: Tensor, img: Optional[Tensor], num_init_img_tokens: Optional[int], codes: Tensor) -> int:
        """Write the first codes of `img` into `codes` (B, image_seq_len); returns how many were kept."""
        if num_init_img_tokens is not None:
            if img is None:
                raise ValueError("num_init_img_tokens is the number of codes kept from `img`, but no img was given: "
                                 "pass img=images (or codes) to prime with, or drop num_init_img_tokens")
            check_int("num_init_img_tokens", num_init_img_tokens)
        if img is None:
            return 0
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
        return num_primed

    def _guidance_scales(self, cond_scale: float, cfg_interval: Optional[Tuple[float, float]]) -> List[float]:
        """The guidance scale of each image position: `cond_scale` where position / image_seq_len lies in
        [start, end) of `cfg_interval` (everywhere without one), 1 elsewhere."""
        if cfg_interval is None:
            return [cond_scale] * self.image_seq_len
        if (not isinstance(cfg_interval, (tuple, list)) or len(cfg_interval) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in cfg_interval)
                or not 0 <= cfg_interval[0] <= cfg_interval[1] <= 1):
            raise ValueError(f"cfg_interval must be (start, end) with 0 <= start <= end <= 1, the fraction of the "
                             f"image positions to guide, got {cfg_interval!r}")
        start, end = cfg_interval
        return [cond_scale if start <= pos / self.image_seq_len < end else 1.0 for pos in range(self.image_seq_len)]

    def _codes_iter(self, text: Tensor, *, filter_thres: Optional[float] = DEFAULT_FILTER_THRES,
                    temperature: float = 1.0, top_p: Optional[float] = None, img: Optional[Tensor] = None,
                    mask: Optional[Tensor] = None, num_init_img_tokens: Optional[int] = None,
                    cond_scale: float = 1.0, negative_text: Optional[Tensor] = None,
                    cfg_interval: Optional[Tuple[float, float]] = None,
                    guidance_space: str = DEFAULT_GUIDANCE_SPACE, use_cache: bool = False,
                    generator: Optional[torch.Generator] = None, compile: bool = False,
                    speculative: Optional[int] = None) -> Iterator[Tuple[int, Tensor]]:
        """Check every setting once, then decode: yields (positions done, codes (B, image_seq_len))."""
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached decoding step: pass use_cache=True too")
        # every setting is checked here, once: the decoding loop samples with `sample_logits(check=False)`
        check_sampling_args(temperature=temperature, filter_thres=filter_thres, top_p=top_p, cond_scale=cond_scale)
        check_guidance_space(guidance_space)
        text = self._check_text(text)
        if (negative_text is not None or cfg_interval is not None) and cond_scale == 1:
            raise ValueError("negative_text and cfg_interval shape classifier-free guidance, which is off at "
                             "cond_scale=1: pass a cond_scale other than 1 too")
        negative = None
        if negative_text is not None:
            negative = self._check_text(negative_text)
            if negative.shape[0] == 1:
                negative = negative.expand(text.shape[0], -1)
            check_same_batch(text=text, negative_text=negative)
            negative = negative.to(text.device)
        scales = self._guidance_scales(cond_scale, cfg_interval)
        if speculative is not None and compile:
            raise ValueError("speculative decoding runs blocks of positions eagerly: drop compile=True")
        plan = self._plan(text, img, mask, num_init_img_tokens)
        if plan.first == self.image_seq_len:  # nothing to draw
            yield self.image_seq_len, plan.codes
            return
        if speculative is not None:
            probs = functools.partial(filtered_probs, filter_thres=filter_thres, top_p_value=top_p,
                                      temperature=temperature)
            yield from speculative_decode(self, plan, k=speculative, scales=scales, space=guidance_space,
                                          negative=negative, probs=probs, generator=generator)
            return

        def sample(logits: Tensor) -> Tensor:
            return sample_logits(logits, filter_thres=filter_thres, top_p_value=top_p, temperature=temperature,
                                 generator=generator, check=False)

        yield from self._decode(plan, scales=scales, space=guidance_space, negative=negative, use_cache=use_cache,
                                compile=compile, sample=sample)

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
        mask: Optional[Tensor] = None,
        num_init_img_tokens: Optional[int] = None,
        cond_scale: float = 1.0,
        negative_text: Optional[Tensor] = None,
        cfg_interval: Optional[Tuple[float, float]] = None,
        guidance_space: str = DEFAULT_GUIDANCE_SPACE,
        use_cache: bool = False,
        generator: Optional[torch.Generator] = None,
        compile: bool = False,
        speculative: Optional[int] = None,
    ) -> Tensor:
        """Sample image codes (B, image_seq_len) for captions `text`; see `generate_images`."""
        codes = None
        for _, codes in self._codes_iter(
                text, filter_thres=filter_thres, temperature=temperature, top_p=top_p, img=img, mask=mask,
                num_init_img_tokens=num_init_img_tokens, cond_scale=cond_scale, negative_text=negative_text,
                cfg_interval=cfg_interval, guidance_space=guidance_space, use_cache=use_cache, generator=generator,
                compile=compile, speculative=speculative):
            pass
        return codes.clone()  # a normal tensor again, usable with autograd

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
