"""VQVAE (VQ, FSQ, LFQ bottlenecks from vector-quantize-pytorch): protocol, equivalences, saving, training, errors."""
from __future__ import annotations

import math

import pytest
import torch

from dalle_core import DALLE, VQVAE, from_pretrained
from dalle_core.models.vqvae import fsq_levels
from helpers import one_thread, same_weights  # noqa: F401  (one_thread: autouse)

TINY = dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=8, hidden_dim=16)
KINDS = ("vq", "fsq", "lfq")


def tiny(kind: str, **overrides) -> VQVAE:
    return VQVAE(**{**TINY, "quantizer": kind, **overrides})


def pictures(n: int = 6, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    ramp = torch.linspace(0, 1, size)
    return torch.stack([torch.stack([ramp.outer(torch.ones(size)) * a, torch.ones(size).outer(ramp) * b,
                                     torch.full((size, size), float(c))]) for a, b, c in torch.rand(n, 3)])


def trained(kind: str, steps: int = 5, **overrides) -> VQVAE:
    """A tiny VQVAE after a few Adam steps (VQ: its codebook k-means-initialised and updated)."""
    torch.manual_seed(0)
    vae = tiny(kind, **overrides)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = vae(pictures(), return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.zero_grad(set_to_none=True)
    return vae.eval()


# --- FSQ levels ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, levels", [(128, (8, 4, 4)), (512, (8, 8, 8)), (1024, (8, 8, 4, 4)), (8192, (8, 8, 8, 4, 4)),
                                       (1000, (8, 5, 5, 5)), (240, (8, 6, 5)), (2, (2,)), (26, (13, 2))])
def test_fsq_levels_multiply_to_num_tokens_with_few_even_dimensions(n, levels):
    assert fsq_levels(n) == levels and math.prod(levels) == n


def test_fsq_levels_refuse_a_large_prime_factor_and_give_a_way_out():
    with pytest.raises(ValueError, match=r"prime factor 8191.*fsq_levels"):
        fsq_levels(8191)
    with pytest.raises(ValueError, match=r"multiply to 60, but num_tokens is 64"):
        tiny("fsq", num_tokens=64, fsq_levels=(5, 4, 3))
    vae = tiny("fsq", num_tokens=60, fsq_levels=(5, 4, 3))  # explicit levels are used as given
    assert vae.quantizer.codebook_size == 60


