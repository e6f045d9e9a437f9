"""Build DALLE-pytorch 1.6.6 train_dalle.py checkpoints whose image tokenizer is a pretrained one: OpenAI's dVAE
(`OpenAIDiscreteVAE`) and a taming VQGAN (`VQGanVAE`), for `load_dalle_pytorch` and `dalle-core generate`.

Run with the Python of the venv that `bash ../shared/peer/setup_peer.sh DIR` builds, with the tokenizer references'
site-packages (`bash ../shared/peer/setup_tokenizer_refs.sh TOKREF`) on the path for `dall_e`:

    DIR/bin/python tests/reference/make_pretrained_vae_checkpoints.py tests/fixtures --tokref TOKREF

DALLE-pytorch's own OpenAIDiscreteVAE downloads OpenAI's files and refuses torch >= 1.11, so the reference object
is assembled as its `__init__` would leave it, with tiny `dall_e` modules (validators off, as in
make_openai_dvae_fixtures.py) instead of the downloaded ones. Each file is exactly what train_dalle.py saves
(`hparams`, `vae_params` None, `vae_class_name`, `weights` = the DALLE's state dict with the tokenizer's weights
inside, `epoch`, `version`) plus `expected`: images, the reference's codes for them, and its logits.
"""
from __future__ import annotations

import argparse
import glob
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokref", type=Path, required=True, help="the tokenizer references' venv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path += glob.glob(str(args.tokref / "lib" / "python3*" / "site-packages"))
    import attr
    import torch
    from dall_e import Decoder, Encoder
    from dalle_pytorch import DALLE, OpenAIDiscreteVAE

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    attr.set_run_validators(False)
    enc = Encoder(n_hid=8, n_blk_per_group=1, vocab_size=64)
    dec = Decoder(n_init=8, n_hid=8, n_blk_per_group=1, vocab_size=64)
    attr.set_run_validators(True)
    vae = OpenAIDiscreteVAE.__new__(OpenAIDiscreteVAE)
    torch.nn.Module.__init__(vae)
    vae.enc, vae.dec = enc, dec
    vae.channels, vae.num_layers, vae.image_size, vae.num_tokens = 3, 3, 32, 64
    hparams = dict(dim=32, num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16)
    dalle = DALLE(vae=vae, **hparams).eval()
    with torch.no_grad():
        for name, p in dalle.named_parameters():
            if name.endswith(".scale"):
                p.uniform_(0.5, 1.0)
            elif name.startswith("vae.") and name.endswith(".b"):
                p.normal_(std=0.1)
    text = torch.randint(1, 50, (2, 6))
    text[1, 3:] = 0
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        codes = vae.get_codebook_indices(images)
        logits = dalle(text.clone(), codes)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"hparams": hparams, "vae_params": None, "epoch": 1, "version": "1.6.6",
                "vae_class_name": "OpenAIDiscreteVAE", "weights": dalle.state_dict(),
                "expected": {"text": text, "images": images, "codes": codes, "logits": logits}},
               args.out_dir / "dalle_ckpt_openai_vae.pt")
    print(f"train_dalle.py checkpoints over pretrained tokenizers -> {args.out_dir}")


if __name__ == "__main__":
    main()
