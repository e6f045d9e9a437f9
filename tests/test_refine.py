"""CLIP-guided refinement (`dalle_core.refine`) and the continuous-latent protocol of every image tokenizer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dalle_core import CLIP, VQVAE, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE, clip_refine
from dalle_core.models.vae import clamp_with_grad
from dalle_core.refine import clip_score, make_cutouts
import helpers

one_thread = helpers.one_thread  # autouse fixture: one torch thread
SIZE = 16
DDCONFIG = dict(double_z=False, z_channels=4, resolution=SIZE, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
OPENAI = {"encoder": {"n_hid": 8, "n_blk_per_group": 1, "input_channels": 3, "vocab_size": 32},
          "decoder": {"n_init": 8, "n_hid": 8, "n_blk_per_group": 1, "output_channels": 3, "vocab_size": 32}}
VQVAE_SIZES = dict(image_size=SIZE, num_layers=2, num_tokens=32, codebook_dim=8, hidden_dim=16)
TOKENIZERS = {
    "dvae": lambda: DiscreteVAE(image_size=SIZE, num_layers=2, num_tokens=32, codebook_dim=8, hidden_dim=16),
    "vq": lambda: VQVAE(**VQVAE_SIZES, quantizer="vq", kmeans_init=False),
    "fsq": lambda: VQVAE(**VQVAE_SIZES, quantizer="fsq"),
    "lfq": lambda: VQVAE(**VQVAE_SIZES, quantizer="lfq"),
    "vqgan": lambda: VQGanVAE(architecture={"kind": "vq", "embed_dim": 4, "n_embed": 32, "ddconfig": DDCONFIG},
                              image_size=SIZE),
    "vqgan_gumbel": lambda: VQGanVAE(architecture={"kind": "gumbel", "embed_dim": 4, "n_embed": 32,
                                                   "ddconfig": DDCONFIG}, image_size=SIZE),
    "openai": lambda: OpenAIDiscreteVAE(image_size=SIZE, architecture=OPENAI),
}
KINDS = list(TOKENIZERS)
CODEBOOKS = {"dvae": lambda vae: vae.codebook.weight, "vqgan": lambda vae: vae.model.quantize.codebook.weight,
             "vqgan_gumbel": lambda vae: vae.model.quantize.codebook.weight,
             "openai": lambda vae: vae.decoder.blocks.input.weight}
RED, BLUE = 1, 2  # the two captions `ColourCLIP` understands


def tokenizer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return TOKENIZERS[kind]().eval()


class ColourCLIP(nn.Module):
    """A CLIP whose score is a known function: caption RED scores an image's mean redness (red minus the mean of
    green and blue), caption BLUE its blueness, times a learnable scale (a weight that must not change)."""

    channels = 3

    def __init__(self, visual_image_size: int = SIZE):
        super().__init__()
        self.visual_image_size = visual_image_size
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.seen_sizes = set()

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_mask=None) -> torch.Tensor:
        self.seen_sizes.add(tuple(image.shape[-2:]))
        r, g, b = image.unbind(1)
        redness, blueness = (r - (g + b) / 2).mean((1, 2)), (b - (r + g) / 2).mean((1, 2))
        return self.scale * torch.where(text[:, 0] == RED, redness, blueness)


def codes_of(vae: nn.Module, n: int = 4) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randint(0, vae.num_tokens, (n, vae.fmap_size ** 2))


# --- the latent protocol ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_the_latents_of_codes_is_decoding_the_codes(kind):
    vae = tokenizer(kind)
    codes = codes_of(vae)
    latents = vae.codes_to_latents(codes)
    assert latents.ndim == 4 and latents.shape[0] == 4 and latents.shape[2:] == (vae.fmap_size, vae.fmap_size)
    assert torch.equal(vae.latents_to_codes(latents), codes)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode_latents(latents), vae.decode(codes), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_any_latents_decode_as_the_codes_they_quantise_to(kind):
    vae = tokenizer(kind)
    latents = vae.codes_to_latents(codes_of(vae))
    moved = latents + torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)) * latents.std()
    codes = vae.latents_to_codes(moved)
    assert codes.dtype == torch.long and int(codes.min()) >= 0 and int(codes.max()) < vae.num_tokens
    assert not torch.equal(codes, codes_of(vae))  # the noise moved some codes
    with torch.no_grad():
        torch.testing.assert_close(vae.decode_latents(moved), vae.decode(codes), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_latents_and_not_the_codebook(kind):
    vae = tokenizer(kind).requires_grad_(True)
    latents = vae.codes_to_latents(codes_of(vae)).detach().requires_grad_(True)
    images = vae.decode_latents(latents)
    assert images.shape == (4, 3, SIZE, SIZE) and 0 <= float(images.detach().min()) <= float(images.detach().max()) <= 1
    images[:, 0].mean().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
    codebook = CODEBOOKS.get(kind)  # VQ's is a buffer; FSQ and LFQ have none
    if codebook is not None:
        grad = codebook(vae).grad
        assert grad is None or not grad.any()


@pytest.mark.parametrize("kind", ["dvae", "fsq"])
def test_latents_of_the_wrong_shape_or_with_nan_are_refused(kind):
    vae = tokenizer(kind)
    latents = vae.codes_to_latents(codes_of(vae))
    with pytest.raises(ValueError, match="latents must have shape"):
        vae.decode_latents(latents[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        vae.latents_to_codes(latents.clone().fill_(float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        vae.decode_latents(latents.long())
    with pytest.raises(ValueError, match="codes per image"):
        vae.codes_to_latents(codes_of(vae)[:, :3])


def test_clamp_with_grad_passes_gradients_that_pull_values_back_into_range():
    x = torch.tensor([-0.5, 0.5, 1.5, 1.5], requires_grad=True)
    y = clamp_with_grad(x, 0.0, 1.0)
    assert torch.equal(y, x.detach().clamp(0, 1))
    y.backward(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # descent moves x by -grad: x[2] up (out), x[3] down (in)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


# --- augmentations ---------------------------------------------------------------------------------------------


def test_cutouts_start_with_the_whole_image_and_are_reproducible():
    images = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    plain = make_cutouts(images, 8, 5, flip=False, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert plain.shape == (10, 3, 8, 8)
    torch.testing.assert_close(plain[:2], nn.functional.adaptive_avg_pool2d(images, 8))
    again = make_cutouts(images, 8, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, make_cutouts(images, 8, 5, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(again, make_cutouts(images, 8, 5, generator=torch.Generator().manual_seed(2)))
    assert 0 <= float(again.detach().min()) <= float(again.detach().max()) <= 1
    up = make_cutouts(images, 32, 3, generator=torch.Generator().manual_seed(0))  # crops upsampled to CLIP's size
    assert up.shape == (6, 3, 32, 32)
    up.sum().backward()
    assert images.grad.abs().sum() > 0


# --- clip_refine -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_refinement_raises_the_score_of_a_known_clip_for_every_tokenizer(kind):
    vae, clip = tokenizer(kind), ColourCLIP()
    codes = codes_of(vae)
    text = torch.tensor([[RED, 5], [BLUE, 5], [RED, 0], [BLUE, 7]])
    before = clip_score(clip, text, vae.decode(codes))
    images, refined = clip_refine(vae, clip, text, codes, steps=30, lr=0.3, cutouts=4,
                                  generator=torch.Generator().manual_seed(0), return_codes=True)
    after = clip_score(clip, text, images)
    # untrained decoders vary little with their codes: the gain is measured against the spread of the scores of
    # random code grids (it is 4 to 10 times that spread here)
    with torch.no_grad():
        spread = clip_score(clip, torch.tensor([[RED]]), vae.decode(torch.randint(0, vae.num_tokens, (64, codes.shape[1])))).std()
    assert bool((after > before).all()), (before, after)
    assert float((after - before).mean()) > 2 * float(spread), (before, after, spread)
    # the result is the decoding of a valid code grid, and the input codes are untouched
    assert refined.shape == codes.shape and refined.dtype == torch.long
    assert int(refined.min()) >= 0 and int(refined.max()) < vae.num_tokens
    assert torch.equal(images, vae.decode(refined))
    assert torch.equal(codes, codes_of(vae))


def test_refinement_raises_a_real_clips_score_from_images():
    vae = tokenizer("dvae")
    torch.manual_seed(0)
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=10, text_enc_depth=1, text_seq_len=4,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=SIZE, visual_patch_size=4).eval()
    text = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0], [6, 0, 0, 0]])
    images = torch.rand(3, 3, SIZE, SIZE)
    kept = images.clone()
    with torch.no_grad():
        start = vae.decode(vae.get_codebook_indices(images))
    before = clip_score(clip, text, start, text_mask=text != 0)
    refined = clip_refine(vae, clip, text, images, steps=25, lr=0.3, cutouts=4, text_mask=text != 0,
                          generator=torch.Generator().manual_seed(0))
    after = clip_score(clip, text, refined, text_mask=text != 0)
    assert float(after.mean()) > float(before.mean()), (before, after)
    assert torch.equal(images, kept)


def test_keeping_the_best_step_never_lowers_a_real_clips_score():
    vae = tokenizer("vqgan")
    torch.manual_seed(1)
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=10, text_enc_depth=1, text_seq_len=4,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=8, visual_patch_size=4).eval()
    text, codes = torch.tensor([[1, 2, 3, 4]]), codes_of(vae, 6)
    before = clip_score(clip, text, vae.decode(codes))
    settings = dict(steps=12, lr=1.0, cutouts=2, noise=0.2)
    last = clip_refine(vae, clip, text, codes, generator=torch.Generator().manual_seed(0), **settings)
    best = clip_refine(vae, clip, text, codes, keep_best=True, generator=torch.Generator().manual_seed(0), **settings)
    last, best = clip_score(clip, text, last), clip_score(clip, text, best)
    # scored in the loop on `decode_latents`, equal to `decode` within float rounding
    assert bool((best >= before - 1e-5).all()) and bool((best >= last - 1e-5).all()), (before, last, best)
    assert bool((best > before + 1e-3).any())


def test_no_weight_mode_or_flag_changes_and_the_same_seed_gives_the_same_result():
    vae, clip = tokenizer("vq"), ColourCLIP().eval()
    vae.train()  # modes and requires_grad flags as the caller left them are restored
    vae.decoder[0][0].weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in [*vae.named_parameters(), *clip.named_parameters()]}
    state = {k: v.clone() for k, v in [*vae.state_dict().items(), *clip.state_dict().items()]}
    codes = codes_of(vae)
    text = torch.tensor([[RED]])  # one caption for every image
    run = [clip_refine(vae, clip, text, codes, steps=4, lr=0.3, cutouts=2, generator=torch.Generator().manual_seed(5))
           for _ in range(2)]
    assert torch.equal(run[0], run[1])
    assert vae.training and not clip.training
    assert flags == {n: p.requires_grad for n, p in [*vae.named_parameters(), *clip.named_parameters()]}
    after = {**vae.state_dict(), **clip.state_dict()}
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in [*vae.parameters(), *clip.parameters()])


@pytest.mark.parametrize("kind", ["dvae", "openai"])
def test_zero_steps_decode_the_input_unchanged(kind):
    vae = tokenizer(kind)
    codes = codes_of(vae)
    images, same = clip_refine(vae, ColourCLIP(), torch.tensor([[RED]]), codes, steps=0, return_codes=True)
    assert torch.equal(same, codes) and torch.equal(images, vae.decode(codes))
    pictures = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(clip_refine(vae, ColourCLIP(), torch.tensor([[RED]]), pictures, steps=0),
                       vae.decode(vae.get_codebook_indices(pictures)))


def test_a_clip_of_another_image_size_sees_views_resized_to_its_own():
    vae, clip = tokenizer("dvae"), ColourCLIP(visual_image_size=8)
    out = clip_refine(vae, clip, torch.tensor([[RED]]), codes_of(vae, 2), steps=2, cutouts=3,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, SIZE, SIZE) and clip.seen_sizes == {(8, 8)}
    assert clip_score(clip, torch.tensor([[RED]]), out).shape == (2,)


def test_bad_input_is_refused_with_a_clear_error():
    vae, clip = tokenizer("dvae"), ColourCLIP()
    codes, text = codes_of(vae, 2), torch.tensor([[RED], [BLUE]])
    images = torch.rand(2, 3, SIZE, SIZE)
    cases = [
        (dict(images=images.clone().fill_(float("nan"))), ValueError, "NaN"),
        (dict(images=images * 255), ValueError, r"\[0, 1\]"),
        (dict(images=torch.rand(2, 3, 8, 8)), ValueError, r"shape \(batch, 3, 16, 16\)"),
        (dict(images=codes[:, :5]), ValueError, "16 per image"),
        (dict(images=codes + 100), ValueError, r"ids must lie in \[0, 32\)"),
        (dict(images=codes[0]), ValueError, "integer codes"),
        (dict(images=codes[:0]), ValueError, "empty batch"),
        (dict(images=[[1, 2]]), TypeError, "must be a tensor"),
        (dict(text=torch.tensor([[RED], [BLUE], [RED]])), ValueError, "3 captions but there are 2 images"),
        (dict(text=text.float()), TypeError, "integer tensor"),
        (dict(text_mask=torch.ones(2, 2, dtype=torch.bool)), ValueError, "text_mask must have the text's shape"),
        (dict(text_mask=torch.ones(2, 1)), TypeError, "bool tensor"),
        (dict(steps=-1), ValueError, "steps must be an int >= 0"),
        (dict(steps=2.5), TypeError, "steps must be an int"),
        (dict(lr=0.0), ValueError, "lr must be in"),
        (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
        (dict(cutouts=0), ValueError, "cutouts must be an int >= 1"),
        (dict(cut_min=1.5), ValueError, "cut_min must be in"),
        (dict(noise=-0.1), ValueError, "noise must be in"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(keep_best=1), TypeError, "keep_best must be True or False"),
        (dict(vae=nn.Linear(2, 2)), TypeError, "Linear lacks codes_to_latents"),
        (dict(clip=nn.Linear(2, 2)), TypeError, "visual_image_size"),
    ]
    for change, error, message in cases:
        args = {**dict(vae=vae, clip=clip, text=text, images=codes, steps=1), **change}
        with pytest.raises(error, match=message):
            clip_refine(args.pop("vae"), args.pop("clip"), args.pop("text"), args.pop("images"), **args)
    grey = ColourCLIP()
    grey.channels = 1
    with pytest.raises(ValueError, match="clip takes 1-channel images but the tokenizer makes 3-channel"):
        clip_refine(vae, grey, text, codes)
    assert all(p.requires_grad for p in vae.parameters())  # an error on the way leaves the flags as they were
