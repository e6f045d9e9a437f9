"""Checkpoints: save_pretrained/from_pretrained round trips, atomic writes, clear errors, exact training resume."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from dalle_core import CLIP, DALLE, DiscreteVAE
from dalle_core.pretrained import (
    CheckpointError, _flatten, _unflatten, from_pretrained, load_training_state,
    save_pretrained, save_training_state,
)


class VAE(DiscreteVAE):
    pass


class Dalle(DALLE):
    pass


class Clip(CLIP):
    pass


def tiny_vae(**kw) -> VAE:
    return VAE(**{**dict(image_size=8, num_tokens=16, codebook_dim=8, num_layers=1, hidden_dim=8), **kw})


def tiny_dalle(**kw) -> Dalle:
    vae = DiscreteVAE(image_size=8, num_tokens=16, codebook_dim=8, num_layers=1, hidden_dim=8)
    return Dalle(**{**dict(dim=16, vae=vae, num_text_tokens=20, text_seq_len=4, depth=2, heads=2, dim_head=16), **kw})


def tiny_clip() -> Clip:
    return Clip(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=20, text_enc_depth=1, text_seq_len=4,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=8, visual_patch_size=4)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def leftovers(directory: Path) -> list:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --- round trips ----------------------------------------------------------------------------------------------


def test_vae_round_trip_restores_config_weights_and_outputs(tmp_path):
    vae = tiny_vae(num_resnet_blocks=1, normalization=None)
    vae.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["class"] == "DiscreteVAE" and doc["format_version"] == 1 and doc["config"] == vae.config
    loaded = VAE.from_pretrained(tmp_path)
    assert type(loaded) is VAE and loaded.config == vae.config and not loaded.training
    assert_same_state(vae, loaded)
    images = torch.rand(2, 3, 8, 8)
    assert torch.equal(vae.get_codebook_indices(images), loaded.get_codebook_indices(images))


def test_dalle_with_shared_layers_stores_tied_tensors_once_and_stays_tied(tmp_path):
    dalle = tiny_dalle(depth=4, shared_attn_ids=(0, 1, 0, 1), shared_ff_ids=(0, 0, 1, 1))
    save_pretrained(dalle, tmp_path)
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert len(stored) < len(dalle.state_dict())  # each tied tensor once
    assert any(k.startswith("vae.") for k in stored)  # the VAE travels inside the DALLE file
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["vae"] == {"class": "DiscreteVAE", "config": dalle.vae.config}
    loaded = Dalle.from_pretrained(tmp_path)
    assert_same_state(dalle, loaded)
    layers = loaded.transformer.layers
    assert layers[0].attn is layers[2].attn and layers[0].ff is layers[1].ff
    assert not any(p.requires_grad for p in loaded.vae.parameters())
    text, codes = torch.randint(0, 20, (2, 4)), torch.randint(0, 16, (2, 16))
    assert torch.equal(dalle.eval()(text, codes), loaded(text, codes))


def test_dalle_with_shared_embeddings_round_trips(tmp_path):
    dalle = tiny_dalle(share_input_output_emb=True, rotary_emb=False)
    loaded = Dalle.from_pretrained(dalle.save_pretrained(tmp_path))
    assert_same_state(dalle, loaded)


def save_as_before_the_entropy_terms(model, directory: Path) -> None:
    """Save, then drop `entropy_loss_weight` and `diversity_gamma` from every dVAE config in config.json and in
    the weights' header: what a dalle_core from before those keywords wrote."""
    model.save_pretrained(directory)

    def strip(doc: dict) -> str:
        for cfg in (doc["config"], doc.get("vae", {}).get("config", {})):
            cfg.pop("entropy_loss_weight", None)
            cfg.pop("diversity_gamma", None)
        return json.dumps(doc)

    config = directory / "config.json"
    config.write_text(strip(json.loads(config.read_text())))
    path = directory / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    metadata["dalle_core_config"] = strip(json.loads(metadata["dalle_core_config"]))
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_configs_saved_before_the_entropy_terms_load_without_them(tmp_path):
    """Such a dVAE trained without the entropy terms, so it reloads without them, not with today's default."""
    save_as_before_the_entropy_terms(tiny_vae(kl_div_loss_weight=0.01), tmp_path / "vae")
    vae = VAE.from_pretrained(tmp_path / "vae")
    assert vae.entropy_loss_weight == 0.0 and vae.config["entropy_loss_weight"] == 0.0
    assert vae.kl_div_loss_weight == 0.01
    save_as_before_the_entropy_terms(tiny_dalle(), tmp_path / "dalle")
    assert Dalle.from_pretrained(tmp_path / "dalle").vae.entropy_loss_weight == 0.0
    tiny_vae().save_pretrained(tmp_path / "new")  # a config that names the keywords keeps them
    assert VAE.from_pretrained(tmp_path / "new").entropy_loss_weight == DiscreteVAE().entropy_loss_weight == 0.001


