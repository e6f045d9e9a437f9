"""Run configuration: a dataclass per trainer whose documented fields are also the command-line flags.

Every field is declared with `option(default, help, group)`; `add_config_arguments` turns the fields of a
config class into argparse flags (`batch_size` -> `--batch-size`, bools as `--bf16/--no-bf16`), and
`config_from_args` builds a config from only the flags that were given, on top of a base config (the
defaults, or the saved config of the run being resumed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from os import PathLike
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from ..utils import check_float, check_int

__all__ = ["option", "TrainConfig", "add_config_arguments", "config_from_args", "config_to_dict", "config_from_dict",
           "load_config_file", "MODEL_GROUP"]

C = TypeVar("C", bound="TrainConfig")
MODEL_GROUP = "model"  # fields that shape the model: fixed for the life of a run
GROUPS = {"data": "data", MODEL_GROUP: "model size", "optim": "optimisation", "run": "run and logging"}


def option(default: Any, help: str, group: str = "run") -> Any:
    """A config field with its default, its help text and the CLI group it belongs to."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")
    return field(default=default, metadata={"help": help, "group": group})


@dataclass
class TrainConfig:
    """What every trainer shares: data, optimisation (AdamW, warmup + cosine), EMA, logging, checkpoints."""

    folder: Optional[str] = option(None, "folder of images with same-stem .txt captions (train-vae: images alone)", "data")
    shards: Optional[str] = option(None, "WebDataset tar shards: a file, a directory, a URL or a brace pattern "
                                         "(several separated by commas); a 'pipe:COMMAND' source runs COMMAND "
                                         "and is accepted only from the current command line, never from a "
                                         "saved train_config.json (on --resume pass --shards again)", "data")
    resize_ratio: float = option(0.75, "random crops cover between this fraction of the image and all of it", "data")
    shuffle_buffer: int = option(1000, "shards only: samples in the shuffle buffer (0: read in order)", "data")
    num_workers: int = option(0, "DataLoader worker processes per training process", "data")

    steps: int = option(10_000, "optimizer updates to train for", "optim")
    batch_size: int = option(8, "samples per process per micro-batch", "optim")
    grad_accum: int = option(1, "micro-batches accumulated into one update", "optim")
    lr: float = option(3e-4, "peak learning rate", "optim")
    min_lr_ratio: float = option(0.1, "the cosine schedule ends at lr * min_lr_ratio", "optim")
    warmup_steps: int = option(500, "linear warmup from 0 to lr over this many updates", "optim")
    weight_decay: float = option(0.01, "AdamW weight decay (matrices and embeddings only)", "optim")
    betas: Tuple[float, float] = option((0.9, 0.999), "AdamW betas", "optim")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)", "optim")
    bf16: bool = option(False, "bfloat16 autocast (weights and optimizer state stay float32)", "optim")
    ema_decay: float = option(0.0, "decay of the weights' exponential moving average (0: no EMA; the paper's "
                                   "dVAE uses 0.999)", "optim")
    use_ema: bool = option(True, "with EMA on, sample grids and the final model use the EMA weights", "optim")

    out: str = option("runs/run", "output directory: checkpoints, samples, metrics.jsonl, the final model")
    seed: int = option(0, "seeds the model init, the data order and every random draw")
    cpu: bool = option(False, "train on the CPU even when an accelerator is available")
    log_every: int = option(10, "log metrics every this many updates")
    sample_every: int = option(500, "write a sample grid every this many updates (0: never)")
    num_samples: int = option(8, "images in a sample grid")
    save_every: int = option(1000, "write a checkpoint every this many updates (and at the end)")
    keep_checkpoints: int = option(2, "keep this many most recent checkpoints")
    tensorboard: bool = option(False, "also log to TensorBoard (needs `pip install tensorboard`)")
    wandb: bool = option(False, "also log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = option("dalle-core", "W&B project name")
    debug_record: bool = option(False, "write every micro-batch's sample ids (dataset indices; caption keys for "
                                       "shards) to sample_ids.jsonl and each rank's final weight checksum: for "
                                       "tests and debugging data sharding")

    def validate(self) -> None:
        """Raise ValueError (TypeError for a value of the wrong type) naming the first field that cannot work."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_checkpoints",
                     "num_samples"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "sample_every", "num_workers", "shuffle_buffer", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_float("weight_decay", self.weight_decay, low=0.0)
        check_float("max_grad_norm", self.max_grad_norm, low=0.0)
        check_float("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_float("resize_ratio", self.resize_ratio, low=0.0, high=1.0, low_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_float(f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        for name in ("folder", "shards"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str (a path) or None, got {type(value).__name__} {value!r}")
        if not isinstance(self.out, (str, PathLike)) or not str(self.out):
            raise TypeError(f"out must be a non-empty path, got {type(self.out).__name__} {self.out!r}")
        for name in ("bf16", "use_ema", "cpu", "tensorboard", "wandb", "debug_record"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def model_fields(self) -> Dict[str, Any]:
        """The fields in the model group, by name."""
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if f.metadata.get("group") == MODEL_GROUP}


# --- JSON ---------------------------------------------------------------------------------------------------


def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_tuple(hint: Any) -> bool:
    hint = _unwrap_optional(hint)
    return typing.get_origin(hint) in (tuple, Tuple)


def _unwrap_optional(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return hint


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """The config as JSON-ready data (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: Type[C], data: Dict[str, Any], where: str = "config") -> C:
    """A config of class `cls` from `config_to_dict` output; unknown keys raise ValueError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}")
    data = {**getattr(cls, "LEGACY_CONFIG", {}), **data}  # fields a run saved before they existed: what it did
    hints = _hints(cls)
    values = {k: tuple(v) if isinstance(v, list) and _is_tuple(hints[k]) else v for k, v in data.items()}
    return cls(**values)


def load_config_file(cls: Type[C], path: Path) -> C:
    """The config saved in a run's train_config.json."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        data = doc["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable dalle-core run config: {e}") from e
    return config_from_dict(cls, data, str(path))


# --- argparse -----------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, cls: Type[TrainConfig]) -> None:
    """Add one flag per field of `cls`, in argument groups; flags left out do not appear in the namespace."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint = _unwrap_optional(hints[f.name])
        default = f.default
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name,
                                  "help": f"{f.metadata.get('help', '')} (default: {default!r})"}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_tuple(hint):
            args = typing.get_args(hint)
            kwargs["type"] = args[0]
            kwargs["nargs"] = "+" if Ellipsis in args else len(args)
            kwargs["metavar"] = args[0].__name__.upper()
        else:
            kwargs["type"] = hint
            kwargs["metavar"] = getattr(hint, "__name__", "VALUE").upper()
        groups[f.metadata.get("group", "run")].add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls: Type[C], args: argparse.Namespace, base: Optional[C] = None) -> C:
    """`base` (default: `cls()`) with the fields given on the command line replaced, validated."""
    base = cls() if base is None else base
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    config = dataclasses.replace(base, **given)
    config.validate()
    return config
