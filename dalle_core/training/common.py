"""The training loop the dVAE, DALLE and CLIP trainers share, on one code path from one CPU to many nodes.

There is always an `accelerate.Accelerator`: a plain `python` run is its single-process case, and
`accelerate launch` (DDP, FSDP, DeepSpeed; one or many machines) runs the same code in every process. Only
the main process writes checkpoints, metrics and images. Each update's randomness (Gumbel noise, dropout,
caption dropping) is seeded from (seed, rank, epoch, batch index), and the data order from (seed, epoch), so
a run resumed from a checkpoint ends with the same weights as one that never stopped.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Type

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, gather_object
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..files import write_text_atomic
from ..version import __version__
from ..pretrained import build_like, load_training_state, save_training_state
from ..errors import NonFiniteError
from ..utils import main_process_log
from ..data.common import mix_seed
from .batches import Batch, BatchStream, build_dataset, skip_counts
from .callbacks import SAMPLE_IDS_NAME, Callback
from .checkpointing import CHECKPOINTS_DIR, checkpoint_path, latest_checkpoint, write_checkpoint
from .config import TrainConfig, config_to_dict, load_config_file
from .ema import EMA
from .outputs import MetricsLog, plot_losses, read_metrics, trackers, truncate_metrics
from .schedules import warmup_cosine_scheduler

__all__ = ["Trainer", "make_optimizer", "NonFiniteError", "clean_stale_temp", "RUN_CONFIG_NAME"]

RUN_CONFIG_NAME = "train_config.json"
LOSS_PLOT_NAME = "loss.png"  # the run's loss curve, written at the end (train-* --out)
# our own leftovers of a killed run: atomic-write files (.NAME.HEX.tmp) and checkpoint staging directories
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8,32}\.tmp$")
_TEMP_CHECKPOINT = re.compile(r"^\.step-\d+\.(tmp-(old-)?[0-9a-f]{8}|accelerate)$")


# --- pieces ---------------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices and embeddings only (not biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas))


def clean_stale_temp(out: Path) -> None:
    """Remove the temporary files and checkpoint staging directories a killed run left in `out` (ours only)."""
    folders = [out, out / "model", out / "ema"]
    root = out / CHECKPOINTS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if _TEMP_CHECKPOINT.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not entry.name.startswith("."):
                folders += [entry, entry / "model", entry / "ema"]
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if _TEMP_FILE.match(entry.name) and (entry.is_file() or entry.is_symlink()):
                    entry.unlink(missing_ok=True)


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return (torch.cuda.is_available() or bool(xpu and xpu.is_available())
            or bool(mps and mps.is_available()))


class Trainer:
    """Base trainer: subclasses say how to build the model, what its loss is, what to sample and how to save it.

    `Trainer(config).train()` trains for `config.steps` updates and returns the trained model (the raw weights;
    `trainer.ema` holds the EMA). With `resume=True` it continues the run in `config.out` from its latest
    checkpoint (or starts one when there is none); resuming a run already past `config.steps` raises
    ValueError, one exactly at it only re-exports the model. `dataset` replaces the folder/shards of the config
    with any dataset of (caption ids, image) pairs. `allow_pipe=False` refuses `pipe:` shard sources (they run
    commands): the CLI passes it when the shards value came from a saved run config, not from the user.
    `callbacks` (see `dalle_core.training.callbacks`) run at fixed points of the loop, on every process.
    A NaN or infinite loss or weights raise `NonFiniteError` before any checkpoint of them is written.
    """

    config_class: Type[TrainConfig] = TrainConfig
    kind = "model"

    def __init__(self, config: TrainConfig, *, dataset: Optional[Dataset] = None, resume: bool = False,
                 allow_pipe: bool = True, callbacks: Sequence[Callback] = ()):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config, self.out, self.resume, self._dataset = config, Path(config.out), resume, dataset
        self.allow_pipe = bool(allow_pipe)
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be dalle_core.training.Callback instances, got "
                                f"{type(callback).__name__}")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"the output directory (--out) {str(self.out)!r} is a file, expected a directory "
                             "(new, or holding a run)")
        self._resume_loss: Tuple[float, int] = (0.0, 0)
        # a fresh Accelerator per trainer, so one notebook can run trainers with different precisions in turn
        AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = Accelerator(cpu=config.cpu or not _has_accelerator(), step_scheduler_with_optimizer=False,
                                       mixed_precision="bf16" if config.bf16 else "no",
                                       gradient_accumulation_steps=config.grad_accum,
                                       log_with=trackers(config) or None, project_dir=str(self.out))
        self.is_main = self.accelerator.is_main_process
        self.sharded = self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if self.sharded and config.ema_decay:
            raise ValueError("EMA needs every process to hold the whole model; turn it off (--ema-decay 0) with "
                             "FSDP or DeepSpeed")
        self.checkpoint = self._find_checkpoint()
        self.ema: Optional[EMA] = None

    # --- what subclasses provide ----------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """A freshly initialised model (the global torch RNG is seeded with config.seed before this is called)."""
        raise NotImplementedError

    def load_model(self, directory: Path) -> nn.Module:
        """The model saved by `export` in `directory` (used to resume)."""
        raise NotImplementedError

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        """text_len, image_size, tokenizer, transparent and truncate_captions for the dataset."""
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        """The loss of one micro-batch at update `step` (0-based) and scalars to log with it."""
        raise NotImplementedError

    def extra_metrics(self, model: nn.Module, batch: Batch) -> Dict[str, float]:
        """More scalars at log time (main process only, unwrapped model)."""
        return {}

    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        """Write sample images for update `step` (main process only); may return scalars to log."""
        return {}

    def export(self, model: nn.Module, directory: Path) -> None:
        """Save `model` so that `load_model(directory)` and `from_pretrained` read it."""
        model.save_pretrained(directory)

    # --- the run ----------------------------------------------------------------------------------------------

    def _find_checkpoint(self) -> Optional[Path]:
        found = latest_checkpoint(self.out)
        if found is not None and not self.resume:
            raise ValueError(f"{self.out} already holds a run (checkpoint {found.name}); resume it with --resume "
                             "(resume=True) or choose another output directory")
        saved = self.out / RUN_CONFIG_NAME
        if self.resume and saved.is_file():
            old = load_config_file(self.config_class, saved).model_fields()
            changed = {k: (old[k], v) for k, v in self.config.model_fields().items() if old[k] != v}
            if changed:
                detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                raise ValueError(f"cannot resume {self.out} with a different model ({detail}); leave the model "
                                 "flags as they were")
        if found is not None:
            at, steps = int(found.name.split("-")[-1]), self.config.steps
            if at > steps:
                raise ValueError(f"the run in {self.out} is already at update {at}, past --steps {steps}: pass "
                                 f"--steps above {at} to train it further")
            if at == steps:
                main_process_log(self.accelerator, f"the run in {self.out} is already at update {at} = --steps "
                                 f"{steps}: nothing to train; re-exporting its final model (pass a larger --steps "
                                 "to train further)")
        return found if self.resume else None

    def _prepare_out(self) -> None:
        """Create --out, check that it is writable, and remove what a killed run left half-written there."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test.{uuid.uuid4().hex[:8]}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
            raise type(err)(err.errno or errno.EIO, f"cannot write to the output directory (--out): {reason}",
                            str(self.out)) from err
        clean_stale_temp(self.out)

    def _write_run_config(self) -> None:
        doc = {"trainer": self.kind, "dalle_core_version": __version__, "config": config_to_dict(self.config)}
        path = self.out / RUN_CONFIG_NAME
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")

    def train(self) -> nn.Module:
        """Train to `config.steps` updates (continuing from the latest checkpoint when resuming)."""
        cfg, acc = self.config, self.accelerator
        if self.is_main:
            self._prepare_out()
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        model = self.load_model(self.checkpoint / "model") if self.checkpoint else self.build_model()
        model.train()
        dataset = self._dataset if self._dataset is not None else build_dataset(
            cfg, rank=acc.process_index, world_size=acc.num_processes, allow_pipe=self.allow_pipe,
            **self.dataset_options(model))
        stream = BatchStream(dataset, accelerator=acc, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                             seed=cfg.seed)
        model.to(acc.device)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
        optimizer = make_optimizer(model, cfg)
        scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                            min_ratio=cfg.min_lr_ratio)
        if stream.sized:
            model, optimizer, scheduler, stream.loader = acc.prepare(model, optimizer, scheduler, stream.loader)
        else:
            if acc.distributed_type == DistributedType.DEEPSPEED:  # no prepared DataLoader to read it from
                acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
            model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        if acc.gradient_accumulation_steps != cfg.grad_accum:  # ACCELERATE_GRADIENT_ACCUMULATION_STEPS or DeepSpeed
            raise ValueError(f"Accelerate accumulates {acc.gradient_accumulation_steps} micro-batches but "
                             f"grad_accum is {cfg.grad_accum}: set it only with --grad-accum (leave DeepSpeed's at 'auto')")
        self.model, self.optimizer, self.scheduler, self.stream = model, optimizer, scheduler, stream
        self.unwrapped = acc.unwrap_model(model)

        step = self._restore() if self.checkpoint else 0
        if self.is_main:
            self._write_run_config()
            if self.checkpoint:  # records written after that checkpoint by the run that stopped
                truncate_metrics(self.out, step)
                truncate_metrics(self.out, step, SAMPLE_IDS_NAME)
        self.log = MetricsLog(self.out, enabled=self.is_main, accelerator=acc if trackers(cfg) else None,
                              wandb_project=cfg.wandb_project, config=config_to_dict(cfg))
        usable = len(dataset) if stream.sized else None
        main_process_log(acc, f"data: {usable if usable is not None else 'streamed'} usable samples; "
                         + getattr(dataset, "skip_summary", lambda: "no skip report")())
        self.log.event(step, "data", usable=usable, skipped=skip_counts(dataset))
        self.fixed = stream.first_items(cfg.num_samples) if self.is_main and cfg.sample_every else None
        if self.checkpoint:
            main_process_log(acc, f"resumed from {self.checkpoint} at update {step}")

        self._loop(step)
        self._finish(dataset)
        final = acc.unwrap_model(model, keep_fp32_wrapper=False)  # without Accelerate's autocast on forward
        # drop the DDP/DeepSpeed wrappers now: one still holding a process group when the interpreter shuts down
        # can abort the process (gloo), after `end_training` has destroyed the group
        self.model = self.optimizer = self.scheduler = None
        del model, optimizer, scheduler
        acc.free_memory()
        return final

    def _loop(self, step: int) -> None:
        cfg, acc, model, optimizer = self.config, self.accelerator, self.model, self.optimizer
        bar = tqdm(total=cfg.steps, initial=step, disable=not self.is_main, desc=f"train-{self.kind}",
                   dynamic_ncols=True)
        # the running loss sum since the last logged row (restored on resume, so rows average the same updates)
        running, count = torch.tensor(self._resume_loss[0], device=acc.device), self._resume_loss[1]
        self._bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)  # first update with a bad loss
        self._bad_loss = torch.zeros((), device=acc.device)
        batches = iter(self.stream)
        try:  # the bar ends its line before any error message is printed
            while step < cfg.steps:
                epoch, index, batch = next(batches)
                torch.manual_seed(mix_seed(cfg.seed, "step", acc.process_index, epoch, index))
                with acc.accumulate(model):
                    loss, metrics = self.compute_loss(model, batch, step)
                    acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for callback in self.callbacks:
                    callback.on_micro_batch(self, step + 1, epoch, index, batch)
                detached = loss.detach().float()
                running, count = running + detached, count + 1
                new_bad = ~torch.isfinite(detached) & (self._bad_step < 0)  # no sync: read when logging or saving
                self._bad_step = torch.where(new_bad, step + 1, self._bad_step)
                self._bad_loss = torch.where(new_bad, detached, self._bad_loss)
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                step += 1
                if self.ema is not None:
                    self.ema.update(self.unwrapped)
                bar.update(1)
                for callback in self.callbacks:
                    callback.on_update(self, step)
                logs = step % cfg.log_every == 0 or step == cfg.steps
                samples = bool(cfg.sample_every) and (step % cfg.sample_every == 0 or step == cfg.steps)
                saves = step % cfg.save_every == 0 or step == cfg.steps
                if logs or samples or saves:
                    self._check_loss(step)
                if logs:
                    mean_loss = acc.reduce(running / count, "mean").item()
                    row = {"loss": mean_loss, "lr": lr, "epoch": epoch, **metrics}
                    if grad_norm is not None:
                        row["grad_norm"] = float(grad_norm)
                    if self.is_main:
                        row.update(self.extra_metrics(self.unwrapped, batch))
                    self.log.log(step, row)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    running, count = torch.zeros((), device=acc.device), 0
                if samples or saves:  # never draw from, nor save, NaN weights
                    self._check_weights(step)
                if samples:
                    self._samples(step)
                if saves:
                    self._save(step, running, count)
        finally:
            bar.close()

    # --- NaN / inf guards -------------------------------------------------------------------------------------

    def _stop_message(self, step: int) -> str:
        last = latest_checkpoint(self.out)
        kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written"
        return (f"stopped at update {step} without saving; {kept} (try a lower --lr, --max-grad-norm or "
                "--warmup-steps, or --no-bf16)")

    def _check_loss(self, step: int) -> None:
        """Raise NonFiniteError when a micro-batch loss since the start was NaN or infinite (on any process)."""
        acc = self.accelerator
        firsts = acc.gather(self._bad_step.reshape(1))
        bad = [int(s) for s in firsts.tolist() if s >= 0]
        if bad:
            value = float(self._bad_loss) if int(self._bad_step) >= 0 else float("nan")
            raise NonFiniteError(f"the {self.kind} loss became non-finite ({value}) at update {min(bad)}; "
                                 + self._stop_message(step), step=min(bad), what="loss")

    def _check_weights(self, step: int) -> None:
        """Raise NonFiniteError when a weight of the model (this process's part of it) is NaN or infinite."""
        params = [p.detach() for p in self.accelerator.unwrap_model(self.model).parameters() if p.numel()]
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all() if params else torch.tensor(True)
        everywhere = self.accelerator.gather(finite.reshape(1).to(self.accelerator.device, torch.float32))
        if not bool(everywhere.min() > 0):
            raise NonFiniteError(f"the {self.kind} model's weights became non-finite (NaN or inf) by update {step}; "
                                 + self._stop_message(step), step=step, what="weights")

    def sample_model(self) -> nn.Module:
        """The model to sample from and to export: the EMA one when there is one and `use_ema`, else the raw one."""
        return self.ema.model if self.ema is not None and self.config.use_ema else self.unwrapped

    def _samples(self, step: int) -> None:
        if self.sharded or not self.is_main:  # sampling a sharded model would need every process
            return
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.write_samples(self.sample_model(), step, self.fixed)
        if metrics:
            self.log.log(step, metrics)

    # --- checkpoints --------------------------------------------------------------------------------------------

    def _full_model(self) -> Optional[nn.Module]:
        """The whole model on the main process (gathered from every process when sharded), None elsewhere."""
        if not self.sharded:
            return self.unwrapped if self.is_main else None
        state = self.accelerator.get_state_dict(self.model)  # a collective: every process calls it
        if not self.is_main:
            return None
        full = build_like(self.unwrapped).cpu()
        full.load_state_dict(state)
        return full

    def _save(self, step: int, running: Tensor, count: int) -> None:
        acc = self.accelerator
        data_state = self.stream.state()  # a collective for shards: every process calls it
        loss_sums = gather_object([float(running)])  # each process's running loss since its last logged row
        full = self._full_model()
        staging = self.out / "checkpoints" / f".step-{step:08d}.accelerate"
        if self.sharded:  # sharded optimizer states are saved by every process, in Accelerate's format
            acc.save_state(str(staging))
            acc.wait_for_everyone()
        if self.is_main:
            def write(tmp: Path) -> None:
                self.export(full, tmp / "model")
                if self.ema is not None:
                    self.export(self.ema.model, tmp / "ema")
                for callback in self.callbacks:
                    callback.on_checkpoint(self, step, tmp)
                if self.sharded:
                    os.replace(staging, tmp / "accelerate")
                extra = {"trainer": self.kind, "loss_sums": loss_sums, "loss_count": count}
                save_training_state(tmp, optimizer=None if self.sharded else self.optimizer, scheduler=self.scheduler,
                                    step=step, ema=self.ema, data_state=data_state, extra=extra)

            try:
                write_checkpoint(self.out, step, write, self.config.keep_checkpoints)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                previous = latest_checkpoint(self.out)
                kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
                raise OSError(errno.ENOSPC, f"disk full (no space left on the device) while writing the checkpoint "
                                            f"of update {step}; {kept}; free space and rerun with --resume",
                              str(checkpoint_path(self.out, step))) from err
        acc.wait_for_everyone()

    def _restore(self) -> int:
        acc = self.accelerator
        has_ema = (self.checkpoint / "ema").is_dir()  # EMA turned on at resume: it starts from the weights
        info = load_training_state(self.checkpoint, optimizer=None if self.sharded else self.optimizer,
                                   scheduler=self.scheduler, ema=self.ema if has_ema else None)
        if self.sharded:
            acc.load_state(str(self.checkpoint / "accelerate"))
        self.stream.load_state(info["data_state"] or {})
        extra = info.get("extra") or {}
        sums, count = extra.get("loss_sums"), extra.get("loss_count", 0)
        if isinstance(sums, list) and sums and isinstance(count, int):
            same = len(sums) == acc.num_processes
            self._resume_loss = (float(sums[acc.process_index] if same else sum(sums) / len(sums)), count)
        return int(info["step"])

    # --- the end --------------------------------------------------------------------------------------------------

    def _finish(self, dataset: Dataset) -> None:
        acc, step = self.accelerator, self.config.steps
        self._check_weights(step)
        full = self._full_model()
        if self.is_main:
            self.export(self.sample_model() if not self.sharded else full, self.out / "model")
        merged: Dict[str, set] = {}  # each process skips what it loads; folder indexing skips are on every process
        for per_rank in gather_object([getattr(dataset, "skipped", None) or {}]):
            for reason, items in per_rank.items():
                merged.setdefault(reason, set()).update(items)
        skipped = {reason: len(items) for reason, items in sorted(merged.items()) if items}
        extra: Dict[str, Any] = {}
        for callback in self.callbacks:
            extra.update(callback.on_end(self, step) or {})
        self.log.event(step, "end", skipped=skipped, **extra)
        main_process_log(acc, f"data skipped during the run: {skipped or 'nothing'}; final model in "
                              f"{self.out / 'model'}")
        self.log.close()
        if self.is_main:  # the loss curve of the whole run (resumed parts included), beside metrics.jsonl
            losses = [row["loss"] for row in read_metrics(self.out) if "loss" in row]
            if losses:
                plot_losses(self.out / LOSS_PLOT_NAME, {f"train-{self.kind} loss": losses})
        acc.wait_for_everyone()
