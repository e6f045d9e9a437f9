"""Schedules as pure functions of the update index: learning rate, dVAE temperature, KL weight.

Each value is computed from the step, never compounded from the previous one (DALLE-pytorch's train_vae.py
multiplies the temperature by a decay factor every step), so a resumed run gets exactly the values of an
uninterrupted one and any step's value can be read off the formula.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["cosine_anneal", "cosine_ramp", "warmup_cosine", "warmup_cosine_scheduler"]


def _progress(step: int, steps: int) -> float:
    """step / steps clamped to [0, 1]; 1 when steps is 0 (the schedule is already over)."""
    return 1.0 if steps <= 0 else min(max(step / steps, 0.0), 1.0)


def cosine_anneal(step: int, start: float, end: float, steps: int) -> float:
    """`start` at step 0 to `end` at `steps` (and after) along half a cosine.

    The paper's dVAE temperature: cosine_anneal(step, 1.0, 1 / 16, 150_000).
    """
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, steps)))


def cosine_ramp(step: int, target: float, steps: int) -> float:
    """0 at step 0 to `target` at `steps` (and after) along half a cosine: the paper's KL-weight warm-up."""
    return cosine_anneal(step, 0.0, target, steps)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier for update `step` (0-based): linear warmup to 1, then cosine to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return cosine_anneal(step - warmup_steps, 1.0, min_ratio, total_steps - warmup_steps)


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                            min_ratio: float) -> LambdaLR:
    """A LambdaLR for `warmup_cosine`; step it once per optimizer update."""

    def multiplier(step: int) -> float:
        return warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)

    return LambdaLR(optimizer, multiplier)
