"""`dalle_pytorch.tokenizer`'s names, so DALLE-pytorch scripts run with their import changed to dalle_core.

`tokenizer` is the default `SimpleTokenizer` (CLIP's BPE, ids equal to DALLE-pytorch's), made on import as there
(reading the merges takes about 0.4 s); `SimpleTokenizer`, `HugTokenizer`, `YttmTokenizer` and `ChineseTokenizer`
are dalle_core's classes. The contract they share, and where it differs from DALLE-pytorch's, is in
`dalle_core.tokenizers`.
"""
from .tokenizers import ChineseTokenizer, HugTokenizer, SimpleTokenizer, YttmTokenizer

__all__ = ["tokenizer", "SimpleTokenizer", "HugTokenizer", "YttmTokenizer", "ChineseTokenizer"]

tokenizer = SimpleTokenizer()
