"""Encode + decode time of the pretrained image tokenizers, dalle_core against the reference packages.

    python benchmarks/pretrained_tokenizers.py --ref-python TOKREF/bin/python [--threads 2] [--batch 4]

TOKREF is the venv `bash ../shared/peer/setup_tokenizer_refs.sh TOKREF` builds (OpenAI's `dall-e` 0.1 and
taming-transformers' model code). Random weights of the published sizes: OpenAI's dVAE (n_hid 256, 2 blocks a group,
8192 codes) and taming's imagenet f16-1024 VQGAN (ch 128, ch_mult 1,1,2,2,4, 2 res blocks, attention at 16, 1024
codes of 256 dims). A 256-px batch is encoded to codes and those codes decoded, `--rounds` times after one
warm-up; the best time of each is printed. Each side runs in its own process with the same thread count.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Callable, Dict

VQGAN_F16_1024 = {"kind": "vq", "embed_dim": 256, "n_embed": 1024, "ddconfig": {
    "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}}

REFERENCE = r'''
import json, sys, time
import torch, torch.nn.functional as F
threads, batch, size, rounds = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(0)

def best(fn):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)

out = {}
from dall_e import Encoder, Decoder, map_pixels, unmap_pixels
enc, dec = Encoder(), Decoder()
images = torch.rand(batch, 3, size, size)
with torch.no_grad():
    codes = enc(map_pixels(images)).argmax(1)
    out["openai_dvae"] = {
        "encode": best(lambda: enc(map_pixels(images)).argmax(1)),
        "decode": best(lambda: unmap_pixels(torch.sigmoid(dec(F.one_hot(codes, 8192).permute(0, 3, 1, 2).float())[:, :3]))),
    }
del enc, dec
from taming.modules.diffusionmodules.model import Encoder as TEncoder, Decoder as TDecoder
from taming.modules.vqvae.quantize import VectorQuantizer2
dd = json.loads(sys.argv[5])
encoder, decoder = TEncoder(**dd), TDecoder(**dd)
quant_conv, post_quant_conv = torch.nn.Conv2d(256, 256, 1), torch.nn.Conv2d(256, 256, 1)
quantize = VectorQuantizer2(1024, 256, beta=0.25)
for m in (encoder, decoder, quantize):
    m.eval()

def encode():
    _, _, (_, _, indices) = quantize(quant_conv(encoder(2 * images - 1)))
    return indices.view(batch, -1)

with torch.no_grad():
    codes = encode()
    def decode():
        z = quantize.embedding(codes).view(batch, size // 16, size // 16, 256).permute(0, 3, 1, 2)
        return (decoder(post_quant_conv(z)).clamp(-1, 1) + 1) / 2
    out["vqgan_f16_1024"] = {"encode": best(encode), "decode": best(decode)}
print(json.dumps(out))
'''


def ours(threads: int, batch: int, size: int, rounds: int) -> Dict[str, Dict[str, float]]:
    import torch

    from dalle_core import OpenAIDiscreteVAE
    from dalle_core.models.openai_dvae import OFFICIAL_ARCHITECTURE
    from dalle_core.models.vqgan import VQGanVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size)

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def timed(model: torch.nn.Module) -> Dict[str, float]:
        with torch.no_grad():
            codes = model.eval().get_codebook_indices(images)
            return {"encode": best(lambda: model.get_codebook_indices(images)), "decode": best(lambda: model.decode(codes))}

    return {"openai_dvae": timed(OpenAIDiscreteVAE(image_size=size, architecture=OFFICIAL_ARCHITECTURE)),
            "vqgan_f16_1024": timed(VQGanVAE(image_size=size, architecture=VQGAN_F16_1024))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref-python", required=True, help="python of the tokenizer references' venv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the times to this file")
    args = parser.parse_args()
    numbers = (args.threads, args.batch, args.size, args.rounds)
    reference = json.loads(subprocess.run(
        [args.ref_python, "-c", REFERENCE, *map(str, numbers), json.dumps(VQGAN_F16_1024["ddconfig"])],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    mine = ours(*numbers)
    print(f"{args.batch} images of {args.size} px, {args.threads} threads, best of {args.rounds} (seconds):")
    print(f"{'tokenizer':<16}{'stage':<8}{'reference':>11}{'dalle_core':>12}{'speed-up':>10}")
    for name in mine:
        for stage in ("encode", "decode"):
            ref, ours_s = reference[name][stage], mine[name][stage]
            print(f"{name:<16}{stage:<8}{ref:>11.3f}{ours_s:>12.3f}{ref / ours_s:>9.2f}x")
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump({"reference": reference, "dalle_core": mine, "settings": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
