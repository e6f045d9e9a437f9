"""Images from a DALLE: `generate_images` (codes decoded by the image tokenizer, scored by a CLIP, reranked),
`generate_images_stream` (the same, row by row) and `score` (the likelihood of given codes).

`DALLEImages` is the mixin that turns the codes of `DALLESampling` (`dalle_sampling.py`) into pictures; both are
bases of `DALLE`.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..sampling import DEFAULT_FILTER_THRES, DEFAULT_GUIDANCE_SPACE
from ..utils import check_int, check_same_batch, eval_decorator, stepwise

__all__ = ["DALLEImages"]


def _clip_scores(clip: nn.Module, text: Tensor, images: Tensor) -> Tensor:
    """CLIP's score of each (caption, image) pair: the caption cut to the CLIP's `text_seq_len` (refused if
    that drops a token) and its padding masked (`text_mask=text != 0`) where the CLIP takes a mask."""
    length = getattr(clip, "text_seq_len", None)
    if isinstance(length, int) and text.shape[1] > length:
        if bool(text[:, length:].any()):
            raise ValueError(f"the captions have tokens beyond the CLIP's text_seq_len={length}: use a CLIP that "
                             f"takes captions as long as the DALLE's ({text.shape[1]})")
        text = text[:, :length]
    if "text_mask" in inspect.signature(clip.forward).parameters:
        return clip(text, images, text_mask=text != 0)
    return clip(text, images)


def _ranks(scores: Tensor) -> Tensor:
    """Rank of each entry along the last dim, 0 for the highest score."""
    return scores.argsort(dim=-1, descending=True).argsort(dim=-1)


class DALLEImages:
    """Image generation, streaming, reranking and scoring of `DALLE` (a mixin over `DALLESampling`)."""

    @torch.no_grad()
    def generate_images(
        self,
        text: Tensor,
        *,
        clip: Optional[nn.Module] = None,
        filter_thres: Optional[float] = DEFAULT_FILTER_THRES,
        temperature: float = 1.0,
        img: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        num_init_img_tokens: Optional[int] = None,
        cond_scale: float = 1.0,
        negative_text: Optional[Tensor] = None,
        cfg_interval: Optional[Tuple[float, float]] = None,
        guidance_space: str = DEFAULT_GUIDANCE_SPACE,
        use_cache: bool = False,
        top_p: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        compile: bool = False,
        speculative: Optional[int] = None,
        rerank: Optional[str] = None,
        candidates: int = 1,
        progress: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Images (B, C, H, W) in [0, 1] for captions `text` (B, <= text_seq_len); with `clip` or `rerank`, also
        their scores (B,).

        filter_thres: top-k keeping the top (1 - filter_thres) of the image vocabulary (default
        `sampling.DEFAULT_FILTER_THRES`, 0.9); top_p: nucleus filtering; temperature: 0 is greedy.
        img: images (or codes) to start from: their first `num_init_img_tokens` codes (default `PRIME_FRACTION`,
        the paper's 14 of 32 rows) are kept, or, with `mask`, every code outside the mask.
        mask: inpainting, outpainting, variations: a boolean tensor, True = regenerate, over pixels (B or 1, H,
        W) or over the code grid (B or 1, fmap, fmap); a code is redrawn when any pixel of its cell is masked.
        Codes outside the mask are the image's own, exactly; those inside are drawn in raster order, each
        conditioned on the caption and every code before it. Known codes after a position do not inform it
        (the model is autoregressive): a region above kept content is drawn without seeing that content.
        cond_scale: classifier-free guidance; negative_text: captions (B or 1, <= text_seq_len) to guide away
        from instead of the empty caption; cfg_interval: (start, end), guide only the image positions p with
        start <= p / image_seq_len < end (the conditional logits alone elsewhere); guidance_space: "probs" (the
        default) extrapolates the two branches' probabilities, "logits" their logits, DALLE-pytorch's way, which
        overshoots at scales where "probs" still helps (`sampling.token_guidance`).
        use_cache: incremental decoding; compile: run each cached decoding step through `torch.compile` (one
        graph for every position: see `compiled_image_step`); speculative: draft that many codes per forward
        pass and accept them by speculative sampling's rule, so that the samples have exactly the distribution
        of one-code-at-a-time sampling (`models/speculative.py`; it always uses the cache).
        clip: a CLIP scoring (text, images): returns (images, CLIP scores), padding masked (`text_mask`). rerank: "clip", "likelihood" or
        "both": draw `candidates` images per caption and keep the best by CLIP's score, by the DALLE's own
        likelihood of the codes (`score`), or by the sum of the two ranks ("both", ties to CLIP); returns
        (images, scores), the scores of the kept images, higher is better: the CLIP score, the mean
        log-likelihood per code (minus `score`), or for "both" 1 - (CLIP rank + likelihood rank) /
        (2 (candidates - 1)), 1 for the best on both. progress: a tqdm bar over the codes drawn.
        """
        images, scores = None, None
        for _, (images, scores) in self._images_iter(
                text, clip=clip, rerank=rerank, candidates=candidates, stream=False, filter_thres=filter_thres,
                temperature=temperature, top_p=top_p, img=img, mask=mask, num_init_img_tokens=num_init_img_tokens,
                cond_scale=cond_scale, negative_text=negative_text, cfg_interval=cfg_interval,
                guidance_space=guidance_space, use_cache=use_cache, generator=generator, compile=compile,
                speculative=speculative, progress=progress):
            pass
        return images if scores is None else (images, scores)

    def generate_images_stream(self, text: Tensor, **kwargs: Any) -> Iterator[Tuple[int, Any]]:
        """`generate_images` row by row: yields (rows_done, images (B, C, H, W)) after each row of codes is
        drawn, decoding the partial grid (rows not drawn yet show the codes they hold: the image's own under
        `img`, else blank white), and last (image_fmap_size, what `generate_images` returns with the same
        arguments): with the same seed, the same images (and scores). With `rerank`, the partial images are
        every candidate (B * candidates, each caption's side by side)."""
        for rows, (images, scores) in stepwise(torch.no_grad, self._images_iter(text, stream=True, **kwargs)):
            yield rows, images if scores is None else (images, scores)

    def _images_iter(self, text: Tensor, *, clip: Optional[nn.Module] = None, rerank: Optional[str] = None,
                     candidates: int = 1, stream: bool = False, progress: bool = False, **settings: Any
                     ) -> Iterator[Tuple[int, Tuple[Tensor, Optional[Tensor]]]]:
        """The work of `generate_images` and `generate_images_stream`: decode codes (`_codes_iter`), yielding
        (rows done, (partial images, None)) after each row when `stream`, then (fmap, (images, scores or None))."""
        if clip is not None and not isinstance(clip, nn.Module):  # refused before generating, not after
            raise TypeError(f"clip must be a CLIP module scoring (text, images), got {type(clip).__name__}")
        if rerank not in (None, "clip", "likelihood", "both"):
            raise ValueError(f"rerank must be None, 'clip', 'likelihood' or 'both', got {rerank!r}")
        if rerank in ("clip", "both") and clip is None:
            raise ValueError(f"rerank={rerank!r} ranks by CLIP's score: pass clip=a trained CLIP")
        check_int("candidates", candidates)
        if candidates > 1 and rerank is None:
            raise ValueError("candidates > 1 draws several images per caption to keep the best: pass rerank= too")
        text = self._check_text(text)
        if candidates > 1:  # each caption's candidates side by side; its image, mask and negative caption too
            batch = text.shape[0]
            text = text.repeat_interleave(candidates, 0)
            for key in ("img", "mask", "negative_text"):
                value = settings.get(key)
                if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch > 1:
                    settings[key] = value.repeat_interleave(candidates, 0)
                elif isinstance(value, Tensor) and key == "img" and value.ndim > 0 and value.shape[0] == 1:
                    settings[key] = value.expand(candidates, *value.shape[1:])
        was_training = self.training
        self.eval()
        bar = tqdm(total=self.image_seq_len, desc="generate_images", unit="code", disable=not progress)
        try:
            fmap = self.image_fmap_size
            rows_out, codes = 0, None
            for done, codes in self._codes_iter(text, **settings):
                bar.update(done - bar.n)
                if stream and done // fmap > rows_out and done < self.image_seq_len:
                    rows_out = done // fmap
                    yield rows_out, (self._partial_images(codes, rows_out, blank=settings.get("img") is None), None)
            codes = codes.clone()
            images = self.vae.decode(codes)
            if rerank is not None:
                yield fmap, self._rerank(text, codes, images, clip, rerank, candidates)
            else:
                yield fmap, (images, None if clip is None else _clip_scores(clip, text, images))
        finally:
            bar.close()
            self.train(was_training)

    def _partial_images(self, codes: Tensor, rows: int, blank: bool) -> Tensor:
        """Decode a grid whose first `rows` rows are drawn; with `blank`, the pixels of the others white."""
        images = self.vae.decode(codes.clone())
        if blank:
            images[..., rows * (images.shape[-2] // self.image_fmap_size):, :] = 1.0
        return images

    def _rerank(self, text: Tensor, codes: Tensor, images: Tensor, clip: Optional[nn.Module], rerank: str,
                candidates: int) -> Tuple[Tensor, Tensor]:
        """Keep the best of each caption's `candidates` (consecutive rows): (images, scores), (B, ...) each."""
        n = candidates
        loglik = -self.score(text, codes).view(-1, n)
        if rerank == "likelihood":
            best, scores = loglik.argmax(-1), loglik
        else:
            clip_scores = _clip_scores(clip, text, images).view(-1, n).float()
            best, scores = clip_scores.argmax(-1), clip_scores
            if rerank == "both":
                clip_rank = _ranks(clip_scores)
                ranks = clip_rank + _ranks(loglik)  # 0 = best on both
                best = (ranks.double() + clip_rank.double() / (2 * n)).argmin(-1)  # ties of the sum go to CLIP
                scores = 1 - ranks.float() / max(2 * (n - 1), 1)
        rows = torch.arange(best.shape[0], device=best.device)
        return images.view(-1, n, *images.shape[1:])[rows, best], scores[rows, best]

    @torch.no_grad()
    @eval_decorator
    def score(self, text: Tensor, image: Tensor) -> Tensor:
        """Each sample's mean negative log-likelihood (nats per code) of its image codes given its caption,
        (B,), from one forward pass, no sampling: lower is likelier. text: caption ids (B, <= text_seq_len);
        image: images (B, C, H, W) in [0, 1] (encoded by the VAE) or codes (B, image_seq_len)."""
        text = self._check_text(text)
        if isinstance(image, Tensor):
            check_same_batch(text=text, image=image)
        codes = self._image_codes(image).to(text.device)
        if codes.shape[1] != self.image_seq_len:
            raise ValueError(f"score needs whole images or all {self.image_seq_len} codes per image, got "
                             f"{codes.shape[1]}")
        hidden, _ = self._hidden(self._text_ids(text), codes, None)
        logits = self._logits(hidden[:, self.text_seq_len :], "image").float()  # (B, image_seq_len, V)
        return F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").mean(dim=1)
