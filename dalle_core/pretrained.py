"""Checkpoints as data: `save_pretrained`/`from_pretrained` for models, `save_training_state` for resuming.

A model directory holds `config.json` (class, format version, constructor keywords; a DALLE also records its
VAE's class and keywords) and `model.safetensors` (the state dict; a DALLE's VAE weights stay inside it as
`vae.*`). Tensors that alias each other (DALLE's `shared_attn_ids`/`shared_ff_ids`) are stored once and
listed under the header key `dalle_core_aliases`. The header also carries the full config.json document, so
the weights file describes itself: it is the authority when the two disagree.

Loading treats every file as hostile data: config files are read only when they are regular files of bounded
size with JSON of bounded depth; the config is checked against the weights' header (layer counts against the
number of tensors, then names and shapes of a model built on the meta device, which allocates nothing) before
any model is built; NaN or infinite weights are refused unless `allow_nonfinite=True`; and a training state is
checked whole (optimizer kind and shapes, RNG states) before anything is restored.

Every file is written to a temporary file in the same directory, fsynced, then `os.replace`d, and
`model.safetensors` is replaced last: a crash at any point leaves a loadable checkpoint (the previous one
until the weights are replaced). Training state is one file, `training_state.safetensors`: its tensors,
plus everything else as tagged JSON in the header. Nothing here is ever pickled or unpickled.
"""
from __future__ import annotations

import json
import os
import random
import uuid
import warnings
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import safetensors
import safetensors.torch  # looked up at call time so tests can simulate a crash mid-write
import torch
from torch import Tensor, nn

from .files import check_regular_file, parse_json, read_text

try:
    import numpy as np
except ImportError:  # numpy is optional; its global RNG is saved when it is installed
    np = None

__all__ = ["CheckpointError", "PretrainedMixin", "save_pretrained", "from_pretrained", "save_training_state",
           "load_training_state"]

PathOrStr = Union[str, PathLike]
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, TRAINING_STATE_NAME = "config.json", "model.safetensors", "training_state.safetensors"
_CONFIG_KEY, _ALIASES_KEY, _TRAINING_KEY = "dalle_core_config", "dalle_core_aliases", "dalle_core_training_state"
_TAGS = ("__tensor__", "__tuple__", "__dict__")
MAX_CONFIG_BYTES = 4 * 2**20  # a config.json is a few KB
Expected = Dict[str, Tuple[Tuple[int, ...], bool]]  # tensor name -> (shape, floating point)


class CheckpointError(ValueError):
    """A checkpoint file exists but is broken, truncated or does not fit what it is loaded into."""


# --- atomic files ---------------------------------------------------------------------------------------------


def fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDWR)
    except OSError:  # directories cannot be opened on Windows, where there is nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_files(*paths: Path) -> Iterator[List[Path]]:
    """Yield temporary paths beside `paths`; once all are written, fsync and `os.replace` them in order."""
    tmps = [p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp") for p in paths]
    try:
        yield tmps
        for tmp in tmps:
            fsync_path(tmp)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
        fsync_path(paths[0].parent, directory=True)
    finally:
        for tmp in tmps:  # nothing is left behind when a write fails
            tmp.unlink(missing_ok=True)


def _write_safetensors(path: Path, tensors: Dict[str, Tensor], metadata: Dict[str, str]) -> None:
    """Save `tensors`, storing aliased tensors once (their other names go in the header)."""
    unique: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[tuple, str] = {}
    storages = set()
    for name, t in tensors.items():
        t = t.detach()
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if t.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        shares = t.numel() > 0 and (t.device, view[1]) in storages
        storages.add((t.device, view[1]))
        t = t.to("cpu").contiguous()
        unique[name] = t.clone() if shares else t  # overlapping views must not share storage in the file
    metadata = {"format": "pt", **metadata, _ALIASES_KEY: json.dumps(aliases)}
    safetensors.torch.save_file(unique, str(path), metadata=metadata)


def _weights_file(path: Path) -> Path:
    """`path` if it is a regular file; FileNotFoundError when missing, CheckpointError for a FIFO, device, ..."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    return check_regular_file(path, None, what="safetensors file", error=CheckpointError)


def _aliases(metadata: Dict[str, str], keys: Any, path: Path) -> Dict[str, str]:
    """The header's alias -> stored-name table, checked to name stored tensors only."""
    aliases = parse_json(metadata.get(_ALIASES_KEY, "{}"), what=f"{path}: header entry '{_ALIASES_KEY}'",
                         error=CheckpointError)
    if not isinstance(aliases, dict) or not all(isinstance(v, str) and v in keys for v in aliases.values()):
        raise CheckpointError(f"{path}: broken '{_ALIASES_KEY}' entry in the header: expected an object mapping "
                              "names to stored tensors")
    return aliases


def _read_header(path: Path) -> Tuple[Expected, Dict[str, str]]:
    """Shapes and floating-pointness of every tensor (aliases expanded) and the header metadata, from the
    safetensors header alone: no tensor is read."""
    _weights_file(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            expected: Expected = {}
            for k in f.keys():
                sl = f.get_slice(k)
                expected[k] = (tuple(sl.get_shape()), sl.get_dtype().startswith(("F", "BF")))
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    for alias, name in _aliases(metadata, expected, path).items():
        expected[alias] = expected[name]
    return expected, metadata


def _read_safetensors(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Tensors (aliases expanded) and header metadata of a safetensors file; broken files raise CheckpointError."""
    _weights_file(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    for alias, name in _aliases(metadata, tensors, path).items():
        tensors[alias] = tensors[name]
    return tensors, metadata


def _dalle_core_version() -> str:
    import dalle_core  # at call time: this module is imported while dalle_core itself is loading

    return getattr(dalle_core, "__version__", "unknown")


# --- models ---------------------------------------------------------------------------------------------------


def _model_classes() -> Dict[str, type]:
    from .models.clip import CLIP
    from .models.dalle import DALLE
    from .models.vae import DiscreteVAE

    return {"DiscreteVAE": DiscreteVAE, "DALLE": DALLE, "CLIP": CLIP}


def _class_name(cls: type) -> str:
    """The dalle_core model class `cls` is or derives from (so subclasses save as their base)."""
    classes = _model_classes()
    for base in cls.__mro__:
        if classes.get(base.__name__) is base:
            return base.__name__
    raise TypeError(f"expected a dalle_core model class ({', '.join(classes)}), got {cls.__name__}")


def _config_of(model: nn.Module) -> Dict[str, Any]:
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no `config` dict of constructor keywords to save")
    return {"class": _class_name(type(model)), "config": config}


def save_pretrained(model: nn.Module, directory: PathOrStr) -> Path:
    """Write `model` to `directory` as config.json + model.safetensors, atomically; returns the directory."""
    directory = Path(directory)
    doc: Dict[str, Any] = {"format_version": FORMAT_VERSION, "dalle_core_version": _dalle_core_version(),
                           **_config_of(model)}
    if doc["class"] == "DALLE":
        doc["vae"] = _config_of(model.vae)
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{type(model).__name__}.config must be JSON-serialisable to be saved: {e}") from e
    directory.mkdir(parents=True, exist_ok=True)
    # config.json first, weights last: until the weights land, their header still describes the old ones
    with _atomic_files(directory / CONFIG_NAME, directory / WEIGHTS_NAME) as (config_tmp, weights_tmp):
        config_tmp.write_text(text + "\n", encoding="utf-8")
        _write_safetensors(weights_tmp, model.state_dict(), {_CONFIG_KEY: text})
    return directory


def _parse_doc(text: str, path: Path) -> Dict[str, Any]:
    """A config.json document (from the file or the weights header), checked for shape and version."""
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: the config is {len(text)} characters long; expected at most {MAX_CONFIG_BYTES}")
    doc = parse_json(text, what=str(path), error=CheckpointError)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or not isinstance(doc.get("class"), str):
        raise CheckpointError(f"{path}: expected an object with a 'class' name and a 'config' object")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not one this dalle_core reads "
                              f"(<= {FORMAT_VERSION}; written by dalle_core {doc.get('dalle_core_version')})")
    return doc


def with_legacy_config(cls: type, config: Dict[str, Any]) -> Dict[str, Any]:
    """`config` with the class's `LEGACY_CONFIG` values for keywords it lacks: a config saved before a keyword
    existed means what that version did, not the keyword's newer default."""
    return {**getattr(cls, "LEGACY_CONFIG", {}), **config}


def _builder(doc: Dict[str, Any], cls: Optional[type], n_tensors: Dict[str, int],
             path: Path) -> Tuple[str, Callable[[], nn.Module]]:
    """The class name and a function building the model `doc` describes, once its config passed the cheap checks
    (types of size keys; layer counts against `n_tensors`, the file's tensors per part: 'vae' and 'rest')."""
    from .validation import check_config

    classes = _model_classes()
    name = doc["class"]
    if name not in classes:
        raise CheckpointError(f"{path}: unknown class {name!r} (expected one of {', '.join(classes)})")
    if cls is not None and _class_name(cls) != name:
        raise CheckpointError(f"{path}: holds a {name}, not a {_class_name(cls)}; load it with {name}.from_pretrained")
    cls = cls or classes[name]
    kwargs = with_legacy_config(cls, doc["config"])
    vae: Dict[str, Any] = {}
    if name == "DALLE":
        vae = doc["vae"] if isinstance(doc.get("vae"), dict) else {}
        if vae.get("class") != "DiscreteVAE" or not isinstance(vae.get("config"), dict):
            raise CheckpointError(f"{path}: cannot build a DALLE from its config: a DALLE needs a 'vae' entry "
                                  "{'class': 'DiscreteVAE', 'config': {...}}")
        vae = {**vae, "config": with_legacy_config(classes["DiscreteVAE"], vae["config"])}
        check_config("DiscreteVAE", vae["config"], n_tensors["vae"], path)
    check_config(name, kwargs, n_tensors["rest"], path)

    def build() -> nn.Module:
        extra = {"vae": classes["DiscreteVAE"](**vae["config"])} if name == "DALLE" else {}
        return cls(**kwargs, **extra)

    return name, build


def from_pretrained(cls: Optional[type], directory: PathOrStr, map_location: Union[str, torch.device, None] = None,
                    *, allow_nonfinite: bool = False) -> nn.Module:
    """Rebuild the model saved in `directory` (of class `cls`, or whichever it records when None), in eval mode;
    NaN or infinite weights raise CheckpointError unless `allow_nonfinite`."""
    from .validation import build_checked, check_finite, compare_state

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing (save_pretrained writes {CONFIG_NAME} and {WEIGHTS_NAME})")
    text = read_text(config_path, MAX_CONFIG_BYTES, what="checkpoint config", error=CheckpointError)
    doc, where = _parse_doc(text, config_path), config_path
    expected, metadata = _read_header(weights_path)
    if _CONFIG_KEY in metadata:  # the weights' own config wins (see the module docstring)
        header = _parse_doc(metadata[_CONFIG_KEY], weights_path)
        if any(header.get(k) != doc.get(k) for k in ("class", "config", "vae")):
            warnings.warn(f"{config_path} disagrees with the config stored in {weights_path} (a save interrupted "
                          "between its two renames, or a hand edit); building the model the weights were saved "
                          "with", UserWarning, stacklevel=3)
            doc, where = header, weights_path
    n_vae = sum(k.startswith("vae.") for k in expected)
    name, build = _builder(doc, cls, {"vae": n_vae, "rest": len(expected) - n_vae}, where)
    model = build_checked(build, name, expected, where, weights=weights_path)
    state, _ = _read_safetensors(weights_path)
    check_finite(state, weights_path, allow_nonfinite)
    compare_state(model, {k: (tuple(t.shape), t.is_floating_point()) for k, t in state.items()}, weights_path)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1 and dtypes != {torch.get_default_dtype()}:
        model.to(dtypes.pop())  # keep a checkpoint saved in bfloat16 in bfloat16
    model.load_state_dict(state)
    if map_location is not None:
        model.to(map_location)
    return model.eval()


class PretrainedMixin:
    """Adds `save_pretrained(directory)` and `cls.from_pretrained(directory)` to a dalle_core model class."""

    def save_pretrained(self, directory: PathOrStr) -> Path:
        """Write this model to `directory` as config.json + model.safetensors."""
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: PathOrStr, map_location: Union[str, torch.device, None] = None, *,
                        allow_nonfinite: bool = False) -> Any:
        """Rebuild a model of this class from a directory written by `save_pretrained` (NaN/inf weights refused
        unless `allow_nonfinite`)."""
        return from_pretrained(cls, directory, map_location=map_location, allow_nonfinite=allow_nonfinite)


# --- training state -------------------------------------------------------------------------------------------


def _flatten(obj: Any, path: str, tensors: Dict[str, Tensor]) -> Any:
    """`obj` as JSON with tensors moved into `tensors`; tuples and dicts with non-string keys are tagged."""
    if isinstance(obj, Tensor):
        key = path or "tensor"
        while key in tensors:
            key += "'"
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    join = (lambda k: f"{path}.{k}") if path else str
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, join(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _flatten(v, join(k), tensors) for k, v in obj.items()}
        return {"__dict__": [[_flatten(k, join(k), tensors), _flatten(v, join(k), tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {path!r} in a training state: use tensors, "
                    "numbers, strings, None, lists, tuples and dicts")


def _unflatten(obj: Any, tensors: Dict[str, Tensor]) -> Any:
    """Inverse of `_flatten`."""
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        return tensors[obj["__tensor__"]]
    if set(obj) == {"__tuple__"}:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if set(obj) == {"__dict__"}:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def _get_rng() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (name, keys.tolist(), int(pos), int(has_gauss), float(gauss))
    return state


def _set_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    if "numpy" in state and np is not None:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _state_dict_of(name: str, obj: Any) -> Optional[Dict[str, Any]]:
    if obj is None:
        return None
    if not callable(getattr(obj, "state_dict", None)):
        raise TypeError(f"{name} must have a state_dict() method, got {type(obj).__name__}")
    return obj.state_dict()


def save_training_state(directory: PathOrStr, *, optimizer: Any = None, scheduler: Any = None, step: int,
                        rng: bool = True, ema: Any = None, data_state: Optional[dict] = None,
                        extra: Optional[dict] = None) -> Path:
    """Write optimizer/scheduler/EMA state, RNG states and progress to directory/training_state.safetensors."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TypeError(f"step must be a non-negative int, got {step!r}")
    for name, value in (("data_state", data_state), ("extra", extra)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
    state = {"format_version": FORMAT_VERSION, "dalle_core_version": _dalle_core_version(), "step": step,
             "optimizer": _state_dict_of("optimizer", optimizer), "scheduler": _state_dict_of("scheduler", scheduler),
             "ema": _state_dict_of("ema", ema), "rng": _get_rng() if rng else None,
             "data_state": data_state, "extra": extra}
    tensors: Dict[str, Tensor] = {}
    text = json.dumps(_flatten(state, "", tensors))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _atomic_files(directory / TRAINING_STATE_NAME) as (tmp,):
        _write_safetensors(tmp, tensors, {_TRAINING_KEY: text})
    return directory


def load_training_state(directory: PathOrStr, *, optimizer: Any = None, scheduler: Any = None,
                        ema: Any = None) -> Dict[str, Any]:
    """Restore what `save_training_state` wrote (RNG states included); returns step, data_state and extra.
    Everything is checked first: a state that does not fit raises CheckpointError with nothing restored."""
    path = Path(directory) / TRAINING_STATE_NAME
    tensors, metadata = _read_safetensors(path)
    if _TRAINING_KEY not in metadata:
        raise CheckpointError(f"{path}: no readable '{_TRAINING_KEY}' header entry: it is missing")
    doc = parse_json(metadata[_TRAINING_KEY], what=f"{path}: header entry '{_TRAINING_KEY}'", error=CheckpointError)
    try:
        state = _unflatten(doc, tensors)
        version = state["format_version"]
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: no readable '{_TRAINING_KEY}' header entry: {e!r}") from e
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not one this dalle_core reads "
                              f"(<= {FORMAT_VERSION})")
    targets = {name: obj for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("ema", ema))
               if obj is not None}
    from .validation import check_training_state

    check_training_state(state, path, targets)
    for name, obj in targets.items():
        try:
            obj.load_state_dict(state[name])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: the saved {name} state does not fit the {name} given: {e}") from e
    if state.get("rng") is not None:  # last, so that nothing above consumes the restored streams
        _set_rng(state["rng"])
    return {"step": state["step"], "data_state": state.get("data_state"), "extra": state.get("extra")}
