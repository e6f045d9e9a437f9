"""Caption tokenizers: one contract (ids in [1, vocab_size), 0 is padding) over bytes, words and BPE (CLIP, yttm, HF).

`ByteTokenizer` (the default) needs no training and no files and covers every language; `WordTokenizer` is a
fixed word list for small closed vocabularies; `SimpleTokenizer` is CLIP's BPE, DALLE-pytorch's default (its ids,
`clip_bpe.py`); `YttmTokenizer` and `HugTokenizer` are trained BPE vocabularies whose packages are optional and
imported only when used; `ChineseTokenizer` is BERT's Chinese WordPiece through `transformers` (`chinese.py`).
The contract itself is `base.Tokenizer`.

Tokenizer files are read as hostile data: only regular files of at most `MAX_TOKENIZER_BYTES`, UTF-8, JSON nested
at most `dalle_core.files.MAX_JSON_DEPTH` levels, youtokentome models checked line by line before youtokentome
reads them; anything else raises ValueError naming the file and what was expected.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..files import parse_json, read_bytes
from ..utils import optional_import
from .base import Corpus, PathLike, Tokenizer, check_texts, existing_path
from .chinese import ChineseTokenizer
from .clip_bpe import SimpleTokenizer
from .files import MAX_TOKENIZER_BYTES, TOKENIZER_KINDS, check_yttm_model, read_tokenizer_text

__all__ = ["Tokenizer", "ByteTokenizer", "WordTokenizer", "SimpleTokenizer", "YttmTokenizer", "HugTokenizer",
           "ChineseTokenizer", "default_tokenizer", "load_tokenizer", "NAMED_TOKENIZERS", "implied_tokenizer", "save_tokenizer", "find_tokenizer",
           "MODEL_TOKENIZER_FILES", "MAX_TOKENIZER_BYTES", "YTTM_INSTALL", "HF_INSTALL", "PathLike", "Corpus"]

# youtokentome ships no wheels for current Pythons; its build needs Cython, setuptools and wheel (and a C++ compiler)
YTTM_INSTALL = "pip install cython setuptools wheel && pip install --no-build-isolation youtokentome"
HF_INSTALL = "pip install 'tokenizers>=0.15.1'"


def default_tokenizer() -> "ByteTokenizer":
    """The tokenizer used when none is given: UTF-8 bytes, vocab_size 257."""
    return ByteTokenizer()


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens (id = byte + 1, vocab_size 257): no training, no files, every language and emoji.

    Round-trips every valid string exactly. BPE-dropout does nothing (there are no merges). A truncated caption
    may end mid-character; `decode` shows broken or invalid byte sequences as U+FFFD instead of raising.
    """

    saved_format = "ByteTokenizer"

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "ByteTokenizer":
        return cls()

    @property
    def vocab_size(self) -> int:
        """257: the 256 byte values shifted by one, plus padding 0."""
        return 257

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        try:
            return [[byte + 1 for byte in text.encode("utf-8")] for text in texts]
        except UnicodeEncodeError as err:
            raise ValueError(f"caption is not valid Unicode (a lone surrogate?): {err}") from None

    def _decode(self, ids: List[int]) -> str:
        return bytes(i - 1 for i in ids).decode("utf-8", errors="replace")

    def save(self, path: PathLike) -> None:
        """Write a small JSON marker; there is nothing else to store."""
        Path(path).write_text(json.dumps({"dalle_core_tokenizer": "ByteTokenizer"}) + "\n", encoding="utf-8")


