"""taming-transformers' VQGAN: read as DALLE's image tokenizer (`VQGanVAE`), trained, and written back as taming's
own checkpoint.

    modules.py  taming's encoder, decoder, quantisers and VQModel (taming's module names)
    config.py   taming YAML configs read and checked; `vqgan_architecture`, a small VQGAN to train
    model.py    `VQGanVAE`, the tokenizer (read safely from a taming .ckpt, or trainable)
    losses.py   taming's training loss: `VQGANLoss` (PatchGAN `NLayerDiscriminator`, hinge loss, adaptive
                weight) and the `LPIPS` perceptual loss from user-given weight files
    export.py   `export_taming`: a VQGanVAE (and its loss) as taming's .ckpt + YAML

A training step is one optimizer over the VQGAN's and the discriminator's parameters and one backward:

    vae = VQGanVAE(architecture=vqgan_architecture(image_size=32), image_size=32, trainable=True)
    loss_fn = VQGANLoss()
    opt = torch.optim.Adam([*vae.parameters(), *loss_fn.parameters()], lr=2e-4, betas=(0.5, 0.9))  # taming's
    for step, images in enumerate(batches):  # images in [0, 1]
        loss, metrics = loss_fn(vae, images, step)
        opt.zero_grad(); loss.backward(); opt.step()
    export_taming(vae, "out", loss=loss_fn, global_step=step)  # out/model.ckpt + out/model.yaml
"""
from .config import VQGAN_TARGETS, check_architecture, read_vqgan_config, vqgan_architecture
from .export import export_taming, taming_config
from .losses import LPIPS, NLayerDiscriminator, VQGANLoss, hinge_d_loss
from .model import DEFAULT_CONFIG_NAME, DEFAULT_CONFIG_URL, DEFAULT_MODEL_NAME, DEFAULT_MODEL_URL, VQGanVAE
from .modules import Decoder, Encoder, GumbelQuantizer, VectorQuantizer, VQModel

# the bounds a config is checked against, importable from here as from the single-file module before
from .config import (DDCONFIG_INTS, MAX_CHANNELS, MAX_CODES, MAX_LEVELS, MAX_PARAMETERS,  # noqa: F401
                     MAX_RES_BLOCKS, MAX_RESOLUTION, MAX_YAML_BYTES)
from .modules import GROUPS  # noqa: F401

__all__ = ["VQGanVAE", "read_vqgan_config", "VQGAN_TARGETS", "DEFAULT_MODEL_NAME", "DEFAULT_CONFIG_NAME",
           "DEFAULT_MODEL_URL", "DEFAULT_CONFIG_URL", "vqgan_architecture", "check_architecture", "VQModel",
           "Encoder", "Decoder", "VectorQuantizer", "GumbelQuantizer", "VQGANLoss", "NLayerDiscriminator",
           "hinge_d_loss", "LPIPS", "export_taming", "taming_config"]

# the private names the single-file module had, for code that reached into it
_VQModel, _Encoder, _Decoder, _VectorQuantizer, _GumbelQuantizer = (VQModel, Encoder, Decoder, VectorQuantizer,
                                                                    GumbelQuantizer)
_check_architecture = check_architecture
