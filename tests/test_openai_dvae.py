"""OpenAIDiscreteVAE equals OpenAI's `dall-e` 0.1 for the same weights, reads its pickled modules as data only,
and serves as a DALLE's image tokenizer."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dalle_core import DALLE, CheckpointError, OpenAIDiscreteVAE, from_pretrained
from dalle_core.models.openai_dvae import OFFICIAL_ARCHITECTURE
from helpers import FIXTURE_DIR

FIXTURES = FIXTURE_DIR / "openai_dvae"
MAKER = Path(__file__).parent / "reference" / "make_openai_dvae_fixtures.py"
TOKREF_ENV = "DALLE_CORE_TOKREF_PYTHON"  # the venv python that ../shared/peer/setup_tokenizer_refs.sh builds


def check_against(directory: Path) -> OpenAIDiscreteVAE:
    expected = torch.load(directory / "expected.pt", weights_only=True)
    vae = OpenAIDiscreteVAE(directory / "encoder.pkl", directory / "decoder.pkl", image_size=expected["image_size"])
    with torch.no_grad():
        logits = vae.encoder.blocks(expected["images"] * 0.8 + 0.1)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    assert torch.equal(vae.get_codebook_indices(expected["images"]), expected["codes"])
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(expected["decode_codes"]), expected["decoded"], atol=1e-5, rtol=0)
    return vae


def test_codes_and_decodes_equal_dall_e_on_the_committed_files():
    vae = check_against(FIXTURES)
    assert (vae.num_tokens, vae.num_layers, vae.channels, vae.fmap_size) == (64, 3, 3, 4)
    assert not any(p.requires_grad for p in vae.parameters())  # a pretrained tokenizer stays frozen


@pytest.mark.live
def test_codes_and_decodes_equal_dall_e_live_at_the_official_sizes(tmp_path):
    python = os.environ.get(TOKREF_ENV)
    if not python or not Path(python).exists():
        pytest.skip(f"live dall-e reference not available: set {TOKREF_ENV} to the python of a venv built by "
                    "../shared/peer/setup_tokenizer_refs.sh")
    subprocess.run([python, str(MAKER), str(tmp_path), "--official", "--seed", "11", "--image-size", "64"],
                   check=True, capture_output=True, text=True)
    vae = check_against(tmp_path)
    assert vae.config["architecture"] == OFFICIAL_ARCHITECTURE and vae.num_tokens == 8192


def test_a_command_hidden_in_the_pickle_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save(RunsACommand(), tmp_path / "encoder.pkl")
    with pytest.raises(CheckpointError, match="expected a pickled dall_e.encoder.Encoder"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)
    assert not marker.exists()


def test_the_files_swapped_or_damaged_are_refused_with_what_was_expected(tmp_path):
    with pytest.raises(CheckpointError, match="expected a pickled dall_e.encoder.Encoder"):
        OpenAIDiscreteVAE(FIXTURES / "decoder.pkl", FIXTURES / "encoder.pkl", image_size=32)
    (tmp_path / "encoder.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a torch.save zip"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)
    with pytest.raises(ValueError, match="both"):
        OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", image_size=32)


def test_without_paths_it_reads_the_cache_folder_or_says_where_to_get_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLE_CORE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"encoder.pkl, decoder.pkl.*cdn.openai.com/dall-e/encoder.pkl"):
        OpenAIDiscreteVAE(image_size=32)
    (tmp_path / "openai_dvae").mkdir()
    for name in ("encoder.pkl", "decoder.pkl"):
        shutil.copy(FIXTURES / name, tmp_path / "openai_dvae" / name)
    vae = OpenAIDiscreteVAE(image_size=32)
    assert vae.num_tokens == 64


def test_nonfinite_weights_are_refused(tmp_path):
    pytest.importorskip("zipfile")
    from test_pickles import rewrite_zip

    nan = torch.tensor(float("nan")).numpy().tobytes()
    rewrite_zip(FIXTURES / "encoder.pkl", tmp_path / "encoder.pkl",
                lambda n, d: (n, nan + d[4:]) if n.endswith("data/0") else (n, d))
    with pytest.raises(CheckpointError, match="NaN"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)


def test_saves_as_safetensors_and_loads_back_without_the_pickles(tmp_path):
    vae = OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)
    vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
    again = OpenAIDiscreteVAE.from_pretrained(tmp_path / "vae")
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.get_codebook_indices(images), vae.get_codebook_indices(images))
    codes = torch.randint(0, 64, (2, 16))
    assert torch.equal(again.decode(codes), vae.decode(codes))


def test_random_weights_of_a_given_architecture_read_no_file():
    vae = OpenAIDiscreteVAE(image_size=16, architecture={
        "encoder": {"n_hid": 8, "n_blk_per_group": 1, "input_channels": 3, "vocab_size": 32},
        "decoder": {"n_init": 8, "n_hid": 8, "n_blk_per_group": 1, "output_channels": 3, "vocab_size": 32}})
    assert vae.get_codebook_indices(torch.rand(1, 3, 16, 16)).shape == (1, 4)
    with pytest.raises(ValueError, match="not a pair"):
        OpenAIDiscreteVAE(architecture={"encoder": {**OFFICIAL_ARCHITECTURE["encoder"], "vocab_size": 512},
                                        "decoder": OFFICIAL_ARCHITECTURE["decoder"]})
    with pytest.raises(ValueError, match="multiple of 8"):
        OpenAIDiscreteVAE(image_size=20, architecture=OFFICIAL_ARCHITECTURE)


def test_a_dalle_over_it_trains_samples_and_reloads_with_it(tmp_path):
    vae = OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)
    dalle = DALLE(vae=vae, num_text_tokens=50, text_seq_len=6, dim=32, depth=1, heads=2, dim_head=16)
    text, images = torch.randint(1, 50, (2, 6)), torch.rand(2, 3, 32, 32)
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss) and not any(p.grad is not None for p in dalle.vae.parameters())
    generated = dalle.generate_images(text, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (2, 3, 32, 32) and 0 <= generated.min() and generated.max() <= 1
    dalle.save_pretrained(tmp_path / "dalle")
    again = from_pretrained(None, tmp_path / "dalle")
    assert isinstance(again.vae, OpenAIDiscreteVAE)
    assert torch.equal(again.generate_images(text, generator=torch.Generator().manual_seed(0)), generated)


def test_a_dalle_pytorch_checkpoint_over_openais_dvae_loads_with_its_codes_and_logits():
    from dalle_core import load_dalle_pytorch
    from helpers import assert_reference_codes_and_logits, load_case

    path = FIXTURE_DIR / "dalle_ckpt_openai_vae.pt"
    expected = load_case(path)["expected"]
    # the dVAE's weights come from the checkpoint: no encoder.pkl needed; the reference was assembled for 32 px
    dalle = load_dalle_pytorch(path, vae_image_size=32)
    assert isinstance(dalle.vae, OpenAIDiscreteVAE) and dalle.vae.image_size == 32
    assert_reference_codes_and_logits(dalle, expected)


def test_generate_py_loading_block_over_openais_dvae_runs_with_only_its_import_changed():
    """`DALLE(vae=OpenAIDiscreteVAE(), **hparams).load_state_dict(weights)`: the dVAE's dall_e names too."""
    from helpers import load_case

    load_obj = load_case(FIXTURE_DIR / "dalle_ckpt_openai_vae.pt")
    vae = OpenAIDiscreteVAE(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)  # any weights
    dalle = DALLE(vae=vae, **load_obj["hparams"])
    dalle.load_state_dict(load_obj["weights"])
    expected = load_obj["expected"]
    assert torch.equal(dalle.vae.get_codebook_indices(expected["images"]), expected["codes"])
