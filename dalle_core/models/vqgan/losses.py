"""taming-transformers' VQGAN training loss: `VQGANLoss` (taming's `VQLPIPSWithDiscriminator` with the hinge loss),
its PatchGAN `NLayerDiscriminator`, `hinge_d_loss`, and the `LPIPS` perceptual loss built from weight files the
user provides.

Same parameter names as taming's modules (`main.0.weight` ... for the discriminator; `net.slice1.0.weight`,
`lin0.model.1.weight`, `scaling_layer.shift` ... for LPIPS), so that `export.export_taming` writes state dicts
taming's own loss loads (as `loss.discriminator.*` and `loss.perceptual_loss.*`).

Differences from taming, on purpose:

* One optimizer and one backward pass. taming alternates two optimizers (generator, then discriminator) over two
  forward passes of its loss; `VQGANLoss.forward` returns the sum of the generator's loss and the
  discriminator's, built so that each part's gradient reaches only its own parameters (the discriminator's
  parameters get no gradient from the generator's term, the VQGAN's none from the discriminator's hinge loss,
  which sees detached reconstructions). One backward pass of the sum gives each side exactly the gradient
  taming's two passes give it; both sides then step on the same batch.
* Before `disc_start` the discriminator is not run at all (taming runs it and multiplies its terms by 0, and
  computes the adaptive weight's two gradients every step).
* LPIPS is a fixed metric: taming's keeps an `nn.Dropout` before each `lin` layer, which is active whenever the
  loss module is in training mode (as it is while taming's VQModel trains); here that slot is an identity.
* Nothing is downloaded: `LPIPS.from_files` reads the VGG16 and LPIPS weights from files the user fetched (see
  there), with `torch.load(weights_only=True)` (no code runs) and every tensor checked.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError
from ...files import check_regular_file
from ...utils import check_float, check_int

__all__ = ["NLayerDiscriminator", "hinge_d_loss", "LPIPS", "VQGANLoss", "VGG16_URL", "LPIPS_URL",
           "VGG16_CONVS", "MAX_WEIGHTS_BYTES"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's VGG16 (ImageNet) weights
LPIPS_URL = "https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1"  # taming's vgg.pth (LPIPS v0.1 lin)
MAX_WEIGHTS_BYTES = 2**30  # torchvision's vgg16 file is 528 MB (its classifier is most of it)

# torchvision's vgg16().features: (index, in, out) of each 3x3 conv (each followed by a ReLU), max pools at 4, 9,
# 16, 23 and 30; LPIPS reads the ReLU outputs that end each of its five slices
VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512))
_POOLS = (4, 9, 16, 23)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # taming's vgg16.slice1 ... slice5: features[a:b]
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


# --- discriminator ----------------------------------------------------------------------------------------------


def _weights_init(module: nn.Module) -> None:
    """taming's `weights_init`: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0)


class NLayerDiscriminator(nn.Module):
    """taming's PatchGAN discriminator (pix2pix's): a 4x4 stride-2 conv and LeakyReLU(0.2), then `n_layers` 4x4
    convs without bias (stride 2, the last stride 1) each with BatchNorm and LeakyReLU, channels doubling up to
    8 * ndf, and a 4x4 conv to one logit per patch; weights initialised as taming's `weights_init`.

    Args:
        input_nc: image channels.
        ndf: channels of the first conv.
        n_layers: convs between the first and the last.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        check_int("input_nc", input_nc)
        check_int("ndf", ndf)
        check_int("n_layers", n_layers)
        layers: List[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_weights_init)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (batch, 1, h, w), one per patch, of images in [-1, 1]."""
        return self.main(images)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """taming's hinge loss of a discriminator: (mean(relu(1 - real)) + mean(relu(1 + fake))) / 2."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """Run with `module`'s parameters not requiring grad (gradients still flow through it to its input)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# --- LPIPS ------------------------------------------------------------------------------------------------------


