"""`TextImageDataset`: images with same-stem .txt captions found recursively in a folder (DALLE-pytorch's loader).

A folder is treated as hostile: only regular files are read (FIFOs, devices, sockets and dangling symlinks
named like images or captions are counted under `not_regular_file` and never opened), symlinked directories
are followed but each real directory (by device and inode) is walked once, so a symlink loop terminates and
multiplies nothing, and captions over `max_caption_bytes` / images over `max_image_bytes` are skipped and
counted without being read.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from ..files import FileTooLargeError, NotRegularFileError, read_regular
from ..tokenizers import Tokenizer
from .common import (AMBIGUOUS_CAPTION, BAD_CAPTION, BAD_IMAGE, CAPTION_TOO_LARGE, EMPTY_CAPTION,
                      IMAGE_TOO_LARGE, MAX_CAPTION_BYTES, MAX_IMAGE_BYTES, NO_CAPTION, NOT_REGULAR, PathLike,
                      SkipLog, caption_lines, check_common, check_limit, check_seed, generator, mix_seed, randint,
                      tokenize_caption)
from .images import DECODE_ERRORS, IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image


def walk_once(root: Path) -> Iterator[Tuple[Path, List[str]]]:
    """(directory, file names) under `root`, following symlinks but visiting each real directory once."""
    seen: Set[Tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # a symlink back to a directory already walked (or a loop)
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames.sort()  # deterministic: of two paths to one directory, the first in sorted order wins
        yield Path(dirpath), sorted(filenames)


def index_folder(folder: PathLike, require_captions: bool = True, *, max_caption_bytes: int = MAX_CAPTION_BYTES,
                 max_image_bytes: int = MAX_IMAGE_BYTES
                 ) -> Tuple[List[Tuple[Path, Optional[Path]]], Dict[str, List[str]]]:
    """Usable (image, caption file) pairs under `folder`, sorted by image path, and what was skipped, by reason.

    An image pairs with the .txt of the same stem in its own directory, else with the only .txt of that stem
    anywhere under `folder` (images/x.jpg with texts/x.txt, as DALLE-pytorch allows). Skipped here: images
    with no caption file, several candidates, or a caption file that is not UTF-8, has no non-blank line or
    is over `max_caption_bytes`. With `require_captions=False` none of those is skipped: such an image pairs
    with None (an empty caption). Always skipped: image or caption names that are not regular files (recorded
    under their own path) and images over `max_image_bytes`. Corrupt images are found only when loaded.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a directory")
    images: List[Path] = []
    texts: Dict[str, List[Path]] = {}
    skipped: Dict[str, List[str]] = {}
    for dirpath, filenames in walk_once(root):
        for name in filenames:
            path = dirpath / name
            suffix = path.suffix.lower()
            if suffix not in IMAGE_EXTENSIONS and suffix != ".txt":
                continue
            try:
                info = os.stat(path)  # follows symlinks; never blocks, unlike open on a FIFO
                regular = stat.S_ISREG(info.st_mode)
            except OSError:  # a dangling or looping symlink
                regular = False
            if not regular:
                skipped.setdefault(NOT_REGULAR, []).append(str(path))
            elif suffix == ".txt":
                texts.setdefault(path.stem, []).append(path)
            elif info.st_size > max_image_bytes:
                skipped.setdefault(IMAGE_TOO_LARGE, []).append(str(path))
            else:
                images.append(path)

    pairs: List[Tuple[Path, Optional[Path]]] = []
    checked: Dict[Path, Optional[str]] = {}  # caption file -> skip reason (None when usable)
    for image in sorted(images):
        candidates = texts.get(image.stem, [])
        beside = [t for t in candidates if t.parent == image.parent]
        caption = beside[0] if beside else candidates[0] if len(candidates) == 1 else None
        if caption is None:
            reason = AMBIGUOUS_CAPTION if candidates else NO_CAPTION
        else:
            if caption not in checked:
                checked[caption] = _caption_problem(caption, max_caption_bytes)[1]
            reason = checked[caption]
        if reason is None:
            pairs.append((image, caption))
        elif require_captions:
            skipped.setdefault(reason, []).append(str(image))
        else:
            pairs.append((image, None))
    return pairs, skipped


def _caption_problem(path: Path, max_bytes: int) -> Tuple[List[str], Optional[str]]:
    """(caption lines, None), or ([], skip reason) when the caption file is unusable; reads at most max_bytes."""
    try:
        lines = caption_lines(read_regular(path, max_bytes, what="caption file"))
    except UnicodeDecodeError:
        return [], BAD_CAPTION
    except NotRegularFileError:
        return [], NOT_REGULAR
    except FileTooLargeError:
        return [], CAPTION_TOO_LARGE
    except OSError:  # removed or unreadable
        return [], NO_CAPTION
    return lines, None if lines else EMPTY_CAPTION


