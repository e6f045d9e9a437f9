"""Trainer callbacks: code that runs at fixed points of the training loop without being part of it.

`Trainer(config, callbacks=[...])` (and `dalle_core.cli.main(argv, callbacks=[...])`) calls each callback's
methods in order, on every process (a callback that gathers across processes may: every process calls it at
the same point). Subclass `Callback` and override what you need:

    class PrintLoss(Callback):
        def on_update(self, trainer, step):
            logging.getLogger("dalle_core").info(f"update {step}")

`SampleRecorder` is the built-in one: which samples each process read for each micro-batch, and each
process's final weight checksum, for checking how data is split across processes and that they agree.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["Callback", "SampleRecorder", "SAMPLE_IDS_NAME", "weight_checksum"]

SAMPLE_IDS_NAME = "sample_ids.jsonl"


class Callback:
    """Hooks the trainer calls; every method does nothing unless overridden."""

    def on_micro_batch(self, trainer: Any, step: int, epoch: int, index: int, batch: Any) -> None:
        """After the backward pass (and optimizer step, when it synced) of a micro-batch; `step` counts the
        update it belongs to from 1."""

    def on_update(self, trainer: Any, step: int) -> None:
        """After update `step` (1-based): optimizer, scheduler and EMA stepped; before logging and saving."""

    def on_checkpoint(self, trainer: Any, step: int, directory: Path) -> None:
        """While the checkpoint of update `step` is written (main process only): its `model/` and `ema/` are in
        the staging `directory`, its training state is not yet."""

    def on_end(self, trainer: Any, step: int) -> Optional[Dict[str, Any]]:
        """At the end of training, before the 'end' event is logged; may return fields to add to that event."""
        return None


def _caption_keys(text: Tensor) -> Tensor:
    """An int64 key per caption (B,): identifies streamed samples, which have no dataset index."""
    weights = [pow(257, i, 2**61 - 1) for i in range(text.shape[1])]
    return (text.long() * torch.tensor(weights, device=text.device)).sum(dim=1)  # wraps around, deterministically


def weight_checksum(model: nn.Module) -> str:
    """sha256 of every tensor in the state dict, in name order: equal weights, equal checksums."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SampleRecorder(Callback):
    """Append {"step", "epoch", "batch", "ids": [[rank 0's], [rank 1's], ...]} to `out/sample_ids.jsonl` for
    every micro-batch (dataset indices; for streamed shards, a key per caption), and put each process's weight
    checksum in the 'end' event of metrics.jsonl as "weight_checksums"."""

    def on_micro_batch(self, trainer: Any, step: int, epoch: int, index: int, batch: Any) -> None:
        acc = trainer.accelerator
        ids = acc.gather(batch.ids if batch.ids is not None else _caption_keys(batch.text))  # rank by rank
        if acc.is_main_process:
            row = {"step": step, "epoch": epoch, "batch": index, "ids": ids.view(acc.num_processes, -1).tolist()}
            with open(trainer.out / SAMPLE_IDS_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def on_end(self, trainer: Any, step: int) -> Dict[str, Any]:
        from accelerate.utils import gather_object

        return {"weight_checksums": gather_object([weight_checksum(trainer.unwrapped)])}