class _ScalingLayer(nn.Module):
    """LPIPS's input scaling, (x - shift) / scale, for images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _VGG16Slices(nn.Module):
    """torchvision's vgg16().features[:30] cut into LPIPS's five slices; each layer keeps its torchvision index
    as its name (`slice2.5.weight` is `features.5.weight`)."""

    def __init__(self):
        super().__init__()
        convs = {index: (cin, cout) for index, cin, cout in VGG16_CONVS}
        for number, (start, stop) in enumerate(_SLICES, 1):
            part = nn.Sequential()
            for index in range(start, stop):
                if index in convs:
                    layer: nn.Module = nn.Conv2d(*convs[index], 3, padding=1)
                elif index in _POOLS:
                    layer = nn.MaxPool2d(2, stride=2)
                else:
                    layer = nn.ReLU()
                part.add_module(str(index), layer)
            setattr(self, f"slice{number}", part)

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = []
        for number in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{number}")(x)
            outs.append(x)
        return outs


class _NetLinLayer(nn.Module):
    """A 1x1 conv to one channel, no bias (`model.1`; taming's `model.0` is a Dropout, see the module docstring)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


def _normalize_tensor(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """The LPIPS perceptual distance (VGG16 variant, v0.1) as taming computes it: both images scaled, through
    VGG16's features; at the five ReLU outputs the features are unit-normalised over channels, their squared
    difference weighted by a 1x1 conv (`lin0` ... `lin4`) and averaged over positions; the five are summed.

    `LPIPS()` has random weights (shapes only: tests, `from_pretrained`-style rebuilding); the real ones come from
    files, with `LPIPS.from_files`. Frozen (no parameter requires grad; gradients flow to the images) and always in
    eval mode. State dict keys are taming's LPIPS's: `scaling_layer.*`, `net.slice<k>.<torchvision index>.*`,
    `lin<k>.model.1.weight`.
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Slices()
        for k, channels in enumerate(_LPIPS_CHANNELS):
            setattr(self, f"lin{k}", _NetLinLayer(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        """Stays in eval mode: a fixed metric (its layers behave the same in both modes anyway)."""
        return super().train(False)

    @classmethod
    def from_files(cls, vgg_path: Union[str, os.PathLike], lpips_path: Union[str, os.PathLike]) -> "LPIPS":
        """LPIPS with the VGG16 weights in `vgg_path` and the LPIPS `lin` weights in `lpips_path`.

        dalle_core downloads nothing; fetch them by hand:

        * `vgg_path`: torchvision's ImageNet VGG16 state dict, `vgg16-397923af.pth` from VGG16_URL (what
          `torchvision.models.vgg16(pretrained=True)` loads; only its `features.*` entries are used, its
          `classifier.*` entries are ignored).
        * `lpips_path`: taming's `vgg.pth` from LPIPS_URL (what taming's LPIPS downloads as "vgg_lpips"; the same
          numbers as LPIPS's own `lpips/weights/v0.1/vgg.pth`): the entries `lin0.model.1.weight` ...
          `lin4.model.1.weight`.

        Both are read with `torch.load(weights_only=True)` from regular files of at most MAX_WEIGHTS_BYTES; a file
        that is not such a state dict, lacks an entry, has one of another shape or holding NaN or infinite values,
        or holds entries of something else raises CheckpointError naming the file and the entry.
        """
        vgg = _read_weights(vgg_path, "VGG16 weights (torchvision's vgg16 state dict)")
        lin = _read_weights(lpips_path, "LPIPS weights (taming's vgg.pth)")
        model = cls()
        expected = model.state_dict()
        # the scaling layer's constants are LPIPS's own, in no file
        weights: Dict[str, Tensor] = {k: v for k, v in expected.items() if k.startswith("scaling_layer.")}
        vgg_names = {f"features.{name.split('.', 2)[2]}": name for name in expected if name.startswith("net.")}
        _take(vgg, vgg_path, vgg_names, expected, weights, ignored=("classifier.",))
        _take(lin, lpips_path, {name: name for name in expected if name.startswith("lin")}, expected, weights)
        model.load_state_dict(weights)
        return model

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Distances (batch, 1, 1, 1) between images in [-1, 1] (taming's LPIPS.forward)."""
        outs0, outs1 = self.net(self.scaling_layer(input)), self.net(self.scaling_layer(target))
        total: Optional[Tensor] = None
        for k, (a, b) in enumerate(zip(outs0, outs1)):
            diff = (_normalize_tensor(a) - _normalize_tensor(b)) ** 2
            value = getattr(self, f"lin{k}").model(diff).mean([2, 3], keepdim=True)
            total = value if total is None else total + value
        return total


def _read_weights(path: Union[str, os.PathLike], what: str) -> Mapping[str, Any]:
    """A state dict read with torch.load(weights_only=True), or CheckpointError naming the file."""
    path = check_regular_file(path, MAX_WEIGHTS_BYTES, what=what, error=CheckpointError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, ImportError) as err:
        raise CheckpointError(f"{path}: not a file torch.load(weights_only=True) reads as a state dict; expected "
                              f"{what}: {type(err).__name__}: {str(err)[:300]}") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected {what}, a mapping of names to tensors, got {type(state).__name__}")
    return state


def _take(state: Mapping[str, Any], path: Any, names: Mapping[str, str], expected: Mapping[str, Tensor],
          out: Dict[str, Tensor], ignored: Tuple[str, ...] = ()) -> None:
    """Copy `state[file_name]` into `out[our_name]` for every (file_name, our_name) of `names`, each checked."""
    missing = [k for k in names if k not in state]
    if missing:
        raise CheckpointError(f"{path}: lacks {len(missing)} of the {len(names)} entries expected, e.g. "
                              f"{missing[:4]}; is it the right file?")
    unexpected = [k for k in state if k not in names and not k.startswith(ignored)]
    if unexpected:
        raise CheckpointError(f"{path}: holds entries that are not expected there, e.g. {unexpected[:4]}; is it "
                              "the right file?")
    for key, ours in names.items():
        value = state[key]
        shape = tuple(expected[ours].shape)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            found = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(f"{path}: entry {key!r} must be a floating-point tensor, got {found}")
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{path}: entry {key!r} has shape {tuple(value.shape)}, expected {shape}")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: entry {key!r} holds NaN or infinite values")
        out[ours] = value.to(torch.float32)


