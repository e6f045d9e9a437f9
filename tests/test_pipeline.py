"""DALLEPipeline: one folder, checked pieces, prompt to PIL images in one call."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_core import CLIP, DALLE, DALLEPipeline, DiscreteVAE
from dalle_core.tokenizers import ByteTokenizer, WordTokenizer


def _models(vocab: int):
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=vocab, text_seq_len=8, depth=1, heads=2, dim_head=16)
    clip = CLIP(num_text_tokens=vocab, text_seq_len=8, dim_text=16, dim_image=16, dim_latent=16, text_enc_depth=1,
                visual_enc_depth=1, text_heads=2, visual_heads=2, visual_image_size=16, visual_patch_size=8)
    return dalle, clip


@pytest.fixture
def tokenizer():
    return WordTokenizer.train(["a red circle", "a blue square on the left"])


def test_a_pipeline_round_trips_and_draws_the_same_images(tokenizer, tmp_path):
    dalle, clip = _models(tokenizer.vocab_size)
    pipe = DALLEPipeline(dalle, tokenizer, clip=clip)
    out = pipe("a red circle", num_images=3, seed=0, cond_scale=2.0)
    assert len(out.images) == 3 and all(isinstance(im, Image.Image) and im.size == (16, 16) for im in out.images)
    assert out.tensors.shape == (3, 3, 16, 16) and out.scores.shape == (3,)
    pipe.save_pretrained(tmp_path / "pipe")
    again = DALLEPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(again("a red circle", num_images=3, seed=0, cond_scale=2.0).tensors, out.tensors)
    # each model folder still loads alone, with its tokenizer beside it
    assert (tmp_path / "pipe" / "dalle" / "tokenizer.json").is_file()
    assert DALLE.from_pretrained(tmp_path / "pipe" / "dalle").text_vocab_size == tokenizer.vocab_size


def test_the_pipeline_passes_the_sampling_options(tokenizer):
    dalle, clip = _models(tokenizer.vocab_size)
    pipe = DALLEPipeline(dalle, tokenizer, clip=clip)
    two = pipe(["a red circle", "a blue square"], num_images=2, seed=1, rerank="both", candidates=3,
               negative="a blue square", cond_scale=2.0, speculative=4)
    assert two.tensors.shape == (4, 3, 16, 16) and two.scores.shape == (4,)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 8:] = True
    img = torch.rand(1, 3, 16, 16)
    edited = pipe("a red circle", num_images=1, img=img, mask=mask, seed=2)
    text = tokenizer.tokenize(["a red circle"], 8)
    expected = dalle.generate_images(text, img=img, mask=mask, use_cache=True, clip=clip,
                                     generator=torch.Generator().manual_seed(2))
    assert torch.equal(edited.tensors, expected[0]) and torch.equal(edited.scores, expected[1])
    rows = [r for r, _ in pipe.stream("a red circle", seed=3)]
    assert rows[-1] == 4 and len(set(rows)) == len(rows)
    final = list(pipe.stream("a red circle", seed=3))[-1][1]
    assert np.array_equal(np.asarray(final[0]), np.asarray(pipe("a red circle", num_images=1, seed=3).images[0]))


def test_mismatched_pieces_are_refused(tokenizer, tmp_path):
    dalle, clip = _models(tokenizer.vocab_size)
    with pytest.raises(ValueError, match="not the tokenizer it was trained with"):
        DALLEPipeline(dalle, ByteTokenizer(), clip=clip)
    _, other_clip = _models(tokenizer.vocab_size + 3)
    with pytest.raises(ValueError, match="shares the DALLE's tokenizer"):
        DALLEPipeline(dalle, tokenizer, clip=other_clip)
    DALLEPipeline(dalle, tokenizer, clip=clip).save_pretrained(tmp_path / "pipe")
    # a tokenizer of the same size swapped in by hand
    swapped = WordTokenizer.train(["a green cross", "a blue square on the right"])
    assert swapped.vocab_size == tokenizer.vocab_size
    swapped.save(tmp_path / "pipe" / "tokenizer.json")
    with pytest.raises(ValueError, match="SHA-256"):
        DALLEPipeline.from_pretrained(tmp_path / "pipe")
    tokenizer.save(tmp_path / "pipe" / "tokenizer.json")
    DALLEPipeline.from_pretrained(tmp_path / "pipe")
    # another DALLE of the same vocabulary with another image tokenizer saved over dalle/
    torch.manual_seed(1)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=8, hidden_dim=8)
    DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, depth=1, heads=2,
          dim_head=16).save_pretrained(tmp_path / "pipe" / "dalle")
    with pytest.raises(ValueError, match="replaced by hand"):
        DALLEPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="no pipeline.json"):
        DALLEPipeline.from_pretrained(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pipeline.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="not a dalle_core pipeline.json"):
        DALLEPipeline.from_pretrained(tmp_path / "bad")
    pipe = DALLEPipeline(dalle, tokenizer)
    with pytest.raises(ValueError, match="num_images"):
        pipe("a red circle", num_images=0)
    with pytest.raises(TypeError, match="prompt"):
        pipe(3)
