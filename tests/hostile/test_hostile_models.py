"""Hostile input to the models (DiscreteVAE, DALLE, CLIP) and the sampling functions: rotary tables that must
survive every dtype and device move, non-finite and out-of-range images, bad sampling parameters, bad
constructor sizes (absurd buffer sizes included) and inputs that used to fail with raw torch errors.

108 test cases in all (parametrised cases counted one by one; `test_hostile_counts.py` keeps the
number true).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import dalle_core.models.dalle_sampling as dalle_module
import dalle_core.models.transformer as transformer_module
from dalle_core import CLIP, DALLE, DiscreteVAE
from dalle_core.sampling import gumbel_sample, sample_logits, top_k, top_p
from dalle_core.tokenizers import ByteTokenizer
from dalle_core.models.transformer import Transformer, buffer_bytes
from dalle_core.utils import MAX_BUFFER_BYTES

TEXT_LEN, VOCAB, NUM_CODES = 6, 20, 16
ATTN = {"full": ("full",), "axial_row": ("axial_row",), "axial_col": ("axial_col",),
        "conv_like": ("conv_like",), "mix": ("full", "axial_row", "axial_col", "conv_like")}


def make_vae(**kwargs) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(**{**dict(image_size=16, num_layers=2, num_tokens=NUM_CODES, codebook_dim=16, hidden_dim=8),
                          **kwargs})


def make_dalle(attn_types=("full",), **kwargs) -> DALLE:
    vae = make_vae()
    dalle = DALLE(**{**dict(dim=32, vae=vae, depth=2, heads=2, dim_head=16, text_seq_len=TEXT_LEN,
                            num_text_tokens=VOCAB, attn_types=attn_types), **kwargs})
    with torch.no_grad():  # LayerScale starts at 0.1: widen it so that the rotary table shapes the output
        for block in dalle.transformer.layers:
            block.attn_scale.uniform_(0.5, 1.0)
            block.ff_scale.uniform_(0.5, 1.0)
    return dalle.eval()


def make_clip(**kwargs) -> CLIP:
    return CLIP(**{**dict(dim_text=16, dim_image=16, dim_latent=16, num_text_tokens=VOCAB, text_enc_depth=1,
                          text_seq_len=TEXT_LEN, text_heads=2, visual_enc_depth=1, visual_heads=2,
                          visual_image_size=16, visual_patch_size=8), **kwargs})


def text(batch: int = 2) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, TEXT_LEN), generator=torch.Generator().manual_seed(1))


def codes(batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, NUM_CODES, (batch, length), generator=torch.Generator().manual_seed(2))


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(3))


BF16_ATOL = 0.04  # logits of size ~2 after bf16 weights and bf16 arithmetic; a corrupted rotary table is off by ~0.1


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, atol: float = BF16_ATOL) -> None:
    """Compare the real logits (the other modality's entries hold each dtype's own lowest value)."""
    real = want > -1e30
    assert torch.equal(got.float() > -1e30, real)
    torch.testing.assert_close(got.float()[real], want.float()[real], atol=atol, rtol=0)


# --- rotary tables and dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTN))
def test_bf16_checkpoint_reloads_with_the_fp32_logits(name, tmp_path: Path):
    dalle = make_dalle(ATTN[name])
    t, c = text(), codes()
    with torch.no_grad():
        want = dalle(t, c)
        copy.deepcopy(dalle).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
        loaded = DALLE.from_pretrained(tmp_path / "bf16")
        assert next(loaded.parameters()).dtype == torch.bfloat16
        assert loaded.transformer.rotary.dtype == torch.complex64
        assert_logits_close(loaded(t, c), want)


MOVES = {
    "to_bfloat16": lambda m: m.to(torch.bfloat16),
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "to_device": lambda m: m.to(torch.device("cpu")),
    "half_then_float": lambda m: m.half().float(),
}


@pytest.mark.parametrize("move", sorted(MOVES))
def test_rotary_table_is_unchanged_by_dtype_and_device_moves(move):
    dalle = make_dalle(ATTN["mix"])
    table = dalle.transformer.rotary.clone()
    MOVES[move](dalle)
    assert dalle.transformer.rotary.dtype == torch.complex64
    assert torch.equal(dalle.transformer.rotary, table)


def test_bf16_cached_decoding_equals_uncached():
    dalle = make_dalle(ATTN["mix"]).to(torch.bfloat16)
    t, c = text(), codes()
    with torch.no_grad():
        full = dalle(t, c)
        cache = dalle.make_cache(2)
        steps = [dalle(t, c[:, :0], cache=cache)]  # the prefill: every text position
        steps += [dalle(t, c[:, : j + 1], cache=cache) for j in range(c.shape[1] - 1)]
    assert_logits_close(torch.cat(steps, dim=1), full)
    seeded = dict(temperature=0.0, filter_thres=0.9)  # argmax: no draw to differ
    assert torch.equal(dalle.generate_image_codes(t, use_cache=True, **seeded),
                       dalle.generate_image_codes(t, use_cache=False, **seeded))


# --- non-finite and out-of-range images, wherever images enter -----------------------------------------------


def _bad_image(kind: str) -> torch.Tensor:
    x = images()
    if kind == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif kind == "inf":
        x[1, 2, 3, 4] = float("inf")
    elif kind == "range_0_255":
        x = x * 255
    elif kind == "int_dtype":
        x = (x * 255).to(torch.uint8)
    return x


BAD_IMAGES = {
    "nan": (ValueError, "NaN or infinite"),
    "inf": (ValueError, "NaN or infinite"),
    "range_0_255": (ValueError, r"values in \[0, 1\]"),
    "int_dtype": (TypeError, "floating-point"),
}
ENTRY_POINTS = {  # each names its image argument in the message
    "vae_forward": ("img", lambda x: make_vae()(x)),
    "vae_get_codebook_indices": ("img", lambda x: make_vae().get_codebook_indices(x)),
    "dalle_forward": ("image", lambda x: make_dalle()(text(), x)),
    "dalle_generate_images_img": ("img", lambda x: make_dalle().generate_images(text(), img=x)),
    "clip_forward": ("image", lambda x: make_clip()(text(), x)),
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_images_are_refused_where_they_enter(entry, kind):
    name, call = ENTRY_POINTS[entry]
    error, message = BAD_IMAGES[kind]
    with pytest.raises(error, match=rf"^{name} .*{message}"):
        call(_bad_image(kind))


# --- sampling parameters ------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
SAMPLING_CASES = {
    "generate_images-temperature_nan": ("generate_images", dict(temperature=NAN), ValueError, "temperature"),
    "generate_images-temperature_inf": ("generate_images", dict(temperature=INF), ValueError, "temperature"),
    "generate_images-temperature_negative": ("generate_images", dict(temperature=-1.0), ValueError, "temperature"),
    "generate_images-temperature_str": ("generate_images", dict(temperature="hot"), TypeError, "temperature"),
    "generate_images-cond_scale_nan": ("generate_images", dict(cond_scale=NAN), ValueError, "cond_scale"),
    "generate_images-cond_scale_inf": ("generate_images", dict(cond_scale=INF), ValueError, "cond_scale"),
    "generate_images-filter_thres_above_1": ("generate_images", dict(filter_thres=1.5), ValueError, "filter_thres"),
    "generate_images-filter_thres_negative": ("generate_images", dict(filter_thres=-0.1), ValueError, "filter_thres"),
    "generate_image_codes-temperature_nan": ("generate_image_codes", dict(temperature=NAN), ValueError, "temperature"),
    "generate_image_codes-cond_scale_nan": ("generate_image_codes", dict(cond_scale=NAN), ValueError, "cond_scale"),
    "generate_image_codes-filter_thres_nan": ("generate_image_codes", dict(filter_thres=NAN), ValueError,
                                              "filter_thres"),
    "generate_texts-temperature_nan": ("generate_texts", dict(temperature=NAN), ValueError, "temperature"),
    "generate_texts-temperature_negative": ("generate_texts", dict(temperature=-0.5), ValueError, "temperature"),
    "generate_texts-filter_thres_above_1": ("generate_texts", dict(filter_thres=2.0), ValueError, "filter_thres"),
    "generate_texts-top_p_zero": ("generate_texts", dict(top_p=0.0), ValueError, "top_p"),
    "sample_logits-temperature_nan": ("sample_logits", dict(temperature=NAN), ValueError, "temperature"),
    "sample_logits-filter_thres_above_1": ("sample_logits", dict(filter_thres=1.5), ValueError, "filter_thres"),
    "sample_logits-top_p_inf": ("sample_logits", dict(top_p_value=INF), ValueError, "top_p"),
    "gumbel_sample-temperature_nan": ("gumbel_sample", dict(temperature=NAN), ValueError, "temperature"),
    "gumbel_sample-temperature_inf": ("gumbel_sample", dict(temperature=INF), ValueError, "temperature"),
    "gumbel_sample-temperature_negative": ("gumbel_sample", dict(temperature=-1.0), ValueError, "temperature"),
    "gumbel_sample-temperature_str": ("gumbel_sample", dict(temperature="hot"), TypeError, "temperature"),
    "top_k-thres_nan": ("top_k", dict(thres=NAN), ValueError, "thres"),
    "top_k-thres_negative": ("top_k", dict(thres=-0.5), ValueError, "thres"),
    "top_k-thres_above_1": ("top_k", dict(thres=1.5), ValueError, "thres"),
    "top_p-p_nan": ("top_p", dict(p=NAN), ValueError, "p"),
    "top_p-p_zero": ("top_p", dict(p=0.0), ValueError, "p"),
    "top_p-p_above_1": ("top_p", dict(p=1.5), ValueError, "p"),
}


def _call_sampler(fn: str, kwargs: dict):
    logits = torch.randn(2, 10)
    if fn in ("generate_images", "generate_image_codes"):
        return getattr(make_dalle(), fn)(text(), **kwargs)
    if fn == "generate_texts":
        return make_dalle(num_text_tokens=ByteTokenizer().vocab_size).generate_texts(ByteTokenizer(), "ab", **kwargs)
    functions = {"sample_logits": sample_logits, "gumbel_sample": gumbel_sample, "top_k": top_k, "top_p": top_p}
    return functions[fn](logits, **kwargs)


@pytest.mark.parametrize("case", sorted(SAMPLING_CASES))
def test_bad_sampling_parameters_are_refused(case):
    fn, kwargs, error, name = SAMPLING_CASES[case]
    with pytest.raises(error, match=rf"^{name} must be"):
        _call_sampler(fn, kwargs)


def test_sampling_parameters_are_checked_once_per_call_not_per_token(monkeypatch):
    calls = []
    real = dalle_module.check_sampling_args
    monkeypatch.setattr(dalle_module, "check_sampling_args", lambda **kw: calls.append(kw) or real(**kw))
    make_dalle().generate_image_codes(text(), use_cache=True, cond_scale=2.0)
    assert len(calls) == 1


# --- constructor sizes --------------------------------------------------------------------------------------

CONSTRUCTOR_CASES = {
    "dalle-dim_negative": ("dalle", dict(dim=-8), ValueError, "dim"),
    "dalle-dim_str": ("dalle", dict(dim="32"), TypeError, "dim"),
    "dalle-text_seq_len_float": ("dalle", dict(text_seq_len=8.5), TypeError, "text_seq_len"),
    "dalle-depth_zero": ("dalle", dict(depth=0), ValueError, "depth"),
    "dalle-heads_zero": ("dalle", dict(heads=0), ValueError, "heads"),
    "dalle-dim_head_zero": ("dalle", dict(dim_head=0), ValueError, "dim_head"),
    "dalle-num_text_tokens_zero": ("dalle", dict(num_text_tokens=0), ValueError, "num_text_tokens"),
    "dalle-num_text_tokens_bool": ("dalle", dict(num_text_tokens=True), TypeError, "num_text_tokens"),
    "vae-image_size_zero": ("vae", dict(image_size=0), ValueError, "image_size"),
    "vae-num_tokens_float": ("vae", dict(num_tokens=2.5), TypeError, "num_tokens"),
    "vae-hidden_dim_zero": ("vae", dict(hidden_dim=0), ValueError, "hidden_dim"),
    "vae-codebook_dim_negative": ("vae", dict(codebook_dim=-1), ValueError, "codebook_dim"),
    "vae-temperature_nan": ("vae", dict(temperature=NAN), ValueError, "temperature"),
    "clip-dim_text_zero": ("clip", dict(dim_text=0), ValueError, "dim_text"),
    "clip-text_seq_len_float": ("clip", dict(text_seq_len=2.5), TypeError, "text_seq_len"),
    "clip-visual_heads_zero": ("clip", dict(visual_heads=0), ValueError, "visual_heads"),
    "clip-visual_patch_size_zero": ("clip", dict(visual_patch_size=0), ValueError, "visual_patch_size"),
    "transformer-seq_len_zero": ("transformer", dict(seq_len=0), ValueError, "seq_len"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTOR_CASES))
def test_bad_constructor_sizes_name_the_argument(case):
    model, kwargs, error, name = CONSTRUCTOR_CASES[case]
    build = {"dalle": make_dalle, "vae": make_vae, "clip": make_clip,
             "transformer": lambda **kw: Transformer(**{**dict(dim=16, depth=1, seq_len=8, dim_head=16,
                                                                rotary_emb=False), **kw})}[model]
    with pytest.raises(error, match=rf"^{name} must be"):
        build(**kwargs)


def test_absurd_image_grid_is_refused_before_building_its_masks(monkeypatch):
    vae = make_vae(image_size=2**16, num_layers=3)  # an 8192 x 8192 grid: 67 million image positions

    def no_mask(*args, **kwargs):
        raise AssertionError("a mask was built before the sizes were checked")

    monkeypatch.setattr(transformer_module, "attention_mask", no_mask)
    expected = r"^sequence too long: 7 text positions and a 8192x8192 image grid \(67108871 positions in all\)"
    with pytest.raises(ValueError, match=expected):
        DALLE(dim=32, vae=vae, depth=2, heads=2, dim_head=16, text_seq_len=TEXT_LEN, num_text_tokens=VOCAB)


def test_conv_kernel_wider_than_the_grid_is_refused_before_its_mask_is_built():
    with pytest.raises(ValueError, match=r"^conv_kernel_size=1000001 is wider than the image grid"):
        make_dalle(attn_types=("conv_like",), conv_kernel_size=1_000_001)


def test_absurd_sequence_is_refused_by_the_transformer_itself():
    expected = r"^sequence too long: 1000000 text positions .*\(1000000 positions in all\) need .* GiB"
    with pytest.raises(ValueError, match=expected):
        Transformer(dim=16, depth=1, seq_len=1_000_000, dim_head=16, rotary_emb=False)


def test_large_legitimate_configuration_is_within_the_limit():
    need = buffer_bytes(text_positions=257, fmap_size=64, dim=1024, dim_head=64, rotary=True, shift=True,
                        attn_types=("full", "axial_row", "axial_col", "conv_like"))
    assert need < MAX_BUFFER_BYTES


# --- errors that used to be raw torch errors, now clear -----------------------------------------------------


def test_float64_images_into_a_float32_vae_are_cast():
    vae = make_vae()
    torch.testing.assert_close(vae.get_codebook_indices(images().double()), vae.get_codebook_indices(images()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_images_into_a_low_precision_vae_are_cast(dtype):
    vae = make_vae().to(dtype)
    assert vae(images()).dtype == dtype


def test_float32_images_into_a_bf16_dalle_and_clip_work():
    dalle = make_dalle().bfloat16()
    assert dalle(text(), images()).dtype == torch.bfloat16
    assert make_clip().bfloat16()(text(), images()).shape == (2,)


CLEAR_ERRORS = {
    "make_cache_negative": (lambda d: d.make_cache(-1), ValueError, "^batch must be"),
    "make_cache_zero": (lambda d: d.make_cache(0), ValueError, "^batch must be"),
    "make_cache_float": (lambda d: d.make_cache(2.5), TypeError, "^batch must be an int"),
    "num_init_img_tokens_float": (lambda d: d.generate_images(text(), img=images(), num_init_img_tokens=2.5),
                                  TypeError, "^num_init_img_tokens must be an int"),
    "num_init_img_tokens_without_img": (lambda d: d.generate_images(text(), num_init_img_tokens=4), ValueError,
                                        "^num_init_img_tokens .* no img was given"),
    "img_codes_too_short": (lambda d: d.generate_images(text(), img=codes(length=3), num_init_img_tokens=5),
                            ValueError, "^img holds 3 codes per image but num_init_img_tokens=5"),
    "img_codes_3d": (lambda d: d.generate_images(text(), img=codes()[:, None]), ValueError,
                     "^img codes must have 2 dimensions"),
    "img_float_codes": (lambda d: d.generate_images(text(), img=codes().float()), ValueError,
                        r"^img must be images \(batch, 3, 16, 16\) or integer codes"),
    "clip_not_a_module": (lambda d: d.generate_images(text(), clip="clip"), TypeError, "^clip must be a CLIP module"),
    "tokenizer_none": (lambda d: d.generate_texts(None), TypeError, "^tokenizer must have encode"),
    "text_prompt_not_str": (lambda d: d.generate_texts(ByteTokenizer(), 123), TypeError, "^text must be a string"),
    "dalle_empty_text": (lambda d: d(text()[:0]), ValueError, "^text is an empty batch"),
    "dalle_empty_images": (lambda d: d(text(), images()[:0]), ValueError,
                           "batch sizes must match: text has 2, image has 0"),
    "generate_empty_text": (lambda d: d.generate_images(text()[:0]), ValueError, "^text is an empty batch"),
    "vae_empty_images": (lambda d: d.vae(images()[:0]), ValueError, "^img is an empty batch"),
    "clip_empty_batch": (lambda d: make_clip()(text()[:0], images()[:0]), ValueError, "^text is an empty batch"),
    "dalle_meta_text": (lambda d: d(text().to("meta")), ValueError, "^text is on the 'meta' device"),
    "vae_meta_images": (lambda d: d.vae(images().to("meta")), ValueError, "^img is on the 'meta' device"),
    "clip_meta_text": (lambda d: make_clip()(text().to("meta"), images()), ValueError, "^text is on the 'meta' device"),
    "dalle_batch_mismatch": (lambda d: d(text(2), images(3)), ValueError,
                             "batch sizes must match: text has 2, image has 3"),
    "generate_img_batch_mismatch": (lambda d: d.generate_images(text(2), img=images(3)), ValueError,
                                    "batch sizes must match: text has 2, img has 3"),
    "clip_batch_mismatch": (lambda d: make_clip()(text(2), images(3)), ValueError,
                            "batch sizes must match: text has 2, image has 3"),
}


@pytest.mark.parametrize("case", sorted(CLEAR_ERRORS))
def test_unhelpful_errors_are_now_clear(case):
    call, error, message = CLEAR_ERRORS[case]
    with pytest.raises(error, match=message):
        call(make_dalle())
