"""Build VQGAN parity fixtures from the reference: taming-transformers 0.0.6's model code, used the way
DALLE-pytorch 1.6.6's `VQGanVAE` uses it.

Run with the Python of the venv that `bash ../shared/peer/setup_tokenizer_refs.sh DIR` builds (taming's
modules with a placeholder `pytorch_lightning`):

    DIR/bin/python tests/reference/make_vqgan_fixtures.py tests/fixtures            # the committed ones
    DIR/bin/python tests/reference/make_vqgan_fixtures.py /tmp/live --seed 7        # fresh weights, live tests

`taming.models.vqgan` does not import there (it needs torchvision), so the reference VQModel is assembled here
from taming's own modules exactly as `taming.models.vqgan.VQModel` / `GumbelVQ` assemble them: encoder ->
quant_conv -> quantize -> post_quant_conv -> decoder, with the same attribute (state-dict) names.

For each kind ("vq": VQModel with VectorQuantizer2; "gumbel": GumbelVQ with GumbelQuantize) it writes
`vqgan_<kind>.ckpt`, a Lightning-style checkpoint (`state_dict` plus `loss.*` tensors the tokenizer does not use,
a "callbacks" entry keyed by the Lightning `ModelCheckpoint` class, epoch and step), `vqgan_<kind>.yaml`, the
OmegaConf-style config, and `vqgan_<kind>_expected.pt` (tensors only: loads with weights_only=True) with
DALLE-pytorch's `VQGanVAE` results for fixed inputs: its codes and its decodes of those codes and of random codes.
The reference's GumbelQuantize adds Gumbel noise even in eval mode, so the gumbel codes are the argmax of its
logits (what its noise-free encoding is).

The expected outputs are computed by a model loaded back from the written .ckpt with `torch.load` and
`load_state_dict(strict=False)`, DALLE-pytorch's own loading path.

Weights are random but small on disk: every weight of 256 elements or more is a view of one random pool of
8192 numbers (a window at a random offset, or for the 3x3 convs a strided view whose rows overlap), and
`torch.save` stores a storage once however many tensors view it (this also gives the safe reader strided views
and storage offsets to rebuild); GroupNorm weights
are 1 + noise, other small tensors plain noise; the VQ codebook is drawn around the statistics of the encoder's
outputs on the inputs so that the codes spread over the codebook.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

TARGETS = {"vq": "taming.models.vqgan.VQModel", "gumbel": "taming.models.vqgan.GumbelVQ"}
# tiny models (GroupNorm has 32 groups, so 32 channels is the least a level can have); the vq one has two
# channel widths (nin_shortcut convs) and attention at 8x8, the gumbel one attention at 16x16 in the up path
CONFIGS = {
    "vq": dict(embed_dim=4, n_embed=32, ddconfig=dict(
        double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
        num_res_blocks=1, attn_resolutions=[8], dropout=0.0)),
    "gumbel": dict(embed_dim=4, n_embed=32, ddconfig=dict(
        double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1],
        num_res_blocks=1, attn_resolutions=[16], dropout=0.0)),
}
BATCH, POOL_STD, POOL_SIZE, MIN_WINDOW = 2, 0.06, 8192, 256


class RefVQModel(nn.Module):
    """taming.models.vqgan.VQModel / GumbelVQ without Lightning and the loss: the same submodules and names."""

    def __init__(self, kind: str, ddconfig: dict, n_embed: int, embed_dim: int, kl_weight: float = 1e-8):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):  # Decoder prints the z shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        if kind == "vq":
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        else:
            self.quantize = GumbelQuantize(ddconfig["z_channels"], embed_dim, n_embed=n_embed, kl_weight=kl_weight,
                                           temp_init=1.0)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):  # VQModel.encode
        h = self.quant_conv(self.encoder(x))
        return self.quantize(h)

    def decode(self, quant):  # VQModel.decode
        return self.decoder(self.post_quant_conv(quant))


def reference_codes(model: RefVQModel, kind: str, images: torch.Tensor) -> torch.Tensor:
    """DALLE-pytorch 1.6.6 VQGanVAE.get_codebook_indices (gumbel: the argmax of the logits, no noise)."""
    b = images.shape[0]
    img = 2 * images - 1
    if kind == "vq":
        _, _, (_, _, indices) = model.encode(img)
        return indices.reshape(b, -1)
    h = model.quant_conv(model.encoder(img))
    _, _, _, logits = model.quantize(h, return_logits=True)
    return logits.argmax(dim=1).reshape(b, -1)


def reference_decode(model: RefVQModel, kind: str, codes: torch.Tensor) -> torch.Tensor:
    """DALLE-pytorch 1.6.6 VQGanVAE.decode."""
    b, n = codes.shape
    weight = model.quantize.embed.weight if kind == "gumbel" else model.quantize.embedding.weight
    z = F.one_hot(codes, num_classes=weight.shape[0]).float() @ weight
    side = int(n ** 0.5)
    z = z.reshape(b, side, side, -1).permute(0, 3, 1, 2)  # rearrange 'b (h w) c -> b c h w'
    img = model.decode(z)
    return (img.clamp(-1.0, 1.0) + 1) * 0.5


def random_state(model: RefVQModel, kind: str, images: torch.Tensor, g: torch.Generator) -> "OrderedDict":
    """Random weights for `model`, big tensors as windows of one pool (see the module docstring)."""
    state = model.state_dict()
    norms = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    pool = torch.randn(POOL_SIZE, generator=g) * POOL_STD
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def window(shape):
        n = int(torch.Size(shape).numel())
        if n + 1024 <= POOL_SIZE:  # a contiguous window at a random offset
            off = int(torch.randint(0, POOL_SIZE - n + 1, (1,), generator=g))
            return pool[off:off + n].view(shape)
        # too big for the pool: rows that overlap (a strided view, still one storage)
        inner = n // shape[0]
        inner_strides = torch.empty(shape[1:]).stride()
        return pool.as_strided(shape, ((POOL_SIZE - inner) // (shape[0] - 1), *inner_strides))

    for key, t in state.items():
        if key in norms:
            out[key] = 1 + 0.1 * torch.randn(t.shape, generator=g)
        elif key.endswith("quant_conv.weight"):  # 1x1 convs around the codes: unit gain
            out[key] = torch.randn(t.shape, generator=g) / t.shape[1] ** 0.5
        elif t.numel() >= MIN_WINDOW:
            out[key] = window(t.shape)
        else:
            out[key] = 0.1 * torch.randn(t.shape, generator=g)
    if kind == "vq":  # a codebook around the encoder's outputs, so that the codes spread
        model.load_state_dict(out)
        with torch.no_grad():
            h = model.quant_conv(model.encoder(2 * images - 1)).permute(0, 2, 3, 1)
            h = h.reshape(-1, h.shape[-1])
        mean, std = h.mean(0), h.std(0)
        out["quantize.embedding.weight"] = mean + std * torch.randn(out["quantize.embedding.weight"].shape, generator=g)
    else:
        out["quantize.proj.weight"] = torch.randn(out["quantize.proj.weight"].shape, generator=g)
        out["quantize.embed.weight"] = torch.randn(out["quantize.embed.weight"].shape, generator=g)
    return out


def yaml_text(kind: str, config: dict) -> str:
    """An OmegaConf YAML as taming's published configs are written."""
    dd = config["ddconfig"]
    lines = ["model:", "  base_learning_rate: 4.5e-06", f"  target: {TARGETS[kind]}", "  params:"]
    if kind == "gumbel":
        lines += ["    kl_weight: 1.0e-08", "    temperature_scheduler_config:",
                  "      target: taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                  "      params: {warm_up_steps: 0, max_decay_steps: 1000001, lr_start: 0.9, lr_max: 0.9, "
                  "lr_min: 1.0e-06}"]
    lines += [f"    embed_dim: {config['embed_dim']}", f"    n_embed: {config['n_embed']}",
              "    monitor: val/rec_loss", "    ddconfig:"]
    for key, value in dd.items():
        value = str(value).lower() if isinstance(value, bool) else value
        lines.append(f"      {key}: {value}")
    lines += ["    lossconfig:", "      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
              "      params:", "        disc_conditional: false", "        disc_in_channels: 3",
              "        disc_start: 250001", "        disc_weight: 0.8", "        codebook_weight: 1.0", ""]
    return "\n".join(lines)


def make(kind: str, out_dir: Path, seed: int) -> None:
    config = CONFIGS[kind]
    g = torch.Generator().manual_seed(seed * 2 + (kind == "gumbel"))
    size = config["ddconfig"]["resolution"]
    images = torch.rand(BATCH, 3, size, size, generator=g)
    images[-1] = torch.linspace(0, 1, size).view(1, 1, size)  # a smooth ramp beside the noise
    images[-1, 1] = images[-1, 1].t().clone()

    model = RefVQModel(kind, config["ddconfig"], config["n_embed"], config["embed_dim"]).eval()
    state = random_state(model, kind, images, g)
    extra = OrderedDict(state)  # what a trained taming checkpoint carries beside the model: the loss's weights
    window = state["encoder.conv_in.weight"]  # (32, 3, 3, 3), a view of the pool: stored once, for free
    extra["loss.logvar"] = torch.zeros(())
    extra["loss.discriminator.main.0.weight"] = window
    extra["loss.discriminator.main.0.bias"] = torch.zeros(32)
    extra["loss.perceptual_loss.net.slice1.0.weight"] = window
    ckpt = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.0.8", "state_dict": extra,
            "callbacks": {ModelCheckpoint: {"best_model_score": None, "best_model_path": "logs/last.ckpt"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9)}]}],
            "lr_schedulers": []}
    ckpt_path = out_dir / f"vqgan_{kind}.ckpt"
    torch.save(ckpt, ckpt_path)
    (out_dir / f"vqgan_{kind}.yaml").write_text(yaml_text(kind, config), encoding="utf-8")

    # DALLE-pytorch's loading path: the state_dict entry of a full torch.load, loaded non-strict
    loaded = RefVQModel(kind, config["ddconfig"], config["n_embed"], config["embed_dim"])
    result = loaded.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"],
                                    strict=False)
    assert not result.missing_keys and all(k.startswith("loss.") for k in result.unexpected_keys), result
    loaded.eval()
    with torch.no_grad():
        codes = reference_codes(loaded, kind, images)
        fmap = size // 2 ** (len(config["ddconfig"]["ch_mult"]) - 1)
        random_codes = torch.randint(0, config["n_embed"], (1, fmap * fmap), generator=g)
        expected = {
            "images": images, "codes": codes, "decoded": reference_decode(loaded, kind, codes),
            "random_codes": random_codes, "random_decoded": reference_decode(loaded, kind, random_codes),
            "seed": torch.tensor(seed),
        }
        if kind == "gumbel":  # what the reference's own (noisy) encode returns, for the record
            torch.manual_seed(seed)  # its Gumbel noise comes from the global generator
            _, _, (_, _, noisy) = loaded.encode(2 * images - 1)
            expected["noisy_codes"] = noisy.reshape(BATCH, -1)
    torch.save(expected, out_dir / f"vqgan_{kind}_expected.pt")
    used = codes.unique().numel()
    clamped = float(((expected["decoded"] == 0) | (expected["decoded"] == 1)).float().mean())
    print(f"{kind}: {used}/{config['n_embed']} codes used, {clamped:.0%} of decoded pixels clamped, "
          f"wrote {ckpt_path} ({ckpt_path.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for kind in CONFIGS:
        make(kind, args.out_dir, args.seed)


if __name__ == "__main__":
    main()