class WordTokenizer(Tokenizer):
    """Whole words and punctuation marks as tokens, from a fixed vocabulary: no files, no dependencies.

    For small closed-vocabulary caption sets (the built-in shapes data), where one token per word makes the
    text a quarter of its byte length. Ids: 0 padding, 1 <unk> (any word outside the vocabulary), then the
    vocabulary in the order given. A caption splits into words (runs of letters, digits, ' and -) and single
    punctuation marks; `decode` joins them with one space and none before , . ; : ! ?, so captions written
    that way round-trip exactly and other spacing is normalised.
    """

    UNK_ID = 1
    UNK_TEXT = "<unk>"
    saved_format = "WordTokenizer"
    _PIECE = re.compile(r"[\w'-]+|[^\w\s]")
    _NO_SPACE_BEFORE = frozenset(",.;:!?")

    def __init__(self, words: Sequence[str]) -> None:
        words = check_texts(list(words) if not isinstance(words, str) else words)
        bad = [w for w in words if self._PIECE.fullmatch(w) is None]
        if bad or len(set(words)) != len(words):
            raise ValueError(f"vocabulary words must be distinct single words or punctuation marks, got "
                             f"{bad[:5] if bad else 'duplicates'}")
        self.words: List[str] = list(words)
        self._ids = {w: i + 2 for i, w in enumerate(self.words)}

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "WordTokenizer":
        return cls(saved["words"])

    @classmethod
    def train(cls, texts_or_file: Corpus, vocab_size: Union[int, None] = None) -> "WordTokenizer":
        """The vocabulary of a corpus (an iterable of str, or a text file path): its most frequent pieces
        first (ties alphabetical), at most `vocab_size - 2` of them."""
        counts: dict = {}
        for text in _iter_corpus(texts_or_file):
            for piece in cls._PIECE.findall(text):
                counts[piece] = counts.get(piece, 0) + 1
        if not counts:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        words = sorted(counts, key=lambda w: (-counts[w], w))
        if vocab_size is not None:
            if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
                raise ValueError(f"vocab_size must be an int >= 3 (padding, <unk>, one word), got {vocab_size!r}")
            words = words[: vocab_size - 2]
        return cls(words)

    @property
    def vocab_size(self) -> int:
        """Padding, <unk> and the words."""
        return len(self.words) + 2

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        return [[self._ids.get(p, self.UNK_ID) for p in self._PIECE.findall(text)] for text in texts]

    def _decode(self, ids: List[int]) -> str:
        out = ""
        for i in ids:
            piece = self.UNK_TEXT if i == self.UNK_ID else self.words[i - 2]
            out += piece if not out or piece in self._NO_SPACE_BEFORE else " " + piece
        return out

    def save(self, path: PathLike) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps({"dalle_core_tokenizer": "WordTokenizer", "words": self.words}) + "\n",
                              encoding="utf-8")


# youtokentome splits words on C isspace (" \t\n\v\f\r" in a UTF-8 or C locale) and on its word marker U+2581.
_YTTM_SPACE = re.compile("[ \t\n\v\f\r\u2581]+")
_YTTM_SPECIALS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]


