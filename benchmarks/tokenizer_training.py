"""Time BPE training on 10,000 generated captions (youtokentome and Hugging Face tokenizers).

    python benchmarks/tokenizer_training.py [--captions 10000] [--vocab 16384]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

WORDS = ("a an the red green blue yellow small large tiny huge cat dog bird car house tree flower painting photo "
         "of on in under above next to near sitting standing flying old new bright dark wooden glass metal "
         "小猫 красный 青い قطة 🐈 café “quoted” naïve").split()


def captions(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + f" #{rng.randint(0, 99999)}" for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=10000)
    parser.add_argument("--vocab", type=int, default=16384)
    args = parser.parse_args()
    texts = captions(args.captions)
    from dalle_core.tokenizers import HugTokenizer, YttmTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, train in (("youtokentome", lambda: YttmTokenizer.train(texts, args.vocab, Path(tmp) / "bpe.model")),
                            ("hf tokenizers", lambda: HugTokenizer.train(texts, args.vocab))):
            try:
                t0 = time.perf_counter()
                tok = train()
                seconds = time.perf_counter() - t0
            except ImportError as err:
                print(f"{name}: not installed ({err})")
                continue
            t0 = time.perf_counter()
            tok.tokenize(texts, context_length=256, truncate_text=True)
            print(f"{name}: trained on {len(texts)} captions (vocab {args.vocab}) in {seconds:.2f} s; "
                  f"tokenized them in {time.perf_counter() - t0:.2f} s; vocab_size {tok.vocab_size}")


if __name__ == "__main__":
    main()
