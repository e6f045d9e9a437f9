"""Training taming's VQGAN here: `vqgan_architecture`, a trainable `VQGanVAE` (VectorQuantizer2's step, dead-code
restarts), `VQGANLoss` (one backward pass for the VQGAN and its discriminator), `LPIPS` from user-given weight
files, and `export_taming` back to taming's own .ckpt + YAML.

Set DALLE_CORE_TOKREF_PYTHON to the taming reference venv's python to also check the export, the loss and LPIPS
against taming's own modules (`test_live_taming_loads_the_export_and_computes_the_same_loss`).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from dalle_core import DALLE, CheckpointError
from dalle_core.demo.shapes import ShapesDataset
from dalle_core.models.vqgan import (LPIPS, NLayerDiscriminator, VectorQuantizer, VQGANLoss, VQGanVAE, export_taming,
                                     hinge_d_loss, vqgan_architecture)
from dalle_core.models.vqgan.losses import VGG16_CONVS

from helpers import FIXTURE_DIR, TESTS_DIR, one_thread  # noqa: F401  (one_thread: autouse)

# 16x16 images, an 8x8 grid of 16 codes: the smallest taming VQGAN (GroupNorm needs 32 channels a level)
TINY = dict(image_size=16, num_layers=1, num_tokens=16, codebook_dim=8, hidden_dim=32)
EXACT = "donot_use_mm_for_euclid_dist"  # torch.cdist without the matrix-product shortcut, which rounds


def tiny_vae(**kwargs) -> VQGanVAE:
    return VQGanVAE(architecture=vqgan_architecture(**TINY), image_size=16, trainable=True, **kwargs)


def tiny_loss(**kwargs) -> VQGANLoss:
    return VQGANLoss(**{"disc_layers": 2, "disc_channels": 8, **kwargs})


def shapes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    data = ShapesDataset(n, image_size=size, seed=seed)
    return torch.stack([data.sample(i)[1] for i in range(n)])


# --- the architecture -------------------------------------------------------------------------------------------


def test_vqgan_architecture_describes_a_taming_vqmodel():
    arch = vqgan_architecture()
    assert arch == {"kind": "vq", "embed_dim": 32, "n_embed": 128, "ddconfig": {
        "double_z": False, "z_channels": 32, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
        "resamp_with_conv": True}}
    vae = VQGanVAE(architecture=arch, image_size=32)
    assert (vae.num_layers, vae.fmap_size, vae.num_tokens) == (2, 8, 128)
    assert vae.model.encoder.down[2].attn and vae.model.decoder.up[2].attn  # attention at the 8x8 level
    other = vqgan_architecture(image_size=64, num_layers=3, num_tokens=512, codebook_dim=16, hidden_dim=64,
                               num_resnet_blocks=2, attention=False, channel_mult=(1, 1, 2, 4))
    assert other["ddconfig"]["ch_mult"] == [1, 1, 2, 4] and other["ddconfig"]["attn_resolutions"] == []
    assert (other["n_embed"], other["embed_dim"], other["ddconfig"]["z_channels"]) == (512, 16, 16)
    assert other["ddconfig"]["num_res_blocks"] == 2 and other["ddconfig"]["ch"] == 64


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(hidden_dim=48), ValueError, "multiple of 32"),
    (dict(image_size=30), ValueError, "multiple of 2\\*\\*num_layers = 4"),
    (dict(num_resnet_blocks=0), ValueError, "num_resnet_blocks must be an int >= 1"),
    (dict(num_tokens=2.5), TypeError, "num_tokens must be an int"),
    (dict(channel_mult=(1, 2)), ValueError, "needs num_layers \\+ 1 = 3 entries"),
    (dict(channel_mult="12"), TypeError, "channel_mult must be a sequence"),
    (dict(attention="yes"), TypeError, "attention must be True or False"),
    (dict(dropout=1.0), ValueError, "dropout must be in"),
    (dict(hidden_dim=4096, num_resnet_blocks=64), ValueError, "G weights; at most"),
])
def test_vqgan_architecture_refuses_bad_sizes(kwargs, error, message):
    with pytest.raises(error, match=message):
        vqgan_architecture(**kwargs)


# --- frozen by default, trainable on request --------------------------------------------------------------------


def test_vqgans_stay_frozen_unless_built_trainable():
    ckpt, config = FIXTURE_DIR / "vqgan_vq.ckpt", FIXTURE_DIR / "vqgan_vq.yaml"
    images = torch.load(FIXTURE_DIR / "vqgan_vq_expected.pt", weights_only=True)["images"]
    for frozen in (VQGanVAE(ckpt, config, image_size=16), VQGanVAE(architecture=vqgan_architecture(**TINY),
                                                                     image_size=16)):
        assert not frozen.trainable and not frozen.training and "trainable" not in frozen.config
        assert not any(p.requires_grad for p in frozen.parameters())
        assert "model.quantize.usage" not in frozen.state_dict()  # a plain taming VQModel
    trainable = VQGanVAE(ckpt, config, image_size=16, trainable=True)  # fine-tuning a taming checkpoint
    assert trainable.training and trainable.config["trainable"] is True
    assert all(p.requires_grad for p in trainable.parameters())
    assert torch.equal(trainable.model.quantize.usage, torch.ones(32))  # a trained codebook starts alive
    codes = VQGanVAE(ckpt, config, image_size=16).get_codebook_indices(images)
    assert torch.equal(trainable.get_codebook_indices(images), codes) and codes.unique().numel() > 5
    with pytest.raises(ValueError, match="GumbelVQ is not implemented"):
        VQGanVAE(FIXTURE_DIR / "vqgan_gumbel.ckpt", FIXTURE_DIR / "vqgan_gumbel.yaml", image_size=16, trainable=True)
    with pytest.raises(TypeError, match="trainable must be True or False"):
        VQGanVAE(architecture=vqgan_architecture(**TINY), image_size=16, trainable=1)
    with pytest.raises(ValueError, match="kind 'vq'"):
        VQGanVAE(FIXTURE_DIR / "vqgan_gumbel.ckpt", FIXTURE_DIR / "vqgan_gumbel.yaml",
                 image_size=16).encode_decode(images)


def test_the_training_forward_is_taming_vectorquantizer2_and_reaches_every_weight():
    torch.manual_seed(0)
    vae = tiny_vae()
    vae.model.quantize.dead_code_threshold = 0.0  # plain VectorQuantizer2: no restart
    images = shapes(4)
    loss, recons = vae(images, return_loss=True, return_recons=True)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert recons.shape == images.shape and float(recons.detach().min()) >= 0 and float(recons.detach().max()) <= 1
    loss.backward()
    model = vae.model
    for p in (model.encoder.conv_in.weight, model.quant_conv.weight, model.quantize.embedding.weight,
              model.post_quant_conv.weight, model.decoder.conv_out.weight, vae.last_layer):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert vae.last_layer is model.decoder.conv_out.weight

    # the same numbers, computed here as taming does (legacy=True: beta on the codebook term)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(images * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 8)
        codes = torch.cdist(z, model.quantize.embedding.weight, compute_mode=EXACT).argmin(1)
        z_q = model.quantize.embedding.weight[codes]
        codebook_loss = ((z_q - z) ** 2).mean() * 1.25
        out = model.decoder(model.post_quant_conv(z_q.view(4, 8, 8, 8).permute(0, 3, 1, 2)))
        expected = (images * 2 - 1 - out).abs().mean() + codebook_loss
        recons2, cb, codes2 = vae.encode_decode(images)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cb, codebook_loss, rtol=1e-5, atol=1e-7)
    assert torch.equal(codes2.flatten(), codes) and torch.equal(vae.get_codebook_indices(images).flatten(), codes)
    torch.testing.assert_close(recons2, out)

    # straight through: the encoder's output gets exactly the gradient the quantised vectors get
    h = model.quant_conv(model.encoder(images * 2 - 1)).detach().requires_grad_(True)
    z_st, cb, _ = model.quantize.quantize(h)
    (z_st * 3).sum().backward()
    assert torch.allclose(h.grad, torch.full_like(h, 3.0))


def test_dead_codes_restart_from_the_batch_in_the_training_forward_only():
    torch.manual_seed(0)
    vae = tiny_vae()
    quantize = vae.model.quantize
    images = shapes(8)
    assert torch.equal(quantize.usage, torch.zeros(16))  # never trained: every code dead
    h = vae.model.quant_conv(vae.model.encoder(images * 2 - 1)).detach()
    vectors = h.permute(0, 2, 3, 1).reshape(-1, 8)
    vae.eval()
    vae.encode_decode(images)  # eval mode: nothing moves
    assert torch.equal(quantize.usage, torch.zeros(16))
    vae.train()
    torch.manual_seed(1)
    _, _, codes = vae.encode_decode(images)
    # every code now sits on one of the batch's vectors (distinct ones), and all of them are in use at once
    distances = torch.cdist(quantize.embedding.weight.detach(), vectors, compute_mode=EXACT)
    assert bool((distances.min(1).values < 1e-6).all()) and distances.argmin(1).unique().numel() == 16
    assert codes.unique().numel() == 16
    share = torch.bincount(codes.flatten(), minlength=16) * 16 / codes.numel()
    torch.testing.assert_close(quantize.usage, 0.9 * torch.ones(16) + 0.1 * share)
    # the same draws given torch's generator
    torch.manual_seed(0)
    first = tiny_vae()
    torch.manual_seed(1)
    first.encode_decode(images)
    assert torch.equal(first.model.quantize.embedding.weight, quantize.embedding.weight)

    # a code no vector picks fades below the threshold, then moves onto one of the batch's vectors
    with torch.no_grad():
        quantize.embedding.weight[3] = 1e3
    quantize.usage.fill_(1.0)
    steps = 0
    while bool((quantize.embedding.weight[3] == 1e3).all()):
        vae.encode_decode(images)
        steps += 1
    assert steps == 35  # 0.9**33 >= 0.03 > 0.9**34: dead after 34 forwards unused, restarted by the 35th
    assert float(torch.cdist(quantize.embedding.weight[3:4].detach(), vectors, compute_mode=EXACT).min()) < 1e-6
    # fewer vectors than dead codes, all alike and then on codes already (distance 0): restarts still draw
    small = VectorQuantizer(16, 8, track_usage=True)
    for _ in range(3):
        small.quantize(torch.zeros(1, 8, 2, 2))
    assert int((small.embedding.weight == 0).all(1).sum()) == 12 and bool((small.usage[:12] > 0.5).all())
    quantize.dead_code_threshold = 0.0
    with torch.no_grad():
        quantize.embedding.weight[5] = 1e3
    quantize.usage.fill_(0.0)
    vae.encode_decode(images)
    assert bool((quantize.embedding.weight[5] == 1e3).all())  # restarts off


# --- the loss: one backward pass --------------------------------------------------------------------------------


def test_one_backward_gives_each_side_exactly_its_own_gradient():
    torch.manual_seed(0)
    vae, loss_fn = tiny_vae(), tiny_loss(disc_start=0, disc_weight=0.8)
    vae.model.quantize.dead_code_threshold = 0.0
    images = shapes(4)
    loss, metrics = loss_fn(vae, images, step=0)
    loss.backward()
    vae_grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
    disc_grads = {n: p.grad.clone() for n, p in loss_fn.discriminator.named_parameters()}
    assert all(p.requires_grad for p in loss_fn.discriminator.parameters())  # restored after the generator term

    # taming's two passes, written out here: the generator's loss (its gradient for the VQGAN only) ...
    for p in [*vae.parameters(), *loss_fn.parameters()]:
        p.grad = None
    recons, codebook_loss, _ = vae.encode_decode(images)
    x = images * 2 - 1
    nll = (x - recons).abs().mean()
    g_loss = -loss_fn.discriminator(recons).mean()
    last = vae.model.decoder.conv_out.weight
    nll_grads = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_weight = (nll_grads.norm() / (g_grads.norm() + 1e-4)).clamp(0, 1e4).detach() * 0.8
    generator = nll + d_weight * g_loss + codebook_loss
    generator.backward()
    for n, p in vae.named_parameters():
        torch.testing.assert_close(vae_grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)
    # ... and the discriminator's (its gradient for the discriminator only)
    loss_fn.discriminator.zero_grad(set_to_none=True)
    real, fake = loss_fn.discriminator(x), loss_fn.discriminator(recons.detach())
    d_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    d_loss.backward()
    for n, p in loss_fn.discriminator.named_parameters():
        torch.testing.assert_close(disc_grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)

    torch.testing.assert_close(metrics["d_weight"], float(d_weight), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["loss"], float((generator + d_loss).detach()), rtol=1e-5, atol=1e-6)
    for key, value in (("rec_loss", nll), ("g_loss", g_loss), ("d_loss", d_loss), ("codebook_loss", codebook_loss),
                       ("logits_real", real.mean()), ("logits_fake", fake.mean())):
        torch.testing.assert_close(metrics[key], float(value.detach()), rtol=1e-5, atol=1e-6, msg=key)
    assert metrics["disc_factor"] == 1.0 and "p_loss" not in metrics


def test_the_adaptive_weight_is_tamings_formula():
    loss_fn = tiny_loss(disc_weight=0.5)
    w = torch.nn.Parameter(torch.randn(3, 4))
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    weight = loss_fn.adaptive_weight((w * a).sum(), (w * b).sum(), w)
    torch.testing.assert_close(weight, a.norm() / (b.norm() + 1e-4) * 0.5)
    assert not weight.requires_grad
    torch.testing.assert_close(loss_fn.adaptive_weight((w * a).sum(), (w * 0).sum(), w), torch.tensor(1e4 * 0.5))
    with torch.no_grad():  # no gradient to compare (taming's eval-time fallback): 0
        assert float(loss_fn.adaptive_weight((w * a).sum(), (w * b).sum(), w)) == 0.0


def test_before_disc_start_the_discriminator_is_not_run():
    torch.manual_seed(0)
    vae, loss_fn = tiny_vae(), tiny_loss(disc_start=5)
    images = shapes(4)
    loss_fn.adaptive_weight = None  # not called before disc_start (it would fail)
    calls = []
    loss_fn.discriminator.register_forward_hook(lambda *args: calls.append(1))
    loss, metrics = loss_fn(vae, images, step=4)
    loss.backward()
    assert not calls and all(p.grad is None for p in loss_fn.discriminator.parameters())
    assert metrics["disc_factor"] == 0.0 and metrics["d_weight"] == metrics["g_loss"] == metrics["d_loss"] == 0.0
    torch.testing.assert_close(metrics["loss"], metrics["rec_loss"] + metrics["codebook_loss"])
    del loss_fn.adaptive_weight  # the method again
    loss, metrics = loss_fn(vae, images, step=5)
    loss.backward()
    assert len(calls) == 3 and metrics["disc_factor"] == 1.0 and metrics["d_weight"] > 0
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        loss_fn(vae, images, step=-1)
    with pytest.raises(TypeError, match="vae must be a VQGanVAE"):
        loss_fn(torch.nn.Linear(2, 2), images, step=0)
    with pytest.raises(ValueError, match="disc_weight must be in"):
        VQGANLoss(disc_weight=-1.0)
    with pytest.raises(TypeError, match="perceptual must be an LPIPS"):
        VQGANLoss(perceptual=torch.nn.Identity())


def test_the_discriminator_has_tamings_layers_and_names():
    d = NLayerDiscriminator()
    names = [n for n, _ in d.named_parameters()]
    assert names[:3] == ["main.0.weight", "main.0.bias", "main.2.weight"] and "main.11.bias" in names
    assert [m.__class__.__name__ for m in d.main] == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d",
                                                                                "LeakyReLU"] * 3 + ["Conv2d"]
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert abs(float(d.main[2].weight.detach().std()) - 0.02) < 0.002 and d.main[2].bias is None
    torch.testing.assert_close(hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])),
                               torch.tensor(0.5 * (0.5 + 0.75)))


# --- LPIPS ------------------------------------------------------------------------------------------------------


def vgg_state(seed: int = 0) -> dict:
    """A torchvision vgg16 state dict with random weights (its classifier shrunk: it is ignored anyway)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, cin, cout in VGG16_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
    state["classifier.0.weight"], state["classifier.0.bias"] = torch.randn(4, 8), torch.zeros(4)
    return state


