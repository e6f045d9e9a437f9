"""Trainers: schedules, EMA, tiny runs of all three, exact resume after SIGKILL, two processes, messy data."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from PIL import Image

from dalle_core import CLIP, DALLE, DiscreteVAE, load_training_state
from dalle_core.data import write_shards
from dalle_core.training import (CLIPTrainConfig, DALLETrainConfig, EMA, VAETrainConfig, cosine_anneal, cosine_ramp,
                                 train_clip, train_dalle, train_vae, warmup_cosine)
from dalle_core.training.checkpointing import list_checkpoints
from helpers import (COLOURS, QUIET, TINY_CLIP, TINY_DALLE, TINY_VAE, Stop, StopAt, cli_env, flags, helper_command, losses,
                     make_folder, metrics, one_thread, run_cli, same_weights)  # noqa: F401  (one_thread: autouse)



@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "pictures")


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory, folder) -> Path:
    out = tmp_path_factory.mktemp("vae_run") / "vae"
    train_vae(VAETrainConfig(folder=str(folder), out=str(out), steps=30, batch_size=4, lr=3e-3, **TINY_VAE,
                             **QUIET))
    return out / "model"


# --- schedules and EMA ---------------------------------------------------------------------------------------


def test_temperature_is_a_cosine_of_the_step_index_from_1_to_1_16():
    config = VAETrainConfig(temp_anneal_steps=1000)
    assert config.temperature_at(0) == 1.0
    assert config.temperature_at(500) == pytest.approx((1 + 1 / 16) / 2)
    assert config.temperature_at(1000) == pytest.approx(1 / 16) and config.temperature_at(5000) == pytest.approx(1 / 16)
    values = [config.temperature_at(s) for s in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing while annealing
    # any step is read off the formula, whatever happened before it (no compounding)
    assert config.temperature_at(321) == pytest.approx(1 / 16 + (15 / 16) * 0.5 * (1 + math.cos(math.pi * 0.321)))


def test_kl_weight_warms_up_from_zero_to_its_target():
    config = VAETrainConfig(kl_div_loss_weight=6.6, kl_warmup_steps=5000)
    assert config.kl_weight_at(0) == 0.0
    assert config.kl_weight_at(2500) == pytest.approx(3.3)
    assert config.kl_weight_at(5000) == pytest.approx(6.6) and config.kl_weight_at(10**6) == pytest.approx(6.6)
    assert cosine_ramp(10, 2.0, 0) == 2.0  # no warm-up: the target at once


def test_vae_run_config_follows_the_model_defaults_and_reads_older_runs_as_they_trained(tmp_path):
    from dalle_core.training.config import config_to_dict, load_config_file

    config = VAETrainConfig()
    vae = DiscreteVAE()
    assert (config.entropy_loss_weight, config.diversity_gamma, config.kl_div_loss_weight) == (
        vae.entropy_loss_weight, vae.diversity_gamma, vae.kl_div_loss_weight)
    saved = config_to_dict(VAETrainConfig(kl_div_loss_weight=0.01))
    del saved["entropy_loss_weight"], saved["diversity_gamma"]  # a run folder written before these fields
    (tmp_path / "train_config.json").write_text(json.dumps({"config": saved}))
    old = load_config_file(VAETrainConfig, tmp_path / "train_config.json")
    assert old.entropy_loss_weight == 0.0 and old.kl_div_loss_weight == 0.01


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_its_floor():
    lr = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55) and lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)
    assert cosine_anneal(0, 3.0, 1.0, 0) == 1.0


def test_ema_moves_towards_the_weights_and_its_state_round_trips():
    model = DiscreteVAE(**TINY_VAE)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    w, e = model.codebook.weight, ema.model.codebook.weight
    assert torch.allclose(e, w - 1 + 0.9)  # 10% of the way from the old weights (w - 1) to the new ones
    restored = EMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 1 and restored.decay == 0.5 and same_weights(restored.model, ema.model)


# --- end to end, in process ------------------------------------------------------------------------------------


def test_vae_trainer_lowers_the_loss_and_writes_model_checkpoints_samples_and_metrics(tmp_path, folder):
    out = tmp_path / "vae"
    config = VAETrainConfig(folder=str(folder), out=str(out), steps=24, batch_size=4, lr=3e-3, ema_decay=0.9,
                            temp_anneal_steps=24, num_samples=4, **{**QUIET, "sample_every": 12, "save_every": 12},
                            **TINY_VAE)
    model = train_vae(config)
    curve = losses(out)
    assert len(curve) == 24 and sum(curve[-4:]) < sum(curve[:4])
    rows = [r for r in metrics(out) if "loss" in r]
    assert all(0 < r["codebook_usage"] <= 1 and 1 <= r["perplexity"] <= 32 for r in rows)
    assert [r["temperature"] for r in rows] == pytest.approx([config.temperature_at(s) for s in range(24)])
    assert [p.name for p in list_checkpoints(out)] == ["step-00000012", "step-00000024"]
    for name in ("model", "ema"):
        assert (out / "checkpoints" / "step-00000024" / name / "model.safetensors").is_file()
    samples = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step-00000012.png", "step-00000024.png"]
    assert Image.open(samples[-1]).size == (4 * 18 + 2, 2 * 18 + 2)  # 4 images above their 4 reconstructions
    final = DiscreteVAE.from_pretrained(out / "model")  # the EMA weights (use_ema)
    ema = DiscreteVAE.from_pretrained(out / "checkpoints" / "step-00000024" / "ema")
    assert same_weights(final, ema) and not same_weights(final, model)


def test_dalle_trainer_lowers_the_loss_and_writes_generations_for_fixed_captions(tmp_path, folder, trained_vae):
    out = tmp_path / "dalle"
    config = DALLETrainConfig(folder=str(folder), vae=str(trained_vae), out=str(out), steps=20, batch_size=4,
                              lr=3e-3, num_samples=3, **{**QUIET, "sample_every": 20}, **TINY_DALLE)
    train_dalle(config)
    curve = losses(out)
    assert sum(curve[-4:]) < sum(curve[:4])
    grid = Image.open(out / "samples" / "step-00000020.png")
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)  # real images above, generations below
    captions = (out / "samples" / "step-00000020.txt").read_text().splitlines()
    assert len(captions) == 3 and all(c.split()[0] in COLOURS for c in captions)
    assert (out / "model" / "tokenizer.json").is_file()
    dalle = DALLE.from_pretrained(out / "model")
    assert same_weights(dalle.vae, DiscreteVAE.from_pretrained(trained_vae))  # the dVAE stayed frozen


def test_clip_trainer_lowers_the_loss_and_logs_retrieval_accuracy(tmp_path, folder):
    out = tmp_path / "clip"
    config = CLIPTrainConfig(folder=str(folder), out=str(out), steps=20, batch_size=6, lr=1e-3,
                             **{**QUIET, "sample_every": 20}, **TINY_CLIP)
    train_clip(config)
    curve = losses(out)
    assert sum(curve[-4:]) < sum(curve[:4])
    last = [r for r in metrics(out) if "retrieval_text_to_image" in r][-1]
    assert 0 <= last["retrieval_text_to_image"] <= 1 and 0 <= last["retrieval_image_to_text"] <= 1
    assert isinstance(CLIP.from_pretrained(out / "model"), CLIP)


def test_bf16_autocast_trains_with_float32_weights(tmp_path, folder):
    out = tmp_path / "vae_bf16"
    model = train_vae(VAETrainConfig(folder=str(folder), out=str(out), steps=4, batch_size=4, bf16=True,
                                     **QUIET, **TINY_VAE))
    assert all(math.isfinite(v) for v in losses(out))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_shards_train_like_a_folder(tmp_path, folder):
    shards = write_shards(folder, tmp_path / "shards", samples_per_shard=4)
    out = tmp_path / "vae_shards"
    train_vae(VAETrainConfig(shards=str(shards[0].parent), out=str(out), steps=8, batch_size=4, shuffle_buffer=0,
                             lr=3e-3, **QUIET, **TINY_VAE))
    assert len(losses(out)) == 8 and (out / "model" / "model.safetensors").is_file()


def test_an_existing_run_is_not_overwritten_and_resuming_keeps_the_model(tmp_path, folder):
    out = tmp_path / "vae"
    base = dict(folder=str(folder), out=str(out), batch_size=4, **QUIET, **TINY_VAE)
    train_vae(VAETrainConfig(steps=2, **base))
    with pytest.raises(ValueError, match="already holds a run"):
        train_vae(VAETrainConfig(steps=4, **base))
    with pytest.raises(ValueError, match="different model.*hidden_dim"):
        train_vae(VAETrainConfig(steps=4, **{**base, "hidden_dim": 8}), resume=True)
    train_vae(VAETrainConfig(steps=4, **base), resume=True)  # more steps: continues from update 2
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_missing_optional_logger_says_how_to_install_it(tmp_path, folder, monkeypatch, logger):
    monkeypatch.setitem(sys.modules, logger, None)  # `import <logger>` now raises ImportError
    with pytest.raises(ImportError, match=f"pip install {logger}"):
        train_vae(VAETrainConfig(folder=str(folder), out=str(tmp_path / "w"), steps=1, batch_size=4,
                                 **{logger: True}, **QUIET, **TINY_VAE))
    assert not (tmp_path / "w" / "model").exists()  # refused before training


def test_tensorboard_logs_through_accelerates_tracker(tmp_path, folder):
    pytest.importorskip("tensorboard", reason="needs `pip install tensorboard`")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train_vae(VAETrainConfig(folder=str(folder), out=str(out), steps=3, batch_size=4, tensorboard=True, **QUIET,
                             **TINY_VAE))
    logs = EventAccumulator(str(out / "tensorboard")).Reload()
    steps = [event.step for event in logs.Scalars("loss")]
    assert steps == [1, 2, 3]  # every update, as in metrics.jsonl
    assert [r["loss"] for r in metrics(out) if "loss" in r] == pytest.approx(
        [event.value for event in logs.Scalars("loss")], rel=1e-6)


def wandb_history(run_file: Path) -> List[Dict[str, Any]]:
    """The history rows (logged scalars) of an offline W&B run file: a LevelDB-style log (7-byte ':W&B' header,
    32 KiB blocks of records with a 7-byte header: crc, length, type 1 full / 2 first / 3 middle / 4 last)
    of `wandb_internal_pb2.Record` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, rows, pos, pending = run_file.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_logs_through_accelerates_tracker_offline(tmp_path, folder, monkeypatch):
    pytest.importorskip("wandb", reason="needs `pip install wandb`")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: the run is written to disk for a later `wandb sync`
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    train_vae(VAETrainConfig(folder=str(folder), out=str(out), steps=3, batch_size=4, wandb=True,
                             wandb_project="dalle-core-test", **QUIET, **TINY_VAE))
    runs = list(out.glob("**/offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    logged = [row for row in wandb_history(runs[0]) if "loss" in row]
    assert [row["_step"] for row in logged] == [1, 2, 3]  # every update, as in metrics.jsonl
    assert [r["loss"] for r in metrics(out) if "loss" in r] == pytest.approx([row["loss"] for row in logged],
                                                                              rel=1e-6)


def make_messy_folder(root: Path) -> Path:
    root = make_folder(root)
    Image.new("RGBA", (20, 16), (255, 0, 0, 128)).save(root / "rgba.png")
    Image.new("L", (16, 24), 90).save(root / "gray.png")
    Image.new("I;16", (16, 16), 40000).save(root / "deep.png")
    for name in ("rgba", "gray", "deep", "corrupt", "truncated", "empty"):
        (root / f"{name}.txt").write_text("" if name == "empty" else f"{name} picture\n")
    (root / "corrupt.png").write_bytes(b"this is not a png")
    (root / "truncated.png").write_bytes((root / "000.png").read_bytes()[:60])
    Image.new("RGB", (16, 16)).save(root / "empty.png")  # its caption file is empty
    Image.new("RGB", (16, 16)).save(root / "uncaptioned.png")
    return root


def test_messy_folder_trains_on_the_usable_images_and_reports_what_it_skipped(tmp_path):
    root = make_messy_folder(tmp_path / "messy")
    out = tmp_path / "run"
    with pytest.warns(UserWarning):
        train_clip(CLIPTrainConfig(folder=str(root), out=str(out), steps=8, batch_size=4, **QUIET, **TINY_CLIP))
    events = {row["event"]: row for row in metrics(out) if "event" in row}
    assert events["data"]["usable"] == 12 + 5  # 12 pictures, RGBA, gray, 16-bit and the two broken ones
    assert events["data"]["skipped"] == {"empty_caption": 1, "no_caption": 1}
    # the run's total adds the broken images, found when loaded (and replaced by the next image in the folder)
    assert events["end"]["skipped"] == {"bad_image": 2, "empty_caption": 1, "no_caption": 1}
    assert len(losses(out)) == 8 and all(math.isfinite(v) for v in losses(out))


def test_vae_trains_on_images_without_captions_too(tmp_path):
    root = make_messy_folder(tmp_path / "messy")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="bad_image"):  # only the broken images are skipped
        train_vae(VAETrainConfig(folder=str(root), out=str(out), steps=8, batch_size=4, **QUIET, **TINY_VAE))
    events = {row["event"]: row for row in metrics(out) if "event" in row}
    assert events["data"]["usable"] == 12 + 5 + 2 and events["data"]["skipped"] == {}  # + empty and uncaptioned
    assert events["end"]["skipped"] == {"bad_image": 2}
    assert len(losses(out)) == 8 and all(math.isfinite(v) for v in losses(out))
    only_images = tmp_path / "only_images"
    only_images.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(only_images / f"{i}.png")
    train_vae(VAETrainConfig(folder=str(only_images), out=str(tmp_path / "run2"), steps=2, batch_size=4, **QUIET,
                             **TINY_VAE))
    assert len(losses(tmp_path / "run2")) == 2


# --- exact resume after SIGKILL (subprocesses, one thread each) -----------------------------------------------

RESUME_FLAGS = dict(steps=7, batch_size=2, grad_accum=2, warmup_steps=2, log_every=1, sample_every=3, save_every=2,
                    ema_decay=0.9, temp_anneal_steps=7, kl_div_loss_weight=0.1, kl_warmup_steps=3, keep_checkpoints=5,
                    **TINY_VAE)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, folder) -> Path:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    done = run_cli(["train-vae", *flags(folder=folder, out=out, **RESUME_FLAGS)])
    assert done.returncode == 0, done.stderr
    return out