class TextImageDataset(Dataset, SkipLog):
    """(caption tokens (text_len,), image (C, image_size, image_size) in [0, 1]) pairs from a folder.

    Same signature and sampling as DALLE-pytorch's loader: each sample takes a random non-blank line of its
    caption file and a random square crop covering `resize_ratio` to all of the image; C is 4 (RGBA) when
    `transparent`, else 3. What it fixes: it counts what it skips in `skipped` (reason -> paths) instead of
    printing, skips images without captions and empty captions up front (so `len` counts usable samples), and
    converts every image mode properly (see `images.py`). A corrupt image is found when loaded: it is recorded
    (with a warning) and the next sample is returned instead, or a random one when `shuffle`; an epoch never
    ends on it. In DataLoader workers those load-time records stay in the worker's copy; the warnings show them.

    Randomness (caption line, crop, random skip) comes from a generator seeded with `seed` (None: drawn from
    torch's global RNG). Each DataLoader worker reseeds it from `seed` and its worker seed, which the
    DataLoader draws anew every epoch from its own generator: seed torch or pass DataLoader(generator=...) for
    reproducible multi-worker runs.

    `require_captions=False` (for image-only training, such as a dVAE's) keeps every image: one without a
    usable caption file gives an empty caption, all padding (zeros).

    Caps (see the module docstring and `images.py`): captions over `max_caption_bytes` (1 MiB) and images over
    `max_image_bytes` (64 MiB) are skipped and counted; an image over `max_image_pixels` (its header size) is
    counted as a bad image without being decoded.
    """

    def __init__(self, folder: PathLike, text_len: int = 256, image_size: int = 128, truncate_captions: bool = False,
                 resize_ratio: float = 0.75, transparent: bool = False, tokenizer: Optional[Tokenizer] = None,
                 shuffle: bool = False, *, seed: Optional[int] = None, require_captions: bool = True,
                 max_caption_bytes: int = MAX_CAPTION_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES,
                 max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__()
        self.tokenizer = check_common(text_len, image_size, resize_ratio, tokenizer)
        self.max_caption_bytes = check_limit("max_caption_bytes", max_caption_bytes)
        self.max_image_bytes = check_limit("max_image_bytes", max_image_bytes)
        self.max_image_pixels = check_limit("max_image_pixels", max_image_pixels)
        self.text_len, self.image_size, self.resize_ratio = text_len, image_size, float(resize_ratio)
        self.truncate_captions, self.transparent, self.shuffle = truncate_captions, transparent, shuffle
        self.seed = check_seed(seed)
        self.require_captions = bool(require_captions)
        self.samples, self.skipped = index_folder(folder, self.require_captions,
                                                  max_caption_bytes=self.max_caption_bytes,
                                                  max_image_bytes=self.max_image_bytes)
        if self.skipped:
            warnings.warn(self.skip_summary(), stacklevel=2)
        if not self.samples:
            if not self.require_captions:
                raise ValueError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in {str(folder)!r}")
            raise ValueError(f"no usable image/caption pairs in {str(folder)!r}: images need a same-stem .txt "
                             f"caption with a non-blank line ({self.skip_summary()})")
        self._bad: set = set()  # indices whose image failed to load in this process
        self._gen: Optional[torch.Generator] = None
        self._gen_owner: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        gen = self._generator()
        for _ in range(len(self)):
            if index not in self._bad:
                sample = self._load(index, gen)
                if sample is not None:
                    return sample
            index = randint(len(self), gen) if self.shuffle else (index + 1) % len(self)
        raise RuntimeError(f"no image could be loaded after {len(self)} tries; {self.skip_summary()}")

    def _load(self, index: int, gen: torch.Generator) -> Optional[Tuple[Tensor, Tensor]]:
        """The sample at `index`, or None (recorded in `skipped`) when its caption or image is unusable."""
        image_path, caption_path = self.samples[index]
        lines: List[str] = []
        if caption_path is not None:
            lines, reason = _caption_problem(caption_path, self.max_caption_bytes)
            if reason is not None and self.require_captions:
                self._bad.add(index)
                self._record_skip(reason, image_path, f"caption file {caption_path} changed since indexing")
                return None
        if lines:
            caption = lines[randint(len(lines), gen)]
            tokens = tokenize_caption(self.tokenizer, caption, self.text_len, self.truncate_captions,
                                      str(caption_path))
        else:  # only without require_captions
            tokens = torch.zeros(self.text_len, dtype=torch.long)
        try:
            image = load_image(image_path, self.image_size, resize_ratio=self.resize_ratio,
                               transparent=self.transparent, generator=gen, max_image_pixels=self.max_image_pixels,
                               max_image_bytes=self.max_image_bytes)
        except DECODE_ERRORS as err:
            self._bad.add(index)
            reason = {NotRegularFileError: NOT_REGULAR, FileTooLargeError: IMAGE_TOO_LARGE}.get(type(err), BAD_IMAGE)
            self._record_skip(reason, image_path, f"{type(err).__name__}: {err}")
            return None
        return tokens, image

    def reseed(self, seed: int) -> None:
        """Draw the random choices of the items read next in this process (caption line, crop) from a generator
        seeded with `seed`: the trainers call it before each item so that its draws depend on (seed, epoch,
        index) alone, whatever process or worker reads it."""
        info = get_worker_info()
        self._gen = generator(seed)
        self._gen_owner = None if info is None else (info.id, info.seed)

    def _generator(self) -> torch.Generator:
        """This process's generator: seeded from `seed` here, reseeded once per DataLoader worker (and epoch)."""
        info = get_worker_info()
        owner = None if info is None else (info.id, info.seed)
        if self._gen is None or owner != self._gen_owner:
            self._gen = generator(self.seed if owner is None else mix_seed(self.seed, *owner))
            self._gen_owner = owner
        return self._gen

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_gen"] = state["_gen_owner"] = None  # spawned workers seed their own
        return state
