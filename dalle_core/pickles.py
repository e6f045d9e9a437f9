"""Reading other libraries' pickled checkpoints (`torch.save` zip files) as data: nothing in them is imported or run.

OpenAI's dVAE ships as whole pickled modules (`encoder.pkl`, `decoder.pkl`) and taming-transformers' VQGANs as
Lightning checkpoints whose "callbacks" entry is keyed by a Lightning class. `torch.load(weights_only=True)`
refuses both, and `weights_only=False` would import those packages and run whatever the pickle names.

`read_pickled(path)` unpickles with its own `find_class`: tensors (rebuilt here from the zip's raw storage records,
each checked against its declared size and dtype) and plain containers come back as themselves; every other
class or function the pickle names comes back as a `Pickled` record of its name, its call arguments and its state
(for a pickled `nn.Module`, its `__dict__`: `_parameters`, `_buffers`, `_modules`, plain attributes). Nothing is
imported, constructed or called on the file's behalf, so a pickle whose `__reduce__` would run a command only
produces a record. `module_tensors(record)` flattens a pickled module's parameters and buffers into a state dict.

Only the zip format (`torch.save` since torch 1.6) is read: the legacy format allocates storages of the sizes the
pickle declares before reading them. Entries must be stored uncompressed (as torch writes them) and add up to at
most `max_bytes`.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .files import check_regular_file

__all__ = ["Pickled", "read_pickled", "module_tensors", "UnsafePickleError", "MAX_PICKLE_BYTES"]

MAX_PICKLE_BYTES = 2 * 2**30  # OpenAI's decoder.pkl is ~0.2 GB, taming's largest VQGAN checkpoints ~1 GB
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class UnsafePickleError(ValueError):
    """A pickled checkpoint that cannot be read as data (not a torch zip file, inconsistent tensors, too large)."""


class Pickled:
    """What a pickle built from a class or function it named: the name, the call's arguments, the state it set.

    Never a live object of that class: `name` is "module.qualname" as written in the file.
    """

    def __init__(self, name: str, args: Tuple[Any, ...] = ()) -> None:
        self.name, self.args, self.state = name, args, None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: record, do not apply
        self.state = state

    def __repr__(self) -> str:
        return f"Pickled({self.name!r})"


class _StorageType:
    """Stands for torch.<X>Storage in a storage reference: only its dtype is used."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _factory(name: str) -> Any:
    """A class-like callable that records calls, construction (`cls.__new__(cls, ...)`) and state as `Pickled`."""

    class Record(Pickled):
        def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
            obj = object.__new__(cls)
            Pickled.__init__(obj, name, args)
            return obj

        def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE calls the class: already recorded
            pass

    Record.__name__ = Record.__qualname__ = name.rsplit(".", 1)[-1]
    return Record


def _rebuild_tensor(storage: Tensor, offset: int, size: Any, stride: Any, *rest: Any) -> Tensor:
    """torch._utils._rebuild_tensor_v2, checked: the view must lie inside its storage."""
    if not isinstance(storage, Tensor):
        raise UnsafePickleError(f"a tensor refers to {type(storage).__name__}, not a storage record")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or int(offset) < 0 or any(s < 0 for s in size + stride):
        raise UnsafePickleError(f"a tensor has an invalid layout: size {size}, stride {stride}, offset {offset}")
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else int(offset) - 1
    if last >= storage.numel():
        raise UnsafePickleError(f"a tensor of size {size} reaches element {last} of a storage of {storage.numel()}")
    return storage.as_strided(size, stride, int(offset))


def _rebuild_parameter(data: Tensor, requires_grad: Any = False, *rest: Any) -> Tensor:
    """torch._utils._rebuild_parameter(_with_state): the data only (no hooks, no state)."""
    if not isinstance(data, Tensor):
        raise UnsafePickleError(f"a parameter holds {type(data).__name__}, not a tensor")
    return data


