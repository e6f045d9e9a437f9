"""WebDataset tar shards (img2dataset layout): `WebTextImageDataset` reads them, `write_shards` writes them.

A shard is a tar whose members are grouped by key: `{key}.jpg|jpeg|png|webp|bmp` (the image), `{key}.txt`
(the caption) and anything else (`{key}.json`, ignored). The key is the member name up to the first dot of
its file name; consecutive members with one key make one sample.

Built on the standard library's `tarfile`, not the `webdataset` package: the format is a plain tar, read
here in ~100 lines with exact skip accounting and our own rank/worker split, where `webdataset` (1.0.2)
needs Python >= 3.10 (we support 3.9), pulls numpy, pyyaml and braceexpand, and has changed its splitting
API between releases. Shards written here are read by `webdataset`, and img2dataset's shards are read here.
Sources: local paths (a directory means its *.tar files), `file:`, `http(s)://` URLs and `pipe:COMMAND`
(e.g. `pipe:aws s3 cp s3://bucket/shard.tar -`), with brace ranges (`shard-{000000..000099}.tar`) and lists
(`{a,b}`, nestable).

Shards are treated as hostile. A `pipe:` source runs a shell command, so it is refused (ValueError) unless the
caller passes `allow_pipe=True`: pass it only for sources given in the Python call or on the command line of
the current invocation, never for sources read from a saved config or run folder. Brace patterns are counted
before they are expanded and refused over `max_sources` (`sources.MAX_SOURCES`, 1,000,000). Local shards must be
regular files (a FIFO is refused, never waited on); http(s) reads time out after `HTTP_TIMEOUT` seconds.
Members: a caption over `max_caption_bytes` or an image over `max_image_bytes` is skipped and counted without
being read, other members are never read, and extended (pax / GNU long name) headers over 1 MiB fail the
shard. A tar that ends without its two zero end-of-archive blocks (cut at a member or header boundary) or with
a member cut short is counted under `bad_shard` with a warning; the complete samples before the cut are used.
"""
from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path
from random import Random
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Sized, Tuple, Union, cast

import torch
from PIL import Image
from tqdm.auto import tqdm
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..files import read_regular
from ..tokenizers import Tokenizer
from .common import (BAD_CAPTION, BAD_IMAGE, BAD_SHARD, CAPTION_TOO_LARGE, EMPTY_CAPTION, IMAGE_TOO_LARGE,
                      MAX_CAPTION_BYTES, MAX_IMAGE_BYTES, NO_CAPTION, NO_IMAGE, PathLike, SkipLog, caption_lines,
                      check_common, check_limit, check_seed, generator, mix_seed, randint, resolve_rank,
                      tokenize_caption)
from .folder import index_folder
from .images import DECODE_ERRORS, IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image
from .sources import open_shard, expand_urls  # expand_urls: re-exported here, where it used to live

_MAX_HEADER_BYTES = 1 << 20  # pax / GNU long-name header data
_SHUFFLE_BYTES = 1 << 30  # undecoded bytes a shuffle buffer may hold, whatever its length
_IMAGE_EXTS = frozenset(e[1:] for e in IMAGE_EXTENSIONS)
_MAX_MEMBER_NAMES = 16  # unused member names kept per sample (for messages)


