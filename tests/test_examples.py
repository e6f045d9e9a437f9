"""The example scripts run end to end with tiny settings and write the files they promise."""
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image

from dalle_core import DALLE, DiscreteVAE, load_dalle_pytorch
from dalle_core.data import load_image
from dalle_core.tokenizers import ByteTokenizer, Tokenizer, WordTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "dalle_ckpt_train_dalle.pt"


def run(script, *args, ok=True):
    """Run examples/`script` in a fresh one-thread Python from the repo root; the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def png(path):
    """The PNG at `path` as (width, height), after checking that Pillow can decode it."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def tile(path, row, col, size):
    """Tile (row, col) of a grid PNG drawn at 4x: the image as a float tensor (3, size, size) in [0, 1]."""
    with Image.open(path) as img:
        small = img.convert("RGB").resize((img.width // 4, img.height // 4), Image.NEAREST)
    pixels = torch.from_numpy(numpy.array(small)).float() / 255  # (H, W, 3)
    return pixels[row * size:(row + 1) * size, col * size:(col + 1) * size].permute(2, 0, 1)


def test_quickstart(tmp_path):
    # the flags a Jupyter kernel adds are ignored, so that the example also runs as a notebook cell
    run("quickstart.py", "--steps", 2, "--out", tmp_path, "-f", tmp_path / "kernel-123.json")
    assert png(tmp_path / "samples.png") == (512, 384)


def test_every_example_ignores_flags_it_does_not_know():
    for path in (ROOT / "examples").glob("*.py"):
        text = path.read_text()
        assert "parse_args()" not in text, f"{path.name}: parse_args() exits under a notebook kernel"


def test_train_vae(tmp_path):
    out = tmp_path / "run"
    proc = run("train_vae.py", "--steps", 2, "--image-size", 16, "--num-images", 6, "--batch-size", 4, "--out", out)
    assert "codebook usage" in proc.stdout
    assert len(list((out / "images").glob("*.png"))) == 6 and len(list((out / "images").glob("*.txt"))) == 6
    assert png(out / "reconstructions.png") == (6 * 16 * 4, 2 * 16 * 4)  # six images, two rows, drawn at 4x
    vae = DiscreteVAE.from_pretrained(out / "vae")
    assert (vae.image_size, vae.num_tokens) == (16, 128)

    # --folder: an existing folder, read recursively, written to nowhere
    again = tmp_path / "again"
    run("train_vae.py", "--folder", out / "images", "--steps", 1, "--image-size", 8, "--num-layers", 1, "--num-tokens", 32,
        "--batch-size", 2, "--out", again)
    assert not (again / "images").exists()
    assert png(again / "reconstructions.png") == (6 * 8 * 4, 2 * 8 * 4)
    assert DiscreteVAE.from_pretrained(again / "vae").num_tokens == 32


def test_train_dalle(tmp_path):
    out = tmp_path / "run"
    tiny = ("--steps", 2, "--batch-size", 4, "--dim", 32, "--depth", 1, "--text-seq-len", 24)
    run("train_dalle.py", *tiny, "--vae-steps", 2, "--image-size", 16, "--num-images", 6, "--out", out)
    assert png(out / "samples.png") == (4 * 16 * 4, 2 * 16 * 4)  # four captions; training images over samples
    dalle = DALLE.from_pretrained(out / "dalle")
    assert (dalle.text_seq_len, dalle.vae.image_size) == (24, 16)
    assert isinstance(Tokenizer.load(out / "dalle" / "tokenizer.json"), ByteTokenizer)
    vae = DiscreteVAE.from_pretrained(out / "vae")
    assert torch.equal(vae.codebook.weight, dalle.vae.codebook.weight)

    # --vae and --folder: the given dVAE is used as is, not retrained, and sets the image size
    again = tmp_path / "again"
    run("train_dalle.py", *tiny, "--vae", out / "vae", "--folder", out / "images", "--image-size", 64, "--out", again)
    assert not (again / "vae").exists() and not (again / "images").exists()
    reloaded = DALLE.from_pretrained(again / "dalle")
    assert reloaded.vae.image_size == 16
    assert torch.equal(reloaded.vae.codebook.weight, vae.codebook.weight)


def test_sample_untrained(tmp_path):
    proc = run("sample.py", "--image-size", 16, "--candidates", 3, "--out", tmp_path)
    assert "use_cache=True" in proc.stdout and proc.stdout.count("CLIP scores") == 2
    assert png(tmp_path / "guidance.png") == (2 * 64, 2 * 64)  # two default prompts; plain over guided
    assert png(tmp_path / "priming.png") == (2 * 64, 2 * 64)
    assert png(tmp_path / "reranked.png") == (3 * 64, 2 * 64)  # a row of three candidates per prompt


def test_sample_checkpoint_and_primer(tmp_path):
    tokenizer = WordTokenizer.train(["a red circle", "a blue square"])
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=4, depth=1, heads=2,
                  dim_head=16)
    dalle.save_pretrained(tmp_path / "dalle")
    tokenizer.save(tmp_path / "dalle" / "tokenizer.json")
    primer = torch.rand(3, 16, 16)
    Image.fromarray((primer.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "primer.png")

    out = tmp_path / "out"
    run("sample.py", "--checkpoint", tmp_path / "dalle", "--prompt", "a red circle", "--img", tmp_path / "primer.png",
        "--candidates", 2, "--out", out)
    assert png(out / "guidance.png") == (64, 2 * 64)  # one prompt
    assert png(out / "reranked.png") == (2 * 64, 64)
    # the top row of priming.png is the --img primer, as the dVAE takes it
    expected = load_image(tmp_path / "primer.png", 16, resize_ratio=1.0)
    assert torch.allclose(tile(out / "priming.png", 0, 0, 16), expected, atol=1.5 / 255)

    # the checkpoint's own tokenizer is read: a ByteTokenizer would overflow this DALLE's 6 text ids
    (tmp_path / "dalle" / "tokenizer.json").unlink()
    proc = run("sample.py", "--checkpoint", tmp_path / "dalle", "--out", out, ok=False)
    assert proc.returncode != 0 and "more ids than the DALLE" in proc.stderr


def test_load_dalle_pytorch_default_fixture(tmp_path):
    proc = run("load_dalle_pytorch.py", "--out", tmp_path)
    assert "text_seq_len 6" in proc.stdout
    assert png(tmp_path / "samples.png") == (4 * 16 * 4, 2 * 16 * 4)  # two random captions, four images each
    saved = DALLE.from_pretrained(tmp_path / "dalle")
    reference = load_dalle_pytorch(FIXTURE)
    assert saved.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in saved.state_dict().items())


def test_load_dalle_pytorch_vae_tokenizer_and_prompt(tmp_path):
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    vae_weights = {k[len("vae."):]: v for k, v in ckpt["weights"].items() if k.startswith("vae.")}
    torch.save({"hparams": ckpt["vae_params"], "weights": vae_weights}, tmp_path / "vae.pt")  # train_vae.py's layout
    WordTokenizer.train(["a red fox in the snow"]).save(tmp_path / "bpe.json")

    out = tmp_path / "out"
    proc = run("load_dalle_pytorch.py", "--vae", tmp_path / "vae.pt", "--tokenizer", tmp_path / "bpe.json",
               "--prompt", "a red fox", "--num-images", 3, "--out", out)
    assert png(out / "samples.png") == (3 * 64, 64)  # one caption, three images
    assert png(out / "vae_reconstructions.png") == (3 * 64, 2 * 64)
    assert "codebook usage" in proc.stdout
    assert isinstance(Tokenizer.load(out / "dalle" / "tokenizer.json"), WordTokenizer)

    proc = run("load_dalle_pytorch.py", "--prompt", "a red fox", "--out", out, ok=False)
    assert proc.returncode != 0 and "--prompt needs --tokenizer" in proc.stderr


def test_the_notebooks_are_the_examples_and_run_under_a_kernels_argv(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext", reason="needs jupytext (the [test] extra)")
    import json as _json

    for script in sorted((ROOT / "examples").glob("*.py")):
        notebook = ROOT / "examples" / "notebooks" / f"{script.stem}.ipynb"
        assert notebook.is_file(), f"{notebook.name} is missing: regenerate the notebooks (examples/notebooks/README.md)"
        expected = [c.source for c in jupytext.read(script, fmt="py:percent").cells]
        cells = _json.loads(notebook.read_text())["cells"]
        found = ["".join(c["source"]) for c in cells]
        assert found == expected, f"{notebook.name} is out of date with {script.name}"
    # run the quickstart notebook's cells in order in one namespace, with the argv a Jupyter kernel has
    cells = _json.loads((ROOT / "examples" / "notebooks" / "quickstart.ipynb").read_text())["cells"]
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", str(tmp_path / "kernel.json"), "--steps", "2",
                                      "--out", str(tmp_path)])
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "__main__"}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), namespace)  # noqa: S102 - our example
    assert png(tmp_path / "samples.png") == (512, 384)
