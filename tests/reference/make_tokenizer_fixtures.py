"""Build tokenizer parity fixtures from the reference, dalle-pytorch 1.6.6's `dalle_pytorch.tokenizer`.

Run with the Python of the venv that `bash ../shared/peer/setup_peer.sh DIR` builds:

    DIR/bin/python tests/reference/make_tokenizer_fixtures.py tests/fixtures             # the committed ones
    DIR/bin/python tests/reference/make_tokenizer_fixtures.py /tmp/live --seed 7         # fresh texts, live tests

Writes `tokenizer_cases.json`: texts (a fixed list of hard cases plus `--count` random ones drawn from the seed)
with the reference `SimpleTokenizer`'s ids (`encode`) and its `tokenize(..., context_length=16, truncate_text=True)`
rows; and `hug_tokenizer.json`, a byte-level BPE trained without special tokens (so its id 0 is a real token, the
case where dalle_core once shifted ids), with the reference `HugTokenizer`'s ids for the same texts.
"""
from __future__ import annotations

import argparse
import json
import random
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

HARD_CASES = [
    "a red square", "", "   ", "Hello, World!", "héllo café naïve", "日本語のテキスト", "中文 句子。",
    "emoji 🎉🐍👩‍👩‍👧 end", "&amp;lt;b&amp;gt; bold &lt;/b&gt; &quot;quoted&quot; &#39;x&#39; &nbsp;&copy;",
    "tabs\tand\nnewlines\r\n  many    spaces\u00a0\u3000wide", "don't I'll we've she'd THEY'RE it's",
    "12345 3.14159 ½ ² Ⅷ ٣", "!!!??? !? ?! !! ! ...", "wow!!!", "ﬁne ligatures ＦＵＬＬＷＩＤＴＨ",
    "mojibake: â€œquotedâ€\x9d", "UPPER lower MiXeD", "<|startoftext|>hi<|endoftext|>", "a" * 300,
    "antidisestablishmentarianism supercalifragilistic", "zero\u200bwidth", "combining e\u0301 a\u0308",
    "русский текст", "العربية", "हिन्दी", "한국어", "ελληνικά", "x_y-z/w\\v|u", "a</w>b", "\x00\x01 control",
    "İstanbul ǅ ß ẞ", "🏳️‍🌈 flags 🇫🇷", "  leading and trailing  ", "'s 't 're", "a\u0000b", "😀" * 40,
]
# pools the random texts draw from: ASCII words and punctuation, accents, CJK, emoji, entities, odd spaces
POOLS = [
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), list("0123456789"), list(" .,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`"),
    list("àáâãäåçèéêëìíîïñòóôõöùúûüýÿœæßÀÉÎÕÜ"), list("日本語中文字漢한국어の世界"), ["🎉", "🐍", "👍🏽", "❤️", "👩‍💻", "🇯🇵"],
    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&eacute;", "&#x1F600;", "&nbsp;"], [" ", "  ", "\t", "\n", "\u00a0", "\u3000"],
    ["'s", "'t", "'re", "'ll", "n't"], ["ﬁ", "Ｆ", "½", "²", "Ⅸ", "\u0301", "\u200b"],
]


def random_texts(count: int, seed: int) -> list:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.choice([1, 3, 8, 20, 60])
        texts.append("".join(rng.choice(rng.choice(POOLS)) for _ in range(length)))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from dalle_pytorch.tokenizer import HugTokenizer, tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = HARD_CASES + random_texts(args.count, args.seed)
    cases = {"reference": "dalle-pytorch 1.6.6 dalle_pytorch.tokenizer", "seed": args.seed, "texts": texts,
             "simple_ids": [tokenizer.encode(t) for t in texts],
             "simple_tokenize16": tokenizer.tokenize(texts, context_length=16, truncate_text=True).tolist(),
             "simple_vocab_size": tokenizer.vocab_size}

    hug = Tokenizer(models.BPE())
    hug.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hug.train_from_iterator(random_texts(500, args.seed + 1) + HARD_CASES, trainer)
    hug_path = args.out_dir / "hug_tokenizer.json"
    hug.save(str(hug_path))
    reference_hug = HugTokenizer(str(hug_path))
    cases["hug_ids"] = [reference_hug.encode(t) for t in texts]
    cases["hug_vocab_size"] = reference_hug.vocab_size
    (args.out_dir / "tokenizer_cases.json").write_text(json.dumps(cases, ensure_ascii=True) + "\n")
    print(f"{len(texts)} texts -> {args.out_dir}")


if __name__ == "__main__":
    main()
