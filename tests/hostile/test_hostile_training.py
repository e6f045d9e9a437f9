"""Hostile inputs to the trainers and the `dalle-core` command: 47 cases.

Commands from run folders (3): a `pipe:` shard source read from a saved train_config.json on --resume is
refused with a one-line message and never runs (its marker file is not created), the Python dataset builder
refuses one without permission, and `pipe:` shards typed on the command line still train and resume.
Non-finite options and training (30): 28 non-finite, out-of-range or model-size flags refused before training
(nothing written), a NaN loss and NaN weights stopping the run with `NonFiniteError` (CLI: one line, exit 1)
with the last good checkpoint kept and no checkpoint of bad weights.
CLI errors (9): --out a file or not writable (chmod, skipped as root; simulated), `generate --device bogus` /
`cuda` without CUDA / a NaN --temperature, disk full while writing a checkpoint (the earlier one survives),
a corrupt checkpoint (CheckpointError), a wrongly typed saved config value (TypeError).
Resume (3 tests, 4 cases): --steps below / equal to the run's step, the first logged loss rows of a resumed
run equal an uninterrupted run's, and temp files a killed run left are removed (others are kept).
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import List

import pytest
import torch

from dalle_core import DiscreteVAE, load_training_state
from dalle_core.cli import main
from dalle_core.data import write_shards
from dalle_core.training import NonFiniteError, VAETrainConfig, VAETrainer, train_vae
from dalle_core.training.batches import build_dataset
from dalle_core.training.checkpointing import list_checkpoints
from helpers import TINY_VAE, Stop, StopAt, flags, make_folder, metrics
from helpers import one_thread  # noqa: F401  (its autouse fixture: one thread in this module too)

QUIET = dict(warmup_steps=0, log_every=1, sample_every=0, batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("hostile") / "pictures")


@pytest.fixture(scope="module")
def shards(data, tmp_path_factory) -> Path:
    """One tar shard of the 12 pictures."""
    return write_shards(data, tmp_path_factory.mktemp("shards"), samples_per_shard=100)[0]


def one_line_error(err: str, *words: str) -> str:
    """The single 'dalle-core ...: error:' line of `err`, checked to hold `words` and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "dalle-core" in line and "error:" in line]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0].strip()), err  # the message is the last thing written
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def train(out: Path, data: Path, **options) -> int:
    """`dalle-core train-vae` in this process on the tiny folder."""
    return main(["train-vae", *flags(folder=data, out=out, **{**QUIET, **TINY_VAE, **options})])


# --- commands from run folders ---------------------------------------------------------------------------------


def test_pipe_shards_in_a_saved_config_are_refused_on_resume_and_never_run(tmp_path, data, shards, capsys):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    assert train(out, data, steps=2, save_every=2) == 0
    saved = out / "train_config.json"
    doc = json.loads(saved.read_text())
    doc["config"].update(folder=None, shards=f"pipe:touch {marker}; cat {shards}")
    saved.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["train-vae", "--out", str(out), "--resume", "--steps", "4"]) == 1
    assert not marker.exists()
    line = one_line_error(capsys.readouterr().err, "run a command", "pass --shards again")
    assert str(saved) in line
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]


def test_the_dataset_builder_refuses_pipe_shards_without_permission(tmp_path, shards):
    marker = tmp_path / "MARKER"
    config = VAETrainConfig(shards=f"pipe:touch {marker}; cat {shards}", out=str(tmp_path / "o"), **TINY_VAE)
    options = dict(text_len=1, image_size=16, tokenizer=None, transparent=False, truncate_captions=True, rank=0,
                   world_size=1, require_captions=False)
    with pytest.raises(ValueError, match="only allowed when given on the current command line"):
        build_dataset(config, **options)  # allow_pipe defaults to False
    with pytest.raises(ValueError, match="run a command"):
        VAETrainer(config, allow_pipe=False).train()
    assert not marker.exists()


def test_pipe_shards_typed_on_the_command_line_train_and_resume(tmp_path, shards, capsys):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    source = f"pipe:touch {marker}; cat {shards}"
    base = ["train-vae", *flags(shards=source, out=out, shuffle_buffer=0, save_every=2, **QUIET, **TINY_VAE)]
    assert main(base + ["--steps", "2"]) == 0
    assert marker.exists()  # the user's own command ran
    marker.unlink()
    assert main(["train-vae", "--resume", *flags(out=out, steps=3, shards=source)]) == 0  # given again: allowed
    assert marker.exists() and [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3]


# --- non-finite options and training ---------------------------------------------------------------------------

