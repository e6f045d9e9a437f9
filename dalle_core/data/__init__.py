"""Training data: caption/image pairs from a folder (`TextImageDataset`) or from WebDataset tar shards; image I/O."""
from .common import MAX_CAPTION_BYTES, MAX_IMAGE_BYTES
from .folder import TextImageDataset, index_folder
from .images import (IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image, load_mask, random_crop_box, random_resized_crop,
                     save_image_grid, to_pil)
from .shards import WebTextImageDataset, write_shards
from .sources import MAX_SOURCES, expand_urls

__all__ = [
    "TextImageDataset",
    "WebTextImageDataset",
    "write_shards",
    "expand_urls",
    "index_folder",
    "load_image",
    "load_mask",
    "random_resized_crop",
    "random_crop_box",
    "to_pil",
    "save_image_grid",
    "IMAGE_EXTENSIONS",
    "MAX_CAPTION_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_SOURCES",
]
