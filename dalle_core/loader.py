"""`dalle_pytorch.loader`'s name, so DALLE-pytorch scripts run with their import changed to dalle_core."""
from .data import TextImageDataset

__all__ = ["TextImageDataset"]