def test_from_pretrained_without_class_builds_the_recorded_one(tmp_path):
    clip = tiny_clip()
    clip.save_pretrained(tmp_path)
    loaded = from_pretrained(None, tmp_path)
    assert type(loaded) is CLIP and loaded.config == clip.config
    assert_same_state(clip, loaded)


def test_bfloat16_checkpoint_loads_as_bfloat16_and_map_location_moves_it(tmp_path):
    vae = tiny_vae().to(torch.bfloat16)
    vae.save_pretrained(tmp_path)
    loaded = VAE.from_pretrained(tmp_path)
    assert loaded.codebook.weight.dtype == torch.bfloat16
    assert_same_state(vae, loaded)
    assert VAE.from_pretrained(tmp_path, map_location="meta").codebook.weight.device.type == "meta"


def test_unsaveable_model_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="no `config` dict"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    linear = torch.nn.Linear(2, 2)
    linear.config = {}
    with pytest.raises(TypeError, match="expected a dalle_core model class"):
        save_pretrained(linear, tmp_path)


# --- atomic writes ----------------------------------------------------------------------------------------------


def test_crash_while_writing_weights_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = tiny_vae()
    old.save_pretrained(tmp_path)
    real_save = safetensors.torch.save_file

    def crash_halfway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        tiny_vae(hidden_dim=16).save_pretrained(tmp_path)
    assert leftovers(tmp_path) == []
    assert_same_state(old, VAE.from_pretrained(tmp_path))


def test_crash_at_first_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = tiny_vae()
    old.save_pretrained(tmp_path)

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        tiny_vae().save_pretrained(tmp_path)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert_same_state(old, VAE.from_pretrained(tmp_path))


def test_crash_between_renames_loads_previous_weights_with_their_own_config(tmp_path, monkeypatch):
    old = tiny_vae()
    old.save_pretrained(tmp_path)
    real_replace, calls = os.replace, []

    def crash_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_second)
    with pytest.raises(OSError, match="power cut"):
        tiny_vae(hidden_dim=16).save_pretrained(tmp_path)  # config.json is new, model.safetensors old
    monkeypatch.undo()
    assert json.loads((tmp_path / "config.json").read_text())["config"]["hidden_dim"] == 16
    with pytest.warns(UserWarning, match="disagrees"):
        loaded = VAE.from_pretrained(tmp_path)
    assert loaded.config == old.config
    assert_same_state(old, loaded)


def test_crash_while_saving_training_state_keeps_previous_one(tmp_path, monkeypatch):
    save_training_state(tmp_path, step=1)

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_training_state(tmp_path, step=2)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert load_training_state(tmp_path)["step"] == 1


# --- broken checkpoints -----------------------------------------------------------------------------------------


@pytest.fixture
def saved_vae(tmp_path) -> Path:
    tiny_vae().save_pretrained(tmp_path)
    return tmp_path


def rewrite_weights(directory: Path, edit) -> None:
    """Re-save model.safetensors with `edit` applied to its tensors, keeping the header."""
    path = directory / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_missing_files_are_named(saved_vae):
    (saved_vae / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: missing"):
        VAE.from_pretrained(saved_vae)
    (saved_vae / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        VAE.from_pretrained(saved_vae)


def test_invalid_or_newer_config_json_is_reported(saved_vae):
    config = saved_vae / "config.json"
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"config\.json: format_version 99"):
        VAE.from_pretrained(saved_vae)
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        VAE.from_pretrained(saved_vae)


def test_wrong_class_is_reported(tmp_path):
    tiny_clip().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json: holds a CLIP, not a DALLE"):
        Dalle.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_weights_are_reported(saved_vae, damage):
    path = saved_vae / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10] if damage == "truncate" else b"\x00\x01garbage" * 8)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        VAE.from_pretrained(saved_vae)


