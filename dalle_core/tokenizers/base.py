"""The tokenizer contract: `Tokenizer` (ids in [1, vocab_size), 0 is padding), and the checks every tokenizer shares.

Concrete tokenizers subclass `Tokenizer` and name a `saved_format`; `Tokenizer.load` picks the class from a file's
format through that registry.
"""
from __future__ import annotations

import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Type, Union

import torch
from torch import Tensor

from ..files import check_regular_file
from .files import read_tokenizer_text, tokenizer_json

__all__ = ["Tokenizer", "PathLike", "Corpus", "check_texts", "existing_path"]

PathLike = Union[str, "os.PathLike[str]"]
Corpus = Union[PathLike, Iterable[str]]

_SAVED_FORMATS: Dict[str, Type["Tokenizer"]] = {}  # saved_format -> class, filled as subclasses are defined


class Tokenizer(ABC):
    """What every caption tokenizer does: `encode`/`decode` one caption, `tokenize` a padded batch, `save`/`load`."""

    pad_id: int = 0
    saved_format: ClassVar[Optional[str]] = None  # what `Tokenizer.load` recognises this class's files by

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("saved_format"):
            _SAVED_FORMATS[cls.saved_format] = cls
    _skip_ids: frozenset = frozenset()  # reserved ids that `decode` drops (besides 0 and ids >= vocab_size)

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Ids lie in [1, vocab_size); 0 is padding."""

    @abstractmethod
    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        """Encode checked captions."""

    @abstractmethod
    def _decode(self, ids: List[int]) -> str:
        """Decode ids already stripped of padding, reserved and out-of-vocabulary ids."""

    @abstractmethod
    def save(self, path: PathLike) -> None:
        """Write everything needed to rebuild this tokenizer with `Tokenizer.load(path)`."""

    def encode(self, text: str, *, dropout_prob: float = 0.0) -> List[int]:
        """Token ids of one caption, each in [1, vocab_size); `dropout_prob` > 0 applies BPE-dropout."""
        return self.encode_batch([text], dropout_prob=dropout_prob)[0]

    def encode_batch(self, texts: Sequence[str], *, dropout_prob: float = 0.0) -> List[List[int]]:
        """Token ids of several captions (faster than `encode` in a loop for the BPE tokenizers)."""
        texts = check_texts(texts)
        if not isinstance(dropout_prob, (int, float)) or not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f"dropout_prob must be a number in [0, 1], got {dropout_prob!r}")
        return self._encode_batch(texts, float(dropout_prob))

    def decode(self, ids: Union[Sequence[int], Tensor], pad_tokens: Iterable[int] = ()) -> str:
        """Text of a 1-D id sequence, skipping padding 0, reserved ids, ids >= vocab_size and `pad_tokens`."""
        if isinstance(ids, Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise TypeError(f"decode needs integer ids, got a tensor of dtype {ids.dtype}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"decode takes a list or 1-D tensor of ints, got {type(ids).__name__}")
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError("decode takes a list or 1-D tensor of ints, got a non-integer element") from None
        if any(i < 0 for i in ids):
            raise ValueError(f"token ids must be >= 0, got {min(ids)}")
        skip, vocab_size = {self.pad_id, *pad_tokens, *self._skip_ids}, self.vocab_size
        return self._decode([i for i in ids if i < vocab_size and i not in skip])

    def tokenize(self, texts: Union[str, Sequence[str]], context_length: int = 256, truncate_text: bool = False,
                 *, dropout_prob: float = 0.0) -> Tensor:
        """Captions as a LongTensor (B, context_length) padded with 0; over-long ones raise unless truncated."""
        if isinstance(context_length, bool) or not isinstance(context_length, int):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        texts = [texts] if isinstance(texts, str) else check_texts(texts)
        all_ids = self.encode_batch(texts, dropout_prob=dropout_prob)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)  # (B, context_length)
        for row, (text, ids) in enumerate(zip(texts, all_ids)):
            if len(ids) > context_length:
                if not truncate_text:
                    shown = text if len(text) <= 60 else text[:57] + "..."
                    raise ValueError(f"caption {shown!r} is {len(ids)} tokens long, more than context_length="
                                     f"{context_length}; shorten it or pass truncate_text=True")
                ids = ids[:context_length]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    @staticmethod
    def load(path: PathLike) -> "Tokenizer":
        """Rebuild a saved tokenizer of any kind: a dalle_core tokenizer JSON (Byte/Word/SimpleTokenizer), a Hugging
        Face tokenizer.json or a youtokentome model; the class is chosen by the file's format."""
        path = existing_path(path, "tokenizer file")
        text = read_tokenizer_text(path, "tokenizer file")
        if not text.lstrip().startswith(("{", "[")):
            return _SAVED_FORMATS["youtokentome"]._from_saved(path, text, None)
        saved = tokenizer_json(text, path)
        cls = _SAVED_FORMATS[saved.get("dalle_core_tokenizer") or "tokenizer.json"]
        try:
            return cls._from_saved(path, text, saved)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def _from_saved(cls, path: Path, text: str, saved: Optional[Dict[str, Any]]) -> "Tokenizer":
        """The tokenizer a file of this class's `saved_format` holds (its text, and its JSON object if any)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a file")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"



def check_texts(texts: Any) -> List[str]:
    """`texts` as a list of str, or a TypeError saying what came instead."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"expected a list of str captions, got {type(texts).__name__}")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"captions must be str, got {type(text).__name__}: {text!r:.60}")
    return list(texts)


def existing_path(path: PathLike, what: str) -> Path:
    """`path` as a Path, or FileNotFoundError naming what was expected there."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}")
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return check_regular_file(path, None, what=what)  # a FIFO or device would block or never end
