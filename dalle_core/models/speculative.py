"""Speculative Jacobi decoding of image codes: several codes per forward pass, the same distribution.

`generate_images(..., speculative=k)` lands here. Each forward pass runs a window of k positions over the
preallocated key/value cache: the first is the earliest position some row has not settled, the others hold
drafted codes. The pass gives the model's distribution p at every window position, each conditioned on the
codes before it (drafts included). Walking the window left to right, each row accepts its draft x at a
position with probability min(1, p(x) / q(x)), q being the distribution x was drawn from; at the first
rejection it draws that position from the residual max(0, p - q) (normalised) and stops for this pass. This
is the rejection rule of speculative sampling (Leviathan et al., 2023; Chen et al., 2023), applied to Jacobi
iteration as in Speculative Jacobi Decoding (Teng et al., 2024): every settled code has exactly the
distribution that one-code-at-a-time sampling gives it, whatever q is, and each pass settles at least one code
of the slowest row. The drafts of the positions a pass does not settle are drawn again from the distribution
that pass computed there (stale, since it saw earlier drafts, but often right: image codes repeat); a
position no pass has reached yet takes the distribution of the last position computed.

p is the distribution plain sampling draws from: guidance (`cond_scale`, `negative_text`, `cfg_interval`),
then top-k / top-p filtering, then the temperature (`sampling.filtered_probs`). At temperature 0 p and q are
one-hot, so a draft is accepted exactly when it is the argmax, and a rejection yields the argmax: greedy
decoding, code for code.

Rows of a batch settle at different speeds; the window follows the slowest, and the positions a faster row
already settled are kept, as the known codes of inpainting are. Costs: a pass over k positions costs more
than one over a single position (about the same on a CPU at small batch, where the weights' memory traffic
dominates), and a row that rejects early wastes the rest of its window.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ..ops.linear import pack_weight, prepacked
from ..sampling import token_guidance, with_null_condition
from ..utils import check_int, stepwise

__all__ = ["speculative_decode", "SpeculativeStats"]


class SpeculativeStats:
    """Counts of the last speculative decoding run of a model (`model.speculative_stats`): forward passes
    (the prefill included), codes drawn, and drafts accepted among them."""

    def __init__(self) -> None:
        self.passes = 0
        self.codes = 0
        self.accepted = 0

    def __repr__(self) -> str:
        return f"SpeculativeStats(passes={self.passes}, codes={self.codes}, accepted={self.accepted})"


def _draw(probs: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One index per row of probs (..., V)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def accept_draft(u: Tensor, p_x: Tensor, q_x: Tensor) -> Tensor:
    """Speculative sampling's rule: accept a draft x drawn from q with probability min(1, p(x) / q(x)), given
    u uniform in [0, 1) (written without dividing: q(x) > 0 for any x drawn from q)."""
    return u * q_x < p_x


def speculative_decode(model: Any, plan: Any, **options: Any) -> Iterator[Tuple[int, Tensor]]:
    """`_speculative_steps` with each step in inference mode (entered per step: see `utils.stepwise`)."""
    return stepwise(torch.inference_mode, _speculative_steps(model, plan, **options))


def _speculative_steps(model: Any, plan: Any, *, k: int, scales: List[float], space: str,
                       negative: Optional[Tensor], probs: Callable[[Tensor], Tensor],
                       generator: Optional[torch.Generator]) -> Iterator[Tuple[int, Tensor]]:
    """Fill the free positions of `plan` (a `DecodePlan`) by speculative Jacobi decoding with windows of `k`
    positions; yields (positions settled in every row, codes (B, image_seq_len)) after each pass.

    scales: the guidance scale of each image position, the branches combined in `space`; negative: the
    unconditional branch's captions (None: empty); probs: guided logits (..., V) -> the distribution plain
    sampling draws from."""
    check_int("speculative", k)  # k >= 1; k = 1 drafts nothing beyond the position being settled
    text, codes, known, first = plan.text, plan.codes, plan.known, plan.first
    batch, length = codes.shape
    fixed = torch.zeros(batch, length, dtype=torch.bool, device=codes.device) if known is None else known.clone()
    fixed[:, :first] = True
    doubled = any(scale != 1 for scale in scales[first:])
    if doubled:
        text, codes = with_null_condition(text, codes, null_text=negative)
    scale_of = torch.tensor(scales, dtype=torch.float32, device=codes.device)
    rows = text.shape[0]
    text_ids = model._text_ids(text)
    stats = SpeculativeStats()
    model.__dict__["speculative_stats"] = stats  # a plain attribute: not a submodule, not saved
    num_text = model.num_text_tokens
    with prepacked(model.transformer, rows * k):
        head = pack_weight(model.to_logits[1].weight[num_text:], rows * k)
        cache = model.make_cache(rows)
        start = first  # the window's first position: the first one some row has not settled
        q: Optional[Tensor] = None  # proposals for positions from `start` on, computed by the last pass
        last_p: Optional[Tensor] = None  # the distribution of the last position the last pass computed
        while start < length:
            end = min(start + k, length)
            width = end - start
            # proposals q for the window's positions: what the last pass computed there, else the last
            # distribution it computed (uniform before any pass); a draft for every position not settled
            have = 0 if q is None else q.shape[1]
            if have < width:
                fill = (torch.full((batch, 1, model.num_image_tokens), 1.0 / model.num_image_tokens,
                                   device=codes.device) if last_p is None else last_p[:, None])
                fill = fill.expand(-1, width - have, -1)
                q = fill if q is None else torch.cat((q, fill), dim=1)
            q = q[:, :width]
            free = ~fixed[:, start:end]
            window = codes[:batch, start:end]  # a view: writing into it writes into codes
            window[free] = _draw(q, generator)[free]
            if doubled:
                codes[batch:, start:end] = codes[:batch, start:end]
            # one forward pass over the window (the cache forgets everything from the window's first input on)
            cache.rewind(min(cache.offset, model.text_seq_len + start))
            hidden, _ = model._hidden(text_ids, codes[:, : end - 1], cache)
            last = hidden[:, -width:]
            logits = model._logits(last.reshape(rows * width, -1), "image", head).view(rows, width, -1)
            stats.passes += 1
            if doubled:
                cond, null = logits.chunk(2)
                scale = scale_of[start:end, None]
                logits = torch.where(scale == 1, cond, token_guidance(cond, null, scale, space))
            p = probs(logits)  # (B, width, V)
            # verify every draft at once: a row keeps its drafts up to its first rejection, redraws that one
            # from the residual, and leaves the rest for a later pass
            free = ~fixed[:, start:end]  # (B, width)
            x = codes[:batch, start:end]
            p_x = p.gather(-1, x[..., None]).squeeze(-1)
            q_x = q.gather(-1, x[..., None]).squeeze(-1)
            u = torch.rand(batch, width, generator=generator, device=codes.device)
            rejected = free & ~accept_draft(u, p_x, q_x)
            stop = torch.where(rejected.any(1), rejected.int().argmax(1), width)  # first rejection (width: none)
            before = torch.arange(width, device=codes.device)[None] < stop[:, None]
            rows_out = (stop < width).nonzero().squeeze(1)
            if len(rows_out):
                j = stop[rows_out]
                p_r, q_r = p[rows_out, j], q[rows_out, j]
                residual = (p_r - q_r).clamp_(min=0)
                residual = torch.where(residual.sum(-1, keepdim=True) <= 0, p_r, residual)  # p == q to rounding
                codes[rows_out, start + j] = _draw(residual, generator)
            settled = free & (before | (torch.arange(width, device=codes.device)[None] == stop[:, None]))
            stats.codes += int(settled.sum())
            stats.accepted += int((free & before).sum())
            fixed[:, start:end] |= settled
            if doubled:
                codes[batch:, start:end] = codes[:batch, start:end]
            unsettled = (~fixed).any(0).nonzero()
            new_start = int(unsettled[0]) if len(unsettled) else length
            last_p = p[:, -1]
            q = p[:, new_start - start :] if new_start < end else None  # the proposals of the next window
            start = new_start
            yield start, codes[:batch]
