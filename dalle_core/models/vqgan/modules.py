"""taming-transformers' VQGAN modules, with taming's module names so that its state dicts load unchanged: the
encoder and decoder (`taming.modules.diffusionmodules.model`), the quantisers (`VectorQuantizer2`,
`GumbelQuantize`) and `VQModel`, the model without its loss.

The vector quantiser also trains (`VectorQuantizer.quantize`): taming's VectorQuantizer2 step, plus restarts of
dead codes when it tracks its codes' usage (see `VectorQuantizer`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GROUPS", "BETA", "ResnetBlock", "AttnBlock", "Downsample", "Upsample", "Encoder", "Decoder",
           "VectorQuantizer", "GumbelQuantizer", "VQModel"]

GROUPS = 32  # taming's GroupNorm: 32 groups, eps 1e-6
BETA = 0.25  # VQModel's VectorQuantizer2(beta=0.25)


def _swish(x: Tensor) -> Tensor:
    """x * sigmoid(x), written as taming writes it (F.silu rounds differently, by up to a few 1e-7)."""
    return x * torch.sigmoid(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, plus the input (through a 1x1
    conv `nin_shortcut` when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        shortcut = getattr(self, "nin_shortcut", None)
        return (x if shortcut is None else shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map (1x1 convs q, k, v, proj_out), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (conv(h).reshape(b, c, hh * ww) for conv in (self.q, self.k, self.v))
        # taming's own sequence of operations (not a fused kernel), so that the sums round as the reference's do
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # (b, query, key)
        out = torch.bmm(v, weights.transpose(1, 2))  # (b, c, query)
        return x + self.proj_out(out.reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        conv = getattr(self, "conv", None)
        if conv is None:
            return F.avg_pool2d(x, 2, stride=2)
        return conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        conv = getattr(self, "conv", None)
        return x if conv is None else conv(x)


def _level(blocks: List[nn.Module], attns: List[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _middle(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_level(level: nn.Module, h: Tensor) -> Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """taming's Encoder: conv_in, `len(ch_mult)` levels of resnet blocks (attention where the nominal resolution is
    in attn_resolutions) with a stride-2 downsample between levels, middle blocks, GroupNorm, swish, conv_out."""

    def __init__(self, dd: Mapping[str, Any]):
        super().__init__()
        ch, mult, dropout = dd["ch"], (1, *dd["ch_mult"]), dd["dropout"]
        self.conv_in = nn.Conv2d(dd["in_channels"], ch, 3, padding=1)
        res, self.down = dd["resolution"], nn.ModuleList()
        for i in range(len(dd["ch_mult"])):
            blocks, attns, c_in, c_out = [], [], ch * mult[i], ch * mult[i + 1]
            for _ in range(dd["num_res_blocks"]):
                blocks.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
                if res in dd["attn_resolutions"]:
                    attns.append(AttnBlock(c_in))
            level = _level(blocks, attns)
            if i != len(dd["ch_mult"]) - 1:
                level.downsample = Downsample(c_in, dd["resamp_with_conv"])
                res //= 2
            self.down.append(level)
        self.mid = _middle(c_in, dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, dd["z_channels"], 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """taming's Decoder: conv_in, middle blocks, then `len(ch_mult)` levels (deepest first; num_res_blocks + 1
    blocks each) with nearest-neighbour 2x upsampling and a conv between levels, GroupNorm, swish, conv_out."""

    def __init__(self, dd: Mapping[str, Any]):
        super().__init__()
        ch, mult, dropout, levels = dd["ch"], dd["ch_mult"], dd["dropout"], len(dd["ch_mult"])
        c_in, res = ch * mult[-1], dd["resolution"] // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(dd["z_channels"], c_in, 3, padding=1)
        self.mid = _middle(c_in, dropout)
        ups: List[nn.Module] = []
        for i in reversed(range(levels)):
            blocks, attns = [], []
            for _ in range(dd["num_res_blocks"] + 1):
                blocks.append(ResnetBlock(c_in, ch * mult[i], dropout))
                c_in = ch * mult[i]
                if res in dd["attn_resolutions"]:
                    attns.append(AttnBlock(c_in))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_in, dd["resamp_with_conv"])
                res *= 2
            ups.insert(0, level)  # indexed by level, shallowest first, as taming's
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, dd["out_ch"], 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """taming's VectorQuantizer2: each vector's nearest codebook entry (`embedding`).

    `quantize` is its training step, as taming's with its defaults (beta 0.25, legacy=True): the codebook loss is
    mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2) (taming's legacy weighting: beta on the codebook term,
    the commitment term at 1) and the codes pass gradients straight through (z + sg[z_q - z]).

    With `track_usage` (a trainable VQGanVAE's quantiser) it also keeps `usage`, a buffer (so it is saved with the
    weights; it is not part of taming's VQModel): per code, an exponential moving average (decay `usage_decay`
    per training step) of how often the code is chosen, relative to a uniform share (1: its share of a uniform
    usage, 0: never chosen). In training mode, before quantising a batch, every code whose usage is below
    `dead_code_threshold` is dead: it is moved onto one of the batch's vectors, drawn without replacement with
    probabilities proportional to each vector's squared distance to its nearest code (k-means++ seeding: the
    vectors the codebook represents worst), and its usage is set to 1, which gives it about
    log(threshold) / log(decay) steps to be chosen before it counts as dead again. A codebook that has never been
    trained starts with zero usage, so the first training batch initialises every code from the data; one loaded
    from a checkpoint without the buffer (a taming .ckpt) starts at 1, every code alive. Set
    `dead_code_threshold` to 0 to turn the restarts off. Draws come from torch's global generator.
    """

    CHUNK = 2**24  # distances computed for at most this many (vector, code) pairs at a time
    USAGE_DECAY = 0.9
    DEAD_CODE_THRESHOLD = 0.03

    def __init__(self, n_embed: int, embed_dim: int, track_usage: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)  # taming's initialisation
        self.beta = BETA
        self.usage_decay = self.USAGE_DECAY
        self.dead_code_threshold = self.DEAD_CODE_THRESHOLD
        if track_usage:
            self.register_buffer("usage", torch.zeros(n_embed))
        else:
            self.usage = None

    @property
    def codebook(self) -> nn.Embedding:
        return self.embedding

    def _nearest(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """(n, d) vectors -> their nearest codes (n,) and squared distances to them (n,)."""
        e = self.embedding.weight
        e2 = (e ** 2).sum(dim=1)
        rows = max(1, self.CHUNK // e.shape[0])
        codes, dists = [], []
        for part in z.split(rows):
            # the reference's formula, term by term, so that the argmin (not only its mathematical value) agrees:
            # |z|^2 does not change which code is nearest but does change how the sum rounds
            d = (part ** 2).sum(dim=1, keepdim=True) + e2 - 2 * (part @ e.t())
            code = d.argmin(dim=1)
            codes.append(code)
            dists.append(d.gather(1, code[:, None]).squeeze(1))
        return torch.cat(codes), torch.cat(dists)

    def codes(self, h: Tensor) -> Tensor:
        """(b, d, hh, ww) -> (b, hh, ww) nearest codes."""
        b, d, hh, ww = h.shape
        return self._nearest(h.permute(0, 2, 3, 1).reshape(-1, d))[0].view(b, hh, ww)

    def quantize(self, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(b, d, hh, ww) -> (straight-through quantised vectors (b, d, hh, ww), codebook loss, codes (b, hh, ww)),
        restarting dead codes first when training with `track_usage` (see the class docstring)."""
        b, d, hh, ww = h.shape
        z = h.permute(0, 2, 3, 1).reshape(-1, d)
        tracking = self.training and self.usage is not None
        with torch.no_grad():
            codes, dists = self._nearest(z.detach())
            if tracking and self.dead_code_threshold > 0:
                dead = self.usage < self.dead_code_threshold
                if bool(dead.any()):
                    self._restart(dead, z.detach(), dists)
                    codes = self._nearest(z.detach())[0]
        z_q = self.embedding(codes)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        if tracking:
            with torch.no_grad():
                share = torch.bincount(codes, minlength=self.usage.numel()).to(self.usage.dtype)
                self.usage.mul_(self.usage_decay).add_(share * (self.usage.numel() / codes.numel()),
                                                       alpha=1 - self.usage_decay)
        return z_q.view(b, hh, ww, d).permute(0, 3, 1, 2), loss, codes.view(b, hh, ww)

    def _restart(self, dead: Tensor, z: Tensor, dists: Tensor) -> None:
        """Move the `dead` codes onto vectors of `z` drawn with probabilities proportional to `dists`."""
        index = dead.nonzero().squeeze(1)
        n = min(index.numel(), z.shape[0])
        weights = dists.float().clamp(min=0)
        # a small uniform part, so that vectors lying on codes (distance 0) can be drawn when there are not enough
        # others (a batch of identical images), and an all-zero batch draws uniformly
        weights = weights + 1e-6 * weights.mean() + 1e-20
        picks = torch.multinomial(weights, n, replacement=False)
        self.embedding.weight[index[:n]] = z[picks].to(self.embedding.weight.dtype)
        self.usage[index[:n]] = 1.0