def lin_state(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1
            for k, c in enumerate((64, 128, 256, 512, 512))}


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    torch.save(vgg_state(), folder / "vgg16.pth")
    torch.save(lin_state(), folder / "vgg.pth")
    return folder / "vgg16.pth", folder / "vgg.pth"


def test_lpips_from_weight_files(lpips_files):
    lpips = LPIPS.from_files(*lpips_files)
    state = lpips.state_dict()
    assert torch.equal(state["net.slice2.5.weight"], vgg_state()["features.5.weight"])
    assert torch.equal(state["lin3.model.1.weight"], lin_state()["lin3.model.1.weight"])
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training  # a fixed metric
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    d = lpips(a, b.requires_grad_(True))
    assert d.shape == (2, 1, 1, 1) and bool((d > 0).all())
    torch.testing.assert_close(lpips(b, a), d)
    assert float(lpips(a, a).abs().max()) == 0.0
    d.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0

    # a VQGANLoss with it: nll adds perceptual_weight * LPIPS
    torch.manual_seed(0)
    vae, loss_fn = tiny_vae(), tiny_loss(disc_start=10, perceptual=lpips, perceptual_weight=0.5)
    images = shapes(2)
    torch.manual_seed(0)
    loss, metrics = loss_fn(vae, images, step=0)
    assert metrics["p_loss"] > 0
    torch.testing.assert_close(metrics["nll_loss"], metrics["rec_loss"] + 0.5 * metrics["p_loss"])