REFUSED = [
    ("train-vae", ["--lr", "inf"], "lr must be a finite number"),
    ("train-vae", ["--lr", "nan"], "lr must be a finite number"),
    ("train-vae", ["--lr", "-1"], "lr must be in"),
    ("train-vae", ["--min-lr-ratio", "nan"], "min_lr_ratio"),
    ("train-vae", ["--weight-decay", "inf"], "weight_decay"),
    ("train-vae", ["--max-grad-norm", "nan"], "max_grad_norm"),
    ("train-vae", ["--ema-decay", "nan"], "ema_decay"),
    ("train-vae", ["--betas", "nan", "0.9"], "betas[0]"),
    ("train-vae", ["--resize-ratio", "inf"], "resize_ratio"),
    ("train-vae", ["--temperature", "inf"], "temperature"),
    ("train-vae", ["--temp-start", "inf"], "temperature"),  # the older name of the flag
    ("train-vae", ["--temp-end", "0"], "temp_end"),
    ("train-vae", ["--kl-div-loss-weight", "nan"], "kl_div_loss_weight"),
    ("train-vae", ["--entropy-loss-weight", "-1"], "entropy_loss_weight"),
    ("train-vae", ["--diversity-gamma", "inf"], "diversity_gamma"),
    ("train-vae", ["--num-tokens", "0"], "num_tokens"),
    ("train-vae", ["--image-size", "24"], "power of 2"),
    ("train-vae", ["--image-size", "16", "--num-layers", "5"], "num_layers"),
    ("train-dalle", ["--sample-filter-thres", "2"], "sample_filter_thres must be in [0.0, 1.0]"),
    ("train-dalle", ["--sample-temperature", "nan"], "sample_temperature"),
    ("train-dalle", ["--sample-cond-scale", "inf"], "sample_cond_scale"),
    ("train-dalle", ["--depth", "0"], "depth must be an int >= 1"),
    ("train-dalle", ["--heads", "0"], "heads must be an int >= 1"),
    ("train-dalle", ["--null-cond-prob", "nan"], "null_cond_prob"),
    ("train-dalle", ["--attn-dropout", "1.5"], "attn_dropout"),
    ("train-dalle", ["--attn-types", "full", "bogus"], "attn_types"),
    ("train-clip", ["--text-heads", "0"], "text_heads"),
    ("train-clip", ["--visual-patch-size", "5"], "divisible by visual_patch_size"),
    ("train-clip", ["--lr", "inf"], "lr must be a finite number"),
]


@pytest.mark.parametrize("command, option, message", REFUSED, ids=[" ".join([c, *o]) for c, o, _ in REFUSED])
def test_bad_options_are_refused_before_training(tmp_path, data, capsys, command, option, message):
    out = tmp_path / "run"
    extra = ["--vae", str(tmp_path / "no-vae")] if command == "train-dalle" else []
    assert main([command, "--folder", str(data), "--out", str(out), *extra, *option]) == 1
    err = capsys.readouterr().err
    one_line_error(err, message)
    assert len(err.strip().splitlines()) == 1 and not out.exists()  # nothing started, nothing written


def poison(monkeypatch, at: int, what: str) -> None:
    """Make the tiny dVAE's micro-batch `at` (0-based) give a NaN loss, or NaN weights after a finite loss."""
    real = VAETrainer.compute_loss

    def compute_loss(self, model, batch, step):
        loss, logged = real(self, model, batch, step)
        if step == at and what == "loss":
            loss = loss * float("nan")
        elif step == at:  # this backward pass only: a NaN gradient, so the update writes NaN weights
            fired: List[int] = []

            def nan_grad(grad: torch.Tensor) -> torch.Tensor:
                fired.append(1)
                return grad * float("nan") if len(fired) == 1 else grad

            next(self.unwrapped.parameters()).register_hook(nan_grad)
        return loss, logged

    monkeypatch.setattr(VAETrainer, "compute_loss", compute_loss)


def assert_last_good_checkpoint(out: Path) -> None:
    """Only the step-2 checkpoint exists, it loads, and its weights are finite; no final model was exported."""
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    vae = DiscreteVAE.from_pretrained(out / "checkpoints" / "step-00000002" / "model")
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert load_training_state(out / "checkpoints" / "step-00000002")["step"] == 2
    assert not (out / "model").exists() and not list((out / "checkpoints").glob(".step-*"))


def test_a_nan_loss_stops_the_cli_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, data, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    poison(monkeypatch, at=2, what="loss")  # update 3; logged every 5, saved every 2: caught before saving 4
    assert train(out, data, steps=6, save_every=2, log_every=5) == 1
    one_line_error(capsys.readouterr().err, "loss became non-finite", "update 3", "step-00000002")
    assert_last_good_checkpoint(out)


def test_nan_weights_behind_a_finite_loss_stop_the_run_before_the_next_checkpoint(tmp_path, data, monkeypatch):
    out = tmp_path / "run"
    poison(monkeypatch, at=3, what="weights")  # during update 4, after its (finite) loss
    with pytest.raises(NonFiniteError, match="weights became non-finite") as caught:
        train_vae(VAETrainConfig(folder=str(data), out=str(out), steps=6, save_every=2, **QUIET, **TINY_VAE))
    assert caught.value.step == 4 and caught.value.what == "weights"
    assert_last_good_checkpoint(out)


