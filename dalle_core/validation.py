"""Checks that a checkpoint fits what it is loaded into, made before anything is allocated or overwritten.

A model config is checked in three steps, cheapest first: the types of its size keys, then its layer counts
against the number of tensors in the file (each layer or block holds at least one, so a `depth` of 10**6 with a
few hundred tensors is refused before 10**6 modules are made), then the model is built on the meta device (no
memory) and its state dict's names and shapes are compared with the file's. Only then is it built for real.
"""
from __future__ import annotations

import random
import warnings
from os import PathLike
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .utils import MAX_BUFFER_BYTES, check_int

Expected = Mapping[str, Tuple[Tuple[int, ...], bool]]  # tensor name -> (shape, is floating point)
Where = Union[str, PathLike]

# keys counting layers or blocks: each one holds at least one tensor of the state dict (every other size is
# checked by the constructor itself, on the meta device, before anything is allocated)
# (models not listed bound their sizes in their own constructors)
LAYER_KEYS = {"DALLE": ("depth",), "DiscreteVAE": ("num_layers", "num_resnet_blocks"),
              "CLIP": ("text_enc_depth", "visual_enc_depth"), "DiffusionPrior": ("depth",),
              "Unet": ("num_resnet_blocks",)}


def check_config(name: str, config: Any, n_tensors: int, where: Where) -> None:
    """Refuse (CheckpointError naming `where` and the key) layer counts that are not ints or that exceed the
    `n_tensors` tensors the weights hold, before a model that large is built even on the meta device."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: the {name} config must be a mapping of keywords, got {type(config).__name__}")
    for key in config:
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: {name} config keys must be str, got {key!r}")
    try:
        for key in LAYER_KEYS.get(name, ()):
            if key in config:
                check_int(f"{name} config key {key!r}", config[key], minimum=0)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    layers = {key: config[key] for key in LAYER_KEYS.get(name, ()) if key in config}
    if sum(layers.values()) > n_tensors:
        described = ", ".join(f"{k}={v}" for k, v in layers.items())
        raise CheckpointError(f"{where}: the {name} config asks for {described}, but the weights hold only "
                              f"{n_tensors} tensors (each layer or block has at least one): config and weights "
                              "do not match")


def _call(build: Callable[[], nn.Module], name: str, where: Where) -> nn.Module:
    try:
        return build()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build from a file's config is the file's fault
        raise CheckpointError(f"{where}: cannot build a {name} from its config: {type(e).__name__}: {e}") from e


def compare_state(model: nn.Module, expected: Expected, where: Where) -> None:
    """Refuse (CheckpointError naming `where`) when `model`'s state dict names or shapes differ from `expected`."""
    name = type(model).__name__
    state = model.state_dict()
    missing = sorted(set(state) - set(expected))
    unexpected = sorted(set(expected) - set(state))
    if missing or unexpected:
        raise CheckpointError(f"{where}: does not match the {name} its config builds: "
                              f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, t in state.items():
        shape, floating = expected[key]
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(shape)} but the {name} its config "
                                  f"builds expects {tuple(t.shape)}: config and weights do not match")
        if t.is_floating_point() and not floating:
            raise CheckpointError(f"{where}: tensor {key!r} is not floating point, but the {name} its config "
                                  "builds has a floating-point tensor there")


