"""dalle-core: DALL-E in PyTorch — the dVAE, the DALLE transformer, the CLIP reranker and their sampling."""
from . import data, sampling
from .pretrained import CheckpointError, from_pretrained, load_training_state, save_pretrained, save_training_state
from .models.cache import KVCache
from .models.clip import CLIP
from .models.dalle import DALLE
from .interop import load_dalle_pytorch, load_dalle_pytorch_clip, load_dalle_pytorch_vae
from .models.transformer import Transformer
from .models.vae import DiscreteVAE

__version__ = "0.1.0"

__all__ = [
    "DALLE",
    "DiscreteVAE",
    "CLIP",
    "Transformer",
    "KVCache",
    "sampling",
    "data",
    "save_pretrained",
    "from_pretrained",
    "save_training_state",
    "load_training_state",
    "CheckpointError",
    "load_dalle_pytorch",
    "load_dalle_pytorch_vae",
    "load_dalle_pytorch_clip",
]
