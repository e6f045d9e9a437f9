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

import functools
import inspect
import json
import random
import warnings
from os import PathLike
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

import safetensors
import safetensors.torch  # looked up at call time so tests can simulate a crash mid-write
import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .files import atomic_files, check_regular_file, parse_json, read_text
from .validation import build_checked, check_config, check_finite, check_training_state, compare_state
from .version import __version__

try:
    import numpy as np
except ImportError:  # numpy is optional; its global RNG is saved when it is installed
    np = None

__all__ = ["CheckpointError", "PretrainedMixin", "MODEL_CLASSES", "save_pretrained", "from_pretrained",
           "describe", "build_like", "save_training_state", "load_training_state"]

PathOrStr = Union[str, PathLike]
FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, TRAINING_STATE_NAME = "config.json", "model.safetensors", "training_state.safetensors"
_CONFIG_KEY, _ALIASES_KEY, _TRAINING_KEY = "dalle_core_config", "dalle_core_aliases", "dalle_core_training_state"
_TAGS = ("__tensor__", "__tuple__", "__dict__")
MAX_CONFIG_BYTES = 4 * 2**20  # a config.json is a few KB
Expected = Dict[str, Tuple[Tuple[int, ...], bool]]  # tensor name -> (shape, floating point)


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


def write_safetensors(path: PathOrStr, tensors: Dict[str, Tensor]) -> None:
    """Write `tensors` to the safetensors file `path` atomically (readers see the old file or the new one)."""
    with atomic_files(Path(path)) as (tmp,):
        _write_safetensors(tmp, tensors, {})


def read_safetensors(path: PathOrStr) -> Dict[str, Tensor]:
    """The tensors of a safetensors file written by `write_safetensors`; CheckpointError naming it if broken."""
    return _read_safetensors(Path(path))[0]


# --- models ---------------------------------------------------------------------------------------------------

MODEL_CLASSES: Dict[str, type] = {}  # class name -> class, for every model a checkpoint can name
_RESERVED = ("class", "config", "format_version", "dalle_core_version")


def _json_ready(value: Any) -> Any:
    """A constructor argument as it is stored in a config: tuples as lists, recursively."""
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _recording(init: Callable) -> Callable:
    """Wrap a model's `__init__` so that, once it returns, `self.config` holds the keywords it was called with
    (defaults filled in; the module arguments named in `MODULE_ARGS` left out, as they are saved on their own).
    A subclass's `__init__` runs last, so a subclass records its own arguments."""
    signature = inspect.signature(init)
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        raise TypeError(f"{init.__qualname__} takes *args: a model's constructor arguments must be keywords to "
                        "be recorded in its config")

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if getattr(type(self), "RECORDS_OWN_CONFIG", False):
            return  # e.g. a tokenizer read from files records the sizes it read, not the paths
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config: Dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            else:
                config[name] = value
        modules = getattr(type(self), "MODULE_ARGS", ())
        self.config = {k: _json_ready(v) for k, v in config.items() if k not in modules}

    return __init__


class PretrainedMixin:
    """What every dalle_core model shares: `config` (its constructor keywords, recorded when it is built),
    `save_pretrained(directory)` and `cls.from_pretrained(directory)`.

    A model class passes `register=True` (`class DALLE(PretrainedMixin, nn.Module, register=True)`) to be
    nameable in a checkpoint; its subclasses save as the registered class they derive from. `MODULE_ARGS` names
    constructor arguments that are models themselves (a DALLE's `vae`): each is stored as an attribute of the
    same name and saved as its own {class, config} beside the model's config.
    """

    MODULE_ARGS: ClassVar[Tuple[str, ...]] = ()
    # True: `__init__` sets `self.config` itself, to keywords that rebuild the same architecture without the
    # arguments it was called with (OpenAIDiscreteVAE and VQGanVAE record sizes read from files, not the paths)
    RECORDS_OWN_CONFIG: ClassVar[bool] = False
    config: Dict[str, Any]

    def __init_subclass__(cls, register: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _recording(vars(cls)["__init__"])  # type: ignore[method-assign]
        if register:
            MODEL_CLASSES[cls.__name__] = cls

    def save_pretrained(self, directory: PathOrStr) -> Path:
        """Write this model to `directory` as config.json + model.safetensors."""
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: PathOrStr, map_location: Union[str, torch.device, None] = None, *,
                        allow_nonfinite: bool = False) -> Any:
        """Rebuild a model of this class from a directory written by `save_pretrained` (NaN/inf weights refused
        unless `allow_nonfinite`)."""
        return from_pretrained(cls, directory, map_location=map_location, allow_nonfinite=allow_nonfinite)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model (config, safetensors, a generated model card) to the Hub repo `repo_id`; see
        `dalle_core.hub.push_to_hub` for the keywords (token, private, trained_on, scores, ...)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


def _class_name(cls: type) -> str:
    """The registered model class `cls` is or derives from (so subclasses save as their base)."""
    for base in cls.__mro__:
        if MODEL_CLASSES.get(base.__name__) is base:
            return base.__name__
    raise TypeError(f"expected a dalle_core model class ({', '.join(MODEL_CLASSES)}), got {cls.__name__}")