class YttmTokenizer(Tokenizer):
    """BPE from youtokentome (optional; see `YTTM_INSTALL` for the install command).

    Our ids are yttm's ids: 0 <PAD> (our padding), 1 <UNK> (unknown characters), 2 <BOS> and 3 <EOS> (never
    emitted; decode skips them), subwords from 4. youtokentome is lossy; `normalize(text)` returns exactly
    `decode(encode(text))`:
    - Whitespace is only " \\t\\n\\v\\f\\r" and U+2581 "▁" (yttm's word marker): every run of it becomes one
      space and leading/trailing runs are dropped, so "a\\t\\n b " decodes to "a b". Other Unicode spaces
      (U+00A0, U+3000, U+2028, \\x1c-\\x1f, \\x85, ...) are ordinary characters, kept if in the alphabet.
    - Characters outside the model's alphabet (unseen in training, or cut by `coverage` < 1): each maximal run
      of them inside a word becomes one <UNK> (id 1), which decodes to U+FFFD, so "a😀😀b" -> "a\\ufffdb".
    Everything else (any script, accents, emoji seen in training) round-trips exactly. Training is not
    bit-reproducible (equally frequent merges may be ordered differently from run to run), so keep the model
    file with the checkpoint. Training logs its parameters to stderr.
    """

    _skip_ids = frozenset({2, 3})
    UNK_ID = 1
    UNK_TEXT = "\ufffd"
    saved_format = "youtokentome"

    def __init__(self, model_path: PathLike) -> None:
        path = existing_path(model_path, "youtokentome model")
        data = read_bytes(path, MAX_TOKENIZER_BYTES, what="youtokentome model")
        check_yttm_model(data, path)  # the file is checked as data first, with or without the package
        yttm = _import_yttm()
        self._model_bytes = data  # `save` writes these, even if the file changes later
        with tempfile.TemporaryDirectory() as tmp:  # yttm reads the bytes checked above, not the file again
            (Path(tmp) / "model.yttm").write_bytes(data)
            self._bpe = yttm.BPE(model=str(Path(tmp) / "model.yttm"))
        self._pieces: List[str] = self._bpe.vocab()
        if self._pieces[:4] != _YTTM_SPECIALS:
            raise ValueError(f"{path} must use yttm's default ids pad=0, unk=1, bos=2, eos=3 (0 is our padding), "
                             f"got {self._pieces[:4]} for ids 0-3; retrain with YttmTokenizer.train")
        self._alphabet = frozenset(p for p in self._pieces[4:] if len(p) == 1) - {"\u2581"}

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "YttmTokenizer":
        return cls(path)

    @classmethod
    def train(cls, texts_or_file: Corpus, vocab_size: int, model_path: PathLike, *, coverage: float = 1.0,
              n_threads: int = -1) -> "YttmTokenizer":
        """Learn BPE from captions (an iterable of str, or a text file path) and write the model to `model_path`."""
        yttm = _import_yttm()
        with _corpus_file(texts_or_file) as data:
            yttm.BPE.train(data=str(data), model=str(model_path), vocab_size=vocab_size, coverage=coverage,
                           n_threads=n_threads, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
        return cls(model_path)

    @property
    def vocab_size(self) -> int:
        """Size of the learned vocabulary (may be below the requested size on a small corpus)."""
        return len(self._pieces)

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        return self._bpe.encode(texts, dropout_prob=dropout_prob)

    def _decode(self, ids: List[int]) -> str:
        text = "".join(self.UNK_TEXT if i == self.UNK_ID else self._pieces[i] for i in ids).replace("\u2581", " ")
        return text[1:] if text.startswith(" ") else text

    def normalize(self, text: str) -> str:
        """What `decode(encode(text))` returns: whitespace collapsed and stripped, unknown runs as U+FFFD."""
        words = []
        for word in _YTTM_SPACE.split(check_texts([text])[0]):
            chars, in_unknown_run = [], False
            for ch in word:
                known = ch in self._alphabet
                if known or not in_unknown_run:  # a run of unknown characters is one <UNK>
                    chars.append(ch if known else self.UNK_TEXT)
                in_unknown_run = not known
            words.append("".join(chars))
        return " ".join(w for w in words if w)

    def save(self, path: PathLike) -> None:
        """Write the youtokentome model file."""
        Path(path).write_bytes(self._model_bytes)


class HugTokenizer(Tokenizer):
    """Hugging Face `tokenizers` (optional: `pip install 'tokenizers>=0.15.1'`); `train` makes byte-level BPE.

    Trained here: <pad> is id 0, all 256 bytes are in the vocabulary, so every string round-trips exactly.
    Loaded tokenizer.json: the ids are the file's, as DALLE-pytorch's `HugTokenizer` gives them, and vocab_size is
    the file's (added tokens included). When the file's id 0 is a real token rather than a special one (GPT-2's
    "!"), models read that token as padding, as DALLE-pytorch's do; `HugTokenizer.pads_a_real_token` says so.
    Special tokens typed in a caption are encoded as plain text, and `decode` drops special tokens. A loaded
    file's own normalizer (lower-casing, NFKC, ...) still applies, so such files round-trip only as exactly as
    that normalizer allows.
    """

    def __init__(self, path_or_tokenizer: Any) -> None:
        tokenizers = _import_hf()
        if isinstance(path_or_tokenizer, tokenizers.Tokenizer):
            self._tok = path_or_tokenizer
        else:
            path = existing_path(path_or_tokenizer, "tokenizer.json")
            self._tok = self._parse(tokenizers, read_tokenizer_text(path, "Hugging Face tokenizer.json"), path)
        self._tok.encode_special_tokens = True  # "<pad>" inside a caption is text, not padding
        added = self._tok.get_added_tokens_decoder()
        self.pads_a_real_token = not (0 in added and added[0].special)  # id 0 is text, read as padding

    @staticmethod
    def _parse(tokenizers: Any, text: str, path: Path) -> Any:
        """A `tokenizers.Tokenizer` from tokenizer.json text (depth-checked first), or ValueError naming `path`."""
        parse_json(text, what=str(path))
        try:
            return tokenizers.Tokenizer.from_str(text)
        except Exception as err:  # noqa: BLE001 - the Rust parser raises a bare Exception
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json ({TOKENIZER_KINDS} expected): {err}") from None

    saved_format = "tokenizer.json"

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "HugTokenizer":
        return cls(cls._parse(_import_hf(), text, path))

    @classmethod
    def train(cls, texts_or_file: Corpus, vocab_size: int) -> "HugTokenizer":
        """Learn byte-level BPE from captions (an iterable of str, or a text file path), with <pad> at id 0."""
        tokenizers = _import_hf()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
            raise ValueError(f"vocab_size must be an int >= 258 (<pad> + 256 bytes + merges), got {vocab_size!r}")
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_iter_corpus(texts_or_file), trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """The file's vocabulary, added tokens included (DALLE-pytorch's `get_vocab_size()`)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        model = self._tok.model
        if dropout_prob and not hasattr(model, "dropout"):
            raise ValueError(f"dropout_prob needs a BPE model, this tokenizer has {type(model).__name__}")
        previous = getattr(model, "dropout", None)
        if dropout_prob:
            model.dropout = dropout_prob
        try:
            encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        finally:
            if dropout_prob:
                model.dropout = previous
        return [list(enc.ids) for enc in encodings]

    def _decode(self, ids: List[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def save(self, path: PathLike) -> None:
        """Write the tokenizer.json."""
        self._tok.save(str(path))


# --- helpers ------------------------------------------------------------------------------------------------


def _iter_corpus(texts_or_file: Corpus) -> Iterator[str]:
    """Captions from an iterable of str, or the lines of a text file when given a path."""
    if isinstance(texts_or_file, (str, os.PathLike)):
        path = existing_path(texts_or_file, "corpus file (or pass a list of captions)")
        with open(path, encoding="utf-8", newline="\n") as f:  # split on "\n" only; keep "\r" as written
            try:
                yield from (line[:-1] if line.endswith("\n") else line for line in f)
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text; expected a corpus of captions, one a line: {err}") from None
        return
    if not isinstance(texts_or_file, Iterable):
        raise TypeError(f"expected captions (an iterable of str) or a file path, got {type(texts_or_file).__name__}")
    for text in texts_or_file:
        if not isinstance(text, str):
            raise TypeError(f"captions must be str, got {type(text).__name__}: {text!r:.60}")
        yield text


@contextmanager
def _corpus_file(texts_or_file: Corpus) -> Iterator[Path]:
    """A text file path for the corpus: the given one, or a temporary file of one caption per line."""
    if isinstance(texts_or_file, (str, os.PathLike)):
        yield existing_path(texts_or_file, "corpus file (or pass a list of captions)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        with open(path, "w", encoding="utf-8") as f:
            count = 0
            for text in _iter_corpus(texts_or_file):
                f.write(text + "\n")
                count += 1
        if count == 0:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        yield path


def _import_yttm() -> Any:
    """The youtokentome module, or an ImportError saying how to install it."""
    return optional_import("youtokentome", "YttmTokenizer", YTTM_INSTALL)


def _import_hf() -> Any:
    """The Hugging Face tokenizers module, or an ImportError saying how to install it."""
    tokenizers = optional_import("tokenizers", "HugTokenizer", HF_INSTALL, package="Hugging Face tokenizers")
    if not hasattr(tokenizers.Tokenizer, "encode_special_tokens"):
        raise ImportError(f"HugTokenizer needs tokenizers>=0.15.1, found {tokenizers.__version__}: {HF_INSTALL}")
    return tokenizers


# --- the tokenizer saved beside a model ---------------------------------------------------------------------
# A DALLE or CLIP model directory also holds the tokenizer it was trained with, so that generating from it
# needs nothing else.

MODEL_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # youtokentome's own format for YttmTokenizer


NAMED_TOKENIZERS = {"bytes": ByteTokenizer, "simple": SimpleTokenizer}  # need no file


def load_tokenizer(path: Union[PathLike, None]) -> Tokenizer:
    """The tokenizer saved at `path` (any kind `Tokenizer.load` reads); "simple" (CLIP's BPE) or "bytes" when no
    file has that name; the default ByteTokenizer for None."""
    if path is None:
        return default_tokenizer()
    if isinstance(path, str) and path in NAMED_TOKENIZERS and not Path(path).exists():
        return NAMED_TOKENIZERS[path]()
    return Tokenizer.load(path)


def implied_tokenizer(text_vocab_size: int) -> Optional[Tokenizer]:
    """The tokenizer a caption vocabulary of this size implies when none was saved: CLIP's BPE (DALLE-pytorch's
    default) for 49408, bytes for 257; None for any other size (the caller must be told which it was)."""
    for cls in (SimpleTokenizer, ByteTokenizer):
        if text_vocab_size == (49408 if cls is SimpleTokenizer else 257):
            return cls()
    return None


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike) -> Path:
    """Save `tokenizer` into a model directory (tokenizer.model for youtokentome, tokenizer.json otherwise)."""
    path = Path(directory) / MODEL_TOKENIZER_FILES[1 if isinstance(tokenizer, YttmTokenizer) else 0]
    tokenizer.save(path)
    return path


def find_tokenizer(directory: PathLike) -> Union[Path, None]:
    """The tokenizer file saved in a model directory, if any."""
    return next((Path(directory) / n for n in MODEL_TOKENIZER_FILES if (Path(directory) / n).is_file()), None)
