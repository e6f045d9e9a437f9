"""An exponential moving average of a model's weights (the paper averages its dVAE iterates with decay 0.999)."""
from __future__ import annotations

from copy import deepcopy
from typing import Any, Dict

import torch
from torch import nn

from ..pretrained import build_like

__all__ = ["EMA"]


class EMA:
    """A float32 copy of a model whose weights follow `decay * ema + (1 - decay) * weights` after each update.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates n, so early weights, far from
    the trained ones, fade quickly. Frozen parameters (a DALLE's dVAE) and buffers are copied, not averaged.
    `model` is the EMA model itself: sample from it, save it with `save_pretrained`.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        # a dalle_core model is rebuilt from its config; a trainer's composite (a VQGAN with its loss) is copied
        copy = build_like(model) if isinstance(getattr(model, "config", None), dict) else deepcopy(model)
        self.model = copy.float().eval()
        self.model.load_state_dict(model.state_dict())
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights."""
        decay = self.current_decay()
        weights = dict(model.named_parameters())
        for name, avg in self.model.named_parameters():
            param = weights[name]
            if param.requires_grad:
                avg.lerp_(param.detach().to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(param.detach())
        buffers = dict(model.named_buffers())
        for name, buf in self.model.named_buffers():
            buf.copy_(buffers[name])
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """Decay, update count and the averaged weights."""
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["weights"])
