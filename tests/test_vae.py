"""Tests for dalle_core.models.vae: parity with dalle-pytorch 1.6.6's DiscreteVAE, the KL fix, validation, training."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import committed_cases, load_case
from dalle_core.interop import vae_from_reference_config
from dalle_core.models.vae import CodebookUsage, DiscreteVAE, codebook_usage

TINY = dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
CASE_NAMES = sorted(committed_cases("vae_"))


def tiny_vae(**overrides) -> DiscreteVAE:
    return DiscreteVAE(**{**TINY, **overrides})


def images(batch: int = 2, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, channels, size, size)


def model_from_case(case: dict) -> DiscreteVAE:
    vae = vae_from_reference_config(case["config"])
    vae.load_state_dict(case["state_dict"], strict=True)
    return vae


def to_pixels(vae: DiscreteVAE, normalised: torch.Tensor) -> torch.Tensor:
    """The reference's normalised-space output mapped the way ours is: `* std + mean`, clamped to [0, 1]."""
    means, stds = (torch.tensor(t).view(1, -1, 1, 1) for t in vae.normalization)
    return (normalised * stds + means).clamp(0, 1)


# --- parity with the reference ------------------------------------------------------------------------------


@pytest.fixture(params=[pytest.param(("committed", n), id=f"committed-{n}") for n in CASE_NAMES]
                + [pytest.param(("live", n), id=f"live-{n}", marks=pytest.mark.live) for n in CASE_NAMES])
def case(request) -> dict:
    source, name = request.param
    if source == "committed":
        return load_case(committed_cases("vae_")[name])
    return load_case(request.getfixturevalue("live_fixture_dir") / f"{name}.pt")


def test_committed_vae_fixtures_exist():
    assert len(CASE_NAMES) >= 3, f"expected committed vae_*.pt fixtures, found {CASE_NAMES}"


def test_reference_state_dict_loads_strictly_and_round_trips(case):
    vae = model_from_case(case)
    assert vae.state_dict().keys() == case["state_dict"].keys()


def test_same_seed_builds_the_references_initial_weights(case):
    torch.manual_seed(case["seed"])
    vae = vae_from_reference_config(case["config"])
    for key, expected in case["state_dict"].items():
        assert torch.equal(vae.state_dict()[key], expected), key


def test_codebook_indices_equal_reference_exactly(case):
    vae = model_from_case(case)
    codes = vae.get_codebook_indices(case["inputs"]["images"])
    assert codes.dtype == torch.long
    assert torch.equal(codes, case["outputs"]["codebook_indices"])


def test_logits_match_reference(case):
    vae = model_from_case(case)
    logits = vae(case["inputs"]["images"], return_logits=True)
    torch.testing.assert_close(logits, case["outputs"]["logits"], atol=1e-5, rtol=0)


def test_decode_equals_reference_decode_in_pixel_space(case):
    vae = model_from_case(case)
    expected = to_pixels(vae, case["outputs"]["decoded"])
    torch.testing.assert_close(vae.decode(case["inputs"]["codes"]), expected, atol=1e-5, rtol=0)


