"""Build DALLE-pytorch 1.6.6 train_dalle.py checkpoints whose image tokenizer is a pretrained one: OpenAI's dVAE
(`OpenAIDiscreteVAE`) and a taming VQGAN (`VQGanVAE`), for `load_dalle_pytorch` and `dalle-core generate`.

Run with the Python of the venv that `bash ../shared/peer/setup_peer.sh DIR` builds, with the tokenizer references'
site-packages (`bash ../shared/peer/setup_tokenizer_refs.sh TOKREF`) on the path for `dall_e`:

    DIR/bin/python tests/reference/make_pretrained_vae_checkpoints.py tests/fixtures --tokref TOKREF

(after make_vqgan_fixtures.py, whose tiny VQGAN the second checkpoint holds).

DALLE-pytorch's own OpenAIDiscreteVAE downloads OpenAI's files and refuses torch >= 1.11, so the reference object
is assembled as its `__init__` would leave it, with tiny `dall_e` modules (validators off, as in
make_openai_dvae_fixtures.py) instead of the downloaded ones; its VQGanVAE likewise, around the tiny taming model
of `tests/fixtures/vqgan_vq.*`. Each file is exactly what train_dalle.py saves
(`hparams`, `vae_params` None, `vae_class_name`, `weights` = the DALLE's state dict with the tokenizer's weights
inside, `epoch`, `version`) plus `expected`: images, the reference's codes for them, and its logits.
"""
from __future__ import annotations

import argparse
import glob
import math
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
    tokref_sites = glob.glob(str(args.tokref / "lib" / "python3*" / "site-packages"))
    sys.path += tokref_sites
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
    vqgan_checkpoint(args.out_dir, hparams, text, tokref_sites)
    print(f"train_dalle.py checkpoints over pretrained tokenizers -> {args.out_dir}")


def vqgan_checkpoint(out_dir: Path, hparams: dict, text, tokref_sites: list) -> None:
    """A DALLE over a VQGAN: the committed tiny taming model (tests/fixtures/vqgan_vq.*, made by
    make_vqgan_fixtures.py) inside DALLE-pytorch's VQGanVAE, assembled as its __init__ would leave it (the taming
    VQModel there also holds its training loss, whose weights end up in the DALLE's state dict too)."""
    import torch
    import yaml
    from dalle_pytorch import DALLE, VQGanVAE

    # the reference venv holds a placeholder `taming` (just what dalle_pytorch imports); the real model code is in
    # the tokenizer references' venv: put it first for taming's modules
    for name in [m for m in sys.modules if m == "taming" or m.startswith("taming.")]:
        del sys.modules[name]
    sys.path[:0] = [str(Path(__file__).parent), *tokref_sites]
    from make_vqgan_fixtures import RefVQModel

    fixtures = Path(__file__).parent.parent / "fixtures"
    config = yaml.safe_load((fixtures / "vqgan_vq.yaml").read_text())["model"]["params"]
    dd = config["ddconfig"]
    model = RefVQModel("vq", dd, config["n_embed"], config["embed_dim"])
    state = torch.load(fixtures / "vqgan_vq.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=False)
    model.loss = torch.nn.Module()  # VQLPIPSWithDiscriminator's place: its weights are saved with the DALLE
    model.loss.register_buffer("logvar", torch.zeros(()))
    vae = VQGanVAE.__new__(VQGanVAE)
    torch.nn.Module.__init__(vae)
    vae.model = model.eval()
    vae.num_layers = int(math.log2(dd["resolution"] / dd["attn_resolutions"][0]))  # as DALLE-pytorch computes it
    vae.channels, vae.image_size, vae.num_tokens, vae.is_gumbel = 3, dd["resolution"], config["n_embed"], False
    dalle = DALLE(vae=vae, **hparams).eval()
    with torch.no_grad():
        for name, p in dalle.named_parameters():
            if name.endswith(".scale"):
                p.uniform_(0.5, 1.0)
    images = torch.rand(2, 3, dd["resolution"], dd["resolution"])
    with torch.no_grad():
        codes = vae.get_codebook_indices(images)
        logits = dalle(text.clone(), codes)
    weights = dalle.state_dict()
    for key in weights:  # the same values, as the fixture's views of one pool: stored once, the file stays small
        if key.startswith("vae.model.") and key[len("vae.model."):] in state:
            assert torch.equal(weights[key], state[key[len("vae.model."):]])
            weights[key] = state[key[len("vae.model."):]]
    torch.save({"hparams": hparams, "vae_params": None, "epoch": 1, "version": "1.6.6",
                "vae_class_name": "VQGanVAE", "weights": weights,
                "expected": {"text": text, "images": images, "codes": codes, "logits": logits}},
               out_dir / "dalle_ckpt_vqgan.pt")


if __name__ == "__main__":
    main()
