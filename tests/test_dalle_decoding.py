"""The one-position decoding step (static shapes) equals the full forward for every model variant; the
compiled step (torch.compile) equals the eager one; CUDA graphs where a GPU is present."""
from __future__ import annotations

import pytest
import torch

from helpers import ATTN_CASES, TEXT_LEN, captions, codes_for, make_dalle

VARIANTS = {
    "rotary_shift": {},
    "absolute_positions": dict(rotary_emb=False, shift_tokens=False),
    "stable": dict(stable=True),
    "reversible": dict(reversible=True),
    "sandwich_shared": dict(sandwich_norm=True, shared_attn_ids=(0, 1, 0, 1), shared_ff_ids=(0, 0, 1, 1),
                            attn_types=("full", "axial_row")),
    "shared_embedding": dict(share_input_output_emb=True),
}


def _step_logits(dalle, text, codes, compiled: bool = False) -> torch.Tensor:
    """Image logits of every image position from `prefill` plus one `decode_step` per image code (or the
    compiled step, which leaves advancing the cache to its caller)."""
    cache = dalle.make_cache(text.shape[0])
    out = [dalle.prefill(text, None, cache)]
    where = torch.zeros(1, dtype=torch.long)
    for j in range(codes.shape[1] - 1):
        where.fill_(dalle.text_seq_len + 1 + j)
        if compiled:
            out.append(dalle.compiled_image_step()(codes[:, j], where, cache))
            cache.advance(1)
        else:
            out.append(dalle.decode_step(codes[:, j], where, cache))
    return torch.stack(out, dim=1)  # (B, image_seq_len, num_image_tokens)


def _full_image_logits(dalle, text, codes) -> torch.Tensor:
    return dalle(text, codes)[:, TEXT_LEN:, dalle.num_text_tokens:]


@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_static_step_equals_full_forward_for_every_attention_type(name):
    dalle = make_dalle(ATTN_CASES[name])
    text, codes = captions(), codes_for()
    with torch.inference_mode():
        torch.testing.assert_close(_step_logits(dalle, text, codes),
                                   _full_image_logits(dalle, text, codes), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_static_step_equals_full_forward_for_every_model_variant(variant):
    kwargs = dict(VARIANTS[variant])
    dalle = make_dalle(kwargs.pop("attn_types", ATTN_CASES["mix"]), **kwargs)
    text, codes = captions(), codes_for()
    with torch.inference_mode():
        torch.testing.assert_close(_step_logits(dalle, text, codes),
                                   _full_image_logits(dalle, text, codes), atol=1e-5, rtol=0)


def test_generation_with_prepacked_weights_equals_plain_linear_layers(monkeypatch):
    import dalle_core.ops.linear as linear

    dalle = make_dalle(ATTN_CASES["mix"])
    text = captions()
    packed = dalle.generate_image_codes(text, use_cache=True, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(linear, "_packing_supported", lambda weight: False)
    plain = dalle.generate_image_codes(text, use_cache=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(packed, plain)


def test_prefill_with_codes_then_steps_equals_the_full_forward_and_checks_positions():
    dalle = make_dalle(ATTN_CASES["mix"], depth=2)
    text, codes = captions(), codes_for()
    full = _full_image_logits(dalle, text, codes)
    cache = dalle.make_cache(2)
    torch.testing.assert_close(dalle.prefill(text, codes[:, :5], cache), full[:, 5], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="next one the cache lacks"):
        dalle.decode_step(codes[:, 5], TEXT_LEN + 1, cache)  # position of code 0, but the cache holds codes 0-4
    torch.testing.assert_close(dalle.decode_step(codes[:, 5], TEXT_LEN + 6, cache), full[:, 6], atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="KVCache"):
        dalle.decode_step(codes[:, 6], TEXT_LEN + 7, {})


def test_compile_needs_the_cache():
    with pytest.raises(ValueError, match="use_cache=True"):
        make_dalle(depth=1).generate_image_codes(captions(), compile=True)


@pytest.mark.slow
def test_compiled_step_equals_eager_and_compiles_once():
    torch._dynamo.reset()
    dalle = make_dalle(ATTN_CASES["mix"], depth=2)
    text, codes = captions(), codes_for()
    with torch.inference_mode():
        eager = _step_logits(dalle, text, codes)
        compiled = _step_logits(dalle, text, codes, compiled=True)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)

    graphs = torch._dynamo.utils.counters["stats"]
    gen = torch.Generator()
    a = dalle.generate_image_codes(text, use_cache=True, compile=True, generator=gen.manual_seed(3))
    compiled_graphs = graphs["unique_graphs"]
    assert compiled_graphs >= 1
    # every position of every later call with this batch size runs through the same graph: no recompilation
    again = dalle.generate_image_codes(captions().flip(0), use_cache=True, compile=True, generator=gen.manual_seed(3))
    assert graphs["unique_graphs"] == compiled_graphs and again.shape == (2, 16)
    b = dalle.generate_image_codes(text, use_cache=True, compile=False, generator=gen.manual_seed(3))
    assert (a == b).float().mean() > 0.9  # the same logits to float rounding: the same draws but near-ties
    guided = dalle.generate_image_codes(text, use_cache=True, compile=True, cond_scale=3.0)
    assert guided.shape == (2, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decoding_equals_eager_on_gpu():
    torch._dynamo.reset()
    dalle = make_dalle(ATTN_CASES["mix"], depth=2).cuda()
    text = captions().cuda()
    dalle.compiled_image_step(mode="reduce-overhead")
    gen = torch.Generator(device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            graphed = dalle.generate_image_codes(text, use_cache=True, compile=True, temperature=0.0)
            eager = dalle.generate_image_codes(text, use_cache=True, temperature=0.0, generator=gen)
        assert graphed.device.type == "cuda" and graphed.shape == (2, 16)
        if dtype == torch.float32:
            assert (graphed == eager).float().mean() > 0.9
