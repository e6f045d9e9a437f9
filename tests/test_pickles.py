"""dalle_core.pickles reads torch.save files as data: tensors come back, nothing named in the file is run."""
from __future__ import annotations

import os
import zipfile
from collections import OrderedDict

import pytest
import torch

from dalle_core.pickles import Pickled, UnsafePickleError, module_tensors, read_pickled


class RunsACommand:
    """Unpickling this with pickle.load would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Holder(torch.nn.Module):  # pickled whole, as OpenAI's dVAE files are
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.register_buffer("steps", torch.arange(4))
        self.width = 7


def test_tensors_containers_and_modules_come_back_as_data(tmp_path):
    state = OrderedDict(a=torch.randn(3, 4), b=torch.arange(6).view(2, 3).t(), c=torch.randn(2, 2).half())
    torch.save({"state_dict": state, "epoch": 3, "names": ["x", ("y", 1.5)], "module": Holder()}, tmp_path / "f.pt")
    loaded = read_pickled(tmp_path / "f.pt")
    assert loaded["epoch"] == 3 and loaded["names"] == ["x", ("y", 1.5)]
    for key, tensor in state.items():  # views and dtypes kept
        assert torch.equal(loaded["state_dict"][key], tensor) and loaded["state_dict"][key].dtype == tensor.dtype
    module = loaded["module"]
    assert isinstance(module, Pickled) and module.name.endswith("Holder") and module.state["width"] == 7
    tensors = module_tensors(module)
    assert set(tensors) == {"conv.weight", "conv.bias", "steps"} and torch.equal(tensors["steps"], torch.arange(4))


def test_a_pickle_that_would_run_a_command_only_produces_a_record(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {RunsACommand(marker): 1}}, tmp_path / "evil.ckpt")
    loaded = read_pickled(tmp_path / "evil.ckpt")
    assert not marker.exists()
    (record,) = loaded["callbacks"]
    assert isinstance(record, Pickled) and record.name in ("posix.system", "os.system", "nt.system")
    assert record.args == (f"touch {marker}",)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"\x80\x02}q\x00."), "not a torch.save zip"),  # a plain (legacy-style) pickle
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a torch.save zip|damaged"),
])
def test_files_that_are_not_torch_zip_files_are_refused(tmp_path, make, message):
    path = tmp_path / "bad.pkl"
    make(path)
    with pytest.raises(UnsafePickleError, match=message):
        read_pickled(path)


def rewrite_zip(src, dst, change):
    """Copy zip `src` to `dst`, passing every (name, data) through `change` (which may return None to drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            item = change(info.filename, zin.read(info))
            if item is not None:
                zout.writestr(item[0], item[1], compress_type=item[2] if len(item) > 2 else zipfile.ZIP_STORED)


def test_storages_whose_size_disagrees_with_the_pickle_or_are_missing_are_refused(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "ok.pt")
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "short.pt",
                lambda n, d: (n, d[:40]) if n.endswith("data/0") else (n, d))
    with pytest.raises(UnsafePickleError, match="declares 400 bytes but holds 40"):
        read_pickled(tmp_path / "short.pt")
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "missing.pt", lambda n, d: None if n.endswith("data/0") else (n, d))
    with pytest.raises(UnsafePickleError, match="lacks"):
        read_pickled(tmp_path / "missing.pt")
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "deflated.pt", lambda n, d: (n, d, zipfile.ZIP_DEFLATED))
    with pytest.raises(UnsafePickleError, match="uncompressed"):
        read_pickled(tmp_path / "deflated.pt")


def test_a_tensor_view_outside_its_storage_is_refused(tmp_path):
    torch.save({"w": torch.randn(4, 4)}, tmp_path / "ok.pt")

    def grow(name, data):  # the pickle says (4, 4); make it claim (40, 4) over the same 16 floats
        return (name, data.replace(b"K\x04K\x04\x86", b"K(K\x04\x86")) if name.endswith("data.pkl") else (name, data)

    rewrite_zip(tmp_path / "ok.pt", tmp_path / "big.pt", grow)
    with pytest.raises(UnsafePickleError, match="reaches element"):
        read_pickled(tmp_path / "big.pt")


def test_size_limit_fifo_and_missing_files(tmp_path):
    torch.save({"w": torch.randn(1000)}, tmp_path / "ok.pt")
    with pytest.raises(UnsafePickleError):
        read_pickled(tmp_path / "ok.pt", max_bytes=1000)
    with pytest.raises(FileNotFoundError):
        read_pickled(tmp_path / "nothing.pt")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError):  # refused before anything reads (and blocks on) it
        read_pickled(tmp_path / "fifo")
