"""Image I/O: any Pillow mode to a float (C, H, W) tensor in [0, 1] (with a random resized crop), and back to PNG.

Modes: RGB as is; L, P, CMYK, ... converted to RGB; alpha (RGBA, LA, PA, a palette or grayscale with a
transparent colour) kept as RGBA when `transparent`, else composited onto white (dropping alpha would show
whatever colour hides under transparent pixels, often black); 16-bit grayscale (I;16*, and I as PNG/TIFF
decoders produce it) scaled by 1/65535 in float, so it is neither clipped at 255 nor quantised to 8 bits.
EXIF orientation is applied, so camera photos are upright.

Hostile files: a path is read only if it is a regular file (a FIFO or device is refused without being opened
for blocking reads) of at most `max_image_bytes` (bytes sources too). The pixel count is read from the header
before decoding, and an image of more than `max_image_pixels` pixels (default `MAX_IMAGE_PIXELS`, 2**26:
8192 x 8192), or over Pillow's own `Image.MAX_IMAGE_PIXELS` when that is lower, is refused with
`ImageTooLargeError` without being decoded. A JPEG is decoded at a reduced scale (`Image.draft`, 1/2 to 1/8)
when the crop still gets at least `image_size` pixels a side: the crop box is drawn on the full-size
coordinates, as before, and scaled onto the drafted image.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..files import FileTooLargeError, open_regular
from .common import MAX_IMAGE_BYTES, PathLike, check_limit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# What Pillow raises on a broken file: UnidentifiedImageError and "image file is truncated" are OSErrors; some
# plugins raise SyntaxError, ValueError or EOFError; a decompression bomb its own error.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
MAX_IMAGE_PIXELS = 1 << 26  # default pixel budget: width x height from the header, checked before decoding
_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


class ImageTooLargeError(ValueError):
    """An image whose header size is over the pixel budget: refused before decoding."""


def random_crop_box(width: int, height: int, scale: Tuple[float, float] = (0.75, 1.0),
                    ratio: Tuple[float, float] = (1.0, 1.0),
                    generator: Optional[torch.Generator] = None) -> Tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop covering `scale` of the area with aspect w/h in `ratio`.

    Ten tries at a random area and log-uniform aspect; if none fits, the largest central crop whose aspect
    is clamped to `ratio` (the usual RandomResizedCrop rule).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * torch.empty(()).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(()).uniform_(log_lo, log_hi, generator=generator).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return left, top, w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, scale: Tuple[float, float] = (0.75, 1.0),
                        ratio: Tuple[float, float] = (1.0, 1.0),
                        generator: Optional[torch.Generator] = None) -> Image.Image:
    """A random crop of `img` (see `random_crop_box`) resized to size x size with antialiased bilinear."""
    left, top, w, h = random_crop_box(img.width, img.height, scale, ratio, generator)
    # crop and resize in one step: Pillow filters from the source pixels (and premultiplies alpha)
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def prepare_mode(img: Image.Image, transparent: bool) -> Image.Image:
    """`img` as RGBA (transparent), RGB, or F holding 16-bit values in [0, 65535]."""
    if img.mode in SIXTEEN_BIT_MODES:
        return img.convert("F")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if transparent:
            return rgba
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGBA" if transparent else "RGB")


def to_tensor(img: Image.Image, transparent: bool) -> Tensor:
    """An RGB, RGBA or 16-bit F image as a float32 tensor (C, H, W) in [0, 1]; C is 4 when `transparent`."""
    w, h = img.size
    if img.mode == "F":
        gray = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.float32).view(1, h, w)
        out = (gray / 65535.0).clamp(0.0, 1.0).expand(3, h, w)  # (3, H, W)
        return torch.cat([out, torch.ones(1, h, w)]) if transparent else out.contiguous()
    channels = len(img.getbands())
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, channels)
    return pixels.permute(2, 0, 1).float().div(255.0)  # (H, W, C) -> (C, H, W)


def load_image(source: Union[PathLike, bytes, BinaryIO], image_size: int, *, resize_ratio: float = 0.75,
               transparent: bool = False, generator: Optional[torch.Generator] = None,
               max_image_pixels: int = MAX_IMAGE_PIXELS, max_image_bytes: Optional[int] = MAX_IMAGE_BYTES) -> Tensor:
    """Decode an image file (path, bytes or binary file) to a random square crop (C, image_size, image_size).

    Raises one of `DECODE_ERRORS` when the file is not a readable image: ImageTooLargeError over the pixel
    budget, NotRegularFileError for a path that is not a regular file, FileTooLargeError over `max_image_bytes`.
    """
    max_image_pixels = check_limit("max_image_pixels", max_image_pixels)
    where = "image bytes" if isinstance(source, (bytes, bytearray)) else f"image {str(source)!r}"
    if isinstance(source, (bytes, bytearray)):
        if max_image_bytes is not None and len(source) > max_image_bytes:
            raise FileTooLargeError(f"{where} is {len(source)} bytes, over the cap of {max_image_bytes}")
        stream: BinaryIO = io.BytesIO(source)
    elif isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
        stream = open_regular(source, max_image_bytes, what="image")
    else:
        stream = source
    try:
        with warnings.catch_warnings():  # our budget below is the guard, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(stream)
            except Image.DecompressionBombError as err:
                raise ImageTooLargeError(f"{where}: {err}") from None
        with img:
            width, height = img.size
            budget = min(max_image_pixels, Image.MAX_IMAGE_PIXELS or max_image_pixels)
            if width * height > budget:
                raise ImageTooLargeError(f"{where} is {width}x{height} = {width * height} pixels, over the budget "
                                         f"of {budget} pixels (max_image_pixels); refused before decoding")
            rotated = img.getexif().get(0x0112) in _ROTATED
            full = (height, width) if rotated else (width, height)  # upright size
            left, top, w, h = random_crop_box(full[0], full[1], (resize_ratio, 1.0), (1.0, 1.0), generator)
            if img.format in ("JPEG", "MPO"):  # decode at 1/2..1/8 scale while the crop keeps image_size pixels a side
                scale = image_size / min(w, h)
                img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            img.load()  # decode now, so a truncated file fails here
            ImageOps.exif_transpose(img, in_place=True)
            img = prepare_mode(img, transparent)
    finally:
        if stream is not source:
            stream.close()
    fx, fy = img.width / full[0], img.height / full[1]  # 1 unless drafted
    box = (left, top, left + w, top + h) if fx == fy == 1 else (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    return to_tensor(img.resize((image_size, image_size), Image.BILINEAR, box=box), transparent)


def load_mask(source: Union[PathLike, bytes, BinaryIO], image_size: int, *,
              generator: Optional[torch.Generator] = None, **limits: Any) -> Tensor:
    """An inpainting mask from an image file: (image_size, image_size) bool, True where the image is light
    (white = regenerate), cropped and resized as `load_image(resize_ratio=1.0)` does (pass the generator
    that loaded the image it masks, so that a non-square pair is cropped alike)."""
    pixels = load_image(source, image_size, resize_ratio=1.0, generator=generator, **limits)
    return pixels[:3].mean(dim=0) > 0.5


# --- writing -------------------------------------------------------------------------------------------------


def to_pil(image: Tensor) -> Image.Image:
    """A (C, H, W) float image in [0, 1] (C = 1, 3 or 4) as a PIL image."""
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image (C, H, W) with C in (1, 3, 4), got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()  # (H, W, C)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    return Image.fromarray(pixels.squeeze(2).numpy() if mode == "L" else pixels.numpy(), mode)


def save_image_grid(images: Union[Tensor, Sequence[Tensor]], path: Union[str, Path], nrow: Optional[int] = None,
                    padding: int = 2) -> Path:
    """Save images (N, C, H, W) in [0, 1] as one PNG, `nrow` per row (default: a square-ish grid)."""
    images = torch.stack(list(images)) if not isinstance(images, Tensor) else images
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected images (N, C, H, W) with N >= 1, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = images.new_ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)  # white background
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid).save(path)
    return path