def test_seeded_loss_and_reconstruction_match_reference(case):
    vae, inputs, outputs = model_from_case(case), case["inputs"], case["outputs"]
    torch.manual_seed(inputs["noise_seed"])
    loss, recons = vae(inputs["images"], return_loss=True, return_recons=True, temp=inputs["temp"])
    torch.testing.assert_close(loss, outputs["loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(recons, to_pixels(vae, outputs["recon"]), atol=1e-5, rtol=0)
    torch.manual_seed(inputs["noise_seed"])  # the no-loss path draws the same noise
    torch.testing.assert_close(vae(inputs["images"], temp=inputs["temp"]), recons, atol=1e-6, rtol=0)


def test_encoder_and_codebook_gradients_match_reference(case):
    vae, inputs = model_from_case(case), case["inputs"]
    torch.manual_seed(inputs["noise_seed"])
    vae(inputs["images"], return_loss=True, temp=inputs["temp"]).backward()
    params = dict(vae.named_parameters())
    assert case["outputs"]["grads"].keys()
    for name, expected in case["outputs"]["grads"].items():
        scale = expected.abs().max().item()
        torch.testing.assert_close(params[name].grad, expected, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_kl_is_reference_kl_averaged_over_batch_and_positions(case):
    vae, outputs = model_from_case(case), case["outputs"]
    logits = outputs["logits"]
    positions = logits.shape[0] * logits.shape[2] * logits.shape[3]
    torch.testing.assert_close(vae.kl_divergence(logits), outputs["kl_sum"] / positions, rtol=1e-4, atol=1e-7)


# --- the KL fix (reference defect #4) -------------------------------------------------------------------------


def test_kl_term_does_not_grow_with_batch_size():
    vae = tiny_vae()
    with torch.no_grad():
        vae.encoder[-1].weight.mul_(20)  # peaked logits, so the KL is far from zero
    one = images(1)

    def kl_term(batch: torch.Tensor) -> torch.Tensor:
        vae.kl_div_loss_weight = 0.0
        torch.manual_seed(1)
        without = vae(batch, return_loss=True)
        vae.kl_div_loss_weight = 1.0
        torch.manual_seed(1)
        return vae(batch, return_loss=True) - without

    kl1, kl8 = kl_term(one), kl_term(one.repeat(8, 1, 1, 1))
    assert kl1 > 0.1
    torch.testing.assert_close(kl8, kl1, rtol=1e-4, atol=1e-5)


def test_kl_is_zero_for_uniform_logits_and_log_n_for_one_hot():
    vae = tiny_vae()
    uniform = torch.zeros(3, 32, 4, 4)
    peaked = torch.full((3, 32, 4, 4), -1e4)
    peaked[:, 5] = 0
    assert vae.kl_divergence(uniform).abs() < 1e-6
    torch.testing.assert_close(vae.kl_divergence(peaked), torch.tensor(32.0).log())


def test_entropy_loss_closed_forms():
    vae = tiny_vae(entropy_loss_weight=1.0, diversity_gamma=0.5)
    log32 = torch.tensor(32.0).log()
    uniform = torch.zeros(2, 32, 4, 4)  # every position flat: per-position entropy log 32, batch entropy log 32
    torch.testing.assert_close(vae.entropy_loss(uniform), log32 * (1 - 0.5))
    spread = torch.full((2, 32, 4, 4), -1e4)  # each of the 32 positions confident on its own code
    spread.view(2, 32, 16).scatter_(1, torch.arange(32).view(2, 1, 16), 0.0)
    torch.testing.assert_close(vae.entropy_loss(spread), -0.5 * log32)
    collapsed = torch.full((2, 32, 4, 4), -1e4)  # every position confident on code 5
    collapsed[:, 5] = 0
    torch.testing.assert_close(vae.entropy_loss(collapsed), torch.tensor(0.0))


def test_entropy_loss_weight_adds_the_weighted_term():
    x = images(3)
    vae = tiny_vae(entropy_loss_weight=0.0)
    plain = tiny_vae(entropy_loss_weight=0.3, diversity_gamma=2.0)
    plain.load_state_dict(vae.state_dict())
    torch.manual_seed(0)
    base = vae(x, return_loss=True)
    torch.manual_seed(0)
    with_entropy = plain(x, return_loss=True)
    term = plain.entropy_loss(plain(x, return_logits=True))
    torch.testing.assert_close(with_entropy, base + 0.3 * term)


def test_entropy_loss_makes_positions_confident_and_spreads_the_batch():
    """A few steps on the entropy term alone, from flat logits: per-position entropy falls, batch entropy stays."""
    torch.manual_seed(0)
    logits = (torch.randn(4, 32, 4, 4) * 0.01).requires_grad_()
    vae = tiny_vae(entropy_loss_weight=1.0, diversity_gamma=1.0)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(100):
        loss = vae.entropy_loss(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = logits.detach().softmax(1)
    per_position = -(q * q.log()).sum(1).mean()
    mean_q = q.mean((0, 2, 3))
    assert per_position < 0.1, per_position
    assert -(mean_q * mean_q.log()).sum() > 0.9 * torch.tensor(32.0).log()


# --- outputs, gradients, dtypes --------------------------------------------------------------------------------


def test_returned_images_lie_in_unit_interval_even_when_decoder_overshoots():
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder[-1].weight.mul_(100)
    x, codes = images(2), torch.randint(0, 32, (2, 16))
    raw = vae.decoder(vae.codebook(codes).transpose(1, 2).reshape(2, 16, 4, 4))
    assert raw.min() < -1 and raw.max() > 1  # in normalised space this maps outside [0, 1]
    loss, recons = vae(x, return_loss=True, return_recons=True)
    for out in (vae(x), recons, vae.decode(codes)):
        assert out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1
        assert ((out == 0) | (out == 1)).any()  # the clamp did something


@pytest.mark.parametrize("reinmax", [False, True], ids=["straight_through", "reinmax"])
def test_straight_through_gives_encoder_gradients(reinmax):
    vae = tiny_vae(straight_through=True, reinmax=reinmax)
    torch.manual_seed(3)
    vae(images(2), return_loss=True).backward()
    for name, param in vae.encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_reinmax_changes_gradients_but_not_the_forward_value():
    x = images(2)
    results = []
    for reinmax in (False, True):
        torch.manual_seed(0)
        vae = tiny_vae(straight_through=True, reinmax=reinmax)
        torch.manual_seed(5)
        loss = vae(x, return_loss=True)
        loss.backward()
        results.append((loss.detach(), vae.encoder[0][0].weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert not torch.allclose(results[0][1], results[1][1])


def test_bf16_autocast_forward_and_backward_run_on_cpu():
    vae = tiny_vae(num_resnet_blocks=1, straight_through=True, reinmax=True, kl_div_loss_weight=0.1)
    x = images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = vae(x, return_logits=True)
        loss, recons = vae(x, return_loss=True, return_recons=True)
        codes = vae.get_codebook_indices(x)
        decoded = vae.decode(codes)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.encoder.parameters())
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    for out in (recons, decoded):
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_get_codebook_indices_shape_and_restores_training_mode():
    vae = tiny_vae()
    vae.train()
    codes = vae.get_codebook_indices(images(3))
    assert codes.shape == (3, vae.fmap_size ** 2) and not codes.requires_grad
    assert vae.training


# --- config ---------------------------------------------------------------------------------------------------


def test_defaults_match_reference_but_the_entropy_terms():
    cfg = DiscreteVAE().config
    assert cfg == dict(image_size=256, num_tokens=512, codebook_dim=512, num_layers=3, num_resnet_blocks=0,
                       hidden_dim=64, channels=3, smooth_l1_loss=False, temperature=0.9, straight_through=False,
                       reinmax=False, kl_div_loss_weight=0.0,
                       entropy_loss_weight=0.001, diversity_gamma=3.0,  # the reference has none: its codebook collapses
                       normalization=[[0.5, 0.5, 0.5, 0.0], [0.5, 0.5, 0.5, 1.0]])
    assert vae_from_reference_config({}).config == {**cfg, "entropy_loss_weight": 0.0}


def test_rebuild_from_json_config_gives_identical_outputs():
    vae = tiny_vae(num_resnet_blocks=1, channels=1, normalization=((0.4,), (0.3,)), kl_div_loss_weight=0.5)
    rebuilt = DiscreteVAE(**json.loads(json.dumps(vae.config)))
    rebuilt.load_state_dict(vae.state_dict(), strict=True)
    x = images(2, channels=1)
    assert rebuilt.fmap_size == vae.fmap_size == 4
    torch.manual_seed(9)
    loss_a, rec_a = vae(x, return_loss=True, return_recons=True)
    torch.manual_seed(9)
    loss_b, rec_b = rebuilt(x, return_loss=True, return_recons=True)
    assert torch.equal(loss_a, loss_b) and torch.equal(rec_a, rec_b)
    assert torch.equal(vae.get_codebook_indices(x), rebuilt.get_codebook_indices(x))


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, error, match", [
    (torch.rand(2, 3, 8, 8), ValueError, r"shape \(batch, 3, 16, 16\), got \(2, 3, 8, 8\)"),
    (torch.rand(2, 1, 16, 16), ValueError, r"shape \(batch, 3, 16, 16\), got \(2, 1, 16, 16\)"),
    (torch.rand(3, 16, 16), ValueError, r"got \(3, 16, 16\)"),
    (torch.randint(0, 255, (2, 3, 16, 16)), TypeError, r"floating-point.*got dtype torch.int64"),
    ([[0.5]], TypeError, r"torch.Tensor, got list"),
], ids=["size", "channels", "ndim", "int_dtype", "not_tensor"])
def test_bad_images_raise_informative_errors(bad, error, match):
    vae = tiny_vae()
    with pytest.raises(error, match=match):
        vae(bad)
    with pytest.raises(error, match=match):
        vae.get_codebook_indices(bad)


@pytest.mark.parametrize("bad, error, match", [
    (torch.full((2, 16), 32), ValueError, r"\[0, 32\), got values in \[32, 32\]"),
    (torch.full((2, 16), -1), ValueError, r"\[0, 32\), got values in \[-1, -1\]"),
    (torch.zeros(2, 16), TypeError, r"integer tensor.*got dtype torch.float32"),
    (torch.zeros(2, 9, dtype=torch.long), ValueError, r"16 tokens per image \(4x4\), got 9"),
    (torch.zeros(16, dtype=torch.long), ValueError, r"2 dimensions.*got shape \(16,\)"),
], ids=["too_high", "negative", "float", "seq_len", "ndim"])
def test_bad_codes_in_decode_raise_informative_errors(bad, error, match):
    with pytest.raises(error, match=match):
        tiny_vae().decode(bad)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image_size=24), ValueError, r"power of 2, got 24"),
    (dict(num_layers=0), ValueError, r"num_layers must be an int >= 1, got 0"),
    (dict(image_size=4, num_layers=3), ValueError, r"at least 2\*\*num_layers = 8, got 4"),
    (dict(num_tokens=0), ValueError, r"num_tokens must be an int >= 1, got 0"),
    (dict(num_resnet_blocks=-1), ValueError, r"num_resnet_blocks must be an int >= 0, got -1"),
    (dict(image_size=16.0), TypeError, r"image_size must be an int, got float"),
    (dict(temperature=0.0), ValueError, r"temperature must be in \(0, inf\), got 0.0"),
    (dict(entropy_loss_weight=-1.0), ValueError, r"entropy_loss_weight must be in \[0, inf\), got -1.0"),
    (dict(diversity_gamma=float("nan")), ValueError, r"diversity_gamma must be"),
    (dict(channels=4, normalization=((0.5,), (0.5,))), ValueError, r"needs 4 means and stds.*got 1 and 1"),
    (dict(normalization=((0.5,) * 3, (0.5, 0.0, 0.5))), ValueError, r"stds must be non-zero"),
    (dict(normalization="rgb"), TypeError, r"pair \(means, stds\)"),
], ids=["not_pow2", "no_layers", "too_small", "no_tokens", "neg_resblocks", "float_size", "temp", "norm_len",
        "zero_std", "norm_type", "entropy_weight", "gamma_nan"])