class GumbelQuantizer(nn.Module):
    """taming's GumbelQuantize for inference: codes are the argmax of `proj`'s logits, embedded with `embed`."""

    def __init__(self, z_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> nn.Embedding:
        return self.embed

    def codes(self, h: Tensor) -> Tensor:
        return self.proj(h).argmax(dim=1)


class VQModel(nn.Module):
    """taming's VQModel / GumbelVQ without the loss: encoder, quant_conv, quantize, post_quant_conv, decoder.

    `track_usage` (kind "vq" only) gives the quantiser its usage buffer (see `VectorQuantizer`);
    `taming_state_dict()` is the state dict without it, exactly the keys of taming's model.
    """

    TRAINING_BUFFERS = ("quantize.usage",)  # in the state dict of a trainable model, not in taming's

    def __init__(self, arch: Mapping[str, Any], track_usage: bool = False):
        super().__init__()
        dd = arch["ddconfig"]
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        if arch["kind"] == "vq":
            self.quantize: nn.Module = VectorQuantizer(arch["n_embed"], arch["embed_dim"], track_usage)
        elif track_usage:
            raise ValueError("only taming's VQModel (kind 'vq') trains here, not a GumbelVQ")
        else:
            self.quantize = GumbelQuantizer(dd["z_channels"], arch["n_embed"], arch["embed_dim"])
        self.quant_conv = nn.Conv2d(dd["z_channels"], arch["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(arch["embed_dim"], dd["z_channels"], 1)

    def taming_state_dict(self) -> Dict[str, Tensor]:
        """The state dict under taming's VQModel names (without the training buffers)."""
        return {k: v for k, v in self.state_dict().items() if k not in self.TRAINING_BUFFERS}
