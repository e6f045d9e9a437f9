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
    from dalle_core.training.outputs import plot_losses

    plot_losses(tmp_path / "l.png", {"a": [3.0, 2.0, 1.0], "b": [0.5] * 10, "c": [0.1]})
    with Image.open(tmp_path / "l.png") as img:
        assert img.size == (900, 200)
        assert len(img.getcolors(maxcolors=1 << 16) or ()) > 2  # more than a blank canvas
    for curves, message in (({}, "at least one curve"), ({"a": []}, "'a' has no values"),
                            ({"a": [1.0, float("nan")]}, "NaN or infinite")):
        with pytest.raises(ValueError, match=message):
            plot_losses(tmp_path / "bad.png", curves)
    assert not (tmp_path / "bad.png").exists()


def test_read_metrics_returns_the_metric_rows_without_events_or_cut_lines(tmp_path):
    from dalle_core.training.outputs import MetricsLog, read_metrics

    log = MetricsLog(tmp_path)
    log.event(0, "data", usable=3)
    log.log(1, {"loss": 2.0})
    log.log(2, {"loss": torch.tensor(1.5)})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        read_metrics(tmp_path / "missing")


def test_demo_configs_build_the_demo_models(tmp_path):
    """The trainers' configs build exactly the models the demo built itself before it used the trainers."""
    from dalle_core import CLIP, DALLE, DiscreteVAE

    for size in (32, 64):
        cfg = demo.DemoConfig(image_size=size)
        vae_cfg = demo.vae_config(cfg, tmp_path / "vae")
        vae = DiscreteVAE(**vae_cfg.model_kwargs())
        expected = DiscreteVAE(image_size=size, num_layers={32: 2, 64: 3}[size], num_tokens=128, codebook_dim=64,
                               hidden_dim=32, kl_div_loss_weight=0.01, entropy_loss_weight=0.0)
        assert vae.config == expected.config and vae.fmap_size == 8
        # DiscreteVAE's own fixed temperature and a constant KL weight: the trainer anneals and warms up nothing
        assert {vae_cfg.temperature_at(s) for s in (0, 700, 1500)} == {expected.temperature}
        assert {vae_cfg.kl_weight_at(s) for s in (0, 700, 1500)} == {0.01}
        dalle_cfg = demo.dalle_config(cfg, tmp_path / "dalle", tmp_path / "vae" / "model", tmp_path / "t.json", 10)
        dalle = DALLE(vae=expected, num_text_tokens=50, **dalle_cfg.model_kwargs())
        old = DALLE(dim=128, vae=expected, num_text_tokens=50, text_seq_len=10, depth=4, heads=4, dim_head=32)
        assert dalle.config == old.config
        clip_cfg = demo.clip_config(cfg, tmp_path / "clip", tmp_path / "t.json", 10)
        clip = CLIP(num_text_tokens=50, **clip_cfg.model_kwargs())
        old = CLIP(dim_text=128, dim_image=128, dim_latent=128, num_text_tokens=50, text_enc_depth=2, text_seq_len=10,
                   text_heads=4, visual_enc_depth=2, visual_heads=4, visual_image_size=size,
                   visual_patch_size=size // 4)
        assert clip.config == old.config


def test_demo_training_options_keep_its_schedule(tmp_path):
    """Learning rates, batch sizes and weight decay as before; warm-up over 5% of the steps, cosine to a tenth;
    no clipping, no EMA, no sample grids; every step's loss logged; one checkpoint, at the end."""
    cfg = demo.DemoConfig()
    tok = tmp_path / "t.json"
    configs = {"vae": (demo.vae_config(cfg, tmp_path), cfg.vae_steps, 64, 2e-3, 0.0),
               "dalle": (demo.dalle_config(cfg, tmp_path, tmp_path, tok, 10), cfg.dalle_steps, 32, 5e-3, 0.01),
               "clip": (demo.clip_config(cfg, tmp_path, tok, 10), cfg.clip_steps, 128, 1e-3, 0.01)}
    for name, (config, steps, batch, lr, decay) in configs.items():
        assert (config.steps, config.batch_size, config.lr, config.weight_decay) == (steps, batch, lr, decay), name
        assert config.warmup_steps == steps // 20 and config.min_lr_ratio == 0.1
        assert config.max_grad_norm == 0 and config.ema_decay == 0 and config.sample_every == 0
        assert config.log_every == 1 and config.save_every == steps and config.cpu and config.seed == cfg.seed
    assert configs["dalle"][0].null_cond_prob == 0.1


def test_quick_demo_trains_through_the_library_trainers(quick_run):
    from dalle_core import CLIP, DALLE, DiscreteVAE

    out, summary = quick_run
    runs, cfg = out / "runs", summary["config"]
    curves = json.loads((out / "losses.json").read_text())
    for kind, name, cls in (("vae", "dVAE", DiscreteVAE), ("dalle", "DALLE", DALLE), ("clip", "CLIP", CLIP)):
        saved = json.loads((runs / kind / "train_config.json").read_text())
        assert saved["trainer"] == kind and saved["config"]["steps"] == cfg[f"{kind}_steps"]
        rows = [json.loads(line) for line in (runs / kind / "metrics.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in rows if "loss" in row]
        assert losses == curves[name] and len(losses) == cfg[f"{kind}_steps"]
        assert list((runs / kind / "checkpoints").iterdir())  # the final checkpoint
        trained, kept = cls.from_pretrained(runs / kind / "model"), cls.from_pretrained(out / "models" / kind)
        assert trained.config == kept.config
        for (key, a), (_, b) in zip(trained.state_dict().items(), kept.state_dict().items()):
            assert torch.equal(a, b), (kind, key)
    for kind in ("dalle", "clip"):
        assert (runs / kind / "model" / "tokenizer.json").read_text() == \
            (out / "models" / kind / "tokenizer.json").read_text()
    assert summary["dalle"]["final_loss"] == pytest.approx(sum(curves["DALLE"][-50:]) / len(curves["DALLE"][-50:]))


def test_fresh_run_dir_replaces_only_an_earlier_demo_run_of_the_same_kind(tmp_path):
    run = tmp_path / "vae"
    assert demo.fresh_run_dir(run, "vae") == run and not run.exists()  # absent: nothing to do
    run.mkdir()
    demo.fresh_run_dir(run, "vae")  # empty: kept
    assert run.is_dir()
    (run / "train_config.json").write_text(json.dumps({"trainer": "vae", "config": {}}))
    (run / "metrics.jsonl").write_text("{}\n")
    demo.fresh_run_dir(run, "vae")
    assert not run.exists()
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"trainer": "clip", "config": {}}))
    with pytest.raises(ValueError, match="not a demo vae run"):
        demo.fresh_run_dir(run, "vae")
    (run / "train_config.json").unlink()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a demo vae run"):
        demo.fresh_run_dir(run, "vae")
    assert (run / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a plain directory"):
        demo.fresh_run_dir(tmp_path / "file", "vae")


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
    # the same models as one pipeline
    from dalle_core import DALLEPipeline

    pipe = DALLEPipeline.from_pretrained(models)
    assert pipe.clip is not None and pipe.tokenizer.vocab_size == dalle.text_vocab_size
    assert cli_main(["generate", "a red circle", "--pipeline", str(models), "--num-images", "2", "--seed", "0",
                     "--rerank", "clip", "--candidates", "2", "--out", str(tmp_path / "pipe")]) == 0
    assert len(list((tmp_path / "pipe").rglob("0*.png"))) == 2


def test_dalle_core_demo_subcommand_takes_the_demo_flags():
    from dalle_core.cli import build_parser

    args = build_parser().parse_args(["demo", "--quick", "--steps-scale", "2", "--out", "x", "--image-size", "64"])
    assert args.command == "demo" and args.quick and args.steps_scale == 2 and args.image_size == 64
    result = subprocess.run([sys.executable, "-m", "dalle_core", "demo", "--image-size", "48"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "power of two" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vq", "fsq", "lfq", "vqgan"])
def test_quick_demo_runs_over_every_tokenizer_kind(tmp_path, kind):
    from dalle_core import DALLE, from_pretrained

    threads = torch.get_num_threads()
    try:
        summary = demo.main(["--quick", "--tokenizer", kind, "--out", str(tmp_path), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert summary["config"]["tokenizer"] == summary["vae"]["kind"] == kind
    saved = json.loads((tmp_path / "runs" / "vae" / "train_config.json").read_text())
    assert saved["config"]["kind"] == kind
    vae = from_pretrained(None, tmp_path / "models" / "vae")
    expected = {"vq": "VQVAE", "fsq": "VQVAE", "lfq": "VQVAE", "vqgan": "VQGanVAE"}[kind]
    assert type(vae).__name__ == expected and vae.fmap_size == 8 and vae.num_tokens == 128
    dalle = DALLE.from_pretrained(tmp_path / "models" / "dalle")
    assert type(dalle.vae).__name__ == expected
    assert set(json.loads((tmp_path / "losses.json").read_text())) == {demo.TOKENIZER_NAMES[kind], "DALLE", "CLIP"}
    assert 0 <= summary["vae"]["reconstruction_mse"] < 1