# --- CLI errors ------------------------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused(tmp_path, data, capsys):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    assert train(out, data, steps=2) == 1
    one_line_error(capsys.readouterr().err, "is a file", "expected a directory")
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_out_that_is_not_writable_is_refused(tmp_path, data, capsys, monkeypatch, how):
    out = tmp_path / "locked"
    out.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories: the 'simulated' case covers this")
        out.chmod(0o500)
    else:
        def refuse(self, data):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "write_bytes", refuse)
    try:
        assert train(out, data, steps=2) == 1
    finally:
        out.chmod(0o700)
    one_line_error(capsys.readouterr().err, "cannot write to the output directory", "permission denied", str(out))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("option, message", [
    (["--device", "bogus"], "--device must be a torch device"),
    (["--device", "cuda"], "no cuda device is available"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
], ids=["device-bogus", "device-cuda-without-cuda", "temperature-nan"])
def test_generate_refuses_bad_devices_and_sampling_values_before_loading(tmp_path, capsys, option, message):
    if option[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["generate", "a red square", "--checkpoint", str(tmp_path / "missing"), *option]) == 1
    err = capsys.readouterr().err
    one_line_error(err, message)
    assert len(err.strip().splitlines()) == 1


def test_disk_full_while_checkpointing_keeps_the_earlier_checkpoint(tmp_path, data, capsys, monkeypatch):
    import dalle_core.training.common as common

    real = common.save_training_state

    def full_disk(directory, **kwargs):
        if kwargs["step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "training_state.tmp"))
        return real(directory, **kwargs)

    monkeypatch.setattr(common, "save_training_state", full_disk)
    out = tmp_path / "run"
    assert train(out, data, steps=6, save_every=2) == 1
    one_line_error(capsys.readouterr().err, "disk full", "step-00000004", "step-00000002 is intact")
    assert_last_good_checkpoint(out)


def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert train(out, data, steps=2, save_every=2) == 0
    (out / "checkpoints" / "step-00000002" / "training_state.safetensors").write_bytes(b"\0garbage")
    capsys.readouterr()
    assert main(["train-vae", "--out", str(out), "--resume", "--steps", "4"]) == 1
    one_line_error(capsys.readouterr().err, "training_state.safetensors")


def test_a_wrongly_typed_saved_value_is_a_one_line_error(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert train(out, data, steps=2, save_every=2) == 0
    saved = out / "train_config.json"
    doc = json.loads(saved.read_text())
    doc["config"]["batch_size"] = "four"
    saved.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["train-vae", "--out", str(out), "--resume", "--steps", "4"]) == 1
    one_line_error(capsys.readouterr().err, "batch_size must be an int", "'four'")


# --- resume ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A run trained to update 4 (checkpoints at 2 and 4)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(out, data, steps=4, save_every=2) == 0
    return out


@pytest.mark.parametrize("steps, code, stream, message", [
    (2, 1, "err", "already at update 4, past --steps 2"),
    (4, 0, "out", "already at update 4 = --steps 4: nothing to train"),
])
def test_resuming_with_steps_not_above_the_runs_step_says_so(finished, tmp_path, capsys, steps, code, stream,
                                                             message):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    capsys.readouterr()
    assert main(["train-vae", "--out", str(out), "--resume", "--steps", str(steps)]) == code
    captured = capsys.readouterr()
    if code:
        one_line_error(captured.err, message)
    else:
        assert message in captured.out and "Traceback" not in captured.err
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]  # nothing trained


def test_resumed_loss_rows_average_the_same_updates_as_an_uninterrupted_run(tmp_path, data):
    options = dict(folder=str(data), steps=8, save_every=3, **{**QUIET, "log_every": 4}, **TINY_VAE)
    train_vae(VAETrainConfig(out=str(tmp_path / "whole"), **options))

    with pytest.raises(Stop):  # after update 5: the last checkpoint is update 3, mid-way to the row at 4
        train_vae(VAETrainConfig(out=str(tmp_path / "stopped"), **options), callbacks=[StopAt(5)])
    train_vae(VAETrainConfig(out=str(tmp_path / "stopped"), **options), resume=True)

    def rows(run: str) -> List[dict]:
        return [{k: r[k] for k in ("step", "loss")} for r in metrics(tmp_path / run) if "loss" in r]

    whole, resumed = rows("whole"), rows("stopped")
    assert [r["step"] for r in whole] == [r["step"] for r in resumed] == [4, 8]
    for a, b in zip(whole, resumed):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6), (a, b)


def test_temp_files_left_by_a_kill_are_removed_at_the_next_start(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    ours = [out / ".train_config.json.1a2b3c4d.tmp", out / "model" / ".model.safetensors.0123456789ab.tmp",
            out / "checkpoints" / "step-00000004" / ".training_state.safetensors.00112233aabb.tmp"]
    staging = [out / "checkpoints" / ".step-00000006.tmp-deadbeef", out / "checkpoints" / ".step-00000006.accelerate"]
    theirs = [out / "notes.tmp", out / ".hidden.tmp", out / "model" / "keep.me", out / "checkpoints" / "mine.tmp"]
    for path in ours + theirs:
        path.write_text("x")
    for path in staging:
        (path / "model").mkdir(parents=True)
    assert main(["train-vae", "--out", str(out), "--resume", "--steps", "5"]) == 0
    assert not any(p.exists() for p in ours + staging)
    assert all(p.read_text() == "x" for p in theirs)
