"""Hostile checkpoint, reference-checkpoint and tokenizer files: every file a user is handed is data that must
never run code, hang or balloon memory. Covers memory bombs in configs (from_pretrained and the DALLE-pytorch
loaders refuse a config that does not fit its weights before allocating), JSON depth and size (config.json, the
weights header, the training-state header, FIFOs and /dev/zero), non-finite weights (refused unless
allow_nonfinite=True), training state (validated whole before anything is restored; optimizer kinds not mixed),
reference checkpoints via interop (missing/extra/misshapen weights, wrongly typed hparams) and tokenizer files
(binary, Latin-1, truncated, missing keys, FIFOs, oversized). Every case checks the error type and that the
message names the file.

79 test cases in all (parametrised cases counted one by one; `test_hostile_counts.py` keeps the number true).
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import safetensors
import safetensors.torch
import torch

from dalle_core import CLIP, DALLE, CheckpointError, DiscreteVAE, from_pretrained
from dalle_core.pretrained import MAX_CONFIG_BYTES, load_training_state, save_training_state
from dalle_core.files import check_regular_file, read_json
from dalle_core.interop import load_dalle_pytorch, load_dalle_pytorch_clip, load_dalle_pytorch_vae
from dalle_core.tokenizers import MAX_TOKENIZER_BYTES, HugTokenizer, Tokenizer, WordTokenizer, YttmTokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEEP = "[" * 100_000 + "]" * 100_000
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
needs_dev_zero = pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this platform")


def names(path: Path) -> str:
    """A `match=` pattern that requires the file's path in the message."""
    return re.escape(str(path))


def tiny_vae() -> DiscreteVAE:
    return DiscreteVAE(image_size=8, num_tokens=16, codebook_dim=8, num_layers=1, hidden_dim=8)


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vae":
        return tiny_vae()
    if kind == "dalle":
        return DALLE(dim=16, vae=tiny_vae(), num_text_tokens=20, text_seq_len=4, depth=2, heads=2, dim_head=16)
    return CLIP(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=20, text_enc_depth=1, text_seq_len=4,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=8, visual_patch_size=4)


def rewrite(directory: Path, edit_doc: Callable[[dict], Any] = None, edit_tensors: Callable[[dict], Any] = None,
            header_text: Callable[[str], str] = None, config_json: bool = True) -> None:
    """Edit a saved model's config (in config.json and the weights header alike), tensors or raw header text."""
    path = directory / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if edit_doc is not None:
        doc = json.loads(metadata["dalle_core_config"])
        edit_doc(doc)
        metadata["dalle_core_config"] = json.dumps(doc)
        if config_json:
            (directory / "config.json").write_text(json.dumps(doc))
    if header_text is not None:
        metadata["dalle_core_config"] = header_text(metadata["dalle_core_config"])
    if edit_tensors is not None:
        edit_tensors(tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def saved_dalle(tmp_path) -> Path:
    tiny("dalle").save_pretrained(tmp_path / "dalle")
    return tmp_path / "dalle"


def reference_file(tmp_path: Path, name: str = "dalle_ckpt_train_dalle", **changes) -> Path:
    """A committed DALLE-pytorch checkpoint, with `changes` applied, saved again (weights only) under tmp_path."""
    ckpt = torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)
    if name != "dalle_ckpt_train_dalle":  # a parity case: constructor keywords and a state dict
        ckpt = {"hparams": ckpt["config"], "weights": ckpt["state_dict"]}
    for key, change in changes.items():
        ckpt[key] = change(ckpt[key]) if callable(change) else change
    path = tmp_path / f"{name}_edited.pt"
    torch.save(ckpt, path)
    return path


# --- memory bombs in configs --------------------------------------------------------------------------------

# (model, config key ('vae.' for a DALLE's VAE), value, what the message says)
CONFIG_BOMBS = [
    ("dalle", "dim", 10**7, "has shape"),
    ("dalle", "depth", 10**6, "depth=1000000"),
    ("dalle", "vae.image_size", 2**16, "GiB"),
    ("dalle", "conv_kernel_size", 10**5, "conv_kernel_size=100000"),
    ("vae", "num_layers", 10**6, "num_layers=1000000"),
    ("vae", "hidden_dim", 10**7, "has shape"),
    ("clip", "text_enc_depth", 10**6, "text_enc_depth=1000000"),
    ("clip", "dim_text", 10**7, "has shape"),
]


