"""dalle-core: DALL-E in PyTorch — the dVAE, the DALLE transformer, the CLIP reranker and their sampling; and
DALL-E 2 beside it (`DALLE2`; its prior, decoder and trainers in `dalle_core.dalle2`)."""
from . import data, sampling
from .errors import CheckpointError
from .interop import load_dalle_pytorch, load_dalle_pytorch_clip, load_dalle_pytorch_vae
from .models import CLIP, DALLE, DiscreteVAE, KVCache, OpenAIDiscreteVAE, Transformer, VQGanVAE, VQVAE
from .pretrained import from_pretrained, load_training_state, save_pretrained, save_training_state
from .pipeline import DALLEPipeline, PipelineOutput
from .dalle2 import DALLE2
from .refine import clip_refine
from .version import __version__

__all__ = [
    "DALLE",
    "DiscreteVAE",
    "VQVAE",
    "OpenAIDiscreteVAE",
    "VQGanVAE",
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
    "clip_refine",
    "DALLEPipeline",
    "PipelineOutput",
    "DALLE2",
]
