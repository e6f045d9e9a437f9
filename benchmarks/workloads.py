"""One benchmark workload, in one process, for one implementation; prints a JSON line.

    python benchmarks/workloads.py --impl ours --workload train_full --repeats 5
    PEER/bin/python benchmarks/workloads.py --impl ref --workload gen_cache_hand

Run by benchmarks/run.py, which alternates implementations and processes and writes the table.
`model_flops(name)` gives the analytic useful FLOPs of one timed step (formula in benchmarks/README.md);
it needs dalle_core, so run.py calls it from the dalle_core environment.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import warnings

import torch

warnings.filterwarnings("ignore")

BENCH = dict(dim=256, depth=4, heads=8, dim_head=32, text_seq_len=64, num_text_tokens=5000)
BENCH_VAE = dict(image_size=64, num_layers=2, num_tokens=1024, codebook_dim=256, hidden_dim=64, num_resnet_blocks=1)
SPARSE = ("axial_row", "axial_col", "axial_row", "conv_like")
PAPER = dict(dim=512, depth=4, heads=8, dim_head=64, text_seq_len=256, num_text_tokens=16384)
PAPER_VAE = dict(image_size=128, num_layers=2, num_tokens=8192, codebook_dim=512, hidden_dim=64)

WORKLOADS = {
    # name: (model kwargs, vae kwargs, batch, kind, extra)
    "train_full": (BENCH, BENCH_VAE, 8, "train", {}),
    "train_sparse": (dict(BENCH, attn_types=SPARSE), BENCH_VAE, 8, "train", {}),
    "train_paper": (PAPER, PAPER_VAE, 4, "train", {}),
    # each library's memory saver: our activation checkpointing, the reference's reversible layers
    "train_paper_saver": (PAPER, PAPER_VAE, 4, "train",
                          {"ours": dict(gradient_checkpointing=True), "ref": dict(reversible=True)}),
    "gen_use_cache": (BENCH, BENCH_VAE, 4, "generate", dict(cond_scale=1.0)),
    "gen_cache_hand": (BENCH, BENCH_VAE, 4, "generate_hand", dict(cond_scale=1.0)),
    "gen_cond3": (BENCH, BENCH_VAE, 4, "generate", dict(cond_scale=3.0)),
    # ours through torch.compile (compiled in the warm-up call, timed after); the reference as in gen_cache_hand
    "gen_compile": (BENCH, BENCH_VAE, 4, "generate_hand", dict(cond_scale=1.0, compile=True)),
}


def build(impl: str, model_kwargs: dict, vae_kwargs: dict):
    if impl == "ours":
        from dalle_core import DALLE, DiscreteVAE
    else:
        from dalle_pytorch import DALLE, DiscreteVAE
    torch.manual_seed(0)
    vae = DiscreteVAE(**vae_kwargs)
    return DALLE(vae=vae, **model_kwargs)


def ref_hand_cached_generation(dalle, text, filter_thres: float):
    """DALLE-pytorch's fastest sampling: its forward with a cache dict, called in a loop by hand."""
    from dalle_pytorch.dalle_pytorch import gumbel_sample, top_k

    out = text
    cache = {}
    for cur_len in range(text.shape[1], dalle.text_seq_len + dalle.image_seq_len):
        logits = dalle(out[:, : dalle.text_seq_len], out[:, dalle.text_seq_len :], cache=cache)[:, -1]
        sample = gumbel_sample(top_k(logits, thres=filter_thres), dim=-1) - dalle.num_text_tokens
        out = torch.cat((out, sample[:, None]), dim=-1)
    return dalle.vae.decode(out[:, -dalle.image_seq_len :])