def build_checked(build: Callable[[], nn.Module], name: str, expected: Expected, where: Where,
                  weights: Optional[Where] = None) -> nn.Module:
    """`build()` run once on the meta device and compared with `expected` (the tensors of file `weights`, or of
    `where`), then run for real; build failures name `where`."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # the real build below warns once
        meta = _call(build, name, where)
    compare_state(meta, expected, weights if weights is not None else where)
    persistent = set(meta.state_dict())
    tables = sum(b.numel() * b.element_size() for k, b in meta.named_buffers() if k not in persistent)
    if tables > MAX_BUFFER_BYTES:
        raise CheckpointError(f"{where}: the {name} its config describes would build {tables / 2**30:.1f} GiB of "
                              f"attention masks and position tables (at most {MAX_BUFFER_BYTES / 2**30:.0f} GiB "
                              "allowed); is the image or text length in the config right?")
    return _call(build, name, where)


def check_finite(tensors: Mapping[str, Tensor], where: Where, allow_nonfinite: bool = False) -> None:
    """Refuse (CheckpointError naming `where` and the tensor) NaN or infinite values unless `allow_nonfinite`."""
    if allow_nonfinite:
        return
    for key, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        try:
            finite = torch.isfinite(t)
        except (RuntimeError, NotImplementedError):  # float8 and other dtypes without isfinite kernels
            finite = torch.isfinite(t.to(torch.float32))
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(f"{where}: tensor {key!r} holds {bad} NaN or infinite values (a diverged run?); "
                                  "expected finite weights. Pass allow_nonfinite=True to load it anyway")


# --- training state -------------------------------------------------------------------------------------------

# per-parameter state an optimizer kind keeps, for the kinds torch ships that one can tell apart by it
_OPTIMIZER_STATE_KEYS = (
    ("AdamW", {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}), ("Adam", {"step", "exp_avg", "exp_avg_sq",
                                                                                "max_exp_avg_sq"}),
    ("SGD", {"momentum_buffer"}), ("RMSprop", {"step", "square_avg", "momentum_buffer", "grad_avg"}),
    ("Adagrad", {"step", "sum"}),
)
_PARAM_SHAPED = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg", "sum"}


def check_optimizer_state(saved: Any, optimizer: Any, where: Where) -> None:
    """Refuse (CheckpointError naming `where`) an optimizer state saved for another kind of optimizer (other
    hyper-parameter names or per-parameter state), other parameter groups, or state tensors of other shapes."""
    kind = type(optimizer).__name__

    def refuse(detail: str) -> CheckpointError:
        return CheckpointError(f"{where}: the saved optimizer state does not fit the {kind} given: {detail}")

    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) or \
            not isinstance(saved.get("state"), dict):
        raise refuse("expected a dict with 'state' and 'param_groups'")
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        raise refuse(f"it has {len(saved['param_groups'])} parameter groups, the {kind} has {len(groups)}")
    params: Dict[Any, Tensor] = {}
    for i, (old, new) in enumerate(zip(saved["param_groups"], groups)):
        if not isinstance(old, dict) or not isinstance(old.get("params"), list):
            raise refuse(f"parameter group {i} must be a dict with a 'params' list")
        unknown = sorted(set(old) - set(new) - {"params", "param_names"})
        if unknown:
            raise refuse(f"it has hyper-parameters {unknown} that a {kind} does not (saved from another kind of "
                         "optimizer?)")
        if len(old["params"]) != len(new["params"]):
            raise refuse(f"parameter group {i} has {len(old['params'])} parameters, the {kind} has "
                         f"{len(new['params'])}")
        try:
            params.update(zip(old["params"], new["params"]))
        except TypeError:
            raise refuse(f"parameter group {i} lists parameter ids that are not numbers") from None
    allowed = next((keys for name, keys in _OPTIMIZER_STATE_KEYS
                    if any(c.__name__ == name and c.__module__.startswith("torch.optim")
                           for c in type(optimizer).__mro__)), None)
    for pid, entry in saved["state"].items():
        if pid not in params or not isinstance(entry, dict):
            raise refuse(f"it holds state for parameter {pid!r}, which is in no parameter group")
        if allowed is not None and set(entry) - allowed:
            raise refuse(f"its per-parameter state has {sorted(set(entry) - allowed)}, which a {kind} does not keep "
                         "(saved from another kind of optimizer?)")
        for key in sorted(_PARAM_SHAPED & set(entry)):
            value, shape = entry[key], tuple(params[pid].shape)
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise refuse(f"state {key!r} of parameter {pid!r} is {got}, expected a tensor of the parameter's "
                             f"shape {shape}")


def _mismatch(saved: Any, current: Any, at: str) -> Optional[str]:
    """Where a saved state's structure differs from `current` (an object's own state_dict()), or None: every
    tensor must keep its shape, dicts hold no unknown keys (a state dict of tensors all of its own)."""
    where = at or "the state"
    if isinstance(current, Tensor):
        if not isinstance(saved, Tensor) or saved.shape != current.shape:
            got = tuple(saved.shape) if isinstance(saved, Tensor) else type(saved).__name__
            return f"{where} is {got}, expected a tensor of shape {tuple(current.shape)}"
        return None
    if isinstance(current, Mapping):
        if not isinstance(saved, Mapping):
            return f"{where} is a {type(saved).__name__}, expected a dict"
        unknown = [k for k in saved if k not in current]
        if unknown:
            return f"{where} has {unknown[:5]}, which the object given does not (saved from another kind?)"
        missing = [k for k in current if k not in saved]
        if missing and all(isinstance(v, Tensor) for v in current.values()):
            return f"{where} lacks the tensors {missing[:5]}"
        return next((m for k in saved if (m := _mismatch(saved[k], current[k], f"{at}.{k}" if at else str(k)))), None)
    if isinstance(current, (list, tuple)) and any(isinstance(v, Tensor) for v in current):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            return f"{where} must be a list of {len(current)} entries"
        return next((m for i, (a, b) in enumerate(zip(saved, current)) if (m := _mismatch(a, b, f"{where}[{i}]"))),
                    None)
    return None


def check_training_state(state: Dict[str, Any], path: Where, targets: Dict[str, Any]) -> None:
    """Refuse (CheckpointError naming `path`) a training state whose step, optimizer, scheduler, EMA or RNG
    entries would not restore into `targets`; nothing is changed."""
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be a non-negative int, got {step!r}")
    for key in ("data_state", "extra"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a dict or null, got {type(state[key]).__name__}")
    for name, obj in targets.items():
        if state.get(name) is None:
            raise CheckpointError(f"{path}: holds no {name} state, but a {name} was given to restore")
        if not isinstance(state[name], dict):
            raise CheckpointError(f"{path}: the saved {name} state must be a dict, got {type(state[name]).__name__}")
        if isinstance(obj, torch.optim.Optimizer):
            check_optimizer_state(state[name], obj, path)
        elif callable(getattr(obj, "state_dict", None)):  # a scheduler, an EMA: the same structure and shapes
            mismatch = _mismatch(state[name], obj.state_dict(), "")
            if mismatch:
                raise CheckpointError(f"{path}: the saved {name} state does not fit the {type(obj).__name__} given: "
                                      f"{mismatch}")
    if state.get("rng") is not None:
        check_rng_state(state["rng"], path)


def check_rng_state(state: Any, where: Where) -> None:
    """Refuse (CheckpointError naming `where` and the entry) RNG states that would fail to restore, by restoring
    each into a private generator first."""
    if not isinstance(state, dict) or "python" not in state or "torch" not in state:
        raise CheckpointError(f"{where}: the saved 'rng' entry must be a dict with 'python' and 'torch' states")
    try:
        random.Random().setstate(state["python"])
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: the saved rng.python state is not a Python random state: {e}") from None
    expected = torch.get_rng_state()
    for name, value in [("torch", state["torch"])] + [(f"cuda[{i}]", v) for i, v in
                                                     enumerate(_as_list(state.get("cuda", []), where))]:
        if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.ndim != 1:
            got = f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else \
                type(value).__name__
            raise CheckpointError(f"{where}: the saved rng.{name} state must be a 1-D uint8 tensor, got {got}")
        if name == "torch":
            if value.shape != expected.shape:
                raise CheckpointError(f"{where}: the saved rng.torch state has shape {tuple(value.shape)}, "
                                      f"expected {tuple(expected.shape)}")
            try:
                torch.Generator().set_state(value)
            except RuntimeError as e:
                raise CheckpointError(f"{where}: the saved rng.torch state is not a CPU generator state: {e}") from None
    if "numpy" in state:
        _check_numpy_rng(state["numpy"], where)


def _as_list(value: Any, where: Where) -> list:
    if not isinstance(value, (list, tuple)):
        raise CheckpointError(f"{where}: the saved rng.cuda state must be a list of tensors, "
                              f"got {type(value).__name__}")
    return list(value)


def _check_numpy_rng(value: Any, where: Where) -> None:
    try:
        import numpy as np
    except ImportError:
        return
    try:
        name, keys, pos, has_gauss, gauss = value
        if not isinstance(keys, list) or len(keys) != 624:
            raise ValueError(f"expected 624 keys, got {type(keys).__name__}")
        np.random.RandomState().set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: the saved rng.numpy state is not a NumPy random state: {e}") from None