# --- the loss ---------------------------------------------------------------------------------------------------


class VQGANLoss(nn.Module):
    """taming's VQGAN training loss (VQLPIPSWithDiscriminator, hinge loss), for one optimizer and one backward pass
    over the VQGAN's parameters and this module's (its discriminator's).

    `loss, metrics = loss_fn(vae, images, step)`, with `vae` a trainable VQGanVAE and images in [0, 1]:

    * nll = mean |x - x_rec| (images in taming's [-1, 1]) + perceptual_weight * mean LPIPS(x, x_rec)
    * from `disc_start` on: g_loss = -mean D(x_rec), with D's parameters receiving no gradient from it, and
      d_weight = clamp(|grad nll| / (|grad g_loss| + 1e-4), 0, 1e4) * disc_weight, both gradients taken w.r.t.
      the decoder's last weight and detached (taming's `calculate_adaptive_weight`; 0 when gradients are off)
    * generator loss = nll + d_weight * disc_factor * g_loss + codebook_weight * codebook loss
    * discriminator loss = disc_factor * hinge_d_loss(D(x), D(sg[x_rec])), which gives gradient to D only
    * loss = generator loss + discriminator loss; before `disc_start` the discriminator is not run and the loss
      is nll + codebook_weight * codebook loss.

    `metrics` (floats): loss, rec_loss (the L1 term), p_loss (with a perceptual loss), nll_loss, codebook_loss,
    g_loss, d_loss, d_weight, disc_factor, logits_real, logits_fake (the GAN entries 0 before disc_start).

    Dead codes are restarted by the VQGAN's quantiser in its training forward (`vae.encode_decode`), not here.

    taming trains with Adam(betas=(0.5, 0.9)) at a learning rate of 4.5e-6 per image of the batch; on the demo's
    shapes the GAN terms with Adam's default betas at lr 1e-3 made reconstructions worse, with taming's settings
    (lr 2e-4) they did not.

    Args:
        disc_start: the step from which the discriminator trains and its loss counts (taming's configs wait
            10k to 250k steps on their data).
        disc_weight: factor on the adaptive weight of the generator's GAN term.
        disc_factor: factor on both GAN terms from disc_start on (taming's `disc_factor`).
        codebook_weight: weight of the codebook loss.
        perceptual: an `LPIPS` (from `LPIPS.from_files`), or None for none.
        perceptual_weight: weight of the perceptual loss.
        disc_layers: the discriminator's `n_layers`.
        disc_channels: the discriminator's `ndf`.
    """

    def __init__(self, *, disc_start: int = 1000, disc_weight: float = 0.8, disc_factor: float = 1.0,
                 codebook_weight: float = 1.0, perceptual: Optional[LPIPS] = None, perceptual_weight: float = 1.0,
                 disc_layers: int = 3, disc_channels: int = 64):
        super().__init__()
        self.disc_start = check_int("disc_start", disc_start, minimum=0)
        self.disc_weight = check_float("disc_weight", disc_weight, low=0)
        self.disc_factor = check_float("disc_factor", disc_factor, low=0)
        self.codebook_weight = check_float("codebook_weight", codebook_weight, low=0)
        self.perceptual_weight = check_float("perceptual_weight", perceptual_weight, low=0)
        if perceptual is not None and not isinstance(perceptual, LPIPS):
            raise TypeError(f"perceptual must be an LPIPS (LPIPS.from_files(vgg_path, lpips_path)) or None, got "
                            f"{type(perceptual).__name__}")
        self.perceptual = perceptual
        self.disc_layers = check_int("disc_layers", disc_layers)
        self.disc_channels = check_int("disc_channels", disc_channels)
        self.discriminator = NLayerDiscriminator(3, self.disc_channels, self.disc_layers)

    def adaptive_weight(self, nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
        """taming's `calculate_adaptive_weight`: the ratio of the gradient norms of `nll_loss` and `g_loss` w.r.t.
        `last_layer`, clamped to [0, 1e4], detached, times disc_weight; 0 when no gradient can be taken."""
        if not (torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad
                and last_layer.requires_grad):
            return torch.zeros((), device=nll_loss.device)
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.disc_weight

    def forward(self, vae: nn.Module, images: Tensor, step: int) -> Tuple[Tensor, Dict[str, float]]:
        """(loss, metrics) of `vae` (a VQGanVAE of kind "vq") on `images` in [0, 1] at training step `step`."""
        check_int("step", step, minimum=0)
        encode_decode = getattr(vae, "encode_decode", None)
        if not callable(encode_decode) or not isinstance(getattr(vae, "last_layer", None), Tensor):
            raise TypeError(f"vae must be a VQGanVAE (with encode_decode and last_layer), got {type(vae).__name__}")
        recons, codebook_loss, _ = encode_decode(images)
        x = images.to(recons.dtype) * 2 - 1
        zero = recons.new_zeros(())
        rec_loss = (x - recons).abs().mean()
        nll_loss, p_loss = rec_loss, None
        if self.perceptual is not None and self.perceptual_weight > 0:
            p_loss = self.perceptual(x, recons).mean()
            nll_loss = rec_loss + self.perceptual_weight * p_loss
        loss = nll_loss + self.codebook_weight * codebook_loss
        g_loss = d_loss = d_weight = logits_real = logits_fake = zero
        disc_factor = self.disc_factor if step >= self.disc_start else 0.0
        if disc_factor > 0:
            with _no_param_grads(self.discriminator):
                g_loss = -torch.mean(self.discriminator(recons))
            d_weight = self.adaptive_weight(nll_loss, g_loss, vae.last_layer)
            real, fake = self.discriminator(x.detach()), self.discriminator(recons.detach())
            d_loss = disc_factor * hinge_d_loss(real, fake)
            loss = loss + d_weight * disc_factor * g_loss + d_loss
            logits_real, logits_fake = real.detach().mean(), fake.detach().mean()
        values = {"loss": loss, "rec_loss": rec_loss, "nll_loss": nll_loss, "codebook_loss": codebook_loss,
                  "g_loss": g_loss, "d_loss": d_loss, "d_weight": d_weight, "logits_real": logits_real,
                  "logits_fake": logits_fake}
        if p_loss is not None:
            values["p_loss"] = p_loss
        metrics = dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist()))
        metrics["disc_factor"] = float(disc_factor)
        return loss, metrics
