"""Trainers for the dVAE, DALLE and CLIP: one shared loop on Hugging Face Accelerate (one CPU to many nodes).

```python
from dalle_core.training import VAETrainConfig, train_vae
vae = train_vae(VAETrainConfig(folder="data/", out="runs/vae", image_size=64, steps=2000))
```
`dalle-core train-vae|train-dalle|train-clip` map their flags onto the same config dataclasses.
"""
from .callbacks import Callback, SampleRecorder
from .clip import CLIPTrainConfig, CLIPTrainer, train_clip
from .common import NonFiniteError, Trainer
from .config import TrainConfig
from .dalle import DALLETrainConfig, DALLETrainer, load_vae, train_dalle
from .ema import EMA
from .schedules import cosine_anneal, cosine_ramp, warmup_cosine
from .vae import VAETrainConfig, VAETrainer, train_vae

__all__ = [
    "TrainConfig",
    "Trainer",
    "Callback",
    "SampleRecorder",
    "NonFiniteError",
    "VAETrainConfig",
    "VAETrainer",
    "train_vae",
    "DALLETrainConfig",
    "DALLETrainer",
    "train_dalle",
    "load_vae",
    "CLIPTrainConfig",
    "CLIPTrainer",
    "train_clip",
    "EMA",
    "cosine_anneal",
    "cosine_ramp",
    "warmup_cosine",
]
