"""What the folder and shard datasets share: caption lines, skip accounting, argument checks and seeding."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..tokenizers import Tokenizer, default_tokenizer

PathLike = Union[str, "os.PathLike[str]"]

# skip reasons, the keys of `dataset.skipped`
NO_CAPTION = "no_caption"  # an image with no caption file (folder) or no .txt member (shards)
EMPTY_CAPTION = "empty_caption"  # a caption with no non-blank line
BAD_CAPTION = "bad_caption"  # a caption that is not UTF-8 text
AMBIGUOUS_CAPTION = "ambiguous_caption"  # several same-stem captions elsewhere in the folder, none beside it
BAD_IMAGE = "bad_image"  # an image Pillow cannot decode (corrupt, truncated, not an image)
NO_IMAGE = "no_image"  # a shard sample with no image member
BAD_SHARD = "bad_shard"  # a shard that could not be opened or read to its end (or ends cut short)
NOT_REGULAR = "not_regular_file"  # a FIFO, device, socket or dangling symlink named like an image or caption
CAPTION_TOO_LARGE = "caption_too_large"  # a caption file or member over `max_caption_bytes`
IMAGE_TOO_LARGE = "image_too_large"  # an image file or member over `max_image_bytes`

# size caps (keywords of both datasets): larger files are skipped and counted, never read whole
MAX_CAPTION_BYTES = 1 << 20  # 1 MiB
MAX_IMAGE_BYTES = 64 << 20  # 64 MiB


def check_limit(name: str, value: Any) -> int:
    """A positive int cap, or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def caption_lines(data: bytes) -> List[str]:
    """The non-blank lines of a caption file, stripped; UnicodeDecodeError when it is not UTF-8."""
    text = data.decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def tokenize_caption(tokenizer: Tokenizer, caption: str, text_len: int, truncate: bool, where: str) -> Tensor:
    """One caption as a LongTensor (text_len,); a too-long caption raises a ValueError naming it and `where`."""
    try:
        return tokenizer.tokenize([caption], text_len, truncate_text=truncate).squeeze(0)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def check_common(text_len: Any, image_size: Any, resize_ratio: Any, tokenizer: Optional[Tokenizer]) -> Tokenizer:
    """Check the arguments both datasets take; return the tokenizer to use (ByteTokenizer when None)."""
    for name, value in (("text_len", text_len), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(resize_ratio, bool) or not isinstance(resize_ratio, (int, float)) or not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be a number in (0, 1], got {resize_ratio!r}")
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    if not callable(getattr(tokenizer, "tokenize", None)):
        raise TypeError(f"tokenizer must have a tokenize(texts, context_length, truncate_text) method, "
                        f"got {type(tokenizer).__name__}")
    return tokenizer


def check_seed(seed: Any) -> int:
    """`seed` as an int; None draws one from torch's global RNG, so `torch.manual_seed` makes it reproducible."""
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return seed


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def randint(high: int, gen: torch.Generator) -> int:
    """A uniform int in [0, high) drawn from `gen`."""
    return int(torch.randint(0, high, (), generator=gen).item())


class SkipLog:
    """Mixin: `skipped` maps a reason to the paths skipped for it; `skip_summary()` is one line."""

    skipped: Dict[str, List[str]]

    def _record_skip(self, reason: str, where: Union[str, Path], detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(str(where))
        if detail:  # a load-time skip: say so now, since a DataLoader worker's `skipped` is never seen
            warnings.warn(f"{type(self).__name__}: skipped {where} ({reason}: {detail})", stacklevel=3)

    def skip_summary(self) -> str:
        """One line: how many items were skipped, by reason."""
        if not any(self.skipped.values()):
            return f"{type(self).__name__}: nothing skipped"
        counts = ", ".join(f"{len(paths)} {reason}" for reason, paths in sorted(self.skipped.items()) if paths)
        return f"{type(self).__name__}: skipped {counts} (paths in .skipped)"


def resolve_rank(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed if initialised, else env RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            try:
                found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            except ValueError:
                raise ValueError(f"RANK and WORLD_SIZE must be integers, got RANK={os.environ.get('RANK')!r} "
                                 f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size
