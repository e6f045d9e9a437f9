"""Files: reading what a user hands us as hostile data, and writing ours atomically.

Reading: regular files only, of bounded size, JSON of bounded depth.

Every check names the file. A FIFO, a device such as /dev/zero or a directory is refused before it is read (so
nothing blocks or streams without end), a file larger than the cap is refused before it is read whole, and JSON
nested deeper than `max_depth` is refused before the parser recurses into it.

Writing: every file goes to a temporary file beside it, is fsynced, then `os.replace`d, so that a crash leaves the
old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import re
import stat
import uuid
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO, Iterator, List, Type, Union

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "NotRegularFileError", "FileTooLargeError", "describe_mode",
           "check_regular_file", "open_regular", "read_regular", "read_bytes", "read_text", "json_depth", "parse_json",
           "read_json", "fsync_path", "atomic_files", "write_text_atomic", "CACHE_ENV", "cache_dir"]

PathOrStr = Union[str, "os.PathLike[str]"]
CACHE_ENV = "DALLE_CORE_CACHE"  # where pretrained files not passed by path are looked for
MAX_JSON_BYTES = 16 * 2**20  # config files, tokenizer JSON and headers are far smaller
MAX_JSON_DEPTH = 64  # every document dalle_core writes nests fewer than 10 levels
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)  # a JSON string literal (or an unterminated one)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class NotRegularFileError(OSError, ValueError):
    """A path that is a FIFO, a device, a socket or a directory where a regular file was expected."""


class FileTooLargeError(OSError, ValueError):
    """A file over the size cap of what it should hold."""


def describe_mode(mode: int) -> str:
    """What a stat mode is, in words (for messages)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: PathOrStr, max_bytes: Union[int, None] = None, *, what: str = "file",
                       error: Type[Exception] = ValueError) -> Path:
    """`path` as a Path if it is a regular file (symlinks followed) of at most `max_bytes` (None: any size);
    FileNotFoundError when it does not exist, `error` naming the file otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: does not exist (expected a {what})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({what}): {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {describe_mode(st.st_mode)}; expected a regular file ({what})")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{path}: is {st.st_size} bytes; a {what} may have at most {max_bytes}")
    return path


def open_regular(path: PathOrStr, max_bytes: Union[int, None] = None, *, what: str = "file") -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (symlinks followed) of at most `max_bytes`.

    Opened without blocking (a FIFO is seen, not waited on) and checked with fstat on the open descriptor, so a
    file swapped for a FIFO after an earlier check is refused too: NotRegularFileError or FileTooLargeError.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{path}: is {describe_mode(st.st_mode)}; expected a regular file ({what})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(f"{path}: is {st.st_size} bytes; a {what} may have at most {max_bytes}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: PathOrStr, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see `open_regular`); reads at most max_bytes + 1."""
    with open_regular(path, max_bytes, what=what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since fstat
        raise FileTooLargeError(f"{path}: holds more than {max_bytes} bytes; a {what} may have at most {max_bytes}")
    return data


def read_bytes(path: PathOrStr, max_bytes: int, *, what: str = "file", error: Type[Exception] = ValueError) -> bytes:
    """`read_regular` with every refusal raised as `error` naming the file (FileNotFoundError when missing)."""
    path = check_regular_file(path, max_bytes, what=what, error=error)
    try:
        return read_regular(path, max_bytes, what=what)
    except (NotRegularFileError, FileTooLargeError) as e:
        raise error(str(e)) from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: does not exist (expected a {what})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({what}): {e}") from e


def read_text(path: PathOrStr, max_bytes: int = MAX_JSON_BYTES, *, what: str = "file",
              error: Type[Exception] = ValueError) -> str:
    """The UTF-8 text of regular file `path` of at most `max_bytes`; binary or Latin-1 content raises `error`."""
    data = read_bytes(path, max_bytes, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (binary, or another encoding?); expected a {what}: byte {e.start} "
                    f"is {data[e.start:e.start + 1]!r}") from None


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON `text` nest (strings skipped), without parsing it."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def parse_json(text: Union[str, bytes], *, what: str = "JSON document", max_depth: int = MAX_JSON_DEPTH,
               error: Type[Exception] = ValueError) -> Any:
    """`text` parsed as JSON, or `error` starting "`what`: " when it is invalid or nested deeper than `max_depth`
    (name the file in `what`)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what}: not UTF-8 text: byte {e.start} is {text[e.start:e.start + 1]!r}") from None
    if not isinstance(text, str):
        raise error(f"{what}: expected JSON text, got {type(text).__name__}")
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{what}: JSON nested {depth} levels deep; expected at most {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # not reached after the depth check; kept so no parse can surface one
        raise error(f"{what}: JSON nested too deeply to parse; expected at most {max_depth} levels") from None
    except ValueError as e:
        raise error(f"{what}: not valid JSON (truncated?): {e}") from None


def read_json(path: PathOrStr, *, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, error: Type[Exception] = ValueError) -> Any:
    """The JSON document in regular file `path` (at most `max_bytes`, UTF-8, nested at most `max_depth` levels);
    anything else raises `error` naming the file and what was expected."""
    text = read_text(path, max_bytes, what=what, error=error)
    return parse_json(text, what=str(path), max_depth=max_depth, error=error)


# --- atomic writes --------------------------------------------------------------------------------------------


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush `path` (a file, or a directory's entries) to disk."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDWR)
    except OSError:  # directories cannot be opened on Windows, where there is nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_files(*paths: Path) -> Iterator[List[Path]]:
    """Yield temporary paths beside `paths`; once all are written, fsync and `os.replace` them in order."""
    tmps = [p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp") for p in paths]
    try:
        yield tmps
        for tmp in tmps:
            fsync_path(tmp)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
        fsync_path(paths[0].parent, directory=True)
    finally:
        for tmp in tmps:  # nothing is left behind when a write fails
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`: readers see the old or the new file."""
    with atomic_files(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def cache_dir(*parts: str) -> Path:
    """The folder where dalle_core looks for pretrained files not given by path (it downloads nothing):
    `$DALLE_CORE_CACHE`, else `$XDG_CACHE_HOME/dalle_core`, else `~/.cache/dalle_core`; `parts` appended."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dalle_core"
    return Path(root, *parts)
