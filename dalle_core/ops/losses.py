"""Cross-entropy over a linear output layer, computed in chunks so the logits are never stored whole.

DALLE's output layer is wide (16k text + 8k image ids in the paper's shape): ordinary autograd keeps the
(batch x positions x vocabulary) log-probabilities for backward and materialises their gradient too. Here
each chunk's softmax gradient is formed right away in forward (the loss is a mean, so d loss / d logits is
known up to the incoming scalar), giving the same gradients while holding only one chunk of logits at a time.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import autocast_dtype

__all__ = ["linear_cross_entropy"]

_CHUNK_ELEMENTS = 1 << 22  # logits held at once: about 16 MB in float32


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor) -> Tensor:
        n = hidden.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, n, chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            probs = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
            probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            probs = probs.div_(n).to(weight.dtype)
            grad_h[s : s + chunk] = probs @ weight
            grad_w.addmm_(probs.t(), h)
            if grad_b is not None:
                grad_b += probs.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None if grad_b is None else grad_b * grad_out, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor) -> Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias), targets)` (mean) for hidden (N, D), targets (N,),
    without ever storing the (N, V) logits; falls back to the plain expression under autocast or without grad."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    autocast = autocast_dtype(hidden.device.type) is not None
    if not needs_grad or autocast or hidden.dtype != weight.dtype:
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