# --- the tokenizer protocol ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_codes_decode_and_forward_agree(kind):
    vae = trained(kind)
    x = pictures(4)
    codes = vae.get_codebook_indices(x)
    assert codes.shape == (4, 16) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < vae.num_tokens
    with torch.no_grad():
        images = vae.decode(codes)
    assert images.shape == x.shape and 0 <= float(images.min()) and float(images.max()) <= 1
    # the straight-through forward's reconstruction is the decode of the hard codes
    torch.testing.assert_close(vae(x), images, rtol=1e-5, atol=1e-6)
    assert vae.codebook_usage(x).counts.sum() == codes.numel()
    assert (vae.image_size, vae.num_layers, vae.num_tokens, vae.channels, vae.fmap_size) == (16, 2, 32, 3, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_finite_and_reaches_encoder_and_decoder(kind):
    vae = tiny(kind)
    loss, recons = vae(pictures(), return_loss=True, return_recons=True)
    assert loss.ndim == 0 and torch.isfinite(loss) and recons.shape == pictures().shape
    loss.backward()
    for name in ("encoder.0.0.weight", "decoder.0.0.weight", "decoder.2.weight"):
        grad = dict(vae.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_vq_codebook_is_kmeans_initialised_and_updated_only_in_training():
    vae = tiny("vq")
    assert not bool(vae.quantizer._codebook.initted)
    vae(pictures(), return_loss=True)
    assert bool(vae.quantizer._codebook.initted)
    before = vae.quantizer.codebook.clone()
    vae.get_codebook_indices(pictures())  # eval: no moving-average update
    assert torch.equal(before, vae.quantizer.codebook)
    vae(pictures(), return_loss=True)
    assert not torch.equal(before, vae.quantizer.codebook)


def test_lfq_entropy_weight_and_vq_commitment_enter_the_loss():
    x = pictures()
    torch.manual_seed(0)
    lfq = dict(lfq_diversity_gamma=0.0, lfq_temperature=1.0)  # the penalty is then the per-position entropy
    a = tiny("lfq", lfq_entropy_weight=0.0, **lfq)
    torch.manual_seed(0)
    b = tiny("lfq", lfq_entropy_weight=1.0, **lfq)
    with torch.no_grad():
        assert float(b(x, return_loss=True)) > float(a(x, return_loss=True)) + 0.1
    torch.manual_seed(0)
    c = tiny("vq", commitment_weight=0.0)
    torch.manual_seed(0)
    d = tiny("vq", commitment_weight=10.0)
    with torch.no_grad():
        assert float(d(x, return_loss=True)) > float(c(x, return_loss=True))


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_keep_codes_and_codebook_state(tmp_path, kind):
    vae = trained(kind)
    vae.save_pretrained(tmp_path / "m")
    back = from_pretrained(None, tmp_path / "m")
    assert type(back) is VQVAE and back.config == vae.config and same_weights(vae, back)
    x = pictures(3)
    assert torch.equal(back.get_codebook_indices(x), vae.get_codebook_indices(x))
    torch.testing.assert_close(back.decode(vae.get_codebook_indices(x)), vae.decode(vae.get_codebook_indices(x)))


@pytest.mark.parametrize("kind", KINDS)
def test_dalle_trains_samples_and_saves_over_each_quantizer(tmp_path, kind):
    vae = trained(kind)
    torch.manual_seed(0)
    dalle = DALLE(vae=vae, num_text_tokens=20, text_seq_len=4, dim=16, depth=1, heads=2, dim_head=16)
    text = torch.randint(1, 20, (2, 4))
    frozen = {k: v.clone() for k, v in vae.state_dict().items()}
    dalle.train()
    loss = dalle(text, pictures(2), return_loss=True)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in dalle.vae.parameters())  # the tokenizer is frozen
    assert all(torch.equal(frozen[k], v) for k, v in vae.state_dict().items())  # VQ's codebook statistics too
    images = dalle.generate_images(text, filter_thres=0.5)
    assert images.shape == (2, 3, 16, 16)
    dalle.save_pretrained(tmp_path / "dalle")
    back = DALLE.from_pretrained(tmp_path / "dalle")
    assert type(back.vae) is VQVAE and same_weights(back, dalle)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(quantizer="rvq"), r"quantizer must be one of \('vq', 'fsq', 'lfq'\)"),
    (dict(quantizer="lfq", num_tokens=48), r"power of 2, got 48"),
    (dict(quantizer="fsq", num_tokens=34), r"prime factor 17"),
    (dict(image_size=24), r"power of 2"),
    (dict(num_layers=5), r"at least 2\*\*num_layers"),
    (dict(codebook_decay=1.0), r"codebook_decay must be in \[0, 1\)"),
    (dict(commitment_weight=float("nan")), r"commitment_weight must be a finite number"),
    (dict(num_tokens=1), r"num_tokens must be"),
])
def test_bad_constructor_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQVAE(**{**TINY, **kwargs})


def test_bad_images_and_codes_raise_clear_errors():
    vae = tiny("fsq")
    with pytest.raises(ValueError, match="image"):
        vae.get_codebook_indices(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN|finite"):
        vae(torch.full((1, 3, 16, 16), float("nan")), return_loss=True)
    with pytest.raises(ValueError, match="16 codes per image"):
        vae.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 32\)|range|vocab"):
        vae.decode(torch.full((1, 16), 32))


def test_builds_on_the_meta_device_for_checkpoint_checks():
    for kind in KINDS:
        with torch.device("meta"):
            vae = tiny(kind)
        assert vae.encoder[0][0].weight.is_meta, kind
        assert tiny(kind).state_dict().keys() == vae.state_dict().keys()
