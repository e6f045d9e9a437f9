"""VQGanVAE: taming-transformers' VQGAN read safely, equal to the reference (DALLE-pytorch 1.6.6's VQGanVAE over
taming 0.0.6's modules), and usable as DALLE's image tokenizer.

The committed fixtures (tests/fixtures/vqgan_*) come from tests/reference/make_vqgan_fixtures.py run with the
taming reference venv; set DALLE_CORE_TOKREF_PYTHON to that venv's python to also compare against freshly made
ones (new weights and inputs).
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from dalle_core import DALLE, CheckpointError, from_pretrained
from dalle_core.models.vqgan import (DEFAULT_CONFIG_NAME, DEFAULT_CONFIG_URL, DEFAULT_MODEL_NAME, DEFAULT_MODEL_URL,
                                     VQGanVAE)
from dalle_core.pickles import UnsafePickleError
from dalle_core.pretrained import build_like

from helpers import FIXTURE_DIR, TESTS_DIR, one_thread  # noqa: F401  (one_thread: autouse)

KINDS = ("vq", "gumbel")
MAKE_VQGAN_FIXTURES = TESTS_DIR / "reference" / "make_vqgan_fixtures.py"
TOL = 1e-5
TINY = {"kind": "vq", "embed_dim": 4, "n_embed": 32, "ddconfig": dict(
    double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
    attn_resolutions=[8], dropout=0.0)}


def load(directory: Path, kind: str) -> VQGanVAE:
    return VQGanVAE(directory / f"vqgan_{kind}.ckpt", directory / f"vqgan_{kind}.yaml", image_size=16)


def expected(directory: Path, kind: str) -> dict:
    return torch.load(directory / f"vqgan_{kind}_expected.pt", map_location="cpu", weights_only=True)


def check_against_reference(directory: Path, kind: str) -> None:
    vae, ref = load(directory, kind), expected(directory, kind)
    codes = vae.get_codebook_indices(ref["images"])
    assert codes.dtype == torch.long and codes.shape == ref["codes"].shape
    assert torch.equal(codes, ref["codes"])
    assert ref["codes"].unique().numel() > 5  # the fixture exercises many codes
    for codes_key, images_key in (("codes", "decoded"), ("random_codes", "random_decoded")):
        decoded = vae.decode(ref[codes_key])
        assert decoded.dtype == torch.float32 and decoded.shape == ref[images_key].shape
        torch.testing.assert_close(decoded, ref[images_key], atol=TOL, rtol=0)
    assert 0.02 < float((ref["decoded"] - 0.5).abs().mean())  # not a flat grey: the weights do something


# --- equal to the reference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_codes_and_decodes_equal_the_reference(kind):
    """Codes equal DALLE-pytorch's VQGanVAE over taming's modules (gumbel: the argmax of its logits) and decodes
    (of those codes and of random ones) agree within 1e-5, from a Lightning .ckpt that a weights-only torch.load
    refuses (its callbacks are keyed by a Lightning class)."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(FIXTURE_DIR / f"vqgan_{kind}.ckpt", weights_only=True)
    check_against_reference(FIXTURE_DIR, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_follow_the_config(kind):
    vae = load(FIXTURE_DIR, kind)
    assert (vae.image_size, vae.channels, vae.num_layers, vae.fmap_size, vae.num_tokens) == (16, 3, 1, 8, 32)
    assert vae.is_gumbel == (kind == "gumbel")
    arch = vae.config["architecture"]
    assert vae.config["image_size"] == 16 and arch["kind"] == kind and arch["ddconfig"]["ch"] == 32
    assert not vae.training


@pytest.mark.live
def test_live_reference_with_new_weights(tmp_path):
    """The maker, run now with a new seed by the reference venv (DALLE_CORE_TOKREF_PYTHON), agrees too."""
    python = os.environ.get("DALLE_CORE_TOKREF_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("live reference not available: set DALLE_CORE_TOKREF_PYTHON to the taming reference venv's "
                    "python (../shared/peer/setup_tokenizer_refs.sh)")
    subprocess.run([python, str(MAKE_VQGAN_FIXTURES), str(tmp_path), "--seed", "20261"], check=True,
                   capture_output=True, text=True)
    for kind in KINDS:
        assert not torch.equal(expected(tmp_path, kind)["codes"], expected(FIXTURE_DIR, kind)["codes"])
        check_against_reference(tmp_path, kind)


# --- files as hostile data --------------------------------------------------------------------------------------


class RunsACommand:
    """Unpickling this would run `touch <marker>` (pickle calls os.system with that string)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_ckpt(path: Path, state: dict, **extra) -> Path:
    torch.save({"state_dict": state, "epoch": 1, **extra}, path)
    return path


def tiny_state() -> "OrderedDict[str, torch.Tensor]":
    return VQGanVAE(architecture=TINY, image_size=16).model.state_dict()


def test_a_pickle_that_would_run_a_command_runs_nothing(tmp_path):
    """A checkpoint whose pickle calls os.system is read as data: the weights load and the command never runs."""
    marker = tmp_path / "pwned"
    state = tiny_state()
    ckpt = write_ckpt(tmp_path / "evil.ckpt", state, callbacks={"x": RunsACommand(marker)},
                      hyper_parameters=RunsACommand(marker))
    assert not marker.exists()
    vae = VQGanVAE(ckpt, FIXTURE_DIR / "vqgan_vq.yaml", image_size=16)
    assert not marker.exists()
    for key, value in vae.model.state_dict().items():
        assert torch.equal(value, state[key])
    # a command in place of a weight: refused, still without running it
    state["quant_conv.weight"] = RunsACommand(marker)
    with pytest.raises(CheckpointError, match="quant_conv.weight"):
        VQGanVAE(write_ckpt(tmp_path / "evil2.ckpt", state), FIXTURE_DIR / "vqgan_vq.yaml", image_size=16)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the control: a full unpickling does run it
    assert marker.exists()


def test_broken_checkpoints_are_refused_clearly(tmp_path):
    config = FIXTURE_DIR / "vqgan_vq.yaml"
    state = tiny_state()
    missing = OrderedDict((k, v) for k, v in state.items() if not k.startswith("decoder.up.0"))
    with pytest.raises(CheckpointError, match=r"lacks \d+ of the VQGAN's \d+ weights.*decoder\.up\.0"):
        VQGanVAE(write_ckpt(tmp_path / "missing.ckpt", missing), config, image_size=16)
    wrong = OrderedDict(state, **{"quant_conv.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ValueError, match=r"quant_conv.weight.*shape \(4, 4, 3, 3\).*\(4, 4, 1, 1\)"):
        VQGanVAE(write_ckpt(tmp_path / "shape.ckpt", wrong), config, image_size=16)
    nan = OrderedDict(state, **{"quant_conv.bias": torch.full((4,), float("nan"))})
    with pytest.raises(ValueError, match="NaN"):
        VQGanVAE(write_ckpt(tmp_path / "nan.ckpt", nan), config, image_size=16)
    # a gumbel checkpoint under a VQModel config: the message says what the file holds
    with pytest.raises(ValueError, match="quantize.proj.weight.*GumbelVQ.*model.target"):
        VQGanVAE(FIXTURE_DIR / "vqgan_gumbel.ckpt", config, image_size=16)
    torch.save({"weights": state}, tmp_path / "nostate.ckpt")
    with pytest.raises(ValueError, match="'state_dict' entry"):
        VQGanVAE(tmp_path / "nostate.ckpt", config, image_size=16)
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="mapping of names to tensors"):
        VQGanVAE(tmp_path / "list.ckpt", config, image_size=16)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(UnsafePickleError, match="not a torch.save zip file"):
        VQGanVAE(tmp_path / "text.ckpt", config, image_size=16)


def yaml_case(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD_YAML = (FIXTURE_DIR / "vqgan_vq.yaml").read_text(encoding="utf-8")
BAD_YAMLS = {
    "unknown_target": (GOOD_YAML.replace("taming.models.vqgan.VQModel", "taming.models.vqgan.VQNoDiscModel"),
                       r"model\.target must be one of taming\.models\.vqgan\.VQModel"),
    "object_target": (GOOD_YAML.replace("target: taming.models.vqgan.VQModel",
                                        "target: !!python/object/apply:os.system [echo hi]"),
                      "not a YAML config that can be read safely"),
    "missing_ch": (GOOD_YAML.replace("      ch: 32\n", ""), r"model\.params\.ddconfig\.ch is missing"),
    "missing_params": ("model:\n  target: taming.models.vqgan.VQModel\n", r"model\.params is missing"),
    "missing_model": ("other: 1\n", r"\bmodel is missing"),
    "string_n_embed": (GOOD_YAML.replace("n_embed: 32", "n_embed: '32'"),
                       r"model\.params\.n_embed must be an integer, got str"),
    "bool_ch": (GOOD_YAML.replace("ch: 32", "ch: true"), r"ddconfig\.ch must be an integer, got bool"),
    "absurd_ch": (GOOD_YAML.replace("ch: 32", "ch: 100000000"), r"ddconfig\.ch must be in \[1, 8192\]"),
    "absurd_mult": (GOOD_YAML.replace("ch_mult: [1, 2]", "ch_mult: [1, 8192]"), r"ddconfig\.ch_mult asks for"),
    "huge_model": (GOOD_YAML.replace("ch: 32", "ch: 4096").replace("num_res_blocks: 1", "num_res_blocks: 64"),
                   r"about \d+\.\dG weights; at most"),
    "huge_codebook": (GOOD_YAML.replace("n_embed: 32", "n_embed: 1000000000000"), r"n_embed must be in"),
    "groups": (GOOD_YAML.replace("ch: 32", "ch: 8"), r"divisible by 32"),
    "negative_blocks": (GOOD_YAML.replace("num_res_blocks: 1", "num_res_blocks: -1"), r"num_res_blocks must be in"),
    "double_z": (GOOD_YAML.replace("double_z: false", "double_z: true"), r"double_z must be false"),
    "grey_images": (GOOD_YAML.replace("in_channels: 3", "in_channels: 1"), r"in_channels must be 3"),
    "nan_dropout": (GOOD_YAML.replace("dropout: 0.0", "dropout: .nan"), r"dropout must be a number"),
    "huge_dropout": (GOOD_YAML.replace("dropout: 0.0", "dropout: " + "9" * 400), r"dropout must be a number"),
    "list_target": (GOOD_YAML.replace("target: taming.models.vqgan.VQModel", "target: [a, b]"),
                    r"model\.target must be one of"),
    "ch_mult_scalar": (GOOD_YAML.replace("ch_mult: [1, 2]", "ch_mult: 2"), r"ch_mult must be a list"),
    "not_yaml": ("model: [unclosed\n  target: {", "not a YAML config that can be read safely"),
    "a_list": ("- 1\n- 2\n", "expected a taming-transformers config"),
    "binary": ("\x00\x01\x02", "not a YAML config|expected a taming"),
    "remap": (GOOD_YAML.replace("    embed_dim: 4", "    remap: used.npy\n    embed_dim: 4"), "remap is not supported"),
}


@pytest.mark.parametrize("name", sorted(BAD_YAMLS))
def test_bad_yaml_configs_are_refused_naming_the_file_and_key(tmp_path, name):
    text, message = BAD_YAMLS[name]
    path = yaml_case(tmp_path, name, text)
    with pytest.raises(ValueError, match=message) as info:
        VQGanVAE(FIXTURE_DIR / "vqgan_vq.ckpt", path, image_size=16)
    assert str(path) in str(info.value)


def test_gumbel_needs_embed_dim_equal_to_z_channels(tmp_path):
    text = (FIXTURE_DIR / "vqgan_gumbel.yaml").read_text().replace("embed_dim: 4", "embed_dim: 8")
    with pytest.raises(ValueError, match="embed_dim must equal ddconfig.z_channels"):
        VQGanVAE(FIXTURE_DIR / "vqgan_gumbel.ckpt", yaml_case(tmp_path, "g", text), image_size=16)


def test_oversized_or_special_config_files_are_refused(tmp_path):
    big = yaml_case(tmp_path, "big", GOOD_YAML + "# " + "x" * 2**20 + "\n")
    with pytest.raises(ValueError, match="at most"):
        VQGanVAE(FIXTURE_DIR / "vqgan_vq.ckpt", big, image_size=16)
    with pytest.raises(ValueError, match="directory"):
        VQGanVAE(FIXTURE_DIR / "vqgan_vq.ckpt", tmp_path, image_size=16)


def test_no_paths_and_an_empty_cache_names_the_files_and_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLE_CORE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        VQGanVAE()
    message = str(info.value)
    for part in (DEFAULT_MODEL_NAME, DEFAULT_CONFIG_NAME, str(tmp_path / "vqgan"), DEFAULT_MODEL_URL,
                 DEFAULT_CONFIG_URL, "downloads nothing"):
        assert part in message
    assert not (tmp_path / "vqgan").exists() or not any((tmp_path / "vqgan").iterdir())


def test_no_paths_reads_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLE_CORE_CACHE", str(tmp_path))
    folder = tmp_path / "vqgan"
    folder.mkdir()
    (folder / DEFAULT_MODEL_NAME).write_bytes((FIXTURE_DIR / "vqgan_vq.ckpt").read_bytes())
    (folder / DEFAULT_CONFIG_NAME).write_text(GOOD_YAML)
    vae, ref = VQGanVAE(image_size=16), expected(FIXTURE_DIR, "vq")
    assert torch.equal(vae.get_codebook_indices(ref["images"]), ref["codes"])


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        VQGanVAE("a.ckpt", "a.yaml", architecture=TINY)
    with pytest.raises(ValueError, match="give both"):
        VQGanVAE("a.ckpt")
    with pytest.raises(ValueError, match="multiple of the VQGAN's downsampling factor 2"):
        VQGanVAE(architecture=TINY, image_size=15)
    with pytest.raises(ValueError, match=r"architecture\.kind must be"):
        VQGanVAE(architecture={**TINY, "kind": "other"}, image_size=16)
    vae = VQGanVAE(architecture=TINY, image_size=16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vae.get_codebook_indices(torch.rand(1, 3, 16, 16) * 255)
    with pytest.raises(ValueError, match="shape"):
        vae.get_codebook_indices(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        vae.decode(torch.full((1, 64), 32))
    with pytest.raises(ValueError, match="64 codes per image"):
        vae.decode(torch.zeros(1, 16, dtype=torch.long))


# --- checkpoints, DALLE, precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_round_trip_gives_identical_codes(tmp_path, kind):
    vae, ref = load(FIXTURE_DIR, kind), expected(FIXTURE_DIR, kind)
    vae.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").exists()
    assert "ckpt" not in (tmp_path / "saved" / "config.json").read_text()  # sizes recorded, not paths
    again = VQGanVAE.from_pretrained(tmp_path / "saved")
    assert again.config == vae.config and again.is_gumbel == vae.is_gumbel
    assert torch.equal(again.get_codebook_indices(ref["images"]), ref["codes"])
    assert torch.equal(again.decode(ref["codes"]), vae.decode(ref["codes"]))
    copy = build_like(vae)  # same sizes, fresh weights
    assert copy.config == vae.config and copy.model.state_dict().keys() == vae.model.state_dict().keys()


def test_a_hostile_saved_config_is_refused_before_building(tmp_path):
    """A saved model whose config (file and weights header alike) asks for an absurdly large VQGAN is refused by
    VQGanVAE's own size check, before anything that large is allocated."""
    VQGanVAE(architecture=TINY, image_size=16).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safetensors.safe_open(str(weights), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    doc = json.loads(metadata["dalle_core_config"])
    doc["config"]["architecture"]["ddconfig"].update(ch=4096, num_res_blocks=64)
    text = json.dumps(doc)
    safetensors.torch.save_file(tensors, str(weights), metadata={**metadata, "dalle_core_config": text})
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"G weights; at most"):
        VQGanVAE.from_pretrained(tmp_path)


def test_dalle_over_a_vqgan_trains_generates_and_reloads(tmp_path):
    torch.manual_seed(0)
    vae = load(FIXTURE_DIR, "vq")
    dalle = DALLE(vae=vae, num_text_tokens=40, text_seq_len=6, dim=32, depth=1, heads=2, dim_head=16)
    assert dalle.image_seq_len == 64 and dalle.num_image_tokens == 32
    text = torch.randint(1, 40, (2, 6))
    images = expected(FIXTURE_DIR, "vq")["images"]
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in dalle.transformer.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())  # the tokenizer stays frozen
    out = dalle.generate_images(text, use_cache=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    dalle.save_pretrained(tmp_path / "dalle")  # the VQGAN's sizes in its config, its weights as vae.*
    again = from_pretrained(None, tmp_path / "dalle")
    assert isinstance(again.vae, VQGanVAE) and again.vae.config == vae.config
    assert torch.equal(again.generate_images(text, use_cache=True, generator=torch.Generator().manual_seed(0)), out)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_decodes_in_float32_equal_to_fp32(kind):
    vae, ref = load(FIXTURE_DIR, kind), expected(FIXTURE_DIR, kind)
    plain = vae.decode(ref["random_codes"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = vae.get_codebook_indices(ref["images"])
        decoded = vae.decode(ref["random_codes"])
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, plain)
    assert torch.equal(codes, ref["codes"])


def test_codebook_usage_and_reconstruction():
    vae, ref = load(FIXTURE_DIR, "vq"), expected(FIXTURE_DIR, "vq")
    usage = vae.codebook_usage(ref["images"])
    assert usage.counts.sum() == ref["codes"].numel()
    assert usage.usage == ref["codes"].unique().numel() / 32
    torch.testing.assert_close(vae(ref["images"]), ref["decoded"], atol=TOL, rtol=0)


def test_a_dalle_pytorch_checkpoint_over_a_vqgan_loads_with_its_codes_and_logits():
    """train_dalle.py's file over a VQGAN: the VQGAN's weights (and its training loss's, dropped) are inside;
    its architecture comes from the taming YAML."""
    from dalle_core import VQGanVAE, load_dalle_pytorch
    from helpers import assert_reference_codes_and_logits, load_case

    path = FIXTURE_DIR / "dalle_ckpt_vqgan.pt"
    expected = load_case(path)["expected"]
    with pytest.raises(CheckpointError, match="vqgan_config_path"):
        load_dalle_pytorch(path)
    dalle = load_dalle_pytorch(path, vqgan_config_path=FIXTURE_DIR / "vqgan_vq.yaml", vae_image_size=16)
    assert isinstance(dalle.vae, VQGanVAE) and dalle.vae.fmap_size == 8
    assert_reference_codes_and_logits(dalle, expected)
