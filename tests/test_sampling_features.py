"""Sampling features: inpainting with any mask, streaming, likelihood scoring and reranking, negative
prompts and guidance intervals, and speculative decoding (exact: greedy equality and a distribution test)."""
from __future__ import annotations

import itertools
from typing import List, Optional

import pytest
import torch

from dalle_core import CLIP, DALLE, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE, VQVAE
from dalle_core.models.vqgan import vqgan_architecture
from dalle_core.models import speculative as speculative_module
from dalle_core.sampling import filtered_probs, sample_logits

from helpers import ATTN_CASES, VOCAB, captions, guidance_definition, make_dalle


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image_logits(dalle: DALLE, text: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Image logits of the position after `prefix`, by a full forward (no cache)."""
    return dalle(text, prefix)[:, -1, dalle.num_text_tokens:]


def _reference_decode(dalle: DALLE, text: torch.Tensor, codes: torch.Tensor, known: torch.Tensor,
                      scales: List[float], negative: Optional[torch.Tensor], generator: torch.Generator,
                      filter_thres: float = 0.5) -> torch.Tensor:
    """The definition, one position at a time with full forwards: guided logits (cond vs negative or empty
    captions) at each position's scale, sampled, known codes kept; positions every row knows are skipped."""
    codes = codes.clone()
    null = torch.zeros_like(text) if negative is None else negative
    with torch.no_grad():
        for pos in range(codes.shape[1]):
            if bool(known[:, pos].all()):
                continue
            cond = _image_logits(dalle, text, codes[:, :pos])
            logits = cond
            if scales[pos] != 1:
                uncond = _image_logits(dalle, null, codes[:, :pos])
                logits = guidance_definition(cond, uncond, scales[pos])
            drawn = sample_logits(logits, filter_thres=filter_thres, generator=generator)
            codes[:, pos] = torch.where(known[:, pos], codes[:, pos], drawn)
    return codes


# --- inpainting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
@pytest.mark.parametrize("use_cache", [True, False])
def test_inpainting_keeps_the_codes_outside_the_mask_and_samples_inside_by_the_definition(cond_scale, use_cache):
    dalle = make_dalle(ATTN_CASES["mix"])
    text, img = captions(), torch.rand(2, 3, 16, 16)
    own = dalle.vae.get_codebook_indices(img)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True  # a hole in the middle
    mask[1, :, 2:] = True  # the right half
    codes = dalle.generate_image_codes(text, img=img, mask=mask, cond_scale=cond_scale, use_cache=use_cache,
                                       filter_thres=0.5, generator=_gen())
    known = ~mask.flatten(1)
    assert torch.equal(codes[known], own[known])
    expected = _reference_decode(dalle, text, torch.where(known, own, 0), known, [cond_scale] * 16, None, _gen())
    assert torch.equal(codes, expected)
    assert not torch.equal(codes[~known], own[~known])  # something was drawn


def test_a_pixel_mask_regenerates_every_cell_it_touches_and_broadcasts_over_the_batch():
    dalle = make_dalle()
    text, img = captions(), torch.rand(2, 3, 16, 16)
    pixels = torch.zeros(1, 16, 16, dtype=torch.bool)
    pixels[0, 5, 9] = True  # one pixel: cell (1, 2) of the 4x4 grid (4-pixel cells)
    pixels[0, 15, 0] = True  # cell (3, 0)
    grid = torch.zeros(1, 4, 4, dtype=torch.bool)
    grid[0, 1, 2] = grid[0, 3, 0] = True
    by_pixels = dalle.generate_image_codes(text, img=img, mask=pixels, use_cache=True, generator=_gen())
    by_grid = dalle.generate_image_codes(text, img=img, mask=grid, use_cache=True, generator=_gen())
    assert torch.equal(by_pixels, by_grid)
    own = dalle.vae.get_codebook_indices(img)
    kept = ~grid.flatten(1).expand(2, -1)
    assert torch.equal(by_pixels[kept], own[kept])


def test_priming_is_a_mask_over_everything_after_the_prefix():
    dalle = make_dalle(ATTN_CASES["mix"])
    text, img = captions(), torch.rand(2, 3, 16, 16)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, :1] = True
    mask.view(1, 16)[0, :6] = False
    primed = dalle.generate_image_codes(text, img=img, num_init_img_tokens=6, use_cache=True, generator=_gen())
    masked = dalle.generate_image_codes(text, img=img, mask=mask, use_cache=True, generator=_gen())
    assert torch.equal(primed, masked)


