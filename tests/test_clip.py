"""Tests for dalle_core.models.clip: parity with dalle-pytorch 1.6.6's CLIP, scoring properties, reranking, validation."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import committed_cases, load_case
from dalle_core.models.clip import CLIP, RerankResult
from dalle_core.interop import load_dalle_pytorch_clip

TINY = dict(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=40, text_enc_depth=1, text_seq_len=8,
            text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=8, visual_patch_size=4, channels=3)
CASE_NAMES = sorted(committed_cases("clip_"))


def tiny_clip(**overrides) -> CLIP:
    return CLIP(**{**TINY, **overrides})


def random_text(batch: int = 3, length: int = 8) -> torch.Tensor:
    return torch.randint(1, TINY["num_text_tokens"], (batch, length))


def random_images(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8)


# --- parity with the reference ------------------------------------------------------------------------------


@pytest.fixture(params=[pytest.param(("committed", n), id=f"committed-{n}") for n in CASE_NAMES]
                + [pytest.param(("live", n), id=f"live-{n}", marks=pytest.mark.live) for n in CASE_NAMES])
def case(request) -> dict:
    source, name = request.param
    if source == "committed":
        return load_case(committed_cases("clip_")[name])
    return load_case(request.getfixturevalue("live_fixture_dir") / f"{name}.pt")


def model_from_case(case: dict) -> CLIP:
    return load_dalle_pytorch_clip(case["state_dict"], **case["config"])


def test_load_state_dict_takes_the_references_names_and_gives_its_outputs(case):
    clip = CLIP(**case["config"])
    clip.load_state_dict(case["state_dict"], strict=True)  # DALLE-pytorch key names, renamed on load
    via_interop = model_from_case(case)
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), via_interop.state_dict().values()))


def test_committed_clip_fixtures_exist_and_are_small():
    assert len(CASE_NAMES) >= 2, f"expected committed clip_*.pt fixtures, found {CASE_NAMES}"
    for path in committed_cases("clip_").values():
        assert path.stat().st_size < 100_000, f"{path.name} is {path.stat().st_size} bytes"


def test_reference_state_dict_loads_into_every_parameter(case):
    clip = model_from_case(case)
    ours = set(clip.state_dict())
    assert len(ours) == len([k for k in case["state_dict"] if not k.endswith("transformer.pos_emb")])
    assert clip.temperature.item() == pytest.approx(case["state_dict"]["temperature"].item())


def test_pair_scores_match_reference_without_mask(case):
    clip, inputs = model_from_case(case), case["inputs"]
    scores = clip(inputs["text"], inputs["images"])
    torch.testing.assert_close(scores, case["outputs"]["scores"], atol=1e-5, rtol=0)


def test_pair_scores_match_reference_with_text_mask(case):
    clip, inputs = model_from_case(case), case["inputs"]
    scores = clip(inputs["text"], inputs["images"], text_mask=inputs["text_mask"])
    torch.testing.assert_close(scores, case["outputs"]["scores_masked"], atol=1e-5, rtol=0)


def test_text_shorter_than_text_seq_len_matches_reference(case):
    clip, inputs = model_from_case(case), case["inputs"]
    scores = clip(inputs["text"][:, : inputs["short_len"]], inputs["images"])
    torch.testing.assert_close(scores, case["outputs"]["scores_short"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "text_mask"])
def test_contrastive_loss_matches_reference(case, masked):
    clip, inputs = model_from_case(case), case["inputs"]
    mask = inputs["text_mask"] if masked else None
    loss = clip(inputs["text"], inputs["images"], text_mask=mask, return_loss=True)
    expected = case["outputs"]["loss_masked" if masked else "loss"]
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "text_mask"])
def test_similarity_matrix_matches_reference_on_every_pair(case, masked):
    clip, inputs = model_from_case(case), case["inputs"]
    mask = inputs["text_mask"] if masked else None
    sim = clip.similarity(inputs["text"], inputs["images"], text_mask=mask)
    expected = case["outputs"]["similarity_masked" if masked else "similarity"]
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=0)


def test_load_dalle_pytorch_clip_reads_a_torch_saved_state_dict_file(tmp_path):
    case = load_case(committed_cases("clip_")[CASE_NAMES[0]])
    path = tmp_path / "clip.pt"
    torch.save(case["state_dict"], path)
    clip = load_dalle_pytorch_clip(path, **case["config"])
    assert not clip.training
    scores = clip(case["inputs"]["text"], case["inputs"]["images"])
    torch.testing.assert_close(scores, case["outputs"]["scores"], atol=1e-5, rtol=0)


class _NotWeights:
    """A pickled object that weights_only loading must refuse to rebuild."""


def test_load_dalle_pytorch_clip_refuses_files_that_need_unpickling_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": _NotWeights()}, path)
    with pytest.raises(ValueError, match="weights only"):
        load_dalle_pytorch_clip(path, **TINY)


# --- scoring properties -------------------------------------------------------------------------------------


def test_similarity_diagonal_equals_pair_scores():
    clip, text, images = tiny_clip(), random_text(4), random_images(4)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 6, 3, 1])[:, None]
    sim = clip.similarity(text, images, text_mask=mask)
    assert sim.shape == (4, 4)
    torch.testing.assert_close(sim.diagonal(), clip(text, images, text_mask=mask), atol=1e-6, rtol=0)


def test_similarity_accepts_different_text_and_image_batch_sizes():
    clip = tiny_clip()
    sim = clip.similarity(random_text(2), random_images(5))
    assert sim.shape == (2, 5)


def test_embeddings_are_unit_norm_and_scores_are_scaled_cosines():
    clip, text, images = tiny_clip(), random_text(3), random_images(3)
    with torch.no_grad():
        clip.temperature.fill_(0.5)
    t, i = clip.embed_text(text), clip.embed_image(images)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(i.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    expected = F.cosine_similarity(t, i, dim=-1) * torch.tensor(0.5).exp()
    torch.testing.assert_close(clip(text, images), expected, atol=1e-6, rtol=0)


def test_masked_padding_ids_do_not_change_scores():
    clip, images = tiny_clip(), random_images(2)
    text = random_text(2)
    mask = torch.arange(8)[None, :] < torch.tensor([5, 2])[:, None]
    padded_zero, padded_other = text.masked_fill(~mask, 0), text.masked_fill(~mask, 7)
    a = clip(padded_zero, images, text_mask=mask)
    b = clip(padded_other, images, text_mask=mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(clip(padded_zero, images), clip(padded_other, images), atol=1e-4)


def test_loss_is_the_mean_of_both_directions_and_batch_order_free():
    clip, text, images = tiny_clip(), random_text(4), random_images(4)
    sim = clip.similarity(text, images)
    labels = torch.arange(4)
    text_to_image, image_to_text = F.cross_entropy(sim, labels), F.cross_entropy(sim.t(), labels)
    assert not torch.allclose(text_to_image, image_to_text, atol=1e-4)  # the two directions differ ...
    loss = clip(text, images, return_loss=True)
    torch.testing.assert_close(loss, (text_to_image + image_to_text) / 2, atol=1e-6, rtol=0)  # ... and both count
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(clip(text[perm], images[perm], return_loss=True), loss, atol=1e-6, rtol=0)


def test_training_on_a_toy_task_lowers_loss_and_matches_pairs():
    torch.manual_seed(0)
    clip = tiny_clip(visual_heads=1)
    text = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0],
                         [7, 8, 9, 0, 0, 0, 0, 0], [10, 11, 12, 13, 14, 15, 0, 0]])
    mask = text != 0
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    images = colours[:, :, None, None].expand(4, 3, 8, 8).contiguous()
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    first = clip(text, images, text_mask=mask, return_loss=True).item()
    for _ in range(40):
        opt.zero_grad()
        clip(text, images, text_mask=mask, return_loss=True).backward()
        opt.step()
    last = clip(text, images, text_mask=mask, return_loss=True).item()
    assert last < 0.5 * first, (first, last)
    sim = clip.similarity(text, images, text_mask=mask)
    assert torch.equal(sim.argmax(dim=1), torch.arange(4)) and torch.equal(sim.argmax(dim=0), torch.arange(4))


# --- reranking ----------------------------------------------------------------------------------------------


def test_rerank_picks_the_highest_scoring_candidate_per_caption():
    clip, text = tiny_clip(), random_text(2)
    candidates = torch.rand(2, 5, 3, 8, 8)
    expected = torch.stack([clip(text[i].expand(5, -1), candidates[i]) for i in range(2)]).detach()  # (2, 5)
    result = clip.rerank(text, candidates)
    assert isinstance(result, RerankResult)
    assert result.images.shape == (2, 1, 3, 8, 8) and result.scores.shape == (2, 1)
    assert torch.equal(result.indices[:, 0], expected.argmax(dim=1))
    torch.testing.assert_close(result.scores[:, 0], expected.max(dim=1).values, atol=1e-6, rtol=0)
    assert torch.equal(result.images[:, 0], candidates[torch.arange(2), expected.argmax(dim=1)])


def test_rerank_top_k_is_sorted_best_first_and_restores_training_mode():
    clip, text, candidates = tiny_clip(), random_text(2), torch.rand(2, 4, 3, 8, 8)
    clip.train()
    result = clip.rerank(text, candidates, top=3)
    assert clip.training
    assert result.indices.shape == (2, 3) and result.images.shape == (2, 3, 3, 8, 8)
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all())
    assert len(set(result.indices[0].tolist())) == 3
    assert torch.equal(result.images[1, 2], candidates[1, result.indices[1, 2]])


# --- validation ---------------------------------------------------------------------------------------------

GOOD_TEXT, GOOD_IMAGES = torch.ones(2, 8, dtype=torch.long), torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize("text, images, error, match", [
    (GOOD_TEXT.float(), GOOD_IMAGES, TypeError, r"integer tensor .* got dtype torch.float32"),
    ([[1, 2]], GOOD_IMAGES, TypeError, "torch.Tensor of token ids, got list"),
    (GOOD_TEXT * 40, GOOD_IMAGES, ValueError, r"\[0, 40\), got values in \[40, 40\]"),
    (GOOD_TEXT - 2, GOOD_IMAGES, ValueError, r"\[0, 40\), got values in \[-1, -1\]"),
    (torch.ones(2, 9, dtype=torch.long), GOOD_IMAGES, ValueError, "text_seq_len=8 tokens, got 9"),
    (torch.ones(2, 0, dtype=torch.long), GOOD_IMAGES, ValueError, "between 1 and text_seq_len=8 tokens, got 0"),
    (torch.ones(8, dtype=torch.long), GOOD_IMAGES, ValueError, r"2 dimensions .* got shape \(8,\)"),
    (GOOD_TEXT, torch.rand(2, 3, 16, 16), ValueError, r"\(batch, 3, 8, 8\), got \(2, 3, 16, 16\)"),
    (GOOD_TEXT, torch.rand(2, 1, 8, 8), ValueError, r"\(batch, 3, 8, 8\), got \(2, 1, 8, 8\)"),
    (GOOD_TEXT, torch.ones(2, 3, 8, 8, dtype=torch.uint8), TypeError, "floating-point .* torch.uint8"),
    (GOOD_TEXT, torch.rand(3, 3, 8, 8), ValueError, "batch sizes must match: text has 2, image has 3"),
])
def test_bad_inputs_raise_informative_errors(text, images, error, match):
    with pytest.raises(error, match=match):
        tiny_clip()(text, images)


@pytest.mark.parametrize("mask, error, match", [
    (torch.ones(2, 8), TypeError, "bool tensor .* got torch.float32"),
    (torch.ones(2, 7, dtype=torch.bool), ValueError, r"shape \(2, 8\), got \(2, 7\)"),
    (torch.tensor([[True] * 8, [False] * 8]), ValueError, "no unmasked token"),
])
def test_bad_text_masks_raise_informative_errors(mask, error, match):
    with pytest.raises(error, match=match):
        tiny_clip()(GOOD_TEXT, GOOD_IMAGES, text_mask=mask)


@pytest.mark.parametrize("images, top, match", [
    (torch.rand(2, 3, 8, 8), 1, r"\(batch, candidates, 3, 8, 8\), got \(2, 3, 8, 8\)"),
    (torch.rand(2, 4, 3, 8, 8), 5, r"int in \[1, 4\] .* got 5"),
    (torch.rand(2, 4, 3, 8, 8), 0, r"int in \[1, 4\] .* got 0"),
    (torch.rand(3, 4, 3, 8, 8), 1, "batch sizes must match: text has 2, images has 3"),
    (torch.rand(2, 4, 3, 4, 4), 1, r"each candidate.*\(batch, 3, 8, 8\)"),
])
def test_bad_rerank_arguments_raise_informative_errors(images, top, match):
    with pytest.raises(ValueError, match=match):
        tiny_clip().rerank(GOOD_TEXT, images, top=top)


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match=r"visual_image_size \(10\) must be divisible by visual_patch_size \(4\)"):
        tiny_clip(visual_image_size=10)


# --- dtype, config ------------------------------------------------------------------------------------------


def test_bf16_autocast_scores_loss_and_backward_run_on_cpu():
    clip, text, images = tiny_clip(), random_text(3), random_images(3)
    mask = text > 5
    mask[:, 0] = True
    reference = clip(text, images, text_mask=mask).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = clip(text, images, text_mask=mask)
        loss = clip(text, images, text_mask=mask, return_loss=True)
        ranked = clip.rerank(text, images[:, None].expand(3, 2, 3, 8, 8))
    assert torch.isfinite(scores).all() and torch.isfinite(loss)
    torch.testing.assert_close(scores.float(), reference, atol=0.1, rtol=0)
    loss.backward()
    assert clip.text_emb.weight.grad is not None and torch.isfinite(clip.temperature.grad)
    assert ranked.images.dtype == images.dtype


def test_defaults_match_reference():
    params = inspect.signature(CLIP.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for k, p in params.items() if k != "self")
    assert defaults == dict(dim_text=512, dim_image=512, dim_latent=512, num_text_tokens=10000, text_enc_depth=6,
                            text_seq_len=256, text_heads=8, num_visual_tokens=512, visual_enc_depth=6,
                            visual_heads=8, visual_image_size=256, visual_patch_size=32, channels=3)


def test_rebuild_from_json_config_gives_identical_outputs():
    clip = tiny_clip(channels=1, visual_patch_size=2)
    rebuilt = CLIP(**json.loads(json.dumps(clip.config)))
    rebuilt.load_state_dict(clip.state_dict(), strict=True)
    assert rebuilt.config == clip.config and rebuilt.config["channels"] == 1
    text, images = random_text(2), torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt(text, images), clip(text, images), atol=0, rtol=0)
