"""The demo: the --quick run trains, generates, scores and writes every promised file."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from dalle_core.demo import runner as demo

PNGS = ("reconstructions.png", "generations_seen.png", "generations_heldout.png", "losses.png")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    try:
        summary = demo.main(["--quick", "--out", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_quick_demo_writes_every_promised_file(quick_run):
    out, summary = quick_run
    for name in PNGS:
        with Image.open(out / name) as img:
            img.verify()
        assert name in summary["files"]
    with Image.open(out / "generations_seen.png") as img:
        assert img.width > 4 * 64 and img.height > 8 * 64  # a caption column, four image columns, 8 rows
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_quick_demo_summary_has_every_score(quick_run):
    _, summary = quick_run
    assert {"config", "seconds", "threads", "vae", "dalle", "clip", "results", "targets", "files"} <= set(summary)
    assert 0 < summary["vae"]["codebook_usage"] <= 1 and summary["vae"]["perplexity"] >= 1
    for split in ("seen", "heldout"):
        assert set(summary["results"][split]) == set(demo.SETTINGS)
        for scores in summary["results"][split].values():
            assert scores["n"] == summary["config"]["eval_prompts"]
            assert 0 <= scores["all_attributes"] <= scores["colour_and_shape"] <= 1
    assert set(summary["targets"]) == set(demo.TARGETS)
    for target in summary["targets"].values():
        assert target["met"] == (target["measured"] >= target["target"])
    assert all(v > 0 for v in (summary["dalle"]["final_loss"], summary["clip"]["final_loss"]))
    assert 1 / 16 <= summary["dalle"]["distinct_samples"] <= 1


def test_diversity_is_one_over_samples_for_greedy_decoding_and_higher_when_sampling():
    from dalle_core import DALLE, DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=20, text_seq_len=4, depth=1, heads=2, dim_head=16).eval()
    text = torch.randint(1, 20, (2, 4))
    gen = torch.Generator().manual_seed(0)
    greedy = demo.DemoConfig(filter_thres=0.9, temperature=1e-6)  # argmax at every step
    assert demo.diversity(dalle, text, greedy, gen, samples=4) == pytest.approx(1 / 4)
    assert demo.diversity(dalle, text, demo.DemoConfig(filter_thres=0.0), gen, samples=4) > 0.5


def test_quick_demo_prints_its_summary(quick_run, capsys):
    _, summary = quick_run
    text = demo.format_summary(summary)
    assert "codebook usage" in text and "heldout" in text and "clip_best_of_4" in text


def test_steps_scale_and_quick_set_the_schedule():
    base = demo.DemoConfig.from_args(demo.parse_args([]))
    assert base == demo.DemoConfig()
    longer = demo.DemoConfig.from_args(demo.parse_args(["--steps-scale", "2", "--image-size", "64"]))
    assert longer.dalle_steps == 2 * base.dalle_steps and longer.image_size == 64
    quick = demo.DemoConfig.from_args(demo.parse_args(["--quick"]))
    assert quick.dalle_steps < base.dalle_steps and quick.eval_prompts < base.eval_prompts


@pytest.mark.parametrize("argv", [["--image-size", "48"], ["--image-size", "16"], ["--steps-scale", "0"]])
def test_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        demo.parse_args(argv)


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "dalle_core.demo", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--steps-scale" in result.stdout and "--quick" in result.stdout


def test_loss_plot_is_drawn_with_pillow(tmp_path):
    demo.plot_losses(tmp_path / "l.png", {"a": [3.0, 2.0, 1.0], "b": [0.5] * 10})
    with Image.open(tmp_path / "l.png") as img:
        assert img.size == (600, 200)
        assert len(img.getcolors(maxcolors=1 << 16) or ()) > 2  # more than a blank canvas


def test_quick_demo_saves_models_that_dalle_core_generate_reads(quick_run, tmp_path):
    from dalle_core import CLIP, DALLE, DiscreteVAE
    from dalle_core.cli import main as cli_main

    out, _ = quick_run
    models = out / "models"
    assert isinstance(DiscreteVAE.from_pretrained(models / "vae"), DiscreteVAE)
    assert isinstance(CLIP.from_pretrained(models / "clip"), CLIP)
    dalle = DALLE.from_pretrained(models / "dalle")
    assert (models / "dalle" / "tokenizer.json").is_file()
    status = cli_main(["generate", "a red circle on the left", "--checkpoint", str(models / "dalle"), "--clip",
                       str(models / "clip"), "--num-images", "2", "--seed", "0", "--out", str(tmp_path)])
    assert status == 0
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 3  # two samples and their grid
    with Image.open(pngs[0]) as img:
        assert img.size == (dalle.vae.image_size, dalle.vae.image_size)


def test_dalle_core_demo_subcommand_takes_the_demo_flags():
    from dalle_core.cli import build_parser

    args = build_parser().parse_args(["demo", "--quick", "--steps-scale", "2", "--out", "x", "--image-size", "64"])
    assert args.command == "demo" and args.quick and args.steps_scale == 2 and args.image_size == 64
    result = subprocess.run([sys.executable, "-m", "dalle_core", "demo", "--image-size", "48"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "power of two" in result.stderr
