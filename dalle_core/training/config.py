"""Run configuration: a dataclass per trainer whose documented fields are also the command-line flags.

A trainer's own fields are declared with `option(default, help, group)`. The model's fields are not written
here at all: `@model_options(DALLE, ...)` adds one field per keyword of the model's constructor, typed,
defaulted and documented from the constructor's signature and its docstring's `Args:` section, so a new model
keyword appears in the config, its saved `train_config.json` and as a `train-*` flag by itself.
`add_config_arguments` turns the fields of a config class into argparse flags (`batch_size` -> `--batch-size`,
bools as `--bf16/--no-bf16`), and `config_from_args` builds a config from only the flags that were given, on
top of a base config (the defaults, or the saved config of the run being resumed).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, TypeVar, Union

import torch

from ..utils import check_float, check_int

__all__ = ["option", "model_options", "argument_docs", "TrainConfig", "add_config_arguments", "config_from_args",
           "config_to_dict", "config_from_dict", "load_config_file", "MODEL_GROUP"]

C = TypeVar("C", bound="TrainConfig")
MODEL_GROUP = "model"  # fields that shape the model: fixed for the life of a run
GROUPS = {"data": "data", MODEL_GROUP: "model size", "optim": "optimisation", "run": "run and logging"}


def option(default: Any, help: str, group: str = "run") -> Any:
    """A config field with its default, its help text and the CLI group it belongs to."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")
    return field(default=default, metadata={"help": help, "group": group})


_ARG_LINE = re.compile(r"^(\s+)(\w+): (.*)$")


def argument_docs(cls: type) -> Dict[str, str]:
    """The `Args:` section of `cls`'s docstring as {keyword: one-line description}."""
    docs: Dict[str, str] = {}
    lines = inspect.getdoc(cls).splitlines() if inspect.getdoc(cls) else []
    if "Args:" not in lines:
        return docs
    indent, name = None, None
    for line in lines[lines.index("Args:") + 1:]:
        match = _ARG_LINE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent, name = len(match.group(1)), match.group(2)
            docs[name] = match.group(3).strip()
        elif name is not None and line.strip() and len(line) - len(line.lstrip()) > (indent or 0):
            docs[name] += " " + line.strip()
        elif line.strip():  # the section ended
            break
    return {k: v.rstrip(".") for k, v in docs.items()}


def _field_type(hint: Any) -> Any:
    """The config field type for a constructor annotation: sequences become tuples (JSON lists, `nargs` flags);
    what a flag cannot spell as words (nested sequences, Any) is kept as `Any`, given as JSON on the command line."""
    simple = (int, float, bool, str)
    if hint in simple:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        # str or a sequence of str (attn_types): a tuple of str; bool or a sequence of bool: a tuple of bool
        seqs = [a for a in args if typing.get_origin(a) in (Sequence, tuple, list)]
        inner = _field_type(seqs[0]) if len(seqs) == 1 else _field_type(args[0]) if len(args) == 1 else Any
        return Optional[inner] if optional and inner is not Any else inner
    if typing.get_origin(hint) in (Sequence, tuple, list):
        item = args[0] if args else Any
        return Tuple[item, ...] if item in simple else Any
    return Any