def run(impl: str, name: str, repeats: int, warmup: int) -> dict:
    model_kwargs, vae_kwargs, batch, kind, extra = WORKLOADS[name]
    dalle = build(impl, {**model_kwargs, **extra.get(impl, {})}, vae_kwargs)
    fmap = vae_kwargs["image_size"] // 2 ** vae_kwargs["num_layers"]
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(1, model_kwargs["num_text_tokens"], (batch, model_kwargs["text_seq_len"]), generator=gen)
    codes = torch.randint(0, vae_kwargs["num_tokens"], (batch, fmap * fmap), generator=gen)

    if kind == "train":
        dalle.train()
        opt = torch.optim.AdamW([p for p in dalle.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = dalle(text.clone(), codes, return_loss=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif kind == "generate":
        dalle.eval()

        def step():
            dalle.generate_images(text, filter_thres=0.9, use_cache=True, **extra)
    else:
        dalle.eval()
        if impl == "ours":
            def step():
                dalle.generate_images(text, filter_thres=0.9, use_cache=True, compile=extra.get("compile", False))
        else:
            def step():
                with torch.no_grad():
                    ref_hand_cached_generation(dalle, text, 0.9)

    warmup_times = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        warmup_times.append(time.perf_counter() - t0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "workload": name, "times": times, "warmup": warmup, "warmup_times": warmup_times,
            "peak_rss_mb": peak_mb,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


FF_MULT = 4  # GEGLU feed-forward width multiplier, the same in both implementations
CONV_KERNEL = 5  # conv_like kernel size, both implementations' default


def model_flops(name: str) -> dict:
    """Analytic useful FLOPs of one timed step of workload `name` (multiply-add = 2 FLOPs).

    Per forward over the positions [<bos> text ; image[:-1]] (n = text_seq_len + image_seq_len of them):
      matmuls:   2 * n * depth * (dim*3*inner + inner*dim + dim*2*FF_MULT*dim + FF_MULT*dim*dim)
      attention: sum over layers of 4 * heads * dim_head * visible(layer), visible = the number of True
                 entries of that layer's mask (dalle_core.models.masks.attention_mask) over the n positions; the
                 dense causal count n*(n+1)/2 for 'full'
      logits:    2 * dim * (text_seq_len * text_vocab + image_seq_len * image_vocab): each position only
                 over its own modality's vocabulary (text_vocab counts the text_seq_len padding ids)
    Training step = 3 x forward (backward ~ 2 x forward). Generation with a cache processes every
    position once (the prefill of <bos> + text, then one new position per code), so it costs the same
    matmuls and attention as one forward, plus image logits for the image_seq_len sampled positions only;
    with cond_scale != 1 both branches (2 x batch) are counted; the dVAE decode of the images is counted
    by torch's FlopCounterMode. Elementwise work (norms, softmax, rotary, GELU, sampling, AdamW) is not.
    """
    from itertools import cycle, islice

    from torch.utils.flop_counter import FlopCounterMode

    from dalle_core import DiscreteVAE
    from dalle_core.models.masks import attention_mask

    m, v, batch, kind, extra = WORKLOADS[name]
    dim, depth, heads, dim_head = m["dim"], m["depth"], m["heads"], m["dim_head"]
    inner = heads * dim_head
    text_len = m["text_seq_len"]
    fmap = v["image_size"] // 2 ** v["num_layers"]
    img_len = fmap * fmap
    n = text_len + img_len
    text_vocab, image_vocab = m["num_text_tokens"] + text_len, v["num_tokens"]

    matmul = 2 * n * depth * (dim * 3 * inner + inner * dim + dim * 2 * FF_MULT * dim + FF_MULT * dim * dim)
    types = m.get("attn_types", ("full",))
    types = (types,) if isinstance(types, str) else tuple(types)
    visible = {t: int(attention_mask(t, text_len + 1, fmap, kernel_size=CONV_KERNEL)[:n, :n].sum()) for t in set(types)}
    attention = sum(4 * heads * dim_head * visible[t] for t in islice(cycle(types), depth))
    image_logits = 2 * dim * img_len * image_vocab
    text_logits = 2 * dim * text_len * text_vocab

    out = {"matmul": matmul, "attention": attention, "visible_keys": visible}
    if kind == "train":
        out["logits"] = text_logits + image_logits
        out["total"] = 3 * batch * (matmul + attention + text_logits + image_logits)
    else:
        rows = batch * (2 if extra.get("cond_scale", 1.0) != 1 else 1)
        torch.manual_seed(0)
        vae = DiscreteVAE(**v).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            vae.decode(torch.zeros(batch, img_len, dtype=torch.long))
        out["logits"] = image_logits
        out["vae_decode"] = int(counter.get_total_flops())
        out["rows"] = rows
        out["total"] = rows * (matmul + attention + image_logits) + out["vae_decode"]
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured fp32 matmul throughput (best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["ours", "ref"], default="ours")
    parser.add_argument("--workload", choices=sorted(WORKLOADS) + ["matmul_peak"], required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workload == "matmul_peak":
        print(json.dumps({"workload": "matmul_peak", "gflops": matmul_peak_gflops(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}))
    else:
        print(json.dumps(run(args.impl, args.workload, args.repeats, args.warmup)))
