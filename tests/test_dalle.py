"""DALLE: cached generation is exact, guidance is right at every step, the reference's defects are fixed,
bad input is refused, bf16 autocast and activation checkpointing work."""
from __future__ import annotations

from typing import List

import pytest
import torch

import dalle_core.models.dalle_sampling as dalle_module
from dalle_core import DALLE, KVCache
from helpers import ATTN_CASES, TEXT_LEN, VOCAB, captions, codes_for, guidance_definition, make_dalle, make_vae

# --- the key/value cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rotary_emb", [True, False])
@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_cached_logits_equal_full_recompute_each_step(name, rotary_emb):
    dalle = make_dalle(ATTN_CASES[name], rotary_emb=rotary_emb, shift_tokens=rotary_emb)
    text, codes = captions(), codes_for()
    with torch.no_grad():
        full = dalle(text, codes)
        cache = dalle.make_cache(2)
        steps = [dalle(text, codes[:, :0], cache=cache)]  # prefill: <bos> + caption
        steps += [dalle(text, codes[:, :i], cache=cache) for i in range(1, 16)]
    assert [s.shape[1] for s in steps] == [TEXT_LEN + 1] + [1] * 15
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_use_cache_gives_identical_images(name, cond_scale):
    dalle = make_dalle(ATTN_CASES[name])
    text = captions()
    outs = [dalle.generate_image_codes(text, use_cache=use, cond_scale=cond_scale, filter_thres=0.5,
                                       generator=torch.Generator().manual_seed(11)) for use in (True, False)]
    assert torch.equal(outs[0], outs[1])
    imgs = [dalle.generate_images(text, use_cache=use, cond_scale=cond_scale,
                                  generator=torch.Generator().manual_seed(11)) for use in (True, False)]
    assert torch.equal(imgs[0], imgs[1])


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_use_cache_gives_identical_images_with_priming(cond_scale):
    dalle = make_dalle(ATTN_CASES["mix"])
    text, img = captions(), torch.rand(2, 3, 16, 16)
    outs = [dalle.generate_image_codes(text, img=img, num_init_img_tokens=6, use_cache=use, cond_scale=cond_scale,
                                       generator=torch.Generator().manual_seed(2)) for use in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :6], dalle.vae.get_codebook_indices(img)[:, :6])  # the primer is kept


def _positions_per_call(dalle: DALLE, **generate_kwargs) -> List[int]:
    seen: List[int] = []
    first_attention = dalle.transformer.layers[0].attn  # every path, full or one-position, goes through it
    handle = first_attention.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        dalle.generate_image_codes(captions(), **generate_kwargs)
    finally:
        handle.remove()
    return seen


def test_cache_is_used_at_cond_scale_1():
    dalle = make_dalle()
    cached = _positions_per_call(dalle, use_cache=True, cond_scale=1.0)
    assert cached == [TEXT_LEN + 1] + [1] * 15  # each position goes through the transformer once
    uncached = _positions_per_call(dalle, use_cache=False, cond_scale=1.0)
    assert uncached == list(range(TEXT_LEN + 1, TEXT_LEN + 17))


def test_cache_counts_each_position_once_and_rejects_wrong_batch():
    dalle = make_dalle()
    cache = dalle.make_cache(2)
    assert isinstance(cache, KVCache) and cache.max_len == TEXT_LEN + 1 + 16
    with torch.no_grad():
        dalle(captions(), codes_for()[:, :3], cache=cache)
        assert cache.tokens_processed == cache.offset == TEXT_LEN + 1 + 3
        with pytest.raises(ValueError, match="cache holds a batch of 2"):
            dalle(captions(3), codes_for(3)[:, :4], cache=cache)


