"""DALLE equals dalle-pytorch 1.6.6 for the same weights: logits, loss and checkpoints (committed + live)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import committed_cases, load_case
from dalle_core import DALLE, DiscreteVAE
from dalle_core.interop import convert_dalle_state_dict, load_dalle_pytorch

CASES = {k: v for k, v in committed_cases("dalle_").items() if not k.startswith("dalle_ckpt")}
ATOL = 1e-4


def _build(case: dict) -> DALLE:
    vae = DiscreteVAE(**case["vae_config"])
    dalle = DALLE(vae=vae, **case["config"])
    dalle.load_state_dict(case["state_dict"], strict=True)  # the reference's own key names, renamed on load
    return dalle.eval()


def _assert_logits_equal(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    allowed = ref > -1e30  # the reference's logits mask writes -finfo.max
    assert torch.equal(allowed, ours > -1e30), "the logits masks differ"
    torch.testing.assert_close(ours[allowed], ref[allowed], atol=ATOL, rtol=0)


def _check_case(case: dict) -> None:
    dalle = _build(case)
    text, codes = case["inputs"]["text"], case["inputs"]["codes"]
    with torch.no_grad():
        _assert_logits_equal(dalle(text, codes), case["outputs"]["logits"])
        _assert_logits_equal(dalle(text, codes[:, :5]), case["outputs"]["prefix_logits"])
        loss = dalle(text, codes, return_loss=True)
    torch.testing.assert_close(loss, case["outputs"]["loss"], atol=ATOL, rtol=0)


def test_committed_cases_cover_every_attention_type_and_option():
    expected = {"dalle_default", "dalle_axial_row", "dalle_axial_col", "dalle_conv_like", "dalle_mix",
                "dalle_stable", "dalle_shared_emb", "dalle_absolute_pos", "dalle_sandwich_shared_layers",
                "dalle_reversible"}
    assert expected <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_loss_equal_reference_committed(name):
    _check_case(load_case(CASES[name]))


@pytest.mark.live
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_loss_equal_reference_live(name, live_fixture_dir: Path):
    _check_case(load_case(live_fixture_dir / f"{name}.pt"))


def test_converted_state_dicts_load_too_and_equal_the_renamed_ones():
    case = load_case(CASES["dalle_reversible"])
    converted = DALLE(vae=DiscreteVAE(**case["vae_config"]), **case["config"])
    converted.load_state_dict(convert_dalle_state_dict(case["state_dict"]), strict=True)
    renamed = _build(case)
    assert converted.state_dict().keys() == renamed.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), renamed.state_dict().values()))


def test_generate_py_loading_block_runs_with_only_its_import_changed():
    """DALLE-pytorch generate.py: `DALLE(vae=DiscreteVAE(**vae_params), **hparams).load_state_dict(weights)`."""
    path = committed_cases("dalle_ckpt_train_dalle")["dalle_ckpt_train_dalle"]
    load_obj = load_case(path)
    dalle_params, vae_params, weights = load_obj.pop("hparams"), load_obj.pop("vae_params"), load_obj.pop("weights")
    vae = DiscreteVAE(**vae_params)
    dalle = DALLE(vae=vae, **dalle_params)
    dalle.load_state_dict(weights)
    expected = load_obj["expected"]
    with torch.no_grad():
        _assert_logits_equal(dalle.eval()(expected["text"], expected["codes"]), expected["logits"])


def _check_checkpoint(path: Path) -> None:
    dalle = load_dalle_pytorch(path)
    assert not any(m.training for m in dalle.modules())  # ready to sample, like from_pretrained
    expected = load_case(path)["expected"]
    with torch.no_grad():
        _assert_logits_equal(dalle(expected["text"], expected["codes"]), expected["logits"])


def test_load_dalle_pytorch_reads_train_dalle_checkpoint_committed():
    _check_checkpoint(committed_cases("dalle_ckpt_train_dalle")["dalle_ckpt_train_dalle"])


@pytest.mark.live
def test_load_dalle_pytorch_reads_train_dalle_checkpoint_live(live_fixture_dir: Path):
    _check_checkpoint(live_fixture_dir / "dalle_ckpt_train_dalle.pt")


def test_caller_text_untouched_by_forward_with_padding():
    case = load_case(CASES["dalle_default"])
    dalle = _build(case)
    text = case["inputs"]["text"].clone()
    before = text.clone()
    dalle(text, case["inputs"]["codes"], return_loss=True)
    assert torch.equal(text, before)
