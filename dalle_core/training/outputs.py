"""What a run writes besides checkpoints: metrics as JSON lines (plus optional TensorBoard / W&B) and PNG grids."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import Tensor

from ..data.images import save_image_grid, to_pil  # noqa: F401 - where the trainers and the CLI take them
from ..files import write_text_atomic
from ..utils import optional_import

__all__ = ["MetricsLog", "truncate_metrics", "to_pil", "save_image_grid", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per line to out/metrics.jsonl; mirrors scalars to TensorBoard and W&B if asked.

    Neither backend is imported unless asked for; a missing one raises an ImportError that says how to
    install it. Disabled (everything a no-op) on processes other than the main one.
    """

    def __init__(self, out: Union[str, Path], *, enabled: bool = True, tensorboard: bool = False,
                 wandb: bool = False, wandb_project: str = "dalle-core", config: Optional[Dict[str, Any]] = None):
        self.path = Path(out) / METRICS_NAME
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        if tensorboard:
            optional_import("tensorboard", "--tensorboard", "pip install tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        if wandb:
            self._wandb = optional_import("wandb", "--wandb", "pip install wandb")
            id_file = Path(out) / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
            id_file.write_text(run_id + "\n")
            self._wandb.init(project=wandb_project, config=config, dir=str(out), name=Path(out).name, id=run_id,
                             resume="allow")

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        """Write `metrics` for update `step` (numbers; tensors are converted)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._append(row)
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        scalars.pop("step")
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def event(self, step: int, name: str, **data: Any) -> None:
        """Write a non-metric record (data skipped, run start/end) as {"step", "event", ...}."""
        if self.enabled:
            self._append({"step": step, "event": name, **{k: _plain(v) for k, v in data.items()}})

    def _append(self, row: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        """Flush and close the optional backends."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def truncate_metrics(out: Union[str, Path], step: int, name: str = METRICS_NAME) -> None:
    """Drop the records of out/`name` after `step` (written by a run that died before its next checkpoint)."""
    path = Path(out) / name
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut short by the crash
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))