def test_bad_constructor_arguments_raise_informative_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_vae(**kwargs)


def test_non_positive_call_temperature_raises():
    with pytest.raises(ValueError, match=r"temp must be in \(0, inf\), got 0"):
        tiny_vae()(images(1), temp=0)


# --- codebook usage -------------------------------------------------------------------------------------------


def test_codebook_usage_on_hand_made_codes():
    stats = codebook_usage(torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]), num_tokens=4)
    assert isinstance(stats, CodebookUsage)
    assert stats.counts.tolist() == [4, 4, 0, 0]
    assert stats.usage == 0.5
    assert stats.perplexity == pytest.approx(2.0)
    collapsed = codebook_usage(torch.zeros(10, dtype=torch.long), num_tokens=8)
    assert collapsed.usage == 1 / 8 and collapsed.perplexity == pytest.approx(1.0)
    uniform = codebook_usage(torch.arange(8).repeat(3), num_tokens=8)
    assert uniform.usage == 1.0 and uniform.perplexity == pytest.approx(8.0)


def test_codebook_usage_rejects_out_of_range_and_empty_codes():
    with pytest.raises(ValueError, match=r"\[0, 4\), got values in \[0, 4\]"):
        codebook_usage(torch.tensor([0, 4]), num_tokens=4)
    with pytest.raises(ValueError, match="at least one code"):
        codebook_usage(torch.zeros(0, dtype=torch.long), num_tokens=4)