def test_an_empty_mask_returns_the_image_codes_and_a_full_mask_is_plain_sampling():
    dalle = make_dalle()
    text, img = captions(), torch.rand(2, 3, 16, 16)
    none = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert torch.equal(dalle.generate_image_codes(text, img=img, mask=none), dalle.vae.get_codebook_indices(img))
    full = dalle.generate_image_codes(text, img=img, mask=~none, use_cache=True, generator=_gen())
    assert torch.equal(full, dalle.generate_image_codes(text, use_cache=True, generator=_gen()))


def test_inpainting_with_codes_as_img_and_with_clip_returns_scores():
    dalle = make_dalle()
    text = captions()
    own = torch.randint(0, 32, (2, 16), generator=_gen(8))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 2:] = True
    clip = CLIP(num_text_tokens=VOCAB, text_seq_len=6, dim_text=16, dim_image=16, dim_latent=16, text_enc_depth=1,
                visual_enc_depth=1, text_heads=2, visual_heads=2, visual_image_size=16, visual_patch_size=8).eval()
    images, scores = dalle.generate_images(text, img=own, mask=mask, clip=clip, use_cache=True, generator=_gen())
    assert images.shape == (2, 3, 16, 16) and scores.shape == (2,)
    codes = dalle.generate_image_codes(text, img=own, mask=mask, use_cache=True, generator=_gen())
    assert torch.equal(codes[:, :8], own[:, :8])
    assert torch.equal(images, dalle.vae.decode(codes))


def _tokenizer(kind: str):
    torch.manual_seed(0)
    if kind in ("vq", "fsq", "lfq"):
        return VQVAE(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8, num_resnet_blocks=0,
                     quantizer=kind)
    if kind == "vqgan":
        return VQGanVAE(architecture=vqgan_architecture(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8,
                                                        hidden_dim=32), image_size=16, trainable=True)
    if kind == "openai":
        return OpenAIDiscreteVAE(image_size=16, architecture={
            "encoder": {"n_hid": 8, "n_blk_per_group": 1, "input_channels": 3, "vocab_size": 32},
            "decoder": {"n_init": 8, "n_hid": 8, "n_blk_per_group": 1, "output_channels": 3, "vocab_size": 32}})
    return DiscreteVAE(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)


@pytest.mark.parametrize("kind", ["dvae", "vq", "fsq", "lfq", "vqgan", "openai"])
def test_inpainting_works_over_every_image_tokenizer(kind):
    vae = _tokenizer(kind).eval()
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=VOCAB, text_seq_len=6, depth=2, heads=2, dim_head=16).eval()
    text, img = captions(), torch.rand(2, 3, 16, 16)
    fmap = dalle.image_fmap_size
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :8] = True  # the top half: drawn without seeing the bottom
    codes = dalle.generate_image_codes(text, img=img, mask=mask, cond_scale=2.0, use_cache=True, generator=_gen())
    own = vae.get_codebook_indices(img)
    half = fmap * fmap // 2
    assert torch.equal(codes[:, half:], own[:, half:])
    assert dalle.generate_images(text, img=img, mask=mask, use_cache=True).shape == (2, 3, 16, 16)


def test_mask_errors_say_what_was_expected():
    dalle = make_dalle()
    text, img = captions(), torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="no img was given"):
        dalle.generate_image_codes(text, mask=mask)
    with pytest.raises(TypeError, match="boolean tensor"):
        dalle.generate_image_codes(text, img=img, mask=mask.float())
    with pytest.raises(ValueError, match=r"\(batch or 1, 16, 16\) over pixels or \(batch or 1, 4, 4\)"):
        dalle.generate_image_codes(text, img=img, mask=torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="got shape"):
        dalle.generate_image_codes(text, img=img, mask=torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        dalle.generate_image_codes(text, img=img, mask=mask, num_init_img_tokens=4)
    with pytest.raises(ValueError, match="all 16 codes"):
        dalle.generate_image_codes(text, img=torch.zeros(2, 5, dtype=torch.long), mask=mask)


# --- streaming ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("speculative", [None, 3])
def test_the_stream_yields_each_row_and_ends_with_what_generate_images_returns(speculative):
    dalle = make_dalle()
    text = captions()
    stream = list(dalle.generate_images_stream(text, use_cache=True, speculative=speculative, generator=_gen()))
    rows = [r for r, _ in stream]
    assert rows == sorted(set(rows)) and rows[-1] == 4 and all(1 <= r <= 4 for r in rows)
    if speculative is None:
        assert rows == [1, 2, 3, 4]
    final = dalle.generate_images(text, use_cache=True, speculative=speculative, generator=_gen())
    assert torch.equal(stream[-1][1], final)
    for done, images in stream[:-1]:
        assert images.shape == (2, 3, 16, 16)
        assert bool((images[..., done * 4:, :] == 1).all())  # rows not drawn yet are blank
        assert not bool((images[..., : done * 4, :] == 1).all())


def test_the_stream_of_an_inpainting_shows_the_image_and_with_clip_ends_with_scores():
    dalle = make_dalle()
    text, img = captions(), torch.rand(2, 3, 16, 16)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, 1:3] = True
    clip = CLIP(num_text_tokens=VOCAB, text_seq_len=6, dim_text=16, dim_image=16, dim_latent=16, text_enc_depth=1,
                visual_enc_depth=1, text_heads=2, visual_heads=2, visual_image_size=16, visual_patch_size=8).eval()
    stream = list(dalle.generate_images_stream(text, img=img, mask=mask, clip=clip, use_cache=True,
                                               generator=_gen()))
    assert [r for r, _ in stream] == [1, 2, 3, 4]  # row 0, the image's own, comes with the first code drawn
    images, scores = dalle.generate_images(text, img=img, mask=mask, clip=clip, use_cache=True, generator=_gen())
    assert torch.equal(stream[-1][1][0], images) and torch.equal(stream[-1][1][1], scores)
    assert not bool((stream[0][1][..., 8:, :] == 1).all())  # not blanked: the image shows through


