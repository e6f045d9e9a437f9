"""Parity cases for the dVAE, computed by the reference (dalle-pytorch 1.6.6). Runs in the reference venv only.

Every case holds the reference's outputs in ITS conventions (decoder output in normalised space, KL summed
over batch and positions); tests/test_vae.py converts before comparing. The Gumbel noise matches because both
implementations call `F.gumbel_softmax` once on same-shaped logits right after `torch.manual_seed(noise_seed)`.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from dalle_pytorch import DiscreteVAE

TINY = dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)

CONFIGS = {
    "vae_tiny": dict(TINY),
    "vae_resblock_smooth_l1_gray": dict(TINY, num_resnet_blocks=1, smooth_l1_loss=True, channels=1,
                                        normalization=((0.4,), (0.3,))),
    "vae_straight_through_reinmax": dict(TINY, num_layers=3, straight_through=True, reinmax=True, temperature=0.7),
}
KL_PROBE = 100.0  # a large KL weight, so (loss_kl - loss_no_kl) / KL_PROBE recovers the reference KL precisely


def _seeded_loss(vae: DiscreteVAE, images: torch.Tensor, noise_seed: int, temp: Optional[float], kl_weight: float):
    vae.kl_div_loss_weight = kl_weight
    torch.manual_seed(noise_seed)
    loss, recons = vae(images, return_loss=True, return_recons=True, temp=temp)
    return loss, recons


def build_case(config: dict, seed: int) -> dict:
    """One case: fresh reference weights from `seed`, its outputs on random images and codes."""
    torch.manual_seed(seed)
    vae = DiscreteVAE(**config)
    fmap = config["image_size"] // 2 ** config["num_layers"]
    channels = config.get("channels", 3)
    images = torch.rand(2, channels, config["image_size"], config["image_size"])
    codes = torch.randint(0, config["num_tokens"], (2, fmap * fmap))
    noise_seed = seed + 1234
    temp = None if "temperature" in config else 0.8  # None: the configured temperature

    with torch.no_grad():
        logits = vae(images, return_logits=True)
        indices = vae.get_codebook_indices(images)
        decoded = vae.decode(codes)
        loss_no_kl, _ = _seeded_loss(vae, images, noise_seed, temp, 0.0)
        loss_kl, _ = _seeded_loss(vae, images, noise_seed, temp, KL_PROBE)

    vae.zero_grad()
    loss, recons = _seeded_loss(vae, images, noise_seed, temp, 0.0)
    loss.backward()
    # encoder and codebook only: the gradients that flow through the Gumbel / straight-through / ReinMax path
    grads = {k: p.grad.detach().clone() for k, p in vae.named_parameters()
             if p.grad is not None and not k.startswith("decoder")}
    vae.kl_div_loss_weight = config.get("kl_div_loss_weight", 0.0)

    return {
        "config": {k: v for k, v in config.items()},
        "seed": seed,  # torch.manual_seed(seed) right before the constructor gave `state_dict`
        "state_dict": {k: v.detach().clone() for k, v in vae.state_dict().items()},
        "inputs": {"images": images, "codes": codes, "noise_seed": noise_seed, "temp": temp},
        "outputs": {
            "logits": logits,
            "codebook_indices": indices,
            "decoded": decoded,  # reference normalised space
            "loss": loss.detach(),  # kl weight 0: the reconstruction loss
            "recon": recons.detach(),  # sampled reconstruction, reference normalised space
            "kl_sum": ((loss_kl - loss_no_kl) / KL_PROBE).detach(),  # reference KL, summed over batch and positions
            "grads": grads,  # of `loss`, encoder and codebook
        },
    }


def build_cases(seed: int) -> Iterator[Tuple[str, dict]]:
    """Yield (name, case) for every dVAE parity case."""
    for i, (name, config) in enumerate(CONFIGS.items()):
        yield name, build_case(config, seed + i)
