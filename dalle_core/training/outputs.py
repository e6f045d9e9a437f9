"""What a run writes besides checkpoints: metrics as JSON lines (plus optional TensorBoard / W&B) and PNG grids."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..data.images import save_image_grid, to_pil  # noqa: F401 - where the trainers and the CLI take them
from ..files import write_text_atomic
from ..utils import optional_import

__all__ = ["MetricsLog", "truncate_metrics", "read_metrics", "plot_losses", "to_pil", "save_image_grid",
           "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"


def trackers(config: Any) -> List[str]:
    """The Accelerate trackers (`Accelerator(log_with=...)`) a run's config asks for: "tensorboard", "wandb".
    A missing package raises an ImportError that says how to install it, before anything starts."""
    names = []
    if getattr(config, "tensorboard", False):
        optional_import("tensorboard", "--tensorboard", "pip install tensorboard")
        names.append("tensorboard")
    if getattr(config, "wandb", False):
        optional_import("wandb", "--wandb", "pip install wandb")
        names.append("wandb")
    return names


class MetricsLog:
    """Appends one JSON object per line to out/metrics.jsonl; mirrors the scalars to the Accelerate trackers the
    run's `Accelerator` was built with (`log_with`: TensorBoard under out/tensorboard, or out/<W&B project> beside
    W&B; W&B resuming the same run id after a restart). Disabled (everything a no-op) on processes other than the main one.
    """

    def __init__(self, out: Union[str, Path], *, enabled: bool = True, accelerator: Any = None,
                 wandb_project: str = "dalle-core", config: Optional[Dict[str, Any]] = None):
        self.path = Path(out) / METRICS_NAME
        self.enabled = enabled
        self._acc = accelerator if enabled else None
        if self._acc is None:
            return
        wandb = "wandb" in str(self._acc.log_with).lower()
        init_kwargs: Dict[str, Any] = {}
        if wandb:  # one W&B run per output directory: a resumed run continues it
            id_file = Path(out) / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
            id_file.write_text(run_id + "\n")
            init_kwargs["wandb"] = {"dir": str(out), "name": Path(out).name, "id": run_id, "resume": "allow"}
        # the project name is W&B's project, and TensorBoard's folder under out/ (out/tensorboard without W&B)
        self._acc.init_trackers(wandb_project if wandb else "tensorboard", config=_flat(config or {}),
                                init_kwargs=init_kwargs)

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        """Write `metrics` for update `step` (numbers; tensors are converted)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._append(row)
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        scalars.pop("step")
        if self._acc is not None:
            self._acc.log(scalars, step=step)

    def event(self, step: int, name: str, **data: Any) -> None:
        """Write a non-metric record (data skipped, run start/end) as {"step", "event", ...}."""
        if self.enabled:
            self._append({"step": step, "event": name, **{k: _plain(v) for k, v in data.items()}})

    def _append(self, row: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        """Finish the trackers (flushing TensorBoard's files, closing the W&B run)."""
        if self._acc is not None:
            for tracker in self._acc.trackers:
                tracker.finish()
            self._acc.trackers.clear()


def _flat(config: Dict[str, Any]) -> Dict[str, Any]:
    """Tracker hyperparameters: numbers, strings and bools as they are, anything else as its JSON text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str) for k, v in config.items()}


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


def read_metrics(out: Union[str, Path], name: str = METRICS_NAME) -> List[Dict[str, Any]]:
    """The metric rows of out/`name` in the order written (event records and lines cut short left out)."""
    path = Path(out) / name
    if not path.is_file():
        raise FileNotFoundError(f"no metrics in {str(out)!r}: {name} not found (is it a run's output directory?)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(row, dict) and "event" not in row:
            rows.append(row)
    return rows


def plot_losses(path: Union[str, Path], curves: Mapping[str, Sequence[float]],
                size: Tuple[int, int] = (300, 200)) -> None:
    """One panel per curve (name -> the loss of every step): the loss per step (light) and its moving average
    (dark), log-scaled, drawn with Pillow into a PNG `size` pixels a panel."""
    if not curves:
        raise ValueError("plot_losses needs at least one curve, got none")
    for name, losses in curves.items():
        if len(losses) == 0:
            raise ValueError(f"plot_losses: the curve {name!r} has no values")
        if not all(math.isfinite(v) for v in losses):
            raise ValueError(f"plot_losses: the curve {name!r} has a NaN or infinite value")
    font = ImageFont.load_default()
    w, h = size
    canvas = Image.new("RGB", (w * len(curves), h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (name, losses) in enumerate(curves.items()):
        x0, y0, x1, y1 = k * w + 40, 20, (k + 1) * w - 10, h - 25
        logs = [math.log10(max(float(v), 1e-8)) for v in losses]
        window = max(1, len(logs) // 50)
        smooth = [sum(logs[max(0, i - window + 1): i + 1]) / len(logs[max(0, i - window + 1): i + 1])
                  for i in range(len(logs))]
        lo, hi = min(logs), max(logs)
        hi = hi if hi > lo else lo + 1

        def xy(i: int, v: float) -> Tuple[float, float]:
            return x0 + (x1 - x0) * i / max(1, len(logs) - 1), y1 - (y1 - y0) * (v - lo) / (hi - lo)

        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.line([xy(i, v) for i, v in enumerate(logs)], fill=(180, 200, 240), width=1)
        draw.line([xy(i, v) for i, v in enumerate(smooth)], fill=(20, 60, 200), width=2)
        draw.text((x0, 4), f"{name} loss (log scale)", fill="black", font=font)
        draw.text((x1 - 60, 4), f"end {10 ** smooth[-1]:.3g}", fill="black", font=font)
        draw.text((k * w + 2, y0), f"{10 ** hi:.2g}", fill="black", font=font)
        draw.text((k * w + 2, y1 - 10), f"{10 ** lo:.2g}", fill="black", font=font)
        draw.text((x0, y1 + 5), "step 0", fill="black", font=font)
        draw.text((x1 - 50, y1 + 5), f"{len(logs)}", fill="black", font=font)
    canvas.save(path)