@pytest.mark.parametrize("kind,key,value,says", CONFIG_BOMBS, ids=[f"{c[0]}-{c[1]}" for c in CONFIG_BOMBS])
def test_config_bombs_are_refused_before_allocating(tmp_path, kind, key, value, says):
    tiny(kind).save_pretrained(tmp_path)

    def edit(doc: dict) -> None:
        (doc["vae"] if key.startswith("vae.") else doc)["config"][key.split(".")[-1]] = value

    rewrite(tmp_path, edit)
    with pytest.raises(CheckpointError, match=names(tmp_path)) as info:
        from_pretrained(None, tmp_path)
    assert says in str(info.value)


def test_config_json_bomb_without_a_header_config_is_refused(saved_dalle):
    path = saved_dalle / "model.safetensors"  # re-saved without the header's copy of the config
    with safetensors.safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    doc = json.loads((saved_dalle / "config.json").read_text())
    doc["config"]["dim"] = 10**7
    (saved_dalle / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=names(path) + ".*has shape"):
        DALLE.from_pretrained(saved_dalle)


# (loader, checkpoint entry, key, value, what the message says)
REFERENCE_BOMBS = [
    ("dalle", "hparams", "dim", 10**7, "has shape"),
    ("dalle", "hparams", "depth", 10**6, "depth=1000000"),
    ("dalle", "vae_params", "image_size", 2**16, "GiB"),
    ("vae", "hparams", "num_layers", 10**6, "num_layers=1000000"),
    ("vae", "hparams", "hidden_dim", 10**7, "has shape"),
    ("clip", "hparams", "visual_enc_depth", 10**6, "visual_enc_depth=1000000"),
]
LOADERS = {"dalle": load_dalle_pytorch, "vae": load_dalle_pytorch_vae}
FIXTURE_OF = {"dalle": "dalle_ckpt_train_dalle", "vae": "vae_tiny", "clip": "clip_tiny"}


@pytest.mark.parametrize("kind,entry,key,value,says", REFERENCE_BOMBS, ids=[f"{c[0]}-{c[2]}" for c in REFERENCE_BOMBS])
def test_reference_checkpoint_bombs_are_refused_before_allocating(tmp_path, kind, entry, key, value, says):
    if kind == "clip":  # a CLIP state dict: the keywords come from the caller
        path = reference_file(tmp_path, "clip_tiny")
        config = dict(torch.load(FIXTURES / "clip_tiny.pt", weights_only=True)["config"], **{key: value})
        call = lambda: load_dalle_pytorch_clip(path, **config)  # noqa: E731
    else:
        path = reference_file(tmp_path, FIXTURE_OF[kind], **{entry: lambda d: {**d, key: value}})
        call = lambda: LOADERS[kind](path)  # noqa: E731
    with pytest.raises(CheckpointError, match=names(path)) as info:
        call()
    assert says in str(info.value)


# --- JSON depth and size ------------------------------------------------------------------------------------


