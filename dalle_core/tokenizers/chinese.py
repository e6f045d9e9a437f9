"""`ChineseTokenizer`: BERT's Chinese WordPiece through `transformers`, as DALLE-pytorch's `--chinese` flag uses it."""
from __future__ import annotations

from typing import Any, List, Optional

from ..files import check_regular_file
from ..utils import optional_import
from .files import MAX_TOKENIZER_BYTES
from .base import PathLike, Tokenizer, existing_path

__all__ = ["ChineseTokenizer", "CHINESE_INSTALL"]

CHINESE_INSTALL = "pip install transformers"
BERT_CHINESE = "bert-base-chinese"
BERT_CHINESE_VOCAB = 21128


class ChineseTokenizer(Tokenizer):
    """`transformers.BertTokenizer` of bert-base-chinese (vocab_size 21128; [PAD] is id 0), no special tokens added.

    `ChineseTokenizer()` loads bert-base-chinese from the Hugging Face cache only, never from the network (when it
    is not cached the error says how to get it); `ChineseTokenizer(vocab_file)` reads a local WordPiece `vocab.txt`.
    Needs `transformers` (`pip install transformers`), which dalle_core does not install.
    """

    def __init__(self, vocab_file: Optional[PathLike] = None) -> None:
        transformers = optional_import("transformers", "ChineseTokenizer", CHINESE_INSTALL)
        if vocab_file is not None:
            path = check_regular_file(existing_path(vocab_file, "WordPiece vocab.txt"), MAX_TOKENIZER_BYTES,
                                      what="WordPiece vocab.txt")
            self._tok: Any = transformers.BertTokenizer(str(path))
        else:
            try:
                self._tok = transformers.BertTokenizer.from_pretrained(BERT_CHINESE, local_files_only=True)
                # transformers 5 builds an empty tokenizer (5 special tokens) when the files are missing
                problem = None if self._tok.vocab_size == BERT_CHINESE_VOCAB else (
                    f"got a vocabulary of {self._tok.vocab_size}, not {BERT_CHINESE_VOCAB}")
            except (OSError, ValueError) as err:
                problem = str(err)
            if problem is not None:
                raise FileNotFoundError(
                    f"ChineseTokenizer() needs the {BERT_CHINESE} tokenizer in the Hugging Face cache and could not "
                    f"load it ({problem}); on a machine with network run `python -c \"import transformers; "
                    f"transformers.BertTokenizer.from_pretrained('{BERT_CHINESE}')\"`, or pass its vocab.txt: "
                    "ChineseTokenizer('path/to/vocab.txt')") from None
        self._skip_ids = frozenset(self._tok.all_special_ids)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.vocab_size)

    def _encode_batch(self, texts: List[str], dropout_prob: float) -> List[List[int]]:
        if dropout_prob:
            raise ValueError("ChineseTokenizer has no BPE merges to drop: dropout_prob must be 0")
        return [list(self._tok.encode(text, add_special_tokens=False)) for text in texts]

    def _decode(self, ids: List[int]) -> str:
        return self._tok.decode(ids)

    def save(self, path: PathLike) -> None:
        raise NotImplementedError("ChineseTokenizer is not saved beside a model: keep its vocab.txt and pass it to "
                                  "ChineseTokenizer(vocab_file) again")
