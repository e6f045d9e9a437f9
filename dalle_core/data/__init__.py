"""Training data: caption/image pairs from a folder (`TextImageDataset`) or from WebDataset tar shards; image I/O."""
from .folder import TextImageDataset, index_folder
from .images import IMAGE_EXTENSIONS, load_image, random_crop_box, random_resized_crop, save_image_grid, to_pil
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
    "to_pil",
    "save_image_grid",
    "IMAGE_EXTENSIONS",
]
