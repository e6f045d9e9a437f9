"""SimpleTokenizer (CLIP BPE) and HugTokenizer give DALLE-pytorch 1.6.6's ids: committed fixtures and the live
reference; merges files are read as hostile data; BPE by heap equals BPE by rescanning."""
from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle_core.tokenizers import HugTokenizer, SimpleTokenizer, Tokenizer, load_tokenizer, save_tokenizer
from dalle_core.tokenizers.clip_bpe import DEFAULT_BPE_PATH, END_OF_WORD, MAX_MERGES_BYTES
from helpers import FIXTURE_DIR, peer_python

MAKE_TOKENIZER_FIXTURES = Path(__file__).parent / "reference" / "make_tokenizer_fixtures.py"


@pytest.fixture(scope="module")
def clip_bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


def check_cases(directory: Path, tokenizer: SimpleTokenizer) -> int:
    """Compare SimpleTokenizer and HugTokenizer with the reference's ids in `directory`; return the case count."""
    cases = json.loads((directory / "tokenizer_cases.json").read_text())
    texts = cases["texts"]
    assert tokenizer.vocab_size == cases["simple_vocab_size"] == 49408
    for text, ids in zip(texts, cases["simple_ids"]):
        assert tokenizer.encode(text) == ids, text
    assert tokenizer.tokenize(texts, 16, truncate_text=True).tolist() == cases["simple_tokenize16"]
    hug = HugTokenizer(directory / "hug_tokenizer.json")
    assert hug.vocab_size == cases["hug_vocab_size"] and hug.pads_a_real_token
    assert [hug.encode(t) for t in texts] == cases["hug_ids"]
    return len(texts)


def test_ids_equal_the_references_on_the_committed_cases(clip_bpe):
    assert check_cases(FIXTURE_DIR, clip_bpe) > 300  # accents, CJK, emoji, entities, whitespace runs, empty


@pytest.mark.live
def test_ids_equal_the_live_references_on_fresh_random_texts(clip_bpe, tmp_path):
    python = peer_python()
    if python is None:
        pytest.skip("live reference not available: set DALLE_CORE_PEER_PYTHON to a dalle-pytorch 1.6.6 venv python")
    subprocess.run([python, str(MAKE_TOKENIZER_FIXTURES), str(tmp_path), "--seed", "20261", "--count", "1000"],
                   check=True, capture_output=True, text=True)
    assert check_cases(tmp_path, clip_bpe) > 1000


def test_known_ids_and_decoding(clip_bpe):
    assert clip_bpe.encode("a red square") == [320, 736, 3999]  # "a</w>", "red</w>", "square</w>"
    assert clip_bpe.decode([320, 736, 3999, 49406, 49407, 0]) == "a red square "  # as DALLE-pytorch's: word ends
    tokens = clip_bpe.tokenize(["a red square", ""], context_length=5)
    assert tokens.tolist() == [[320, 736, 3999, 0, 0], [0] * 5]  # padded with 0, no start or end token
    with pytest.raises(ValueError, match="context_length=2"):
        clip_bpe.tokenize("a red square", context_length=2)
    assert clip_bpe.encode("!#$")[0] == 0  # CLIP's id 0 is "!": read as padding, as in DALLE-pytorch


def rescanning_bpe(tokenizer: SimpleTokenizer, word: str) -> list:
    """BPE as CLIP writes it: merge every occurrence of the lowest-ranked pair, rescan, repeat."""
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    ranks = tokenizer._ranks
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aeinrst lo", min_size=1, max_size=120))
def test_heap_bpe_equals_rescanning_bpe(clip_bpe, word):
    word = word.replace(" ", "") or "a"
    assert clip_bpe._bpe(word) == rescanning_bpe(clip_bpe, word)


def test_a_very_long_word_is_linearithmic_not_quadratic(clip_bpe):
    ids = clip_bpe.encode("ab" * 50_000)  # one 100,000-letter word: the rescanning BPE takes minutes
    assert len(ids) > 1000 and clip_bpe.decode(ids) == "ab" * 50_000 + " "


def test_bpe_dropout_changes_segmentation_but_not_the_text(clip_bpe):
    import torch

    torch.manual_seed(0)
    text = "a photograph of an astronaut riding a horse"
    dropped = [clip_bpe.encode(text, dropout_prob=0.3) for _ in range(5)]
    assert any(ids != clip_bpe.encode(text) for ids in dropped)
    assert all(clip_bpe.decode(ids) == text + " " for ids in dropped)
    assert clip_bpe.encode(text) == clip_bpe.encode(text, dropout_prob=0.0)