def test_deeply_nested_config_json_is_refused(saved_dalle):
    (saved_dalle / "config.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match=names(saved_dalle / "config.json") + ".*nested 100000 levels"):
        from_pretrained(None, saved_dalle)


def test_deeply_nested_header_config_is_refused(saved_dalle):
    rewrite(saved_dalle, header_text=lambda text: text[:-1] + ', "x": ' + DEEP + "}")
    with pytest.raises(CheckpointError, match=names(saved_dalle / "model.safetensors") + ".*nested"):
        from_pretrained(None, saved_dalle)


def test_deeply_nested_alias_table_is_refused(saved_dalle):
    path = saved_dalle / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(tensors, str(path), metadata={**metadata, "dalle_core_aliases": DEEP})
    with pytest.raises(CheckpointError, match=names(path) + ".*dalle_core_aliases.*nested"):
        from_pretrained(None, saved_dalle)


def test_oversized_config_json_is_refused_unread(saved_dalle):
    with open(saved_dalle / "config.json", "r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match=names(saved_dalle / "config.json") + ".*at most"):
        from_pretrained(None, saved_dalle)


@needs_fifo
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_fifo_in_a_checkpoint_is_refused_without_blocking(saved_dalle, name):
    (saved_dalle / name).unlink()
    os.mkfifo(saved_dalle / name)
    with pytest.raises(CheckpointError, match=names(saved_dalle / name) + ".*FIFO"):
        from_pretrained(None, saved_dalle)


@needs_dev_zero
def test_dev_zero_as_config_json_is_refused_unread(saved_dalle):
    (saved_dalle / "config.json").unlink()
    (saved_dalle / "config.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=names(saved_dalle / "config.json") + ".*character device"):
        from_pretrained(None, saved_dalle)


def test_deeply_nested_training_state_header_is_refused(tmp_path):
    save_training_state(tmp_path, step=1, rng=False)
    path = tmp_path / "training_state.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(path), metadata={"dalle_core_training_state": DEEP})
    with pytest.raises(CheckpointError, match=names(path) + ".*nested"):
        load_training_state(tmp_path)


@pytest.mark.parametrize("content", ["deep", "oversized", "not-utf8"])
def test_read_json_helper_bounds_depth_size_and_encoding(tmp_path, content):
    path = tmp_path / "doc.json"
    if content == "oversized":
        path.write_text("{}" + " " * 100)
    else:
        path.write_bytes(DEEP.encode() if content == "deep" else b'{"a": "caf\xe9"}')
    message = {"deep": "nested", "oversized": "at most 64", "not-utf8": "not UTF-8"}[content]
    with pytest.raises(ValueError, match=names(path) + ".*" + message):
        read_json(path, what="test document", max_bytes=64 if content == "oversized" else 2**20)


@needs_dev_zero
def test_check_regular_file_refuses_devices():
    with pytest.raises(ValueError, match="/dev/zero.*character device"):
        check_regular_file("/dev/zero", 1024, what="test document")


# --- non-finite weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_unless_allowed(saved_dalle, bad):
    rewrite(saved_dalle, edit_tensors=lambda t: t["to_logits.1.weight"].view(-1).__setitem__(3, bad))
    with pytest.raises(CheckpointError, match=names(saved_dalle / "model.safetensors") + ".*'to_logits.1.weight'"):
        DALLE.from_pretrained(saved_dalle)
    model = DALLE.from_pretrained(saved_dalle, allow_nonfinite=True)
    assert not torch.isfinite(model.to_logits[1].weight).all()


def poison(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    key = next(k for k, t in state.items() if t.is_floating_point())
    state = dict(state)
    state[key] = state[key].clone().fill_(float("nan"))
    return state


@pytest.mark.parametrize("kind", ["dalle", "vae", "clip"])
def test_non_finite_reference_weights_are_refused_unless_allowed(tmp_path, kind):
    path = reference_file(tmp_path, FIXTURE_OF[kind], weights=poison)
    config = torch.load(FIXTURES / "clip_tiny.pt", weights_only=True)["config"] if kind == "clip" else {}
    loader = {"dalle": load_dalle_pytorch, "vae": load_dalle_pytorch_vae, "clip": load_dalle_pytorch_clip}[kind]
    with pytest.raises(CheckpointError, match=names(path) + ".*NaN or infinite"):
        loader(path, **config)
    assert loader(path, allow_nonfinite=True, **config) is not None


# --- training state -----------------------------------------------------------------------------------------


def saved_state(tmp_path: Path, optimizer_kind: str = "adamw") -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=0.1) if optimizer_kind == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    model(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path, optimizer=optimizer, step=1)
    return tmp_path / "training_state.safetensors"


def edit_training_state(path: Path, edit_doc: Callable[[dict], Any] = None,
                        edit_tensors: Callable[[dict], Any] = None) -> None:
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(metadata["dalle_core_training_state"])
    if edit_doc is not None:
        edit_doc(doc)
    if edit_tensors is not None:
        edit_tensors(tensors)
    metadata["dalle_core_training_state"] = json.dumps(doc)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


# (name, edit of the header document, edit of the tensors, what the message says)
CORRUPT_STATES = {
    "rng-torch-dtype": (None, lambda t: t.__setitem__("rng.torch", t["rng.torch"].float()), "uint8"),
    "rng-torch-shape": (None, lambda t: t.__setitem__("rng.torch", t["rng.torch"][:100]), "shape"),
    "rng-python": (lambda d: d["rng"].__setitem__("python", {"__tuple__": [3, "x", None]}), None, "rng.python"),
    "rng-numpy": (lambda d: d["rng"].__setitem__("numpy", {"__tuple__": ["MT19937", [1, 2], 0, 0, 0.0]}), None,
                  "rng.numpy"),
    "rng-not-a-dict": (lambda d: d.__setitem__("rng", [1, 2]), None, "'rng'"),
    "step": (lambda d: d.__setitem__("step", "ten"), None, "'step'"),
    "misshapen-adam-state": (None, lambda t: t.__setitem__("optimizer.state.0.exp_avg", torch.zeros(6)),
                             "'exp_avg'"),
}


@pytest.mark.parametrize("case", list(CORRUPT_STATES))
def test_corrupt_training_state_changes_nothing_before_failing(tmp_path, case):
    path = saved_state(tmp_path)
    edit_doc, edit_tensors, says = CORRUPT_STATES[case]
    edit_training_state(path, edit_doc, edit_tensors)
    optimizer = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    before, rng_before, py_before = json.dumps(optimizer.state_dict(), default=str), torch.get_rng_state(), \
        random.getstate()
    with pytest.raises(CheckpointError, match=names(path) + ".*" + says):
        load_training_state(tmp_path, optimizer=optimizer)
    assert json.dumps(optimizer.state_dict(), default=str) == before and optimizer.param_groups[0]["lr"] == 0.5
    assert torch.equal(torch.get_rng_state(), rng_before) and random.getstate() == py_before


@pytest.mark.parametrize("saved,given", [("adamw", "sgd"), ("sgd", "adamw")])
def test_optimizer_state_of_another_kind_is_refused(tmp_path, saved, given):
    path = saved_state(tmp_path, saved)
    params = torch.nn.Linear(3, 2).parameters()
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9) if given == "sgd" else torch.optim.AdamW(params, lr=0.5)
    with pytest.raises(CheckpointError, match=names(path) + ".*another kind of optimizer"):
        load_training_state(tmp_path, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.5 and not optimizer.state


@pytest.mark.parametrize("part", ["ema", "scheduler"])
def test_ema_or_scheduler_state_that_does_not_fit_is_refused_before_restoring(tmp_path, part):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    if part == "ema":
        save_training_state(tmp_path, step=1, optimizer=optimizer,
                            ema=torch.optim.swa_utils.AveragedModel(torch.nn.Linear(4, 2)))
        target = torch.optim.swa_utils.AveragedModel(torch.nn.Linear(3, 2))
        says = r"module.weight is \(2, 4\)"
    else:
        save_training_state(tmp_path, step=1, optimizer=optimizer,
                            scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=3))
        target = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        says = "another kind"
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    before = json.dumps(target.state_dict(), default=str)
    with pytest.raises(CheckpointError, match=names(tmp_path / "training_state.safetensors") + ".*" + says):
        load_training_state(tmp_path, optimizer=fresh, **{part: target})
    assert fresh.param_groups[0]["lr"] == 0.5 and json.dumps(target.state_dict(), default=str) == before


# --- reference checkpoints via interop ----------------------------------------------------------------------

# (name, checkpoint changes, what the message says)
BAD_REFERENCES = {
    "missing-weight": ({"weights": lambda w: {k: v for k, v in w.items() if k != "to_logits.1.bias"}},
                       r"missing keys \['to_logits.1.bias'\]"),
    "extra-weight": ({"weights": lambda w: {**w, "surprise.weight": torch.zeros(2)}},
                     r"unexpected keys \['surprise.weight'\]"),
    "misshapen-weight": ({"weights": lambda w: {**w, "to_logits.1.bias": torch.zeros(3)}},
                         r"'to_logits.1.bias' has shape \(3,\)"),
    "weights-none": ({"weights": None}, "'weights' must be a dict"),
    "weight-not-a-tensor": ({"weights": lambda w: {**w, "to_logits.1.bias": [0.0]}}, r"weights\['to_logits.1.bias'\]"),
    "unknown-layer-key": ({"weights": lambda w: {**w, "transformer.layers.layers.0.0.fn.mystery": torch.zeros(1)}},
                          "unrecognised DALLE-pytorch transformer parameter"),
    "hparams-none": ({"hparams": None}, "'hparams' must be a dict"),
    "dim-str": ({"hparams": lambda h: {**h, "dim": "x"}}, "dim must be an int"),
    "depth-none": ({"hparams": lambda h: {**h, "depth": None}}, "'depth' must be an int"),
    "dim-list": ({"hparams": lambda h: {**h, "dim": [32]}}, "dim must be an int"),
    "dropout-str": ({"hparams": lambda h: {**h, "attn_dropout": "0.1"}}, "attn_dropout must be a real number"),
    "vae-params-list": ({"vae_params": [16, 2]}, "'vae_params' must be a dict"),
    "unknown-keyword": ({"hparams": lambda h: {**h, "dimm": 3}}, "unexpected keyword argument 'dimm'"),
}


@pytest.mark.parametrize("case", list(BAD_REFERENCES))
def test_bad_reference_checkpoints_name_the_file_and_the_key(tmp_path, case):
    changes, says = BAD_REFERENCES[case]
    path = reference_file(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=names(path) + ".*" + says):
        load_dalle_pytorch(path)


def test_reference_file_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=names(path) + ".*expected a DALLE-pytorch checkpoint"):
        load_dalle_pytorch_vae(path)


def test_overrides_of_the_wrong_type_name_the_key(tmp_path):
    path = reference_file(tmp_path)
    with pytest.raises(CheckpointError, match=names(path) + ".*heads must be an int"):
        load_dalle_pytorch(path, heads=2.5)


# --- tokenizer files ----------------------------------------------------------------------------------------

WORDS_JSON = '{"dalle_core_tokenizer": "WordTokenizer", "words": ["a", "cat"]}'
# (name, file bytes, what the message says)
BAD_TOKENIZER_FILES = {
    "binary": (bytes(range(256)) * 4, "not UTF-8"),
    "latin-1": ('{"dalle_core_tokenizer": "WordTokenizer", "words": ["café"]}'.encode("latin-1"), "not UTF-8"),
    "truncated-json": (WORDS_JSON[:30].encode(), "not valid JSON"),
    "deep-json": (("{\"a\": " + DEEP + "}").encode(), "nested"),
    "missing-words": (b'{"dalle_core_tokenizer": "WordTokenizer"}', "needs 'words'"),
    "words-not-str": (b'{"dalle_core_tokenizer": "WordTokenizer", "words": [1, 2]}', "needs 'words'"),
    "bad-word": (b'{"dalle_core_tokenizer": "WordTokenizer", "words": ["two words"]}', "distinct single words"),
    "unknown-kind": (b'{"dalle_core_tokenizer": "Mystery"}', "unknown dalle_core_tokenizer"),
    "no-kind-no-model": (b'{"vocab": {}}', "neither 'dalle_core_tokenizer' nor"),
    "json-list": (b'[1, 2, 3]', "expected a JSON object"),
    "broken-hf-model": (b'{"model": {"type": "Mystery"}}', "not a Hugging Face tokenizer.json"),
    "yttm-truncated": (b"13 13\n115 10\n99 15\n", "truncated"),
    "yttm-header-bomb": (b"1000000000 1000000000\n1 0 2 3\n", "announces"),
    "yttm-bad-id": (b"1 0\n97 99\n1 0 2 3\n", "line 2"),
    "yttm-not-numbers": (b"hello tokenizer\n", "integers only"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER_FILES))
def test_bad_tokenizer_files_raise_value_error_naming_the_file(tmp_path, case):
    data, says = BAD_TOKENIZER_FILES[case]
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=names(path) + ".*" + says):
        Tokenizer.load(path)


@pytest.mark.parametrize("loader", [YttmTokenizer, HugTokenizer])
def test_tokenizer_classes_refuse_binary_files_naming_them(tmp_path, loader):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(ValueError, match=names(path)):
        loader(path)


@needs_fifo
def test_fifo_tokenizer_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match=names(tmp_path / "fifo") + ".*FIFO"):
        Tokenizer.load(tmp_path / "fifo")


@needs_dev_zero
def test_dev_zero_tokenizer_file_is_refused_unread():
    with pytest.raises(ValueError, match="/dev/zero.*character device"):
        Tokenizer.load("/dev/zero")


def test_oversized_tokenizer_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_TOKENIZER_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ValueError, match=names(path) + ".*at most"):
        Tokenizer.load(path)


def test_valid_tokenizer_files_still_load(tmp_path):
    path = tmp_path / "words.json"
    path.write_text(WORDS_JSON)
    assert isinstance(Tokenizer.load(path), WordTokenizer) and Tokenizer.load(path).encode("a cat") == [2, 3]
