"""The functional sampling module: top-k, top-p, Gumbel sampling, guidance."""
from __future__ import annotations

import pytest
import torch

from dalle_core.sampling import (classifier_free_guidance, gumbel_noise, gumbel_sample, probability_guidance,
                                 sample_logits, token_guidance, top_k, top_k_count, top_p)


def test_top_k_keeps_top_fraction_like_dalle_pytorch():
    logits = torch.arange(10.0).repeat(2, 1)
    kept = top_k(logits, thres=0.7)  # keep int(0.3 * 10) = 3
    assert torch.isfinite(kept).sum(-1).tolist() == [3, 3]
    assert torch.equal(kept[0, 7:], logits[0, 7:])
    assert torch.isfinite(top_k(logits, thres=1.0)).sum() == 2  # at least one per row


def test_top_k_count_keeps_exactly_k():
    logits = torch.randn(4, 50)
    kept = top_k_count(logits, 5)
    assert (torch.isfinite(kept).sum(-1) == 5).all()
    assert torch.equal(kept.argmax(-1), logits.argmax(-1))
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        top_k_count(logits, 0)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p(probs.log(), p=0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p(probs.log(), p=0.1)).sum() == 1  # the top token always stays
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        top_p(probs, p=0.0)


def test_gumbel_sample_matches_softmax_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(-1).expand(20000, 3)
    gen = torch.Generator().manual_seed(0)
    samples = gumbel_sample(logits, generator=gen)
    freq = torch.bincount(samples, minlength=3).float() / samples.numel()
    torch.testing.assert_close(freq, logits[0].exp(), atol=0.015, rtol=0)


def test_gumbel_sample_temperature_zero_is_argmax_and_generator_reproduces():
    logits = torch.randn(8, 30)
    assert torch.equal(gumbel_sample(logits, temperature=0.0), logits.argmax(-1))
    a = gumbel_sample(logits, generator=torch.Generator().manual_seed(3))
    b = gumbel_sample(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.isfinite(gumbel_noise(torch.zeros(1000))).all()


def test_filtered_tokens_are_never_sampled():
    logits = torch.randn(500, 40)
    samples = sample_logits(logits, filter_thres=0.9, temperature=5.0)  # keep 4 of 40
    allowed = torch.topk(logits, 4).indices
    assert (allowed == samples[:, None]).any(-1).all()


def test_classifier_free_guidance_formula():
    cond, null = torch.randn(3, 7), torch.randn(3, 7)
    torch.testing.assert_close(classifier_free_guidance(cond, null, 3.0), null + 3.0 * (cond - null))
    torch.testing.assert_close(classifier_free_guidance(cond, null, 1.0), cond)


def test_probability_guidance_formula_and_its_edges():
    cond, null = torch.randn(3, 7), torch.randn(3, 7)
    p_cond, p_null = cond.softmax(-1), null.softmax(-1)
    guided = probability_guidance(cond, null, 2.5)
    expected = p_cond + 1.5 * (p_cond - p_null)
    finite = expected > 0
    torch.testing.assert_close(guided[finite], expected[finite].log())
    assert torch.isneginf(guided[~finite]).all()  # codes the caption makes much less likely are dropped
    assert torch.isfinite(guided).any(-1).all()  # some code stays in every row: the extrapolation sums to 1
    torch.testing.assert_close(probability_guidance(cond, null, 1.0), cond.log_softmax(-1))
    # scale 0 gives the unconditional distribution, and a scale tensor broadcasts over rows
    torch.testing.assert_close(probability_guidance(cond, null, 0.0), null.log_softmax(-1))
    scales = torch.tensor([[1.0], [2.5], [0.0]])
    torch.testing.assert_close(probability_guidance(cond, null, scales)[1], guided[1])
    half = probability_guidance(cond.to(torch.bfloat16), null.to(torch.bfloat16), 2.5)
    assert half.dtype == torch.bfloat16


def test_probability_guidance_does_not_multiply_a_code_both_branches_find_unlikely():
    # code 2 is unlikely under both branches, but 30x more likely with the caption than without: extrapolating the
    # logits at scale 3 multiplies its odds by 30**2 and makes it the favourite; extrapolating the probabilities
    # keeps it under 1%, and code 0 (more likely with the caption by 0.2) takes the mass
    p_cond = torch.tensor([0.6, 0.397, 0.003])
    p_null = torch.tensor([0.4, 0.5999, 0.0001])
    cond, null = p_cond.log(), p_null.log()
    by_logits = token_guidance(cond, null, 3.0, "logits").softmax(-1)
    by_probs = token_guidance(cond, null, 3.0, "probs").softmax(-1)
    assert by_logits.argmax() == 2 and by_logits[2] > 0.6
    torch.testing.assert_close(by_probs, torch.tensor([1.0, 0.0, 0.0088]) / 1.0088)
    assert by_probs[2] < 0.01
    with pytest.raises(ValueError, match="guidance_space must be one of 'probs', 'logits', got 'prob'"):
        token_guidance(cond, null, 3.0, "prob")