def model_options(model_class: type, *, skip: Tuple[str, ...] = (), defaults: Optional[Dict[str, Any]] = None,
                  groups: Optional[Dict[str, str]] = None) -> Callable[[type], type]:
    """Class decorator (placed under `@dataclass`): a config field per keyword of `model_class`'s constructor.

    Each field takes the keyword's type and default from the signature and its help from the class docstring's
    `Args:` section. `skip` leaves keywords out (those a trainer fills itself, such as the tokenizer's vocabulary
    size); `defaults` gives a trainer's own default (required keywords need one); `groups` moves a field out of
    the "model" group (fixed for the life of a run) into another, e.g. a loss weight into "optim".
    """
    defaults, groups = dict(defaults or {}), dict(groups or {})

    def add(cls: type) -> type:
        signature = inspect.signature(model_class.__init__)
        hints = typing.get_type_hints(model_class.__init__)
        docs = argument_docs(model_class)
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        names = []
        for p in list(signature.parameters.values())[1:]:
            if p.name in skip or p.name in getattr(model_class, "MODULE_ARGS", ()) or p.kind in (
                    p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = defaults.pop(p.name, p.default)
            if default is p.empty:
                raise TypeError(f"{model_class.__name__}({p.name}=...) has no default: give {cls.__name__} one "
                                "through model_options(defaults=...)")
            annotations[p.name] = _field_type(hints.get(p.name, Any))
            setattr(cls, p.name, field(default=default, metadata={
                "help": docs.get(p.name, f"{model_class.__name__}'s {p.name}"), "group": groups.get(p.name, MODEL_GROUP),
                "model_kwarg": True}))
            names.append(p.name)
        if defaults:
            raise TypeError(f"model_options: {model_class.__name__} has no keywords {sorted(defaults)}")
        cls.__annotations__ = annotations
        cls.model_class = model_class
        return cls

    return add


@dataclass
class TrainConfig:
    """What every trainer shares: data, optimisation (AdamW, warmup + cosine), EMA, logging, checkpoints."""

    model_class: ClassVar[Optional[type]] = None  # set by `model_options`
    RENAMED: ClassVar[Dict[str, str]] = {}  # old field name -> new: read in saved configs, accepted as flags
    REMOVED: ClassVar[Tuple[str, ...]] = ("debug_record",)  # fields of older runs, ignored when read (now callbacks)

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
        for name in ("bf16", "use_ema", "cpu", "tensorboard", "wandb"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # the constructor checks ranges; the types are checked here
            if f.metadata.get("model_kwarg"):
                _check_type(f.name, getattr(self, f.name), hints[f.name])

    def model_fields(self) -> Dict[str, Any]:
        """The fields in the model group, by name (JSON-ready: tuples as lists)."""
        data = config_to_dict(self)
        return {f.name: data[f.name] for f in dataclasses.fields(self) if f.metadata.get("group") == MODEL_GROUP}

    def model_kwargs(self) -> Dict[str, Any]:
        """The model constructor's keywords this config sets (see `model_options`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("model_kwarg")}

    def check_model(self, **extra: Any) -> None:
        """Build the model these options describe on the meta device (no memory): the constructor's own checks
        refuse what cannot work before any data is read or any step is taken."""
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # warnings are the real build's to give
            self.model_class(**self.model_kwargs(), **extra)


def _check_type(name: str, value: Any, hint: Any) -> None:
    """TypeError unless `value` fits a field type made by `_field_type`."""
    if value is None and type(None) in typing.get_args(hint):
        return
    hint = _unwrap_optional(hint)
    if hint is Any:
        return
    if _is_tuple(hint):
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a list, got {type(value).__name__} {value!r}")
        for i, item in enumerate(value):
            _check_type(f"{name}[{i}]", item, typing.get_args(hint)[0])
        return
    ok = isinstance(value, bool) if hint is bool else isinstance(value, (int, float)) and not isinstance(
        value, bool) if hint is float else isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise TypeError(f"{name} must be {'True or False' if hint is bool else 'a ' + hint.__name__}, got "
                        f"{type(value).__name__} {value!r}")


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
    data = {getattr(cls, "RENAMED", {}).get(k, k): v for k, v in data.items()}  # a run saved under older names
    data = {k: v for k, v in data.items() if k not in getattr(cls, "REMOVED", ())}
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


def load_user_config(cls: Type[C], path: Path) -> C:
    """A config from a user's file for `train-* --config FILE`: JSON or YAML (read as data: `yaml.safe_load`),
    a mapping of field names (the flags' names with '_' for '-') to values, or a run's train_config.json."""
    from ..files import read_text

    text = read_text(path, what="--config file")
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as e:  # json.JSONDecodeError or yaml.YAMLError: both say where
        raise ValueError(f"--config {path}: not valid {'YAML' if str(path).endswith(('yaml', 'yml')) else 'JSON'}: "
                         f"{e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "trainer" in doc:
        doc = doc["config"]  # a run's train_config.json
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise ValueError(f"--config {path}: expected a mapping of {cls.__name__} fields to values, got "
                         f"{type(doc).__name__}")
    doc = {k.replace("-", "_"): v for k, v in doc.items()}
    try:
        return config_from_dict(cls, doc, f"--config {path}")
    except TypeError as e:
        raise ValueError(f"--config {path}: {e}") from None


# --- argparse -----------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, cls: Type[TrainConfig]) -> None:
    """Add one flag per field of `cls`, in argument groups; flags left out do not appear in the namespace."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    hints = _hints(cls)
    aliases: Dict[str, list] = {}
    for old, new in getattr(cls, "RENAMED", {}).items():  # older flag names keep working
        aliases.setdefault(new, []).append(old)
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
        elif hint is Any:
            kwargs["type"] = _json_value
            kwargs["metavar"] = "JSON"
        else:
            kwargs["type"] = hint
            kwargs["metavar"] = getattr(hint, "__name__", "VALUE").upper()
        flags = ["--" + name.replace("_", "-") for name in [f.name] + aliases.get(f.name, [])]
        groups[f.metadata.get("group", "run")].add_argument(*flags, **kwargs)


def _json_value(text: str) -> Any:
    """A flag value given as JSON (nested lists, null)."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected JSON (e.g. [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]] or null), got "
                                         f"{text!r}") from e


def config_from_args(cls: Type[C], args: argparse.Namespace, base: Optional[C] = None) -> C:
    """`base` (default: `cls()`) with the fields given on the command line replaced, validated."""
    base = cls() if base is None else base
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    config = dataclasses.replace(base, **given)
    config.validate()
    return config
