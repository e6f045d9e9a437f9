"""Build OpenAI dVAE parity fixtures with OpenAI's own package, `dall-e` 0.1.

Run with the Python of the venv that `bash ../shared/peer/setup_tokenizer_refs.sh DIR` builds:

    DIR/bin/python tests/reference/make_openai_dvae_fixtures.py tests/fixtures/openai_dvae             # committed
    DIR/bin/python tests/reference/make_openai_dvae_fixtures.py /tmp/live --seed 7 --official           # live

Writes `encoder.pkl` and `decoder.pkl` exactly as OpenAI ships its weights (`torch.save` of whole `dall_e.Encoder`
and `dall_e.Decoder` modules) and `expected.pt` (tensors only): fixed images in [0, 1], the codes
`argmax(encoder(map_pixels(images)))`, and `unmap_pixels(sigmoid(decoder(one_hot(codes))[:, :3]))` for fixed
codes. By default the modules are tiny (n_hid 8, one block a group, 64 codes: dall_e's validators, which ask for
n_hid >= 64 and 512 codes, are switched off so the committed files stay small); `--official` builds the official
sizes (n_hid 256, 2 blocks a group, 8192 codes, n_init 128). Weights are random (biases too, so none are zero).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import attr
import torch
import torch.nn.functional as F
from dall_e import Decoder, Encoder, map_pixels, unmap_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official", action="store_true")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if args.official:
        enc, dec = Encoder(), Decoder()
    else:
        attr.set_run_validators(False)
        enc = Encoder(n_hid=8, n_blk_per_group=1, vocab_size=64)
        dec = Decoder(n_init=8, n_hid=8, n_blk_per_group=1, vocab_size=64)
        attr.set_run_validators(True)
    with torch.no_grad():
        for module in (enc, dec):
            for name, param in module.named_parameters():
                if name.endswith(".b"):
                    param.normal_(std=0.1)
    torch.save(enc, args.out_dir / "encoder.pkl")
    torch.save(dec, args.out_dir / "decoder.pkl")

    images = torch.rand(2, 3, args.image_size, args.image_size)
    fmap = args.image_size // 8
    codes = torch.randint(0, enc.vocab_size, (2, fmap * fmap))
    with torch.no_grad():
        logits = enc(map_pixels(images))
        one_hot = F.one_hot(codes.view(2, fmap, fmap), enc.vocab_size).permute(0, 3, 1, 2).float()
        decoded = unmap_pixels(torch.sigmoid(dec(one_hot).float()[:, :3]))
    torch.save({"images": images, "codes": logits.argmax(dim=1).flatten(1), "logits": logits,
                "decode_codes": codes, "decoded": decoded, "image_size": args.image_size},
               args.out_dir / "expected.pt")
    print(f"dall_e encoder/decoder ({'official' if args.official else 'tiny'} sizes) -> {args.out_dir}")


if __name__ == "__main__":
    main()