class _CheckedTarInfo(tarfile.TarInfo):
    """A TarInfo that notes on the TarFile why its last header read failed, and caps extended headers."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            info = super().fromtarfile(tar)
        except tarfile.HeaderError as err:  # EOFHeaderError: a zero block; others: cut short or garbage
            tar._dalle_end = err  # type: ignore[attr-defined]
            raise
        tar._dalle_end = None  # type: ignore[attr-defined]
        return info

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)
        if self.type in extended and self.size > _MAX_HEADER_BYTES:
            raise tarfile.SubsequentHeaderError(f"extended header of {self.size} bytes at byte {self.offset}, "
                                                f"more than {_MAX_HEADER_BYTES}")
        return super()._proc_member(tar)  # type: ignore[misc]


def iter_tar_samples(stream: BinaryIO, *, max_caption_bytes: int = MAX_CAPTION_BYTES,
                     max_image_bytes: int = MAX_IMAGE_BYTES) -> Iterator[Tuple[str, Dict[str, Union[bytes, int]]]]:
    """(key, {extension: bytes}) for each run of consecutive same-key regular files in a tar stream.

    Only captions (.txt) and images within their caps are read; any other member, or one over its cap, maps
    to its size (an int) instead. Raises tarfile.ReadError when the stream is cut short, so a truncated shard
    is never mistaken for a complete one; a sample the cut may have split (the last before a cut header) is
    not yielded.
    """
    key: Optional[str] = None
    files: Dict[str, Union[bytes, int]] = {}
    with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo) as tar:
        for member in tar:
            tar.members = []  # a streamed TarFile keeps every header otherwise
            name = member.name
            base = name.rsplit("/", 1)[-1]
            if not member.isfile() or base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            ext = ext.lower()
            member_key = name[:len(name) - len(base)] + stem
            if member_key != key and files:
                yield cast(str, key), files
                files = {}
            key = member_key
            cap = max_caption_bytes if ext == "txt" else max_image_bytes if ext in _IMAGE_EXTS else None
            if cap is not None and member.size <= cap:
                files[ext] = cast(BinaryIO, tar.extractfile(member)).read()
            elif cap is not None or len(files) < _MAX_MEMBER_NAMES:
                files[ext] = member.size  # not read: over its cap, or a member nothing uses
        end = getattr(tar, "_dalle_end", None)
        ended = isinstance(end, tarfile.EOFHeaderError)  # at a zero block: the last sample is complete
        if ended and files:
            yield cast(str, key), files
        if not ended or tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise tarfile.ReadError(f"tar stream cut short: it ends at byte {tar.offset} without the two zero "
                                    f"end-of-archive blocks ({end or 'end of data'})")


class WebTextImageDataset(IterableDataset, SkipLog):
    """(caption tokens (text_len,), image (C, image_size, image_size) in [0, 1]) pairs streamed from tar shards.

    Decoding, caption choice and skip rules are `TextImageDataset`'s; `skipped` also counts samples with no
    image (`no_image`) and shards that failed to open or read (`bad_shard`), and every skip warns, since a
    DataLoader worker's `skipped` stays in that worker. Shards are split across distributed ranks (from the
    arguments, else torch.distributed when initialised, else env RANK/WORLD_SIZE, read at construction) and
    DataLoader workers, so each sample is read once per epoch; with fewer shards than ranks x workers every
    reader scans every shard and keeps every (ranks x workers)-th sample instead. `shuffle_buffer` > 0
    shuffles the shard order (same on every rank, from `seed` and `set_epoch`) and then samples through a
    buffer of that many undecoded samples; 0 reads in order. Per-reader randomness (crops, caption lines,
    buffer) is seeded from `seed`, epoch, rank, worker and the DataLoader's per-epoch worker seed.
    `require_captions=False` keeps samples without a usable caption, with an empty caption (all zeros).

    Hostile shards (see the module docstring): `allow_pipe` must be True for `pipe:` sources (only for sources
    from your own call or command line); captions over `max_caption_bytes` and images over `max_image_bytes`
    are skipped and counted (`caption_too_large`, `image_too_large`) unread; images over `max_image_pixels`
    (header size) count as bad images, undecoded; a truncated tar counts as a bad shard.
    """

    def __init__(self, urls: Union[PathLike, Sequence[PathLike]], text_len: int = 256, image_size: int = 128,
                 truncate_captions: bool = False, resize_ratio: float = 0.75, transparent: bool = False,
                 tokenizer: Optional[Tokenizer] = None, *, shuffle_buffer: int = 1000, seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None, require_captions: bool = True,
                 allow_pipe: bool = False, max_caption_bytes: int = MAX_CAPTION_BYTES,
                 max_image_bytes: int = MAX_IMAGE_BYTES, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__()
        if not isinstance(allow_pipe, bool):
            raise TypeError(f"allow_pipe must be True or False, got {allow_pipe!r:.80}")
        self.allow_pipe = allow_pipe
        self.max_caption_bytes = check_limit("max_caption_bytes", max_caption_bytes)
        self.max_image_bytes = check_limit("max_image_bytes", max_image_bytes)
        self.max_image_pixels = check_limit("max_image_pixels", max_image_pixels)
        self.require_captions = bool(require_captions)
        self.tokenizer = check_common(text_len, image_size, resize_ratio, tokenizer)
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0 (0: no shuffling), got {shuffle_buffer!r}")
        self.text_len, self.image_size, self.resize_ratio = text_len, image_size, float(resize_ratio)
        self.truncate_captions, self.transparent, self.shuffle_buffer = truncate_captions, transparent, shuffle_buffer
        if seed is None:  # a seed drawn per process would give each rank its own shard order: overlapping splits
            raise TypeError("seed must be an int shared by every rank (it orders the shards), got None")
        self.seed = check_seed(seed)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.urls = expand_urls(urls, allow_pipe=allow_pipe)
        self.epoch = 0
        self.skipped: Dict[str, List[str]] = {}
        self._passes = 0  # iterations started in this process: varies the randomness without set_epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the shard order and per-reader randomness (call before each epoch)."""
        self.epoch = int(epoch)

    def reader_shards(self, worker: int = 0, num_workers: int = 1) -> Tuple[List[str], int, int]:
        """(shards, stride, offset) one reader (rank, worker) reads: it keeps samples i with i % stride == offset."""
        shards = list(self.urls)
        if self.shuffle_buffer:
            Random(mix_seed(self.seed, self.epoch)).shuffle(shards)  # identical on every rank and worker
        readers, reader = self.world_size * num_workers, self.rank * num_workers + worker
        if len(shards) >= readers:
            return shards[reader::readers], 1, 0
        return shards, readers, reader

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        shards, stride, offset = self.reader_shards(worker, num_workers)
        if stride > 1 and worker == 0 and self.rank == 0:
            warnings.warn(f"{len(self.urls)} shards for {stride} readers (ranks x workers): every reader scans "
                          f"every shard; write at least {stride} shards to split them instead", stacklevel=2)
        self._passes += 1
        fresh = self._passes if info is None else info.seed
        gen = generator(mix_seed(self.seed, self.epoch, self.rank, worker, fresh))
        raw = self._raw_samples(shards, stride, offset)
        for url, key, files in self._shuffled(raw, gen) if self.shuffle_buffer else raw:
            sample = self._decode(url, key, files, gen)
            if sample is not None:
                yield sample

    def _raw_samples(self, shards: List[str], stride: int, offset: int) -> Iterator[Tuple[str, str, Dict]]:
        """This reader's undecoded samples, shard by shard; a shard that fails is recorded and left."""
        index = 0
        for url in shards:
            try:
                with open_shard(url, self.allow_pipe) as stream:
                    for key, files in iter_tar_samples(stream, max_caption_bytes=self.max_caption_bytes,
                                                       max_image_bytes=self.max_image_bytes):
                        if index % stride == offset:
                            yield url, key, files
                        index += 1
            except (OSError, tarfile.TarError, EOFError) as err:
                self._record_skip(BAD_SHARD, url, f"{type(err).__name__}: {err}")

    def _shuffled(self, items: Iterable[Any], gen: torch.Generator) -> Iterator[Any]:
        """`items` through a shuffle buffer of `shuffle_buffer` entries."""
        buffer: List[Any] = []
        held = 0  # bytes in the buffer: at most about _SHUFFLE_BYTES, however large the samples
        for item in items:
            size = _raw_bytes(item)
            if len(buffer) < self.shuffle_buffer and held + size <= _SHUFFLE_BYTES:
                buffer.append(item)
                held += size
                continue
            if not buffer:
                yield item
                continue
            j = randint(len(buffer), gen)
            yield buffer[j]
            held += size - _raw_bytes(buffer[j])
            buffer[j] = item
            while held > _SHUFFLE_BYTES and len(buffer) > 1:
                out = buffer.pop(randint(len(buffer), gen))
                held -= _raw_bytes(out)
                yield out
        while buffer:
            yield buffer.pop(randint(len(buffer), gen))

    def _decode(self, url: str, key: str, files: Dict[str, Union[bytes, int]], gen: torch.Generator
                ) -> Optional[Tuple[Tensor, Tensor]]:
        """The (tokens, image) pair of one raw sample, or None (recorded in `skipped`)."""
        where = f"{url}:{key}"
        image_ext = next((e for e in (x[1:] for x in IMAGE_EXTENSIONS) if e in files), None)
        if image_ext is None:
            self._record_skip(NO_IMAGE, where, f"members {sorted(files)}")
            return None
        lines, problem = _shard_caption(files, self.max_caption_bytes)
        if problem is not None and self.require_captions:
            self._record_skip(problem[0], where, problem[1])
            return None
        image_bytes = files[image_ext]
        if isinstance(image_bytes, int):
            self._record_skip(IMAGE_TOO_LARGE, f"{where}.{image_ext}",
                              f"{image_bytes} bytes, over max_image_bytes={self.max_image_bytes}; not read")
            return None
        if lines:
            caption = lines[randint(len(lines), gen)]
            tokens = tokenize_caption(self.tokenizer, caption, self.text_len, self.truncate_captions, f"{where}.txt")
        else:  # no usable caption, kept because captions are not required
            tokens = torch.zeros(self.text_len, dtype=torch.long)
        try:
            image = load_image(image_bytes, self.image_size, resize_ratio=self.resize_ratio,
                               transparent=self.transparent, generator=gen, max_image_pixels=self.max_image_pixels,
                               max_image_bytes=self.max_image_bytes)
        except DECODE_ERRORS as err:
            self._record_skip(BAD_IMAGE, f"{where}.{image_ext}", f"{type(err).__name__}: {err}")
            return None
        return tokens, image