def assert_same_run(a: Path, b: Path) -> None:
    assert same_weights(DiscreteVAE.from_pretrained(a / "model"), DiscreteVAE.from_pretrained(b / "model"))
    last = "checkpoints/step-00000007"
    for name in ("model", "ema"):
        assert same_weights(DiscreteVAE.from_pretrained(a / last / name), DiscreteVAE.from_pretrained(b / last / name))
    assert [r for r in metrics(a) if "loss" in r] == [r for r in metrics(b) if "loss" in r]


@pytest.mark.slow
def test_run_killed_after_an_update_resumes_to_the_same_weights(tmp_path, folder, uninterrupted):
    out = tmp_path / "killed"
    args = ["train-vae", *flags(folder=folder, out=out, **RESUME_FLAGS)]
    killed = run_cli(args, kill_at="update:5")  # SIGKILL after update 5, before any save
    assert killed.returncode == -9
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    resumed = run_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout  # mid-epoch, mid-accumulation
    assert_same_run(uninterrupted, out)


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, folder, uninterrupted):
    out = tmp_path / "crashed"
    args = ["train-vae", *flags(folder=folder, out=out, **RESUME_FLAGS)]
    killed = run_cli(args, kill_at="checkpoint:4")  # after model/ and ema/, before the state
    assert killed.returncode == -9
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert list((out / "checkpoints").glob(".step-00000004.tmp-*"))  # the half-written one, never picked
    previous = out / "checkpoints" / "step-00000002"
    DiscreteVAE.from_pretrained(previous / "model")
    assert load_training_state(previous)["step"] == 2
    resumed = run_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert not list((out / "checkpoints").glob(".step-*"))  # the leftover is cleaned up
    assert_same_run(uninterrupted, out)