def _size(dims: Any) -> torch.Size:
    return torch.Size(tuple(int(d) for d in dims))


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch._tensor._rebuild_from_type_v2 (tensor subclasses): the plain tensor its inner rebuild makes."""
    return func(*args) if func in (_rebuild_tensor, _rebuild_parameter) else Pickled("tensor subclass", args)


_SAFE = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _size,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, records: Dict[str, zipfile.ZipInfo], archive: zipfile.ZipFile, prefix: str,
                 where: str) -> None:
        super().__init__(io.BytesIO(data))
        self.records, self.archive, self.prefix, self.where = records, archive, prefix, where
        self.storages: Dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return _SAFE.get((module, name)) or _factory(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Tensor:
        """('storage', storage type, key, location, numel) -> that zip record as a flat tensor of its dtype."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise UnsafePickleError(f"{self.where}: unexpected persistent reference {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            info = self.records.get(f"{self.prefix}data/{key}")
            if info is None:
                raise UnsafePickleError(f"{self.where}: the pickle refers to storage {key!r}, which the file lacks")
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            expected = numel if storage_type.name == "UntypedStorage" else numel * itemsize
            if info.file_size != expected:
                raise UnsafePickleError(f"{self.where}: storage {key!r} declares {expected} bytes but holds "
                                        f"{info.file_size}")
            data = bytearray(self.archive.read(info))
            flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            self.storages[key] = flat.view(storage_type.dtype) if storage_type.dtype != torch.uint8 else flat
        return self.storages[key]


def read_pickled(path: Union[str, Path], *, what: str = "pickled checkpoint",
                 max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """The object a `torch.save` zip file holds, read as data (see the module docstring); UnsafePickleError or
    FileNotFoundError naming the file and what was expected otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    check_regular_file(path, max_bytes, what=what, error=UnsafePickleError)
    if not zipfile.is_zipfile(path):
        raise UnsafePickleError(f"{path}: not a torch.save zip file; expected a {what} written by torch >= 1.6 "
                                "(the legacy format is not read: load it with that torch and save it again)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnsafePickleError(f"{path}: a damaged zip file ({err}); expected a {what}") from None
    with archive:
        infos = archive.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > max_bytes:
            raise UnsafePickleError(f"{path}: expected a torch.save file (entries stored uncompressed, at most "
                                    f"{max_bytes} bytes in all)")
        pickles = [i.filename for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1:
            raise UnsafePickleError(f"{path}: expected one <name>/data.pkl record in a torch.save file, found "
                                    f"{len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in archive.namelist() else b"little"
        if byteorder != b"little":
            raise UnsafePickleError(f"{path}: a big-endian torch.save file; only little-endian files are read")
        unpickler = _Unpickler(archive.read(pickles[0]), {i.filename: i for i in infos}, archive, prefix, str(path))
        try:
            return unpickler.load()
        except UnsafePickleError:
            raise
        except Exception as err:  # noqa: BLE001 - any malformed pickle: re-raised naming the file
            raise UnsafePickleError(f"{path}: could not be read as a {what}: {type(err).__name__}: {err}") from None


def module_tensors(record: Any, where: str = "pickled module") -> Dict[str, Tensor]:
    """The state dict of a pickled `nn.Module` record: its `_parameters` and `_buffers`, through `_modules`."""
    out: Dict[str, Tensor] = {}

    def walk(obj: Any, prefix: str, depth: int) -> None:
        state = obj.state if isinstance(obj, Pickled) else None
        if not isinstance(state, dict) or depth > 64:
            raise UnsafePickleError(f"{where}: {prefix or 'the root'} is not a pickled nn.Module")
        for group in ("_parameters", "_buffers"):
            for name, tensor in (state.get(group) or {}).items():
                if tensor is None:
                    continue
                if not isinstance(tensor, Tensor):
                    raise UnsafePickleError(f"{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
                out[prefix + name] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(record, "", 0)
    return out


def attribute(record: Any, name: str, kind: type, where: str) -> Any:
    """A plain attribute of a pickled object's state, checked to be of `kind`."""
    state: Optional[dict] = record.state if isinstance(record, Pickled) else None
    value = state.get(name) if isinstance(state, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UnsafePickleError(f"{where}: expected attribute {name!r} ({kind.__name__}), got {value!r:.40}")
    return value