def test_vae_codebook_usage_counts_every_token_of_the_batch():
    vae = tiny_vae()
    x = images(5)
    stats = vae.codebook_usage(x)
    assert stats.counts.sum() == 5 * vae.fmap_size ** 2
    assert torch.equal(stats.counts, torch.bincount(vae.get_codebook_indices(x).flatten(), minlength=32))
    assert 1.0 <= stats.perplexity <= 32 and 0 < stats.usage <= 1


# --- training -------------------------------------------------------------------------------------------------


def _usage_after_adam(steps: int = 200, **overrides):
    """Train a default dVAE (32-pixel images) on rendered shapes with plain Adam; codebook usage of held images."""
    from dalle_core.demo.shapes import ShapesDataset

    data = ShapesDataset(1000, image_size=32, seed=0)
    images = torch.stack([data.sample(i)[1] for i in range(len(data))])
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, **overrides)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = vae(images[torch.randint(0, len(images), (16,))], return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():  # the mean probability of the chosen code: 1 = confident, 1/512 = a coin toss
        confidence = float(vae(images[:500], return_logits=True).softmax(1).amax(1).mean())
    return vae.codebook_usage(images[:500]), confidence


@pytest.mark.slow
def test_default_constructor_and_plain_adam_keep_the_codebook_in_use_with_confident_codes():
    default, default_confidence = _usage_after_adam()
    collapsed, _ = _usage_after_adam(entropy_loss_weight=0.0)  # the reference's default
    flat, flat_confidence = _usage_after_adam(kl_div_loss_weight=0.01, entropy_loss_weight=0.0)  # our old default
    assert collapsed.perplexity < 8 and collapsed.usage < 0.05, collapsed
    assert default.usage > 3 * collapsed.usage and default.perplexity > 2 * collapsed.perplexity, default
    # the KL to uniform keeps codes in use by flattening every posterior: its argmax codes are near coin tosses
    assert default_confidence > 2.5 * flat_confidence, (default_confidence, flat_confidence)  # measured: 0.30, 0.095


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    vae = tiny_vae(hidden_dim=16, kl_div_loss_weight=1e-3)
    # smooth synthetic images: colour gradients, easy to reconstruct
    ramp = torch.linspace(0, 1, 16)
    x = torch.stack([torch.stack([ramp.outer(torch.ones(16)) * a, torch.ones(16).outer(ramp) * b,
                                  torch.full((16, 16), c)]) for a, b, c in torch.rand(4, 3)])
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = vae(x, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