def describe(model: nn.Module) -> Dict[str, Any]:
    """{"class", "config"} of `model`, with one such entry per module argument (a DALLE's "vae")."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no `config` dict of constructor keywords to save")
    doc = {"class": _class_name(type(model)), "config": config}
    for name in getattr(type(model), "MODULE_ARGS", ()):
        doc[name] = describe(getattr(model, name))
    return doc


def build_like(model: nn.Module) -> nn.Module:
    """A new model of the same class and config as `model` (fresh random weights; its module arguments rebuilt
    the same way), on `model`'s device."""
    if not isinstance(getattr(model, "config", None), dict):
        raise TypeError(f"expected a dalle_core model with a `config` dict, got {type(model).__name__}")
    modules = {name: build_like(getattr(model, name)) for name in getattr(type(model), "MODULE_ARGS", ())}
    copy = type(model)(**model.config, **modules)
    first = next(model.parameters(), None)
    return copy if first is None else copy.to(first.device)


def save_pretrained(model: nn.Module, directory: PathOrStr) -> Path:
    """Write `model` to `directory` as config.json + model.safetensors, atomically; returns the directory."""
    directory = Path(directory)
    doc: Dict[str, Any] = {"format_version": FORMAT_VERSION, "dalle_core_version": __version__, **describe(model)}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{type(model).__name__}.config must be JSON-serialisable to be saved: {e}") from e
    directory.mkdir(parents=True, exist_ok=True)
    # config.json first, weights last: until the weights land, their header still describes the old ones
    with atomic_files(directory / CONFIG_NAME, directory / WEIGHTS_NAME) as (config_tmp, weights_tmp):
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


def _builder(doc: Dict[str, Any], cls: Optional[type], names: List[str], path: Path,
             prefix: str = "") -> Tuple[str, Callable[[], nn.Module]]:
    """The class name and a function building the model `doc` describes (its module arguments from their own
    entries), once its config passed the cheap checks: types of size keys, and layer counts against the number
    of the file's tensors (`names`) that belong to it rather than to a module argument."""
    name = doc.get("class")
    where = f"{path}" + (f" (entry {prefix[:-1]!r})" if prefix else "")
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"{where}: unknown class {name!r} (expected one of {', '.join(MODEL_CLASSES)})")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{where}: expected a 'config' object of {name} keywords")
    if cls is not None and _class_name(cls) != name:
        raise CheckpointError(f"{path}: holds a {name}, not a {_class_name(cls)}; load it with {name}.from_pretrained")
    cls = cls or MODEL_CLASSES[name]
    kwargs = with_legacy_config(cls, doc["config"])
    builders: Dict[str, Callable[[], nn.Module]] = {}
    own = [n for n in names if n.startswith(prefix)]
    for arg in getattr(cls, "MODULE_ARGS", ()):
        if not isinstance(doc.get(arg), dict):
            raise CheckpointError(f"{where}: cannot build a {name} from its config: it needs a {arg!r} entry "
                                  "{'class': ..., 'config': {...}}")
        _, builders[arg] = _builder(doc[arg], None, names, path, prefix + arg + ".")
        own = [n for n in own if not n.startswith(prefix + arg + ".")]
    check_config(name, kwargs, len(own), path)

    def build() -> nn.Module:
        return cls(**kwargs, **{arg: b() for arg, b in builders.items()})

    return name, build


def from_pretrained(cls: Optional[type], directory: PathOrStr, map_location: Union[str, torch.device, None] = None,
                    *, allow_nonfinite: bool = False) -> nn.Module:
    """Rebuild the model saved in `directory` (of class `cls`, or whichever it records when None), in eval mode;
    NaN or infinite weights raise CheckpointError unless `allow_nonfinite`. `directory` may be a Hugging Face
    Hub repo id ("user/repo", see `dalle_core.hub.resolve`) when no such local folder exists."""
    from .hub import resolve

    directory = resolve(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing (save_pretrained writes {CONFIG_NAME} and {WEIGHTS_NAME})")
    text = read_text(config_path, MAX_CONFIG_BYTES, what="checkpoint config", error=CheckpointError)
    doc, where = _parse_doc(text, config_path), config_path
    expected, metadata = _read_header(weights_path)
    if _CONFIG_KEY in metadata:  # the weights' own config wins (see the module docstring)
        header = _parse_doc(metadata[_CONFIG_KEY], weights_path)
        keys = (set(header) | set(doc)) - {"format_version", "dalle_core_version"}
        if any(header.get(k) != doc.get(k) for k in keys):
            warnings.warn(f"{config_path} disagrees with the config stored in {weights_path} (a save interrupted "
                          "between its two renames, or a hand edit); building the model the weights were saved "
                          "with", UserWarning, stacklevel=3)
            doc, where = header, weights_path
    name, build = _builder(doc, cls, list(expected), where)
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
    state = {"format_version": FORMAT_VERSION, "dalle_core_version": __version__, "step": step,
             "optimizer": _state_dict_of("optimizer", optimizer), "scheduler": _state_dict_of("scheduler", scheduler),
             "ema": _state_dict_of("ema", ema), "rng": _get_rng() if rng else None,
             "data_state": data_state, "extra": extra}
    tensors: Dict[str, Tensor] = {}
    text = json.dumps(_flatten(state, "", tensors))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_files(directory / TRAINING_STATE_NAME) as (tmp,):
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
    check_training_state(state, path, targets)
    for name, obj in targets.items():
        try:
            obj.load_state_dict(state[name])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: the saved {name} state does not fit the {name} given: {e}") from e
    if state.get("rng") is not None:  # last, so that nothing above consumes the restored streams
        _set_rng(state["rng"])
    return {"step": state["step"], "data_state": state.get("data_state"), "extra": state.get("extra")}
