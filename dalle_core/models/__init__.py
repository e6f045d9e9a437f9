"""The models: the image tokenizers (`vae`, trained here; `openai_dvae`, OpenAI's pretrained dVAE; `vqgan`,
taming's VQGAN), the DALLE transformer (`dalle`, built from `transformer`, `attention`, `masks` and the decoding
`cache`) and the CLIP reranker (`clip`)."""
from .cache import KVCache
from .clip import CLIP
from .dalle import DALLE
from .openai_dvae import OpenAIDiscreteVAE
from .transformer import Transformer
from .vae import DiscreteVAE
from .vqgan import VQGanVAE

__all__ = ["DALLE", "DiscreteVAE", "OpenAIDiscreteVAE", "VQGanVAE", "CLIP", "Transformer", "KVCache"]
