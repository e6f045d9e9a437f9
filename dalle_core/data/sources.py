"""Shard sources: `expand_urls` (brace patterns counted before they are expanded, `pipe:` only when allowed)
and `open_shard` (a regular file, an http(s) response with a timeout, or an allowed command's stdout).

`pipe:COMMAND` runs COMMAND in a shell, so it is accepted only with `allow_pipe=True`, which callers pass only
for sources from the Python call or the command line of the current invocation, never from a saved config.
"""
from __future__ import annotations

import itertools
import re
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Sequence, Tuple, Union, cast

from ..files import open_regular
from .common import PathLike, check_limit

_REMOTE = ("http://", "https://", "pipe:")
MAX_SOURCES = 1_000_000  # most sources one expand_urls call may produce (counted before expanding)
HTTP_TIMEOUT = 60.0  # seconds an http(s) shard may stall before it counts as a bad shard
_MAX_NESTING = 16  # brace groups inside brace groups


def expand_urls(urls: Union[PathLike, Sequence[PathLike]], *, allow_pipe: bool = False,
                max_sources: int = MAX_SOURCES) -> List[str]:
    """Shard sources in order: brace ranges {000..009} and lists {a,b} expanded, directories as their *.tar.

    A `pipe:` source raises a ValueError unless `allow_pipe`; a pattern (or all of them together) that would
    give more than `max_sources` sources raises a ValueError before anything is expanded.
    """
    if isinstance(urls, (str, Path)):
        urls = [urls]
    if not isinstance(urls, Sequence) or not urls:
        raise ValueError(f"expected a shard path/URL or a non-empty list of them, got {urls!r:.200}")
    max_sources = check_limit("max_sources", max_sources)
    out: List[str] = []
    for url in urls:
        if not isinstance(url, (str, Path)):
            raise TypeError(f"shard paths must be str or Path, got {type(url).__name__}")
        pattern = _parse_braces(str(url))
        count = _count(pattern)
        if len(out) + count > max_sources:
            raise ValueError(f"shard pattern {str(url)!r:.200} expands to {count} sources ({len(out)} before it), "
                             f"more than max_sources={max_sources}")
        for item in _expand(pattern):
            if item.startswith("pipe:") and not allow_pipe:
                raise ValueError(_pipe_refused(item))
            path = Path(item[5:] if item.startswith("file:") else item)
            if item.startswith(_REMOTE):
                out.append(item)
            elif path.is_dir():
                found = sorted(str(p) for p in path.glob("*.tar"))
                if not found:
                    raise FileNotFoundError(f"shard directory {item!r} holds no .tar files")
                odd = [p for p in found if not Path(p).is_file()]
                if odd:
                    raise ValueError(f"shard {odd[0]!r} in directory {item!r} is not a regular file")
                out.extend(found)
            elif path.is_file():
                out.append(item)
            elif path.exists():
                raise ValueError(f"shard {item!r} is not a regular file (a FIFO or device?); expected a tar file")
            else:
                raise FileNotFoundError(f"shard {item!r} does not exist")
            if len(out) > max_sources:
                raise ValueError(f"shard sources {str(url)!r:.200} give more than max_sources={max_sources} files")
    return out


def _pipe_refused(item: str) -> str:
    return (f"shard source {item!r:.200} is a pipe: source, which runs a shell command; refused because it "
            f"was not explicitly allowed: pass allow_pipe=True (to WebTextImageDataset or expand_urls) only for "
            f"sources given in your own call or on the command line, never for ones read from a saved config")


# A parsed brace pattern is a list of parts: literal text, a numeric range (lo, hi, width) or a list of
# alternatives, each a parsed pattern.
Pattern = List[Union[str, Tuple[int, int, int], List[Any]]]


def _parse_braces(text: str) -> Pattern:
    """`text` parsed into literals, ranges {08..10} and (nested) lists {a,b}; unmatched braces are literal."""
    pairs: Dict[int, int] = {}
    stack: List[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
            if len(stack) > _MAX_NESTING:
                raise ValueError(f"shard pattern {text!r:.200} nests braces more than {_MAX_NESTING} deep")
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return _parse_span(text, pairs, 0, len(text))


def _parse_span(text: str, pairs: Dict[int, int], start: int, end: int) -> Pattern:
    parts: Pattern = []
    i, literal = start, start
    while i < end:
        close = pairs.get(i)
        if close is None:
            i += 1
            continue
        if literal < i:
            parts.append(text[literal:i])
        body = text[i + 1:close]
        numeric = re.fullmatch(r"(\d{1,30})\.\.(\d{1,30})", body)
        if numeric:
            lo, hi = numeric.groups()
            if int(lo) > int(hi):
                raise ValueError(f"brace range {{{body}}} in shard pattern {text!r:.200} is empty: "
                                 f"expected the first bound <= the second")
            parts.append((int(lo), int(hi), len(lo) if lo.startswith("0") else 0))
        else:
            alternatives, j, piece = [], i + 1, i + 1
            while j < close:
                if j in pairs:
                    j = pairs[j] + 1
                    continue
                if text[j] == ",":
                    alternatives.append(_parse_span(text, pairs, piece, j))
                    piece = j + 1
                j += 1
            alternatives.append(_parse_span(text, pairs, piece, close))
            parts.append(alternatives)
        i = literal = close + 1
    if literal < end:
        parts.append(text[literal:end])
    return parts


def _count(pattern: Pattern) -> int:
    """How many strings `pattern` expands to (a product of sums; nothing is expanded)."""
    total = 1
    for part in pattern:
        if isinstance(part, tuple):
            total *= part[1] - part[0] + 1
        elif isinstance(part, list):
            total *= sum(_count(alt) for alt in part)
    return total


def _expand(pattern: Pattern) -> Iterator[str]:
    """The strings of `pattern`, lazily in order (call `_count` first: each part is listed, up to that count)."""
    def options(part: Any) -> List[str]:
        if isinstance(part, str):
            return [part]
        if isinstance(part, tuple):
            return [str(n).zfill(part[2]) for n in range(part[0], part[1] + 1)]
        return [s for alt in part for s in _expand(alt)]
    return ("".join(combo) for combo in itertools.product(*(options(p) for p in pattern)))


@contextmanager
def open_shard(url: str, allow_pipe: bool = False) -> Iterator[BinaryIO]:
    """A readable binary stream over one shard: a regular file, an http(s) response or a command's stdout."""
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise ValueError(_pipe_refused(url))
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        stdout = cast(BinaryIO, proc.stdout)
        try:
            yield stdout
        except BaseException:  # the reader failed or stopped early: the command's status means nothing
            proc.kill()
            stdout.close()
            proc.wait()
            raise
        stdout.close()
        if proc.wait() != 0:
            raise OSError(f"command {url[5:]!r} exited with status {proc.returncode}")
    elif url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            yield response
    else:
        with open_regular(url[5:] if url.startswith("file:") else url, what="shard") as f:
            yield f