# --- likelihood ---------------------------------------------------------------------------------------------------


def test_score_is_the_mean_nll_of_the_codes_from_one_forward_pass():
    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions(3)
    codes = torch.randint(0, 32, (3, 16), generator=_gen(4))
    calls = []
    handle = dalle.transformer.register_forward_pre_hook(lambda mod, args: calls.append(1))
    nll = dalle.score(text, codes)
    handle.remove()
    assert nll.shape == (3,) and len(calls) == 1
    with torch.no_grad():
        logits = dalle(text, codes)[:, 6:, dalle.num_text_tokens:]
        expected = -logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1).mean(-1)
    torch.testing.assert_close(nll, expected, atol=1e-5, rtol=0)
    img = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(dalle.score(text, img), dalle.score(text, dalle.vae.get_codebook_indices(img)))
    with pytest.raises(ValueError, match="all 16 codes"):
        dalle.score(text, codes[:, :5])
    with pytest.raises(ValueError, match="batch"):
        dalle.score(text, codes[:2])


def _candidates(dalle, text, n, **kwargs):
    codes = dalle.generate_image_codes(text.repeat_interleave(n, 0), use_cache=True, generator=_gen(), **kwargs)
    return codes, dalle.vae.decode(codes)


@pytest.mark.parametrize("rerank", ["clip", "likelihood", "both"])
def test_rerank_keeps_the_best_candidate_of_each_caption(rerank):
    dalle = make_dalle()
    text = captions()
    clip = CLIP(num_text_tokens=VOCAB, text_seq_len=6, dim_text=16, dim_image=16, dim_latent=16, text_enc_depth=1,
                visual_enc_depth=1, text_heads=2, visual_heads=2, visual_image_size=16, visual_patch_size=8).eval()
    images, scores = dalle.generate_images(text, clip=clip, rerank=rerank, candidates=4, use_cache=True,
                                           generator=_gen())
    assert images.shape == (2, 3, 16, 16) and scores.shape == (2,)
    codes, cands = _candidates(dalle, text, 4)
    repeated = text.repeat_interleave(4, 0)
    loglik = -dalle.score(repeated, codes).view(2, 4)
    clip_scores = clip(repeated, cands, text_mask=repeated != 0).view(2, 4)
    if rerank == "clip":
        best, expected = clip_scores.argmax(-1), clip_scores.max(-1).values
    elif rerank == "likelihood":
        best, expected = loglik.argmax(-1), loglik.max(-1).values
    else:
        rank = lambda s: s.argsort(-1, descending=True).argsort(-1)  # noqa: E731
        clip_rank = rank(clip_scores)
        total = clip_rank + rank(loglik)
        best = torch.tensor([min(range(4), key=lambda i: (int(total[b, i]), int(clip_rank[b, i]))) for b in range(2)])
        expected = 1 - total.gather(-1, best[:, None]).squeeze(-1).float() / 6
    assert torch.equal(images, cands.view(2, 4, 3, 16, 16)[torch.arange(2), best])
    torch.testing.assert_close(scores, expected)


