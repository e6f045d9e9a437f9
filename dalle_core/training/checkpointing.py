"""Checkpoint directories of a run: out/checkpoints/step-00001000/{model/, ema/, training_state.safetensors}.

A DALLE or CLIP model directory also holds the tokenizer it was trained with (tokenizer.json, or
tokenizer.model for youtokentome; see `dalle_core.tokenizers.save_tokenizer`).

A checkpoint is written into a hidden temporary directory beside the others and renamed into place once
complete, so a crash at any point leaves the previous checkpoints untouched and `latest_checkpoint` never
returns a half-written one. Old checkpoints beyond `keep` are deleted after a new one lands.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Union

from ..files import fsync_path
from ..pretrained import TRAINING_STATE_NAME
from ..tokenizers import find_tokenizer, load_tokenizer, save_tokenizer  # noqa: F401 - their former home

__all__ = ["CHECKPOINTS_DIR", "checkpoint_path", "list_checkpoints", "latest_checkpoint", "write_checkpoint",
           "load_tokenizer", "save_tokenizer", "find_tokenizer"]

CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_path(out: Union[str, Path], step: int) -> Path:
    """Where the checkpoint of update `step` lives."""
    return Path(out) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(out: Union[str, Path]) -> List[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
             and (p / TRAINING_STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Union[str, Path]) -> Optional[Path]:
    """The most recent complete checkpoint of a run, or None."""
    found = list_checkpoints(out)
    return found[-1] if found else None


def write_checkpoint(out: Union[str, Path], step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call `write(tmp_dir)`, then move tmp_dir to `checkpoint_path(out, step)` and prune to the `keep` newest."""
    final = checkpoint_path(out, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a crash in an earlier write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if final.exists():  # the same step saved again (a resumed run that stopped where it started)
            trash = root / f".{final.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(root, directory=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
