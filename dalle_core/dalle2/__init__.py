"""DALL-E 2 (unCLIP, Ramesh et al. 2022) beside DALL-E, on this library's CLIP, transformer, sampling and trainers.

A `DiffusionPrior` maps a caption and its CLIP text embedding to a CLIP image embedding; a `Decoder` (a `Unet`
denoiser) draws the image from that embedding; `DALLE2` chains them with the CLIP::

    from dalle_core.dalle2 import DALLE2, Decoder, DiffusionPrior, Unet
    prior = DiffusionPrior(dim_embed=clip_dim, num_text_tokens=vocab, text_seq_len=n, dim=256, depth=4)
    decoder = Decoder(Unet(dim=32, cond_dim=clip_dim), image_size=32)
    images = DALLE2(prior=prior, decoder=decoder, clip=clip, tokenizer=tok)(["a red circle"], cond_scale=2)

`dalle-core train-prior`, `train-decoder` and `demo --model dalle2` train them (see `dalle_core.dalle2.training`).
"""
from .decoder import Decoder, Unet
from .diffusion import NoiseSchedule
from .model import DALLE2
from .prior import DiffusionPrior

__all__ = ["DALLE2", "DiffusionPrior", "Decoder", "Unet", "NoiseSchedule"]