def test_shard_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, folder):
    shards = write_shards(folder, tmp_path / "shards", samples_per_shard=4)
    options = dict(shards=str(shards[0].parent), shuffle_buffer=5, steps=11, batch_size=2, lr=3e-3,
                   keep_checkpoints=5, ema_decay=0.9, **{**QUIET, "save_every": 2}, **TINY_VAE)
    whole = train_vae(VAETrainConfig(out=str(tmp_path / "whole"), **options))

    with pytest.raises(Stop):  # after update 9: the last checkpoint is update 8, in the middle of epoch 1
        train_vae(VAETrainConfig(out=str(tmp_path / "stopped"), **options), callbacks=[StopAt(9)])
    resumed = train_vae(VAETrainConfig(out=str(tmp_path / "stopped"), **options), resume=True)
    assert same_weights(whole, resumed)
    assert losses(tmp_path / "whole") == losses(tmp_path / "stopped")


# --- two processes under `accelerate launch` --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(args: List[str]) -> subprocess.CompletedProcess:
    """`dalle-core ARGS --cpu` in two processes, each recording the samples it reads (`SampleRecorder`)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    command = launcher + helper_command(args + ["--cpu"], record_samples=True)
    return subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)


def read_ids(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "sample_ids.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_share_the_weights_split_the_data_and_write_one_checkpoint(tmp_path, folder):
    out = tmp_path / "ddp"
    done = launch_two(["train-vae", *flags(folder=folder, out=out, steps=4, batch_size=2,
                                           ema_decay=0.9, **{**QUIET, "save_every": 4}, **TINY_VAE)])
    assert done.returncode == 0, done.stderr
    end = [row for row in metrics(out) if row.get("event") == "end"]
    assert len(end) == 1  # only the main process logs
    checksums = end[0]["weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    rows = read_ids(out)
    epoch0 = [r["ids"] for r in rows if r["epoch"] == 0]
    rank0, rank1 = ({i for ids in epoch0 for i in ids[r]} for r in (0, 1))
    assert not rank0 & rank1 and rank0 | rank1 == set(range(12))  # 12 samples / (2 ranks x 2) = 3 batches each
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"]
    assert len([r for r in metrics(out) if "loss" in r]) == 4  # one row per update, not one per process


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_without_double_sharding(tmp_path, folder):
    shards = write_shards(folder, tmp_path / "shards", samples_per_shard=3)  # 4 shards: 2 per rank
    out = tmp_path / "ddp_shards"
    # CLIP: its 16-token captions tell the 12 samples apart (the dVAE trainer reads a single caption token)
    done = launch_two(["train-clip", *flags(shards=shards[0].parent, out=out, steps=3, batch_size=2,
                                            shuffle_buffer=0, **QUIET, **TINY_CLIP)])
    assert done.returncode == 0, done.stderr
    rows = read_ids(out)
    assert len(rows) == 3
    rank0, rank1 = ({k for r in rows for k in r["ids"][rank]} for rank in (0, 1))
    assert len(rank0) == len(rank1) == 6  # each rank reads its 6 samples: Accelerate did not split them again
    assert not rank0 & rank1


def test_shards_flag_splits_at_commas_outside_brace_lists():
    from dalle_core.training.batches import split_outside_braces

    assert split_outside_braces("a.tar,s-{x,y}.tar,c-{0..3}-{a,{b,c}}.tar") == ["a.tar", "s-{x,y}.tar",
                                                                               "c-{0..3}-{a,{b,c}}.tar"]
    assert split_outside_braces("one.tar") == ["one.tar"]


def test_seeded_samples_draw_from_the_sample_seed_and_leave_the_global_generator_alone():
    from torch.utils.data import Dataset

    from dalle_core.data.common import mix_seed
    from dalle_core.training.batches import SeededSamples

    class GlobalRandom(Dataset):  # a user's dataset that draws its augmentation from torch's global RNG
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.randint(0, 100, (4,)), torch.rand(1, 2, 2)

    samples = SeededSamples(GlobalRandom(), seed=7)
    samples.set_epoch(2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    index, text, image = samples[1]
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    torch.manual_seed(mix_seed(7, "sample", 2, 1))  # what the sample's own seed draws
    assert index == 1 and torch.equal(text, torch.randint(0, 100, (4,))) and torch.equal(image, torch.rand(1, 2, 2))
    assert not torch.equal(samples[1][1], SeededSamples(GlobalRandom(), seed=8)[1][1])