def test_saves_beside_a_model_and_loads_back(clip_bpe, tmp_path):
    path = save_tokenizer(clip_bpe, tmp_path)
    assert len(path.read_bytes()) < 100  # a marker: the merges ship with the package
    loaded = load_tokenizer(path)
    assert isinstance(loaded, SimpleTokenizer) and loaded.encode("a red square") == [320, 736, 3999]

    custom = SimpleTokenizer(merges=clip_bpe.merges[:1000])  # another merges file: saved in full
    assert custom.vocab_size == 512 + 1000 + 2
    custom.save(tmp_path / "custom.json")
    again = Tokenizer.load(tmp_path / "custom.json")
    assert again.merges == custom.merges and again.encode("the photograph") == custom.encode("the photograph")


def test_another_merges_file_plain_or_gzipped(clip_bpe, tmp_path):
    lines = gzip.decompress(DEFAULT_BPE_PATH.read_bytes()).decode("utf-8").split("\n")
    plain = tmp_path / "merges.txt"
    plain.write_text("\n".join(lines[:2001]) + "\n", encoding="utf-8")
    small = SimpleTokenizer(plain)
    assert small.vocab_size == 512 + 2000 + 2 and small.merges == clip_bpe.merges[:2000]
    gz = tmp_path / "merges.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert SimpleTokenizer(gz).encode("a red square") == small.encode("a red square")


@pytest.mark.parametrize("content, message", [
    (b"i n\nt h\n", "'#version'"),
    (b"#version: 0.2\ni n t\n", "line 2 must hold one merge"),
    (b"#version: 0.2\n\xff\xfe\n", "not UTF-8"),
    (b"#version: 0.2\n", "no merges"),
    (gzip.compress(b"#version: 0.2\n" + b"a" * (MAX_MERGES_BYTES + 10)), "decompresses to more than"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
])
def test_hostile_merges_files_are_refused_with_what_was_expected(tmp_path, content, message):
    path = tmp_path / "bpe.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        SimpleTokenizer(path)


def test_missing_merges_file_and_a_bad_saved_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SimpleTokenizer(tmp_path / "missing.txt")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"dalle_core_tokenizer": "SimpleTokenizer", "merges": [1, 2]}))
    with pytest.raises(ValueError, match="merges"):
        Tokenizer.load(bad)


def test_reference_module_paths_hold_the_reference_names():
    import dalle_core.loader as loader
    import dalle_core.tokenizer as module
    from dalle_core.data import TextImageDataset

    assert isinstance(module.tokenizer, SimpleTokenizer) and module.tokenizer is module.tokenizer
    assert module.tokenizer.tokenize(["a red square"], 4).tolist() == [[320, 736, 3999, 0]]
    assert {"SimpleTokenizer", "HugTokenizer", "YttmTokenizer", "ChineseTokenizer"} <= set(module.__all__)
    assert loader.TextImageDataset is TextImageDataset


def test_chinese_tokenizer_is_berts_wordpiece_without_special_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dalle_core.tokenizer import ChineseTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "红", "色", "的", "猫", "一", "只", "a", "##b"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = ChineseTokenizer(tmp_path / "vocab.txt")
    bert = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    text = "一只红色的猫 ab 狗"
    assert tok.encode(text) == bert.encode(text, add_special_tokens=False) == [9, 10, 5, 6, 7, 8, 11, 12, 1]
    assert tok.vocab_size == len(vocab) and tok.tokenize(text, 10)[0, 9] == 0
    assert tok.decode(tok.encode("红色的猫") + [0, 2, 3]) == "红 色 的 猫"


def test_chinese_tokenizer_without_transformers_or_its_files_says_what_to_do(monkeypatch, tmp_path):
    from dalle_core.tokenizer import ChineseTokenizer

    if __import__("importlib").util.find_spec("transformers") is not None:
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to load, and no download
        with pytest.raises(FileNotFoundError, match="bert-base-chinese"):
            ChineseTokenizer()
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers fails
    with pytest.raises(ImportError, match="pip install transformers"):
        ChineseTokenizer()