def test_bad_lpips_files_are_refused_clearly(tmp_path, lpips_files):
    vgg, lin = lpips_files

    def save(name, obj):
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    nan = {**lin_state(), "lin2.model.1.weight": torch.full((1, 256, 1, 1), float("nan"))}
    with pytest.raises(CheckpointError, match="'lin2.model.1.weight' holds NaN"):
        LPIPS.from_files(vgg, save("nan.pth", nan))
    shape = {**vgg_state(), "features.7.weight": torch.zeros(128, 128, 1, 1)}
    with pytest.raises(CheckpointError, match=r"'features.7.weight' has shape \(128, 128, 1, 1\), expected "
                                              r"\(128, 128, 3, 3\)"):
        LPIPS.from_files(save("shape.pth", shape), lin)
    missing = {k: v for k, v in vgg_state().items() if k != "features.28.bias"}
    with pytest.raises(CheckpointError, match=r"lacks 1 of the 26 entries.*features\.28\.bias"):
        LPIPS.from_files(save("missing.pth", missing), lin)
    with pytest.raises(CheckpointError, match=r"lacks 5 of the 5 entries"):  # the files swapped
        LPIPS.from_files(vgg, vgg)
    with pytest.raises(CheckpointError, match="not expected there.*extra"):
        LPIPS.from_files(vgg, save("extra.pth", {**lin_state(), "extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="must be a floating-point tensor, got torch.int64"):
        LPIPS.from_files(vgg, save("int.pth", {**lin_state(), "lin0.model.1.weight": torch.zeros(1, 64, 1, 1,
                                                                                               dtype=torch.long)}))
    with pytest.raises(CheckpointError, match="a mapping of names to tensors, got list"):
        LPIPS.from_files(vgg, save("list.pth", [1, 2]))
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"torch.load\(weights_only=True\)"):
        LPIPS.from_files(vgg, tmp_path / "text.pth")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({**lin_state(), "x": RunsACommand(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"weights_only"):
        LPIPS.from_files(vgg, evil)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        LPIPS.from_files(vgg, tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="directory"):
        LPIPS.from_files(tmp_path, lin)


class RunsACommand:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- training, saving, exporting --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A tiny VQGAN and its loss after 30 steps of a plain Adam loop on shapes (the GAN on from step 20)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vae, loss_fn = tiny_vae(), tiny_loss(disc_start=20)
    opt = torch.optim.Adam([*vae.parameters(), *loss_fn.parameters()], lr=2e-3)
    images = shapes(64)
    history = []
    for step in range(30):
        loss, metrics = loss_fn(vae, images[torch.randint(0, 64, (8,))], step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    torch.set_num_threads(threads)
    return vae, loss_fn, history, images


def test_a_short_training_loop_lowers_the_loss(trained):
    vae, loss_fn, history, images = trained
    first = sum(m["rec_loss"] for m in history[:5]) / 5
    last = sum(m["rec_loss"] for m in history[-5:]) / 5
    assert last < 0.7 * first
    assert all(m["disc_factor"] == (1.0 if i >= 20 else 0.0) for i, m in enumerate(history))
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in history)
    assert vae.codebook_usage(images).usage >= 0.5


def test_a_trained_vqgan_saves_and_reloads(trained, tmp_path):
    vae, _, _, images = trained
    vae.save_pretrained(tmp_path)
    again = VQGanVAE.from_pretrained(tmp_path)
    assert again.config == vae.config and again.config["trainable"] is True
    assert torch.equal(again.model.quantize.usage, vae.model.quantize.usage)
    assert torch.equal(again.get_codebook_indices(images), vae.get_codebook_indices(images))
    assert torch.equal(again.decode(vae.get_codebook_indices(images[:2])), vae.decode(vae.get_codebook_indices(
        images[:2])))


def test_export_to_taming_files_reads_back_with_the_same_codes(trained, tmp_path, lpips_files):
    vae, loss_fn, _, images = trained
    ckpt_path, yaml_path = export_taming(vae, tmp_path / "out", loss=loss_fn, global_step=30)
    assert (ckpt_path.name, yaml_path.name) == ("model.ckpt", "model.yaml")
    ckpt = torch.load(ckpt_path, weights_only=True)  # plain tensors and numbers
    assert ckpt["global_step"] == 30
    state = ckpt["state_dict"]
    model_keys = {k for k in state if not k.startswith("loss.")}
    assert model_keys == set(vae.model.state_dict()) - {"quantize.usage"}
    assert {k[len("loss.discriminator."):] for k in state if k.startswith("loss.")} == set(
        loss_fn.discriminator.state_dict())
    doc = yaml.safe_load(yaml_path.read_text())
    params = doc["model"]["params"]
    assert doc["model"]["target"] == "taming.models.vqgan.VQModel"
    assert (params["embed_dim"], params["n_embed"]) == (8, 16)
    assert params["ddconfig"] == {k: v for k, v in vae.config["architecture"]["ddconfig"].items()
                                  if k != "resamp_with_conv"}
    assert params["lossconfig"] == {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                    "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 20,
                                               "disc_weight": 0.8, "disc_factor": 1.0, "codebook_weight": 1.0,
                                               "perceptual_weight": 0.0, "disc_num_layers": 2, "disc_ndf": 8,
                                               "disc_loss": "hinge"}}
    loaded = VQGanVAE(ckpt_path, yaml_path, image_size=16)
    codes = vae.get_codebook_indices(images)
    assert torch.equal(loaded.get_codebook_indices(images), codes)
    assert torch.equal(loaded.decode(codes[:4]), vae.decode(codes[:4]))

    # without a loss: taming's DummyLoss; with an LPIPS: its weights where taming keeps them
    export_taming(vae, tmp_path / "bare")
    assert yaml.safe_load((tmp_path / "bare" / "model.yaml").read_text())["model"]["params"]["lossconfig"] == {
        "target": "taming.modules.losses.vqperceptual.DummyLoss"}
    with_lpips = tiny_loss(perceptual=LPIPS.from_files(*lpips_files))
    ckpt_path, _ = export_taming(vae, tmp_path / "lpips", loss=with_lpips)
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    assert torch.equal(state["loss.perceptual_loss.lin0.model.1.weight"], lin_state()["lin0.model.1.weight"])
    assert "loss.perceptual_loss.net.slice5.28.weight" in state and "loss.perceptual_loss.scaling_layer.shift" in state
    with pytest.raises(ValueError, match="GumbelVQ"):
        export_taming(VQGanVAE(FIXTURE_DIR / "vqgan_gumbel.ckpt", FIXTURE_DIR / "vqgan_gumbel.yaml", image_size=16),
                      tmp_path / "g")
    with pytest.raises(TypeError, match="loss must be a VQGANLoss"):
        export_taming(vae, tmp_path / "x", loss=lpips_files)


@pytest.mark.parametrize("trainable", [False, True])
def test_a_dalle_over_a_built_vqgan_freezes_it_trains_and_generates(trainable):
    torch.manual_seed(0)
    vae = VQGanVAE(architecture=vqgan_architecture(image_size=32, num_tokens=32, codebook_dim=8), image_size=32,
                   trainable=trainable)
    dalle = DALLE(vae=vae, num_text_tokens=40, text_seq_len=6, dim=32, depth=1, heads=2, dim_head=16)
    assert not any(p.requires_grad for p in vae.parameters())
    text, images = torch.randint(1, 40, (2, 6)), shapes(2, size=32)
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in vae.parameters())
    out = dalle.generate_images(text, use_cache=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1


# --- taming itself ----------------------------------------------------------------------------------------------

LIVE_SCRIPT = r'''
"""Run by the taming reference venv: load an export with taming's own modules and compute its outputs and loss."""
import contextlib, io, sys, types
from pathlib import Path

import torch
from torch import nn

out_dir, reference_dir = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, reference_dir)

# taming's lpips.py imports torchvision (not installed there) only for `models.vgg16(pretrained=True).features`:
# a stand-in with torchvision's layer layout (its weights are replaced from the export below)
def vgg16(pretrained=False, **kwargs):
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return types.SimpleNamespace(features=nn.Sequential(*layers))

torchvision = types.ModuleType("torchvision")
torchvision.models = types.SimpleNamespace(vgg16=vgg16)
sys.modules["torchvision"] = torchvision
try:  # taming.util imports tqdm for its downloads, which are not used here
    import tqdm
except ImportError:
    sys.modules["tqdm"] = types.ModuleType("tqdm")
    sys.modules["tqdm"].tqdm = None
import taming.modules.losses.lpips as lpips_module
empty = out_dir / "empty.pth"
torch.save({}, empty)
lpips_module.get_ckpt_path = lambda *args, **kwargs: str(empty)  # nothing downloaded; loaded below

from omegaconf import OmegaConf
from taming.modules.losses.vqperceptual import VQLPIPSWithDiscriminator
from make_vqgan_fixtures import RefVQModel

config = OmegaConf.to_container(OmegaConf.load(out_dir / "export" / "model.yaml"))
params = config["model"]["params"]
state = torch.load(out_dir / "export" / "model.ckpt", map_location="cpu")["state_dict"]
model = RefVQModel("vq", params["ddconfig"], params["n_embed"], params["embed_dim"])
model.load_state_dict({k: v for k, v in state.items() if not k.startswith("loss.")}, strict=True)
with contextlib.redirect_stdout(io.StringIO()):
    loss = VQLPIPSWithDiscriminator(**params["lossconfig"]["params"])
loss.load_state_dict({k[len("loss."):]: v for k, v in state.items() if k.startswith("loss.")}, strict=True)

inputs = torch.load(out_dir / "inputs.pt")
images, step = inputs["images"], int(inputs["step"])
x = images * 2 - 1
with torch.no_grad():
    quant, _, (_, _, codes) = model.encode(x)
    decoded = (model.decode(model.quantize.embedding(codes).view(quant.shape[0], quant.shape[2], quant.shape[3], -1)
                            .permute(0, 3, 1, 2)).clamp(-1, 1) + 1) * 0.5
# VQModel.training_step's two passes (taming's loss: optimizer 0, the generator; 1, the discriminator)
quant, qloss, _ = model.encode(x)
xrec = model.decode(quant)
ae_loss, ae_log = loss(qloss, x, xrec, 0, step, last_layer=model.decoder.conv_out.weight, split="train")
d_loss, d_log = loss(qloss, x, xrec, 1, step, last_layer=model.decoder.conv_out.weight, split="train")
p_loss = loss.perceptual_loss(x, xrec.detach()).detach()
logs = {k.split("/")[1]: float(v) for k, v in {**ae_log, **d_log}.items()}
torch.save({"codes": codes.view(images.shape[0], -1), "decoded": decoded, "xrec": xrec.detach(),
            "ae_loss": ae_loss.detach(), "d_loss": d_loss.detach(), "p_loss": p_loss, "logs": logs},
           out_dir / "taming.pt")
'''


@pytest.mark.live
def test_live_taming_loads_the_export_and_computes_the_same_loss(trained, tmp_path, lpips_files):
    """taming's own VQModel modules, VQLPIPSWithDiscriminator and LPIPS (in the reference venv, with torchvision's
    vgg16 layout stood in for) load the export strictly and agree: codes, decodes, reconstructions, the LPIPS
    distances, and the loss's terms (d_weight, g_loss, the generator's total, the hinge loss)."""
    python = os.environ.get("DALLE_CORE_TOKREF_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("live reference not available: set DALLE_CORE_TOKREF_PYTHON to the taming reference venv's "
                    "python (../shared/peer/setup_tokenizer_refs.sh)")
    vae, _, _, images = trained
    torch.manual_seed(0)
    loss_fn = tiny_loss(disc_start=3, perceptual=LPIPS.from_files(*lpips_files), perceptual_weight=0.7)
    batch, step = images[:4], 7
    export_taming(vae, tmp_path / "export", loss=loss_fn, global_step=step)
    torch.save({"images": batch, "step": torch.tensor(step)}, tmp_path / "inputs.pt")
    (tmp_path / "live.py").write_text(LIVE_SCRIPT)
    done = subprocess.run([python, str(tmp_path / "live.py"), str(tmp_path), str(TESTS_DIR / "reference")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = torch.load(tmp_path / "taming.pt", weights_only=True)

    codes = vae.get_codebook_indices(batch)
    assert torch.equal(codes, ref["codes"]) and codes.unique().numel() > 3
    torch.testing.assert_close(vae.decode(codes), ref["decoded"], atol=1e-5, rtol=0)
    vae.eval()  # no restart: the same codebook as the export's
    ours, metrics = loss_fn(vae, batch, step)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode_decode(batch)[0], ref["xrec"], atol=1e-5, rtol=0)
    vae.train()
    logs = ref["logs"]
    torch.testing.assert_close(metrics["p_loss"], float(ref["p_loss"].mean()), rtol=1e-4, atol=1e-6)
    for ours_key, taming_key in (("codebook_loss", "quant_loss"), ("nll_loss", "nll_loss"), ("g_loss", "g_loss"),
                                 ("d_weight", "d_weight"), ("logits_real", "logits_real"),
                                 ("logits_fake", "logits_fake"), ("disc_factor", "disc_factor")):
        torch.testing.assert_close(metrics[ours_key], logs[taming_key], rtol=1e-4, atol=1e-6, msg=ours_key)
    torch.testing.assert_close(metrics["d_loss"], logs["disc_loss"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(float(ours.detach()), float(ref["ae_loss"] + ref["d_loss"]), rtol=1e-4, atol=1e-6)