def test_dict_cache_like_dalle_pytorch_is_exact():
    dalle = make_dalle(ATTN_CASES["mix"])
    text, codes = captions(), codes_for()
    cache: dict = {}
    with torch.no_grad():
        full = dalle(text, codes)
        steps = [dalle(text, codes[:, :i], cache=cache) for i in range(0, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


# --- guidance and the reference's defects ------------------------------------------------------------------


def _record_sampler(monkeypatch) -> list:
    calls = []
    real = dalle_module.sample_logits  # the decoding loop's sampler (its settings are checked once, up front)

    def recording(logits, **kwargs):
        out = real(logits, **kwargs)
        calls.append((logits.clone(), out.clone(), kwargs))
        return out

    monkeypatch.setattr(dalle_module, "sample_logits", recording)
    return calls


@pytest.mark.parametrize("space", ["probs", "logits"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_guidance_is_its_definition_at_every_step(monkeypatch, use_cache, space):
    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions()
    calls = _record_sampler(monkeypatch)
    options = {} if space == "probs" else {"guidance_space": space}  # "probs" is the default
    codes = dalle.generate_image_codes(text, cond_scale=3.0, use_cache=use_cache, **options)
    assert len(calls) == 16
    with torch.no_grad():
        for pos, (guided, _, _) in enumerate(calls):
            prefix = codes[:, :pos]
            cond = dalle(text, prefix)[:, -1, dalle.num_text_tokens:]
            null = dalle(torch.zeros_like(text), prefix)[:, -1, dalle.num_text_tokens:]
            torch.testing.assert_close(guided, guidance_definition(cond, null, 3.0, space), atol=1e-4, rtol=0)


@pytest.mark.parametrize("space", ["probs", "logits"])
def test_forward_with_cond_scale_is_the_guidance_formula(space):
    dalle = make_dalle()
    text, codes = captions(), codes_for()
    image_part = slice(TEXT_LEN, None), slice(dalle.num_text_tokens, None)
    with torch.no_grad():
        guided = dalle.forward_with_cond_scale(text, codes, cond_scale=2.5, guidance_space=space)
        cond, null = dalle(text, codes)[:, image_part[0], image_part[1]], dalle(torch.zeros_like(text), codes)
    expected = guidance_definition(cond, null[:, image_part[0], image_part[1]], 2.5, space)
    torch.testing.assert_close(guided[:, image_part[0], image_part[1]], expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="guidance_space must be one of 'probs', 'logits'"):
        dalle.forward_with_cond_scale(text, codes, cond_scale=2.5, guidance_space="log")
    with pytest.raises(ValueError, match="guidance_space must be one of"):
        dalle.generate_image_codes(text, cond_scale=2.0, guidance_space="prob")


def test_guided_sampling_leaves_caller_text_untouched():
    dalle = make_dalle()
    text = captions()
    before = text.clone()
    dalle.generate_images(text, cond_scale=3.0, use_cache=True)
    dalle.forward_with_cond_scale(text, codes_for(), cond_scale=3.0)
    assert torch.equal(text, before)


def test_null_cond_prob_leaves_caller_text_untouched_and_drops_captions():
    dalle = make_dalle().train()
    text, codes = captions(), codes_for()
    before = text.clone()
    with torch.no_grad():
        dropped = dalle(text, codes, return_loss=True, null_cond_prob=1.0)
        unconditional = dalle(torch.zeros_like(text), codes, return_loss=True)
    assert torch.equal(text, before)
    torch.testing.assert_close(dropped, unconditional)


def test_top_k_filters_the_image_vocabulary_only(monkeypatch):
    torch.manual_seed(0)
    dalle = DALLE(dim=32, vae=make_vae(), num_text_tokens=5000, text_seq_len=TEXT_LEN, depth=1, heads=2,
                  dim_head=16).eval()
    calls = _record_sampler(monkeypatch)
    dalle.generate_image_codes(captions(), filter_thres=0.9, temperature=100.0)
    for logits, sample, _ in calls:
        assert logits.shape[-1] == 32  # image vocabulary only
        top3 = logits.topk(int(0.1 * 32), dim=-1).indices  # 3 of 32 codes survive
        assert (top3 == sample[:, None]).any(-1).all()


class _CharTokenizer:
    """The tokenizer contract in miniature: ids 1..26 for a-z, 0 is padding."""

    vocab_size = 27

    def encode(self, text: str) -> List[int]:
        return [ord(c) - 96 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i + 96) for i in ids if 0 < i < 27)


def test_generate_texts_runs_on_cpu_and_continues_the_prompt():
    dalle = make_dalle()
    dalle_vocab = DALLE(dim=32, vae=make_vae(), num_text_tokens=27, text_seq_len=TEXT_LEN, depth=2, heads=2,
                        dim_head=16)
    tokens, texts = dalle_vocab.generate_texts(_CharTokenizer(), "ab", use_cache=True)
    assert tokens.shape == (1, TEXT_LEN) and tokens.device.type == "cpu"
    assert tokens[0, :2].tolist() == [1, 2] and texts[0].startswith("ab")
    assert int(tokens.max()) < 27  # padding ids are mapped back to 0
    a = dalle_vocab.generate_texts(_CharTokenizer(), "c", use_cache=True, generator=torch.Generator().manual_seed(1))
    b = dalle_vocab.generate_texts(_CharTokenizer(), "c", use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="num_text_tokens >= tokenizer.vocab_size"):
        DALLE(dim=32, vae=make_vae(), num_text_tokens=10, text_seq_len=TEXT_LEN, depth=1, heads=2,
              dim_head=16).generate_texts(_CharTokenizer(), "xyz")
    del dalle


def test_clip_scores_returned_with_images():
    from dalle_core import CLIP

    dalle = make_dalle(depth=1)
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=VOCAB, text_enc_depth=1,
                text_seq_len=TEXT_LEN, text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=16,
                visual_patch_size=8)
    images, scores = dalle.generate_images(captions(), clip=clip)
    assert images.shape == (2, 3, 16, 16) and scores.shape == (2,)
    assert images.min() >= 0 and images.max() <= 1


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, image, error, message",
    [
        (captions().float(), None, TypeError, "integer tensor"),
        (captions() - 5, None, ValueError, r"ids must lie in \[0, 40\)"),
        (captions() + 100, None, ValueError, r"ids must lie in \[0, 40\)"),
        (torch.ones(2, TEXT_LEN + 1, dtype=torch.long), None, ValueError, "at most text_seq_len=6"),
        (captions(), torch.full((2, 16), 32), ValueError, r"image codes ids must lie in \[0, 32\)"),
        (captions(), torch.zeros(2, 17, dtype=torch.long), ValueError, "image sequence holds 16"),
        (captions(), torch.rand(2, 3, 32, 32), ValueError, r"shape \(batch, 3, 16, 16\)"),
        (captions(), torch.rand(2, 1, 16, 16), ValueError, r"shape \(batch, 3, 16, 16\)"),
        (captions(), codes_for(3), ValueError, "batch sizes must match: text has 2, image has 3"),
        ([[1, 2]], None, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_raises_with_what_was_expected(text, image, error, message):
    dalle = make_dalle(depth=1)
    with pytest.raises(error, match=message):
        dalle(text, image)


def test_loss_needs_the_whole_image_and_valid_null_cond_prob():
    dalle = make_dalle(depth=1)
    with pytest.raises(ValueError, match="needs the whole image"):
        dalle(captions(), codes_for()[:, :5], return_loss=True)
    with pytest.raises(ValueError, match=r"null_cond_prob must be in \[0, 1\]"):
        dalle(captions(), codes_for(), null_cond_prob=1.5)
    with pytest.raises(ValueError, match="num_init_img_tokens"):
        dalle.generate_images(captions(), img=torch.rand(2, 3, 16, 16), num_init_img_tokens=16)


def test_unused_reference_keywords_warn():
    with pytest.warns(UserWarning, match="sparse_attn does nothing"):
        DALLE(dim=32, vae=make_vae(), num_text_tokens=VOCAB, text_seq_len=TEXT_LEN, depth=1, sparse_attn=True)
    with pytest.warns(UserWarning, match="optimize_for_inference has no effect"):
        DALLE(dim=32, vae=make_vae(), num_text_tokens=VOCAB, text_seq_len=TEXT_LEN, depth=1,
              optimize_for_inference=True)
    with pytest.raises(TypeError, match="vae must be a DiscreteVAE"):
        DALLE(dim=32, vae=torch.nn.Linear(2, 2), num_text_tokens=VOCAB, text_seq_len=TEXT_LEN, depth=1)


def test_short_captions_are_right_padded():
    dalle = make_dalle(depth=1)
    text = captions()
    with torch.no_grad():
        torch.testing.assert_close(dalle(text[:, :3], codes_for()), dalle(torch.nn.functional.pad(text[:, :3], (0, 3)),
                                                                          codes_for()))


# --- precision, memory savers, training ----------------------------------------------------------------------


def test_bfloat16_autocast_trains_and_samples_on_cpu():
    dalle = make_dalle(ATTN_CASES["mix"]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dalle(captions(), codes_for(), return_loss=True)
        loss.backward()
        images = dalle.generate_images(captions(), use_cache=True, cond_scale=2.0)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in dalle.parameters() if p.grad is not None)
    assert torch.isfinite(images).all()


def _loss_and_grads(dalle: DALLE):
    dalle.zero_grad()
    loss = dalle(captions(), codes_for(), return_loss=True)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in dalle.named_parameters() if p.grad is not None}


def _saved_activation_bytes(dalle: DALLE) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dalle(captions(), codes_for(), return_loss=True)
    return total


@pytest.mark.parametrize("reversible", [False, True])
def test_activation_checkpointing_keeps_gradients_and_saves_memory(reversible):
    dalle = make_dalle(ATTN_CASES["mix"], reversible=reversible, gradient_checkpointing=True).train()
    assert dalle.transformer.gradient_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(dalle)
    saved_ckpt = _saved_activation_bytes(dalle)
    dalle.transformer.gradient_checkpointing = False
    loss_plain, grads_plain = _loss_and_grads(dalle)
    saved_plain = _saved_activation_bytes(dalle)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-6, rtol=1e-5)
    assert saved_ckpt < 0.5 * saved_plain


def test_adam_on_defaults_learns_caption_to_image_mapping():
    torch.manual_seed(0)
    vae = make_vae()
    dalle = DALLE(dim=64, vae=vae, num_text_tokens=8, text_seq_len=2, depth=2, heads=4, dim_head=16)
    # two captions, each always paired with its own fixed image code grid
    text = torch.tensor([[1, 2], [3, 4]])
    codes = torch.randint(0, 32, (2, 16))
    opt = torch.optim.Adam(dalle.parameters(), lr=1e-3)
    first = None
    for _ in range(150):
        loss = dalle(text, codes, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.2 * first
    sampled = dalle.generate_image_codes(text, filter_thres=0.9, use_cache=True)
    assert (sampled == codes).float().mean() > 0.9  # samples follow the caption
