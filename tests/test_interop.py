"""Loading DALLE-pytorch checkpoints: train_vae.py files, broken files, and no code ever unpickled."""
from __future__ import annotations

import pytest
import torch

from helpers import committed_cases, load_case
from dalle_core import DALLE, CheckpointError, DiscreteVAE
from dalle_core.interop import convert_dalle_state_dict, load_dalle_pytorch, load_dalle_pytorch_vae


def test_load_dalle_pytorch_vae_reads_train_vae_checkpoint(tmp_path):
    case = load_case(committed_cases("vae_tiny")["vae_tiny"])
    path = tmp_path / "vae.pt"
    torch.save({"hparams": case["config"], "weights": case["state_dict"]}, path)  # train_vae.py's layout
    vae = load_dalle_pytorch_vae(path)
    assert not vae.training
    images = case["inputs"]["images"]
    reference = DiscreteVAE(**case["config"])
    reference.load_state_dict(case["state_dict"])
    assert torch.equal(vae.get_codebook_indices(images), reference.get_codebook_indices(images))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoints_that_need_code_to_unpickle_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"hparams": {}, "weights": {}, "vae_params": {}, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="weights only"):
        load_dalle_pytorch(path)
    with pytest.raises(ValueError, match="weights only"):
        load_dalle_pytorch_vae(path)


def test_missing_and_truncated_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dalle_pytorch(tmp_path / "nope.pt")
    good = committed_cases("dalle_ckpt_train_dalle")["dalle_ckpt_train_dalle"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_dalle_pytorch(truncated)
    partial = tmp_path / "partial.pt"
    torch.save({"hparams": {}}, partial)
    with pytest.raises(ValueError, match=r"partial.pt is missing \['vae_params', 'weights'\]"):
        load_dalle_pytorch(partial)


def test_mismatched_weights_raise_on_load():
    ckpt = load_case(committed_cases("dalle_ckpt_train_dalle")["dalle_ckpt_train_dalle"])
    ckpt = dict(ckpt, hparams=dict(ckpt["hparams"], dim=48))
    with pytest.raises(CheckpointError, match=r"the checkpoint dict: tensor .* has shape .* expects"):
        load_dalle_pytorch(ckpt)


def test_converted_keys_load_strictly_into_a_fresh_model():
    ckpt = load_case(committed_cases("dalle_ckpt_train_dalle")["dalle_ckpt_train_dalle"])
    dalle = DALLE(vae=DiscreteVAE(**ckpt["vae_params"]), **ckpt["hparams"])
    missing, unexpected = dalle.load_state_dict(convert_dalle_state_dict(ckpt["weights"]), strict=False)
    assert missing == [] and unexpected == []
