"""The `dalle-core` command: the three trainers and `generate`, end to end on a tiny generated folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
from PIL import Image

from dalle_core.cli import main
from helpers import TINY_CLIP, TINY_DALLE, TINY_VAE, cli_env, flags, losses, make_folder, metrics
from helpers import one_thread  # noqa: F401  (its autouse fixture: one thread in this module too)

QUIET = dict(warmup_steps=0, log_every=1, sample_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, Path]:
    """A dVAE, a DALLE on it and a CLIP, each trained by the CLI in this process."""
    root = tmp_path_factory.mktemp("cli")
    data = make_folder(root / "data")
    vae, dalle, clip = root / "vae", root / "dalle", root / "clip"
    assert main(["train-vae", *flags(folder=data, out=vae, steps=30, batch_size=4, lr=3e-3, **QUIET,
                                     **TINY_VAE)]) == 0
    assert main(["train-dalle", *flags(folder=data, vae=vae / "model", out=dalle, steps=30, batch_size=4, lr=3e-3,
                                       null_cond_prob=0.2, **QUIET, **TINY_DALLE)]) == 0
    assert main(["train-clip", *flags(folder=data, out=clip, steps=20, batch_size=6, lr=1e-3, **QUIET,
                                      **TINY_CLIP)]) == 0
    return {"data": data, "vae": vae, "dalle": dalle, "clip": clip}


def test_python_m_dalle_core_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "dalle_core", "--help"], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    assert all(cmd in done.stdout for cmd in ("train-vae", "train-dalle", "train-clip", "generate"))


def test_guidance_space_flag_offers_the_sampling_modules_spaces_and_default():
    import argparse

    from dalle_core import cli_generate
    from dalle_core.sampling import DEFAULT_GUIDANCE_SPACE, GUIDANCE_SPACES

    parser = cli_generate.add_generate_parser(argparse.ArgumentParser().add_subparsers(), "")
    action = next(a for a in parser._actions if a.dest == "guidance_space")
    assert tuple(action.choices) == GUIDANCE_SPACES and action.default == DEFAULT_GUIDANCE_SPACE


def test_each_training_command_lowers_its_loss_and_writes_its_model(runs):
    for name in ("vae", "dalle", "clip"):
        curve = losses(runs[name])
        assert sum(curve[-4:]) < sum(curve[:4]), name
        assert (runs[name] / "model" / "model.safetensors").is_file()
        with Image.open(runs[name] / "loss.png") as plot:  # the run's loss curve
            assert plot.width >= 300 and plot.height >= 200
        assert json.loads((runs[name] / "train_config.json").read_text())["trainer"] == name
    assert (runs["dalle"] / "model" / "tokenizer.json").is_file()


def test_generate_writes_a_folder_of_pngs_and_a_grid_per_prompt(runs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("blue top\n\ngreen right\n")
    out = tmp_path / "gen"
    code = main(["generate", "red left", "--prompts-file", str(prompts), *flags(
        checkpoint=runs["dalle"] / "model", num_images=3, batch_size=2, out=out, seed=0)])
    assert code == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["000-red-left", "001-blue-top", "002-green-right"]
    for name in folders:
        pngs = sorted((out / name).glob("0*.png"))
        assert len(pngs) == 3 and all(Image.open(p).size == (16, 16) for p in pngs)
        assert Image.open(out / name / "grid.png").size == (2 * 18 + 2, 2 * 18 + 2)
        assert json.loads((out / name / "prompt.json").read_text())["clip_scores"] is None


def test_generate_with_clip_puts_the_best_scored_image_first(runs, tmp_path):
    out = tmp_path / "ranked"
    assert main(["generate", "green bottom", *flags(checkpoint=runs["dalle"] / "model", clip=runs["clip"] / "model",
                                                    num_images=4, batch_size=4, out=out, seed=1)]) == 0
    scores = json.loads((out / "000-green-bottom" / "prompt.json").read_text())["clip_scores"]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)


def test_generate_with_a_seed_repeats_itself_and_passes_priming_guidance_and_top_p(runs, tmp_path, monkeypatch):
    from dalle_core import DALLE
    from dalle_core.data import load_image

    calls = []
    original = DALLE.generate_images

    def spy(self, text, **kwargs):
        calls.append(kwargs)
        return original(self, text, **kwargs)

    monkeypatch.setattr(DALLE, "generate_images", spy)
    primer = next(runs["data"].glob("*.png"))
    options = dict(checkpoint=runs["dalle"] / "model", num_images=2, seed=7, img=primer, cond_scale=2.0, top_p=0.9,
                   num_init_img_tokens=8)
    for name in ("a", "b"):
        assert main(["generate", "red top", *flags(out=tmp_path / name, **options)]) == 0
    images = [(tmp_path / name / "000-red-top" / "000.png").read_bytes() for name in ("a", "b")]
    assert images[0] == images[1]
    kwargs = calls[0]
    assert kwargs["top_p"] == 0.9 and kwargs["filter_thres"] is None  # top-p alone unless both are given
    assert kwargs["cond_scale"] == 2.0 and kwargs["num_init_img_tokens"] == 8 and kwargs["use_cache"]
    assert kwargs["guidance_space"] == "probs"  # the library's default unless --guidance-space says otherwise
    expected = load_image(primer, 16, resize_ratio=1.0)
    assert kwargs["img"].shape == (2, 3, 16, 16) and torch.equal(kwargs["img"][1], expected)


def test_resume_takes_the_saved_flags_and_extends_the_run(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "vae"
    assert main(["train-vae", *flags(folder=data, out=out, steps=4, batch_size=4, save_every=2, **QUIET,
                                     **TINY_VAE)]) == 0
    assert main(["train-vae", "--resume", *flags(out=out, steps=6)]) == 0  # nothing else repeated
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    saved = json.loads((out / "train_config.json").read_text())["config"]
    assert saved["steps"] == 6 and saved["hidden_dim"] == TINY_VAE["hidden_dim"]


def test_user_errors_are_one_line_messages_with_exit_status_1(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    cases = [
        (["train-vae", "--out", str(tmp_path / "a")], "exactly one data source"),
        (["train-dalle", *flags(folder=data, out=tmp_path / "b")], "needs a trained dVAE"),
        (["train-vae", *flags(folder=data, out=tmp_path / "c", steps=0)], "steps must be an int >= 1"),
        (["generate", "--checkpoint", str(tmp_path / "missing")], "no prompts"),
        (["generate", "hi", "--checkpoint", str(tmp_path / "missing")], "missing"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


# --- DALLE-pytorch checkpoints and tokenizers on the command line ------------------------------------------------


def reference_checkpoint(path: Path, num_text_tokens: int) -> Path:
    """A train_dalle.py-layout dalle.pt over a DiscreteVAE (our key names load as they are)."""
    from dalle_core import DALLE, DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(**TINY_VAE)
    hparams = dict(TINY_DALLE, num_text_tokens=num_text_tokens)
    dalle = DALLE(vae=vae, **hparams)
    torch.save({"hparams": hparams, "vae_params": dict(TINY_VAE), "vae_class_name": "DiscreteVAE", "epoch": 1,
                "version": "1.6.6", "weights": dalle.state_dict()}, path)
    return path


def test_generate_reads_a_dalle_pytorch_checkpoint_and_picks_clip_bpe_for_its_49408_ids(tmp_path):
    ckpt = reference_checkpoint(tmp_path / "dalle.pt", num_text_tokens=49408)
    out = tmp_path / "out"
    assert main(["generate", "--text", "a red square|a blue circle", "--checkpoint", str(ckpt), "--num-images",
                 "1", "--out", str(out), "--seed", "0"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["000-a-red-square", "001-a-blue-circle"]  # --text splits prompts at '|', as generate.py

    from argparse import Namespace

    from dalle_core.cli import choose_tokenizer
    from dalle_core.tokenizers import SimpleTokenizer

    args = Namespace(tokenizer=None, bpe_path=None, chinese=False, hug=False, checkpoint=ckpt)
    assert isinstance(choose_tokenizer(args, 49408), SimpleTokenizer)


def test_a_tokenizer_that_does_not_match_the_models_vocabulary_is_an_error(tmp_path, capsys):
    ckpt = reference_checkpoint(tmp_path / "dalle.pt", num_text_tokens=50)
    common = ["generate", "a red square", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")]
    assert main(common) == 1
    assert "holds no tokenizer and its DALLE reads 50 caption ids" in capsys.readouterr().err
    assert main([*common, "--tokenizer", "bytes"]) == 1
    assert "has 257 ids but this DALLE was trained with 50" in capsys.readouterr().err
    assert main([*common, "--tokenizer", "simple", "--chinese"]) == 1
    assert "give one of" in capsys.readouterr().err
    assert main([*common, "--hug"]) == 1
    assert "give --bpe-path" in capsys.readouterr().err


def test_generate_takes_generate_py_tokenizer_flags_and_gentxt(tmp_path):
    from dalle_core.tokenizers import WordTokenizer

    tokenizer = WordTokenizer([f"w{i}" for i in range(46)] + ["red", "square"])  # 48 words + pad + unk = 50
    tokenizer.save(tmp_path / "words.json")
    ckpt = reference_checkpoint(tmp_path / "dalle.pt", num_text_tokens=50)
    out = tmp_path / "out"
    assert main(["generate", "red", "--checkpoint", str(ckpt), "--tokenizer", str(tmp_path / "words.json"),
                 "--gentxt", "--num-images", "1", "--out", str(out), "--seed", "1"]) == 0
    (folder,) = out.iterdir()
    caption = json.loads((folder / "prompt.json").read_text())["prompt"]
    assert caption.startswith("red ") and len(caption.split()) > 1  # the prompt completed by the DALLE


def test_train_dalle_resumes_from_a_dalle_pytorch_checkpoint_with_its_weights_and_tokenizer(tmp_path):
    from dalle_core import DALLE
    from dalle_core.tokenizers import SimpleTokenizer, find_tokenizer, load_tokenizer

    ckpt = reference_checkpoint(tmp_path / "dalle.pt", num_text_tokens=49408)
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train-dalle", *flags(folder=data, resume_from=ckpt, out=out, steps=1, batch_size=2, lr=1e-12,
                                       **QUIET)]) == 0
    trained = DALLE.from_pretrained(out / "model")
    before = torch.load(ckpt, weights_only=True)["weights"]
    assert trained.text_vocab_size == 49408 and trained.config["dim"] == TINY_DALLE["dim"]
    assert all(torch.allclose(trained.state_dict()[k], v, atol=1e-6) for k, v in before.items())
    assert isinstance(load_tokenizer(str(find_tokenizer(out / "model"))), SimpleTokenizer)
    assert main(["train-dalle", *flags(folder=data, resume_from=ckpt, vae=tmp_path, out=tmp_path / "x",
                                       steps=1)]) == 1  # --vae beside --resume-from: which tokenizer?


def _spy(monkeypatch, method: str):
    from dalle_core import DALLE

    calls, original = [], getattr(DALLE, method)

    def spy(self, text, **kwargs):
        calls.append(kwargs)
        return original(self, text, **kwargs)

    monkeypatch.setattr(DALLE, method, spy)
    return calls


def test_generate_inpaints_under_a_mask_png_and_streams_the_rows(runs, tmp_path, monkeypatch):
    calls = _spy(monkeypatch, "generate_images_stream")
    primer = next(runs["data"].glob("*.png"))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 8, 16, 16))  # white = regenerate: the bottom half
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "inpaint"
    assert main(["generate", "red top", *flags(checkpoint=runs["dalle"] / "model", num_images=2, batch_size=2, seed=3,
                                               img=primer, mask=tmp_path / "mask.png", out=out), "--stream"]) == 0
    kwargs = calls[0]
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, 8:] = True
    assert torch.equal(kwargs["mask"], expected) and kwargs["img"].shape == (2, 3, 16, 16)
    rows = sorted(p.name for p in (out / "000-red-top" / "stream").glob("*.png"))
    # rows 0-1 are the image's own: the first picture comes with the first code drawn in row 2
    assert rows == ["batch00-rows02.png", "batch00-rows03.png", "batch00-rows04.png"]
    assert len(list((out / "000-red-top").glob("0*.png"))) == 2


def test_generate_passes_rerank_negative_cfg_interval_guidance_space_and_speculative(runs, tmp_path, monkeypatch):
    calls = _spy(monkeypatch, "generate_images")
    out = tmp_path / "options"
    assert main(["generate", "green bottom", *flags(
        checkpoint=runs["dalle"] / "model", num_images=2, batch_size=2, seed=1, out=out, rerank="likelihood",
        candidates=3, negative="red top", cond_scale=2.0, cfg_interval=(0.0, 0.5), speculative=4,
        guidance_space="logits")]) == 0
    kwargs = calls[0]
    assert kwargs["rerank"] == "likelihood" and kwargs["candidates"] == 3 and kwargs["speculative"] == 4
    assert kwargs["cfg_interval"] == (0.0, 0.5) and kwargs["negative_text"].shape[0] == 1
    assert kwargs["guidance_space"] == "logits"
    info = json.loads((out / "000-green-bottom" / "prompt.json").read_text())
    assert info["rerank"] == "likelihood" and len(info["rerank_scores"]) == 2
    assert all(s < 0 for s in info["rerank_scores"])  # mean log-likelihood per code


def test_generate_refines_with_clip(runs, tmp_path):
    out = tmp_path / "refined"
    assert main(["generate", "blue left", *flags(checkpoint=runs["dalle"] / "model", clip=runs["clip"] / "model",
                                                 num_images=2, batch_size=2, seed=1, out=out, refine_steps=2)]) == 0
    assert len(list((out / "000-blue-left").glob("0*.png"))) == 2


@pytest.mark.parametrize("options, message", [
    (dict(mask="m.png"), "pass --img too"),
    (dict(refine_steps=2), "pass --clip"),
    (dict(rerank="clip"), "pass --clip"),
    (dict(candidates=0), "--candidates must be >= 1"),
    (dict(negative="red"), "cond_scale other than 1"),
])
def test_generate_refuses_inconsistent_sampling_flags(runs, tmp_path, capsys, options, message):
    assert main(["generate", "red top", *flags(checkpoint=runs["dalle"] / "model", out=tmp_path / "x",
                                               **options)]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_train_takes_a_config_file_that_flags_override(runs, tmp_path, suffix):
    out = tmp_path / "from-config"
    settings = {"folder": str(runs["data"]), "out": str(out), "steps": 3, "batch_size": 4, "lr": 3e-3,
                "warmup_steps": 0, "log_every": 1, "sample_every": 0, "image_size": 16, "num_tokens": 32,
                "codebook_dim": 16, "num_layers": 2, "num_resnet_blocks": 0, "hidden_dim": 16}
    path = tmp_path / f"vae{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings))
    else:
        import yaml

        path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in settings.items()}))
    assert main(["train-vae", "--config", str(path), "--steps", "2"]) == 0
    saved = json.loads((out / "train_config.json").read_text())["config"]
    assert saved["steps"] == 2 and saved["num_tokens"] == 32 and saved["lr"] == 3e-3


def test_train_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    assert main(["train-vae", "--config", str(bad)]) == 1
    assert "unknown VAETrainConfig fields ['stepz']" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert main(["train-vae", "--config", str(bad)]) == 1
    assert "expected a mapping" in capsys.readouterr().err
    piped = tmp_path / "piped.yaml"
    piped.write_text("shards: 'pipe:echo hi'\n")
    assert main(["train-vae", "--config", str(piped)]) == 1
    assert "never runs commands" in capsys.readouterr().err


def test_app_subcommand_takes_its_flags():
    from dalle_core.cli import build_parser

    args = build_parser().parse_args(["app", "--pipeline", "outputs/demo/models", "--port", "7861"])
    assert args.command == "app" and args.pipeline == "outputs/demo/models" and args.port == 7861
    assert args.host == "127.0.0.1" and not args.share


def test_every_help_example_parses():
    import shlex

    from dalle_core.cli import EXAMPLES, build_parser

    parser = build_parser()
    for command, lines in EXAMPLES.items():
        for line in lines:
            argv = shlex.split(line.split("  #")[0])
            assert argv[0] == "dalle-core" and argv[1] == command, line
            assert parser.parse_args(argv[1:]).command == command, line
