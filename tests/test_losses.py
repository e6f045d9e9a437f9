"""The chunked linear cross-entropy and the recomputing GEGLU give autograd's values and gradients."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import dalle_core.ops.losses as losses
from dalle_core.ops.losses import linear_cross_entropy
from dalle_core.models.transformer import FeedForward


def test_linear_cross_entropy_matches_autograd_across_chunks(monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 50)  # several chunks of a few rows each
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(23, 16, requires_grad=True)
    b = torch.randn(23, requires_grad=True)
    t = torch.randint(0, 23, (37,))
    expected = F.cross_entropy(F.linear(h, w, b), t)
    (expected * 2.5).backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    got = linear_cross_entropy(h, w, b, t)
    (got * 2.5).backward()
    torch.testing.assert_close(got, expected)
    for x, g in zip((h, w, b), grads):
        torch.testing.assert_close(x.grad, g, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_without_grad_is_plain_cross_entropy():
    h, w, t = torch.randn(5, 4), torch.randn(6, 4), torch.randint(0, 6, (5,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, None, t), F.cross_entropy(h @ w.t(), t))


def test_geglu_recompute_matches_plain_autograd():
    torch.manual_seed(0)
    ff = FeedForward(8, mult=2)
    x = torch.randn(3, 5, 8, requires_grad=True)
    fused = ff(x)  # the recomputing path (grad enabled, no dropout)
    fused.sin().sum().backward()
    fused_grads = [p.grad.clone() for p in (x, *ff.parameters())]
    for p in (x, *ff.parameters()):
        p.grad = None
    a, gate = ff.proj_in(x).chunk(2, dim=-1)
    plain = ff.proj_out(a * F.gelu(gate))
    plain.sin().sum().backward()
    torch.testing.assert_close(fused, plain)
    for got, p in zip(fused_grads, (x, *ff.parameters())):
        torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-5)