def test_missing_unexpected_and_misshapen_tensors_are_reported(saved_vae):
    rewrite_weights(saved_vae, lambda t: t.pop("codebook.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*missing keys \['codebook.weight'\]"):
        VAE.from_pretrained(saved_vae)
    rewrite_weights(saved_vae, lambda t: t.update({"codebook.weight": torch.zeros(16, 8), "extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra'\]"):
        VAE.from_pretrained(saved_vae)
    rewrite_weights(saved_vae, lambda t: (t.pop("extra"), t.update({"codebook.weight": torch.zeros(16, 4)})))
    with pytest.raises(CheckpointError, match=r"'codebook.weight' has shape \(16, 4\) but .* expects \(16, 8\)"):
        VAE.from_pretrained(saved_vae)


# --- training state ---------------------------------------------------------------------------------------------


def train_steps(model, optimizer, scheduler, n: int) -> list:
    """Run `n` noisy steps; return what they drew from every RNG and the learning rates."""
    drawn = []
    for _ in range(n):
        images = torch.rand(2, 3, 8, 8)  # torch RNG; the VAE's Gumbel noise draws from it too
        loss = model(images, return_loss=True) * (1 + random.random()) * (1 + float(np.random.rand()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        drawn.append((loss.item(), scheduler.get_last_lr()[0]))
    return drawn


def make_trainer(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    return optimizer, scheduler


def test_resumed_training_matches_uninterrupted_exactly(tmp_path):
    model = tiny_vae()
    optimizer, scheduler = make_trainer(model)
    train_steps(model, optimizer, scheduler, 3)
    model.save_pretrained(tmp_path)
    save_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler, step=3,
                        data_state={"epoch": 0, "position": 6}, extra={"note": "resume me"})
    expected = train_steps(model, optimizer, scheduler, 2)
    expected_draws = (random.random(), torch.rand(3), np.random.rand())

    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # scramble every RNG
    resumed = VAE.from_pretrained(tmp_path).train()
    optimizer2, scheduler2 = make_trainer(resumed)
    info = load_training_state(tmp_path, optimizer=optimizer2, scheduler=scheduler2)
    assert info == {"step": 3, "data_state": {"epoch": 0, "position": 6}, "extra": {"note": "resume me"}}
    assert train_steps(resumed, optimizer2, scheduler2, 2) == expected
    assert_same_state(model, resumed)
    draws = (random.random(), torch.rand(3), np.random.rand())
    assert draws[0] == expected_draws[0] and torch.equal(draws[1], expected_draws[1]) and draws[2] == expected_draws[2]


def test_ema_round_trips_and_rng_can_be_left_alone(tmp_path):
    ema = torch.optim.swa_utils.AveragedModel(torch.nn.Linear(3, 2))
    ema.update_parameters(torch.nn.Linear(3, 2))
    save_training_state(tmp_path, step=0, ema=ema, rng=False)
    fresh = torch.optim.swa_utils.AveragedModel(torch.nn.Linear(3, 2))
    before = torch.get_rng_state()
    load_training_state(tmp_path, ema=fresh)
    assert_same_state(ema, fresh)
    assert torch.equal(torch.get_rng_state(), before)


def test_flatten_round_trips_tuples_int_keys_tag_like_keys_and_tensors():
    state = {"a": (1, 2.5, None, True, "s"), 3: [{"x": torch.arange(3)}], "__tensor__": "not a tensor",
             (1, 2): float("inf"), "nested": {"t": torch.zeros(2, dtype=torch.bfloat16)}}
    tensors: dict = {}
    encoded = json.loads(json.dumps(_flatten(state, "", tensors)))
    decoded = _unflatten(encoded, tensors)
    assert decoded["a"] == (1, 2.5, None, True, "s") and type(decoded["a"][1]) is float
    assert torch.equal(decoded[3][0]["x"], torch.arange(3)) and decoded[(1, 2)] == float("inf")
    assert decoded["__tensor__"] == "not a tensor" and decoded["nested"]["t"].dtype == torch.bfloat16


def test_training_state_rejects_bad_input_and_reports_mismatches(tmp_path):
    with pytest.raises(TypeError, match="step must be a non-negative int"):
        save_training_state(tmp_path, step=1.5)
    with pytest.raises(TypeError, match=r"set at 'extra.s'"):
        save_training_state(tmp_path, step=1, extra={"s": {1, 2}})
    with pytest.raises(FileNotFoundError, match=r"training_state\.safetensors: missing"):
        load_training_state(tmp_path)
    model = torch.nn.Linear(2, 2)
    save_training_state(tmp_path, step=1, optimizer=torch.optim.AdamW(model.parameters()))
    with pytest.raises(CheckpointError, match="holds no scheduler state"):
        load_training_state(tmp_path, scheduler=make_trainer(model)[1])
    two_groups = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}])
    with pytest.raises(CheckpointError, match="saved optimizer state does not fit"):
        load_training_state(tmp_path, optimizer=two_groups)


# --- models saved by earlier versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.1.0"])  # 0.1.0: before the package was laid out by role
def test_models_saved_by_an_earlier_version_load_and_give_the_same_outputs(version):
    """tests/fixtures/saved_VERSION: made by tests/reference/make_saved_models.py run on that version's code."""
    from helpers import FIXTURE_DIR

    from dalle_core import CLIP, DALLE, DiscreteVAE

    folder = FIXTURE_DIR / f"saved_{version}"
    expected = torch.load(folder / "expected.pt", weights_only=True)
    vae, clip = DiscreteVAE.from_pretrained(folder / "vae"), CLIP.from_pretrained(folder / "clip")
    dalle = DALLE.from_pretrained(folder / "dalle")
    with torch.no_grad():
        assert torch.equal(vae.get_codebook_indices(expected["images"]), expected["vae_codes"])
        torch.testing.assert_close(vae.decode(expected["codes"]), expected["vae_decoded"], atol=1e-6, rtol=0)
        torch.testing.assert_close(dalle(expected["text"], expected["codes"]), expected["dalle_logits"],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(clip(expected["text"], expected["images"]), expected["clip_scores"],
                                   atol=1e-5, rtol=0)
