"""The models: the image tokenizer (`vae`), the DALLE transformer (`dalle`, built from `transformer`,
`attention`, `masks` and the decoding `cache`) and the CLIP reranker (`clip`)."""
from .cache import KVCache
from .clip import CLIP
from .dalle import DALLE
from .transformer import Transformer
from .vae import DiscreteVAE

__all__ = ["DALLE", "DiscreteVAE", "CLIP", "Transformer", "KVCache"]
