"""train-vae over every image tokenizer kind (dvae, vq, fsq, lfq, vqgan): exports, grids, metrics, exact resume,
the VQGAN's discriminator beside it, and flags refused for the wrong kind."""
from __future__ import annotations

import json

import pytest
import torch

from dalle_core import VQGanVAE, VQVAE, from_pretrained
from dalle_core.models.vqgan import VQGANLoss
from dalle_core.training import VAETrainConfig, train_vae
from dalle_core.training.vae import LOSS_FILE
from dalle_core.errors import CheckpointError
from helpers import QUIET, Stop, StopAt, make_folder, metrics, one_thread, run_cli, flags, same_weights  # noqa: F401

KIND_OPTIONS = {
    "vq": dict(codebook_dim=8, hidden_dim=16, num_resnet_blocks=0),
    "fsq": dict(codebook_dim=8, hidden_dim=16, num_resnet_blocks=0),
    "lfq": dict(codebook_dim=8, hidden_dim=16, num_resnet_blocks=0),
    "vqgan": dict(codebook_dim=8, hidden_dim=32, num_resnet_blocks=1, disc_start=2, disc_channels=8, disc_layers=2),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("kinds_data") / "pictures")


def options(kind: str, folder) -> dict:
    return dict(kind=kind, folder=str(folder), steps=6, batch_size=4, lr=3e-3, num_tokens=32, image_size=16,
                num_layers=2, ema_decay=0.5, **KIND_OPTIONS[kind], **{**QUIET, "save_every": 3, "sample_every": 3})


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_train_vae_kind_trains_exports_and_resumes_exactly(tmp_path, folder, kind):
    whole = train_vae(VAETrainConfig(out=str(tmp_path / "whole"), **options(kind, folder)))
    expected = VQGanVAE if kind == "vqgan" else VQVAE
    assert type(whole) is expected and type(from_pretrained(None, tmp_path / "whole" / "model")) is expected
    assert (tmp_path / "whole" / "samples" / "step-00000006.png").is_file()
    config = VAETrainConfig(out=str(tmp_path / "stopped"), **options(kind, folder))
    with pytest.raises(Stop):
        train_vae(config, callbacks=[StopAt(4)])  # after the checkpoint of update 3
    resumed = train_vae(config, resume=True)
    assert same_weights(whole, resumed)  # weights and codebook state (EMA statistics, usage, k-means flag) alike
    rows = [r for r in metrics(tmp_path / "whole") if "loss" in r]
    assert len(rows) == 6 and all("codebook_usage" in r and "perplexity" in r for r in rows)
    assert rows == [r for r in metrics(tmp_path / "stopped") if "loss" in r]
    if kind == "vqgan":  # the GAN's terms are logged, and the discriminator is saved beside the VQGAN and resumed
        assert rows[0]["disc_factor"] == 0 and rows[-1]["disc_factor"] == 1 and rows[-1]["d_loss"] > 0
        for run in ("whole", "stopped"):
            assert (tmp_path / run / "model" / LOSS_FILE).is_file()
        a, b = (from_pretrained(None, tmp_path / run / "checkpoints" / "step-00000006" / "model") for run in
                ("whole", "stopped"))
        assert same_weights(a, b)
        from dalle_core.pretrained import read_safetensors
        da, db = (read_safetensors(tmp_path / run / "model" / LOSS_FILE) for run in ("whole", "stopped"))
        assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)


def test_vqgan_run_refuses_a_checkpoint_without_its_discriminator(tmp_path, folder):
    config = VAETrainConfig(out=str(tmp_path / "run"), **{**options("vqgan", folder), "steps": 5})
    with pytest.raises(Stop):
        train_vae(config, callbacks=[StopAt(4)])
    (tmp_path / "run" / "checkpoints" / "step-00000003" / "model" / LOSS_FILE).unlink()
    with pytest.raises(CheckpointError, match="vqgan_loss.safetensors"):
        train_vae(config, resume=True)


def test_train_vae_cli_takes_the_kind_and_its_flags(tmp_path, folder):
    out = tmp_path / "cli"
    done = run_cli(["train-vae", *flags(out=out, **{**options("fsq", folder), "fsq_levels": (8, 4), "steps": 2})])
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "train_config.json").read_text())["config"]
    assert saved["kind"] == "fsq" and saved["fsq_levels"] == [8, 4]
    assert VQVAE.from_pretrained(out / "model").quantizer.codebook_size == 32
    bad = run_cli(["train-vae", *flags(out=tmp_path / "bad", folder=folder, kind="vq", temperature=0.5)])
    assert bad.returncode != 0 and "--temperature does not apply to --kind vq" in bad.stderr


def test_kind_specific_flags_are_refused_for_other_kinds():
    with pytest.raises(ValueError, match=r"--temperature does not apply to --kind vq"):
        VAETrainConfig(kind="vq", temperature=0.5).validate()
    with pytest.raises(ValueError, match=r"--commitment-weight, --fsq-levels do not apply to --kind dvae"):
        VAETrainConfig(commitment_weight=1.0, fsq_levels=(4, 2)).validate()
    with pytest.raises(ValueError, match=r"--disc-start does not apply to --kind lfq"):
        VAETrainConfig(kind="lfq", disc_start=5).validate()
    with pytest.raises(ValueError, match=r"kind must be one of dvae, vq, fsq, lfq, vqgan"):
        VAETrainConfig(kind="vqvae").validate()
    with pytest.raises(ValueError, match=r"power of 2"):
        VAETrainConfig(kind="lfq", num_tokens=1000).validate()
    with pytest.raises(ValueError, match=r"both --lpips-vgg-path and --lpips-path"):
        VAETrainConfig(kind="vqgan", hidden_dim=32, lpips_path="x.pth").validate()
    with pytest.raises(ValueError, match=r"multiple of 32|GroupNorm"):
        VAETrainConfig(kind="vqgan", hidden_dim=16).validate()


def test_vqgan_config_defaults_are_the_loss_defaults():
    config, loss = VAETrainConfig(kind="vqgan"), VQGANLoss()
    assert (config.disc_start, config.disc_weight, config.codebook_weight, config.disc_layers) == (
        loss.disc_start, loss.disc_weight, loss.codebook_weight, loss.disc_layers)