def test_rerank_errors():
    dalle = make_dalle()
    with pytest.raises(ValueError, match="pass clip="):
        dalle.generate_images(captions(), rerank="clip", candidates=2)
    with pytest.raises(ValueError, match="'clip', 'likelihood' or 'both'"):
        dalle.generate_images(captions(), rerank="best")
    with pytest.raises(ValueError, match="pass rerank="):
        dalle.generate_images(captions(), candidates=2)
    images, scores = dalle.generate_images(captions(), rerank="likelihood", candidates=2)  # no CLIP needed
    assert images.shape == (2, 3, 16, 16) and bool((scores < 0).all())


# --- guidance options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_negative_text_guides_away_from_that_caption(use_cache):
    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions()
    negative = torch.randint(1, VOCAB, (1, 4), generator=_gen(9))
    codes = dalle.generate_image_codes(text, cond_scale=3.0, negative_text=negative, use_cache=use_cache,
                                       filter_thres=0.5, generator=_gen())
    neg = torch.nn.functional.pad(negative, (0, 2)).expand(2, -1)
    known = torch.zeros(2, 16, dtype=torch.bool)
    expected = _reference_decode(dalle, text, torch.zeros(2, 16, dtype=torch.long), known, [3.0] * 16, neg, _gen())
    assert torch.equal(codes, expected)
    plain = dalle.generate_image_codes(text, cond_scale=3.0, use_cache=use_cache, filter_thres=0.5, generator=_gen())
    assert not torch.equal(codes, plain)


@pytest.mark.parametrize("interval", [(0.0, 0.5), (0.25, 0.75), (0.5, 1.0)])
def test_cfg_interval_guides_only_those_positions(interval):
    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions()
    codes = dalle.generate_image_codes(text, cond_scale=3.0, cfg_interval=interval, use_cache=True,
                                       filter_thres=0.5, generator=_gen())
    scales = [3.0 if interval[0] <= p / 16 < interval[1] else 1.0 for p in range(16)]
    known = torch.zeros(2, 16, dtype=torch.bool)
    expected = _reference_decode(dalle, text, torch.zeros(2, 16, dtype=torch.long), known, scales, None, _gen())
    assert torch.equal(codes, expected)


def test_guidance_options_errors():
    dalle = make_dalle()
    with pytest.raises(ValueError, match="cond_scale other than 1"):
        dalle.generate_image_codes(captions(), negative_text=captions())
    with pytest.raises(ValueError, match="cond_scale other than 1"):
        dalle.generate_image_codes(captions(), cfg_interval=(0, 0.5))
    for bad in [(0.5, 0.2), (0, 2), (0.1,), "all", (True, 1)]:
        with pytest.raises(ValueError, match="cfg_interval must be"):
            dalle.generate_image_codes(captions(), cond_scale=2.0, cfg_interval=bad)
    with pytest.raises(ValueError, match="negative_text"):
        dalle.generate_image_codes(captions(2), cond_scale=2.0, negative_text=captions(3))


# --- speculative decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_speculative_at_temperature_0_is_greedy_decoding_code_for_code(k, cond_scale):
    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions(3)
    greedy = dalle.generate_image_codes(text, temperature=0, cond_scale=cond_scale, use_cache=True)
    spec = dalle.generate_image_codes(text, temperature=0, cond_scale=cond_scale, speculative=k, generator=_gen())
    assert torch.equal(spec, greedy)
    stats = dalle.speculative_stats
    assert stats.passes <= 16 and stats.codes == 3 * 16


def test_speculative_keeps_the_mask_and_the_negative_prompt():
    dalle = make_dalle(ATTN_CASES["mix"])
    text, img = captions(), torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3] = True
    mask[1, :, 1:] = True
    kwargs = dict(img=img, mask=mask, temperature=0, cond_scale=2.0, negative_text=captions()[:1],
                  cfg_interval=(0.0, 0.6))
    assert torch.equal(dalle.generate_image_codes(text, speculative=4, **kwargs),
                       dalle.generate_image_codes(text, use_cache=True, **kwargs))


# the distribution test: a model small enough that every code grid can be enumerated


def _peaked_model() -> DALLE:
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=8, num_layers=2, num_tokens=4, codebook_dim=8, hidden_dim=8, num_resnet_blocks=0)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=10, text_seq_len=3, depth=2, heads=2, dim_head=16)
    with torch.no_grad():
        dalle.to_logits[1].weight.mul_(4.0)  # peaked: most positions put most of the mass on one or two codes
        for block in dalle.transformer.layers:
            block.attn_scale.uniform_(0.5, 1.0)
            block.ff_scale.uniform_(0.5, 1.0)
    return dalle.eval()


