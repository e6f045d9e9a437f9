"""Reading tokenizer files as hostile data: bounded UTF-8 text, youtokentome models checked before yttm reads them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..files import parse_json, read_bytes

MAX_TOKENIZER_BYTES = 64 * 2**20  # the largest published tokenizer.json files are about 20 MB
TOKENIZER_KINDS = ("a dalle_core Byte/Word/SimpleTokenizer JSON file, a Hugging Face tokenizer.json or a youtokentome "
                   "model")


def read_tokenizer_text(path: Path, what: str) -> str:
    """The UTF-8 text of tokenizer file `path` (at most MAX_TOKENIZER_BYTES), or ValueError naming it."""
    data = read_bytes(path, MAX_TOKENIZER_BYTES, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (binary, or Latin-1?) at byte {err.start}; expected "
                         f"{TOKENIZER_KINDS}") from None


def check_yttm_model(data: bytes, path: Path) -> None:
    """Refuse (ValueError naming `path`) bytes that are not a youtokentome model, before youtokentome reads them:
    a line 'n_chars n_rules', n_chars lines 'codepoint id', n_rules lines 'left right id', one line of 4 special ids."""
    expected = (f"{path}: not a youtokentome model ({TOKENIZER_KINDS} expected): ")
    try:
        lines = [[int(v) for v in line.split()] for line in data.decode("ascii").strip().splitlines()]
    except (UnicodeDecodeError, ValueError):
        raise ValueError(expected + "its lines must hold integers only") from None
    if not lines or len(lines[0]) != 2 or min(lines[0]) < 0:
        raise ValueError(expected + "the first line must be 'n_chars n_rules'")
    n_chars, n_rules = lines[0]
    if len(lines) != n_chars + n_rules + 2:
        raise ValueError(expected + f"its header announces {n_chars} characters and {n_rules} merges, so "
                         f"{n_chars + n_rules + 2} lines, but it has {len(lines)} (truncated?)")
    vocab = n_chars + n_rules + 4
    for number, line in enumerate(lines[1:], start=2):
        width = 2 if number <= n_chars + 1 else 3 if number <= n_chars + n_rules + 1 else 4
        low = -1 if width == 4 else 0
        values = line if width != 2 else line[1:]
        if len(line) != width or min(values) < low or max(values) >= vocab or (width == 2 and not
                                                                               0 <= line[0] <= 0x10FFFF):
            raise ValueError(expected + f"line {number} must hold {width} ids below {vocab}, got {line}")


def tokenizer_json(text: str, path: Path) -> Dict[str, Any]:
    """The JSON object of a tokenizer file: a dalle_core tokenizer (a WordTokenizer's 'words' a list of str) or a
    tokenizer.json with a 'model'; anything else raises ValueError naming `path` and what was expected."""
    saved = parse_json(text, what=str(path))
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object ({TOKENIZER_KINDS}), got a {type(saved).__name__}")
    kind = saved.get("dalle_core_tokenizer")
    if kind == "WordTokenizer":
        words = saved.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}: a WordTokenizer file needs 'words', a list of str; got "
                             f"{type(words).__name__ if 'words' in saved else 'no such key'}")
    elif kind not in (None, "ByteTokenizer", "SimpleTokenizer"):
        raise ValueError(f"{path}: unknown dalle_core_tokenizer {kind!r}; expected 'ByteTokenizer', 'WordTokenizer' "
                         "or 'SimpleTokenizer'")
    elif kind is None and not isinstance(saved.get("model"), dict):
        raise ValueError(f"{path}: expected {TOKENIZER_KINDS}; this JSON object has neither 'dalle_core_tokenizer' "
                         f"nor a tokenizer.json 'model' (keys {sorted(saved)[:8]})")
    return saved
