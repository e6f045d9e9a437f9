"""`SimpleTokenizer`: OpenAI CLIP's byte-level BPE, the tokenizer DALLE-pytorch's scripts use by default.

Ids are those of DALLE-pytorch 1.6.6's `dalle_pytorch.tokenizer.SimpleTokenizer` for every text (tested against it
and against committed fixtures): 256 byte symbols, the same 256 with the end-of-word marker `</w>`, 48,894 merges,
then `<|startoftext|>` (49406) and `<|endoftext|>` (49407); vocab_size 49408. As there, captions are cleaned with
`ftfy.fix_text` and `html.unescape` (twice), runs of whitespace become one space, text is lower-cased and split by
CLIP's pattern before BPE, and `tokenize` adds no start or end token.

Where the contract of `dalle_core.tokenizers` bends for parity: CLIP's id 0 is the byte symbol "!" (without `</w>`),
which models read as padding, so a "!" that BPE leaves unmerged inside a run of punctuation ("!?") is lost exactly
as in DALLE-pytorch.

The merges file (`data/bpe_simple_vocab_16e6.txt.gz`, from openai/CLIP, MIT licence; see `data/NOTICE.md`) ships
with the package. Another merges file (`SimpleTokenizer(bpe_path)`, plain text or gzip) is read as hostile data:
at most `MAX_MERGES_BYTES` after decompression, a header line holding `#version`, then one merge of two symbols per line.

BPE here merges pairs through a heap in rank order (O(n log n) in a word's length) instead of rescanning the word
after every merge (quadratic): a caption that is one very long word cannot stall a data loader. For a merges file
made by BPE training (every merge's symbols made by earlier merges, as in CLIP's) both orders give the same ids.
"""
from __future__ import annotations

import gzip
import heapq
import html
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..files import read_bytes
from ..utils import optional_import
from .base import PathLike, Tokenizer, existing_path

__all__ = ["SimpleTokenizer", "DEFAULT_BPE_PATH", "MAX_MERGES_BYTES"]

DEFAULT_BPE_PATH = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
MAX_MERGES_BYTES = 32 * 2**20  # CLIP's merges file is 3.2 MB uncompressed
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of its file
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's pre-tokenizer: its special tokens, English contractions, runs of letters, single digits, runs of the rest
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CACHE_SIZE = 2**16  # words remembered; cleared when full, so memory stays bounded on any corpus
INSTALL = "pip install ftfy regex"


def byte_symbols() -> List[str]:
    """The 256 printable characters that stand for the bytes 0..255 (GPT-2's byte-level alphabet), by byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes take the code points 256, 257, ... in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def _vocab_order() -> List[int]:
    """Byte values in CLIP's id order: the printable bytes first (ascending), then the others (ascending)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def read_merges(path: PathLike) -> List[Tuple[str, str]]:
    """The merges of a CLIP-style BPE file (plain text or gzip): the lines after the header, first NUM_MERGES."""
    path = existing_path(path, "BPE merges file")
    data = read_bytes(path, MAX_MERGES_BYTES, what="BPE merges file")
    if data[:2] == b"\x1f\x8b":  # gzip: decompress at most MAX_MERGES_BYTES (a small bomb cannot balloon memory)
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                data = f.read(MAX_MERGES_BYTES + 1)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: a damaged gzip file ({err}); expected CLIP's bpe_simple_vocab_16e6.txt.gz "
                             "or its uncompressed text") from None
        if len(data) > MAX_MERGES_BYTES:
            raise ValueError(f"{path}: decompresses to more than {MAX_MERGES_BYTES} bytes; a BPE merges file is "
                             "a few MB")
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text at byte {err.start}; expected a BPE merges file") from None
    if "#version" not in lines[0]:  # CLIP's reads '"bpe_simple_vocab_16e6.txt#version: 0.2'
        raise ValueError(f"{path}: expected a BPE merges file whose first line holds '#version', got "
                         f"{lines[0][:40]!r}")
    merges = []
    for number, line in enumerate(lines[1:NUM_MERGES + 1], start=2):
        pair = tuple(line.split())
        if len(pair) != 2:
            if not line.strip() and all(not rest.strip() for rest in lines[number:NUM_MERGES + 1]):
                break  # a shorter file: its last lines are empty
            raise ValueError(f"{path}: line {number} must hold one merge, two symbols separated by a space; got "
                             f"{line[:60]!r}")
        merges.append(pair)
    if not merges:
        raise ValueError(f"{path}: no merges after the '#version' line")
    return merges


def _check_merge(pair: Sequence[str]) -> Tuple[str, str]:
    """One merge as a pair of non-empty symbols without whitespace, or ValueError."""
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(s, str) and s and not any(c.isspace() for c in s) for s in pair)):
        raise ValueError(f"a merge is two non-empty symbols without whitespace, got {pair!r:.60}")
    return (pair[0], pair[1])