def _exact_distribution(dalle: DALLE, text: torch.Tensor, **settings) -> torch.Tensor:
    """P(grid) of plain sampling for each of the 4**4 grids (in itertools.product order), from the model's
    filtered, guided distributions position by position (teacher forcing)."""
    grids = torch.tensor(list(itertools.product(range(4), repeat=4)))  # (256, 4)
    cond_scale = settings.pop("cond_scale", 1.0)
    space = settings.pop("guidance_space", "probs")
    with torch.no_grad():
        t = text.expand(len(grids), -1)
        logits = dalle(t, grids)[:, 3:, dalle.num_text_tokens:]
        if cond_scale != 1:
            null = dalle(torch.zeros_like(t), grids)[:, 3:, dalle.num_text_tokens:]
            logits = guidance_definition(logits, null, cond_scale, space)
        probs = filtered_probs(logits, **settings)  # (256, 4 positions, 4 codes)
    return probs.gather(-1, grids[..., None]).squeeze(-1).prod(-1).double()


def _chi_square_p(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `expected_probs` (bins under 5 expected pooled)."""
    n = counts.sum()
    expected = expected_probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def _counts(codes: torch.Tensor) -> torch.Tensor:
    index = (codes * torch.tensor([64, 16, 4, 1])).sum(-1)
    return torch.bincount(index, minlength=256).double()


SETTINGS = {
    "plain": dict(filter_thres=None, temperature=1.0),
    "top_k_guided": dict(filter_thres=0.5, temperature=0.7, cond_scale=2.0),
    "top_k_guided_logits": dict(filter_thres=0.5, temperature=0.7, cond_scale=2.0, guidance_space="logits"),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_speculative_samples_have_the_distribution_of_plain_sampling(setting):
    dalle = _peaked_model()
    settings = SETTINGS[setting]
    text = torch.tensor([[3, 5, 0]])
    exact = _exact_distribution(dalle, text, **dict(settings))
    n = 6000
    spec = dalle.generate_image_codes(text.expand(n, -1), speculative=3, generator=_gen(1), **settings)
    assert _chi_square_p(_counts(spec), exact) > 1e-3
    plain = dalle.generate_image_codes(text.expand(n, -1), use_cache=True, generator=_gen(2), **settings)
    assert _chi_square_p(_counts(plain), exact) > 1e-3  # the test itself passes plain sampling


def test_the_distribution_test_catches_a_biased_acceptance_rule(monkeypatch):
    dalle = _peaked_model()
    text = torch.tensor([[3, 5, 0]])
    exact = _exact_distribution(dalle, text, filter_thres=None, temperature=1.0)
    n = 6000
    # accept a draft whenever p(x) >= q(x) / 2: more often than the rule allows
    monkeypatch.setattr(speculative_module, "accept_draft", lambda u, p_x, q_x: u * q_x < 2 * p_x)
    biased = dalle.generate_image_codes(text.expand(n, -1), speculative=3, generator=_gen(1), filter_thres=None)
    assert _chi_square_p(_counts(biased), exact) < 1e-6


def test_speculative_needs_fewer_passes_on_a_peaked_model_and_refuses_compile():
    dalle = _peaked_model()
    text = torch.tensor([[3, 5, 0]])
    passes = 0
    for seed in range(20):
        dalle.generate_image_codes(text, speculative=4, filter_thres=None, generator=_gen(seed))
        passes += dalle.speculative_stats.passes
    assert passes < 0.8 * 20 * 4  # plain cached sampling: 4 passes for 4 positions
    with pytest.raises(ValueError, match="drop compile=True"):
        dalle.generate_image_codes(text, speculative=4, compile=True, use_cache=True)
    with pytest.raises((ValueError, TypeError), match="speculative"):
        dalle.generate_image_codes(text, speculative=0)


def test_stepwise_holds_the_mode_only_inside_steps_and_closes_early():
    """`utils.stepwise`, which every decoding loop runs through: the mode holds while the generator runs and not
    between its steps; a consumer that stops early closes it at once, its cleanup inside the mode."""
    from dalle_core.utils import stepwise

    seen = []

    def steps():
        try:
            for i in range(3):
                seen.append(("step", i, torch.is_inference_mode_enabled()))
                yield i
        finally:
            seen.append(("cleanup", torch.is_inference_mode_enabled()))

    outer = stepwise(torch.inference_mode, steps())
    assert next(outer) == 0 and not torch.is_inference_mode_enabled()
    outer.close()
    assert seen == [("step", 0, True), ("cleanup", True)]
    seen.clear()
    assert list(stepwise(torch.inference_mode, steps())) == [0, 1, 2]
    assert seen[-1] == ("cleanup", True) and all(s[2] for s in seen[:-1])
