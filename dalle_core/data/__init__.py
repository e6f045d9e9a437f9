"""Training data: caption/image pairs from a folder (`TextImageDataset`) or from WebDataset tar shards."""
from .folder import TextImageDataset, index_folder
from .images import load_image, random_crop_box, random_resized_crop
from .shards import WebTextImageDataset, expand_urls, write_shards

__all__ = [
    "TextImageDataset",
    "WebTextImageDataset",
    "write_shards",
    "expand_urls",
    "index_folder",
    "load_image",
    "random_resized_crop",
    "random_crop_box",
]