def _raw_bytes(item: Tuple[str, str, Dict[str, Union[bytes, int]]]) -> int:
    """Bytes held by one undecoded sample (url, key, files)."""
    return sum(len(v) for v in item[2].values() if isinstance(v, bytes))


def _shard_caption(files: Dict[str, Union[bytes, int]], cap: int) -> Tuple[List[str], Optional[Tuple[str, str]]]:
    """The caption lines of a shard sample, and (skip reason, detail) when it has no usable caption."""
    if "txt" not in files:
        return [], (NO_CAPTION, f"members {sorted(files)}")
    data = files["txt"]
    if isinstance(data, int):
        return [], (CAPTION_TOO_LARGE, f"caption member is {data} bytes, over max_caption_bytes={cap}; not read")
    try:
        lines = caption_lines(data)
    except UnicodeDecodeError as err:
        return [], (BAD_CAPTION, str(err))
    return lines, None if lines else (EMPTY_CAPTION, "no non-blank line")


# --- writing ------------------------------------------------------------------------------------------------

ImageSource = Union[Image.Image, bytes, PathLike]


def write_shards(pairs_or_folder: Union[PathLike, Iterable[Tuple[Union[str, Sequence[str]], ImageSource]]],
                 out_dir: PathLike, samples_per_shard: int = 1000, *, prefix: str = "shard",
                 progress: bool = False) -> List[Path]:
    """Write (caption, image) pairs, or a folder's usable pairs, as `{prefix}-000000.tar`, ... in `out_dir`.

    A caption is a str or a list of lines; an image is a PIL image (stored as PNG), encoded bytes, or a file
    path (stored as is, under its own extension). From a folder, files are copied byte for byte and what
    `TextImageDataset` skips up front is left out (corrupt images are copied and skipped when read).
    Keys are 000000000, 000000001, ... Returns the shard paths. progress: a tqdm bar over the pairs written.
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be an int >= 1, got {samples_per_shard!r}")
    if isinstance(pairs_or_folder, (str, Path)):
        pairs: Iterable = [(read_regular(caption, MAX_CAPTION_BYTES, what="caption file"), image)
                           for image, caption in index_folder(pairs_or_folder)[0] if caption is not None]
    else:
        pairs = pairs_or_folder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    tar: Optional[tarfile.TarFile] = None
    try:
        total = len(pairs) if isinstance(pairs, Sized) else None
        for n, pair in enumerate(tqdm(pairs, total=total, desc="write_shards", unit="pair", disable=not progress)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"pairs must be (caption, image) tuples, got {pair!r:.80}")
            if n % samples_per_shard == 0:
                if tar is not None:
                    tar.close()
                paths.append(out / f"{prefix}-{len(paths):06d}.tar")
                tar = tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT)
            caption, image = pair
            image_bytes, ext = _encode_image(image)
            _add_member(tar, f"{n:09d}.{ext}", image_bytes)
            _add_member(tar, f"{n:09d}.txt", _caption_bytes(caption))
    finally:
        if tar is not None:
            tar.close()
    return paths


def _caption_bytes(caption: Union[str, bytes, Sequence[str]]) -> bytes:
    if isinstance(caption, bytes):
        return caption
    if isinstance(caption, str):
        return caption.encode("utf-8")
    if isinstance(caption, (list, tuple)) and all(isinstance(c, str) for c in caption):
        return "\n".join(caption).encode("utf-8")
    raise TypeError(f"a caption must be a str or a list of str, got {type(caption).__name__}")


def _encode_image(image: ImageSource) -> Tuple[bytes, str]:
    """(bytes, extension) to store for an image given as a PIL image, encoded bytes or a file path."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as img:
                fmt = (img.format or "").lower()
        except DECODE_ERRORS as err:
            raise ValueError(f"image bytes are not a format Pillow recognises: {err}") from err
        ext = {"jpeg": "jpg"}.get(fmt, fmt)
        if f".{ext}" not in IMAGE_EXTENSIONS:
            raise ValueError(f"image format {fmt!r} is not one of {IMAGE_EXTENSIONS}; pass a PIL image instead")
        return bytes(image), ext
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"image file {str(path)!r} must end in one of {IMAGE_EXTENSIONS}")
        return read_regular(path, MAX_IMAGE_BYTES, what="image file"), path.suffix.lower()[1:]
    raise TypeError(f"an image must be a PIL image, bytes or a file path, got {type(image).__name__}")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same input, same bytes
    tar.addfile(info, io.BytesIO(data))