class SimpleTokenizer(Tokenizer):
    """OpenAI CLIP's byte-level BPE (vocab_size 49408 with CLIP's merges), ids equal to DALLE-pytorch's.

    `SimpleTokenizer()` reads the merges shipped with the package (no network); `SimpleTokenizer(bpe_path)` reads
    another merges file. `tokenize(texts, context_length=256, truncate_text=False)` pads with 0 and adds no start
    or end token, as DALLE-pytorch's does. Needs `ftfy` and `regex` (installed with dalle_core). `decode` drops
    padding and the start and end tokens and marks word ends with a space, as DALLE-pytorch's does (which, by a
    typo, keeps 49407 and drops the real token 40407 instead).
    """

    saved_format = "SimpleTokenizer"

    def __init__(self, bpe_path: Optional[PathLike] = None, *, merges: Optional[Sequence[Tuple[str, str]]] = None
                 ) -> None:
        self._ftfy = optional_import("ftfy", "SimpleTokenizer", INSTALL)
        regex = optional_import("regex", "SimpleTokenizer", INSTALL)
        if merges is not None and bpe_path is not None:
            raise ValueError("give a merges file (bpe_path) or the merges themselves, not both")
        self.bpe_path = None if bpe_path is None else str(bpe_path)
        self._shipped = bpe_path is None and merges is None  # CLIP's merges, from the package
        if merges is None:
            merges = read_merges(DEFAULT_BPE_PATH if bpe_path is None else bpe_path)
        self.merges = [_check_merge(pair) for pair in merges]
        symbols = byte_symbols()
        self._byte_symbol = symbols
        self._symbol_byte = {s: b for b, s in enumerate(symbols)}
        vocab = [symbols[b] for b in _vocab_order()]
        vocab += [s + END_OF_WORD for s in vocab]
        vocab += ["".join(pair) for pair in self.merges] + [START_TOKEN, END_TOKEN]
        self._ids: Dict[str, int] = {s: i for i, s in enumerate(vocab)}  # a repeated string keeps its last id
        self._symbols = vocab
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}  # a repeated merge keeps its last rank
        self._vocab_size = len(vocab)
        self._skip_ids = frozenset((self._ids[START_TOKEN], self._ids[END_TOKEN]))
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._space = regex.compile(r"\s+")
        self._cache: Dict[str, Tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """512 byte symbols + the merges + 2 special tokens: 49408 with CLIP's merges."""
        return self._vocab_size

    def clean(self, text: str) -> str:
        """The text BPE sees: ftfy-fixed, HTML-unescaped twice, whitespace runs as one space, lower-cased."""
        text = html.unescape(html.unescape(self._ftfy.fix_text(text))).strip()
        return self._space.sub(" ", text).strip().lower()

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        out = []
        for text in texts:
            ids: List[int] = []
            for piece in self._pattern.findall(self.clean(text)):
                try:
                    word = "".join(self._byte_symbol[b] for b in piece.encode("utf-8"))
                except UnicodeEncodeError as err:
                    raise ValueError(f"caption is not valid Unicode (a lone surrogate?): {err}") from None
                ids.extend(self._word_ids(word, dropout_prob))
            out.append(ids)
        return out

    def _word_ids(self, word: str, dropout_prob: float) -> Tuple[int, ...]:
        """The ids of one pre-tokenized word (in byte symbols); BPE-dropout skips each merge with `dropout_prob`."""
        if word in (START_TOKEN, END_TOKEN):
            return (self._ids[word],)
        if not dropout_prob and word in self._cache:
            return self._cache[word]
        ids = tuple(self._ids[s] for s in self._bpe(word, dropout_prob))
        if not dropout_prob:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _bpe(self, word: str, dropout_prob: float = 0.0) -> List[str]:
        """BPE of one word: repeatedly merge the adjacent pair of lowest rank (leftmost first among equals).

        The symbols form a linked list; a heap holds (rank, position) of every mergeable adjacent pair, and an
        entry is skipped when its pair no longer stands at its position (one side was merged away since).
        """
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        n = len(symbols)
        nxt, prev = list(range(1, n + 1)), list(range(-1, n - 1))  # nxt[i] == n: the end
        ranks = self._ranks

        def pair_at(i: int) -> Optional[Tuple[int, int, str, str]]:
            """The heap entry of the pair starting at symbol i, if it is a merge."""
            j = nxt[i]
            rank = ranks.get((symbols[i], symbols[j])) if 0 <= i and j < n else None
            return None if rank is None else (rank, i, symbols[i], symbols[j])

        heap = [entry for entry in map(pair_at, range(n - 1)) if entry is not None]
        heapq.heapify(heap)
        skipped = []  # pairs dropped by BPE-dropout since the last merge: back on the heap after the next one
        while heap:
            entry = heapq.heappop(heap)
            rank, i, left, right = entry
            j = nxt[i]
            if symbols[i] != left or j >= n or symbols[j] != right:
                continue  # stale: one side was merged into a neighbour since this pair was pushed
            if dropout_prob and torch.rand(()).item() < dropout_prob:
                skipped.append(entry)
                continue
            symbols[i], symbols[j] = left + right, None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prev[nxt[i]] = i
            for entry in [pair_at(prev[i]), pair_at(i), *skipped]:
                if entry is not None:
                    heapq.heappush(heap, entry)
            skipped.clear()
        return [s for s in symbols if s is not None]

    def _decode(self, ids: List[int]) -> str:
        text = "".join(self._symbols[i] for i in ids)
        return bytes(self._symbol_byte[c] for c in text).decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def save(self, path: PathLike) -> None:
        """Write a JSON marker; the merges too when they are not the shipped CLIP merges."""
        saved: dict = {"dalle_core_tokenizer": "SimpleTokenizer"}
        if not self._shipped and self.merges != read_merges(DEFAULT_BPE_PATH):
            saved["merges"] = [" ".join(pair) for pair in self.merges]
        Path(path).write_text(json.dumps(saved) + "\n", encoding="utf-8")

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "SimpleTokenizer":
        """The tokenizer `save` wrote into the (already read) JSON object `saved`."""
        merges = saved.get("merges")
        if merges is None:
            return cls()
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise ValueError("a SimpleTokenizer file's 'merges' must be a list of 'left right' strings")
        return cls(merges=[tuple(m.split(" ")) for m in merges])

    def __repr__(self) -> str:
        where = "" if self.bpe_path is None else f"{self.bpe_path!r}, "
        return f"SimpleTokenizer({where}vocab_size={self.vocab_size})"
