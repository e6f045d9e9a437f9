"""The models: the image tokenizers (`vae`, the Gumbel dVAE, and `vqvae`, VQ / FSQ / LFQ, trained here;
`openai_dvae`, OpenAI's pretrained dVAE; `vqgan`, taming's VQGAN, loaded or trained), the DALLE transformer (`dalle`, built from `transformer`, `attention`, `masks` and the decoding
`cache`) and the CLIP reranker (`clip`)."""
from .cache import KVCache
from .clip import CLIP
from .dalle import DALLE
from .openai_dvae import OpenAIDiscreteVAE
from .transformer import Transformer
from .vae import DiscreteVAE
from .vqvae import VQVAE
from .vqgan import VQGanVAE

__all__ = ["DALLE", "DiscreteVAE", "VQVAE", "OpenAIDiscreteVAE", "VQGanVAE", "CLIP", "Transformer", "KVCache"]
