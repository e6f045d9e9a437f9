"""DALL-E 2 (dalle_core.dalle2): the diffusion's closed forms, DDIM against DDPM, guidance, the prior's best-of-N
choice, bad input, save/load round trips, and the trainers over a frozen CLIP."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from dalle_core import CLIP, CheckpointError, from_pretrained
from dalle_core.dalle2 import DALLE2, Decoder, DiffusionPrior, NoiseSchedule, Unet
from dalle_core.dalle2.diffusion import OBJECTIVES, cosine_alphas_cumprod
from dalle_core.dalle2.training import DecoderTrainConfig, PriorTrainConfig, train_decoder, train_prior
from dalle_core.tokenizers import WordTokenizer, save_tokenizer
from helpers import Stop, StopAt, make_folder, one_thread, run_cli, same_weights  # noqa: F401  (one_thread: an autouse fixture)

WORDS = ["a", "red", "green", "blue", "circle", "square", "on", "the", "left", "right"]
VOCAB, TEXT_LEN, LATENT, SIZE = len(WORDS) + 2, 5, 16, 16  # a WordTokenizer's ids: padding, <unk>, the words


def tiny_clip() -> CLIP:
    return CLIP(dim_text=32, dim_image=32, dim_latent=LATENT, num_text_tokens=VOCAB, text_enc_depth=1,
                text_seq_len=TEXT_LEN, text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=SIZE,
                visual_patch_size=4)


def tiny_prior(**kw) -> DiffusionPrior:
    return DiffusionPrior(**{**dict(dim_embed=LATENT, num_text_tokens=VOCAB, text_seq_len=TEXT_LEN, dim=32, depth=2,
                                    heads=2, dim_head=16, timesteps=50, sample_steps=5), **kw})


def tiny_decoder(**kw) -> Decoder:
    unet = Unet(dim=8, dim_mults=(1, 2), cond_dim=LATENT, attn_dim_head=8, attn_heads=2, groups=4)
    return Decoder(unet, **{**dict(image_size=SIZE, timesteps=50, sample_steps=4), **kw})


def text_batch(b: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    text = torch.randint(1, VOCAB, (b, TEXT_LEN))
    text[:, -1] = 0  # padding
    return text


def unit(b: int, d: int = LATENT) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(b, d), dim=-1)


# --- the noise schedule's closed forms ----------------------------------------------------------------------------


def test_cosine_schedule_is_nichol_and_dhariwals():
    T, s = 1000, 0.008
    abar = cosine_alphas_cumprod(T)
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    unclipped = int((betas < 0.999 - 1e-9).sum())
    assert unclipped >= T - 5  # only the last steps hit the clip
    torch.testing.assert_close(abar[:unclipped], expected[:unclipped], rtol=1e-10, atol=1e-12)
    assert float(betas.max()) <= 0.999 + 1e-12 and bool((abar[1:] < abar[:-1]).all())
    assert float(abar[0]) > 0.9999 and float(abar[-1]) < 1e-4  # almost clean at t=0, almost pure noise at T-1


def test_posterior_is_the_gaussian_conditional_of_the_forward_process():
    """q(x_{t-1} | x_t, x_0) from Bayes' rule on x_{t-1} = sqrt(abar_{t-1}) x0 + ..., x_t = sqrt(alpha_t) x_{t-1} + ..."""
    sched = NoiseSchedule(100).double()
    x0, xt = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 98, 99])
    mean, var = sched.posterior(x0, xt, t)
    abar = cosine_alphas_cumprod(100)
    prev, beta = abar[t - 1][:, None], 1 - abar[t][:, None] / abar[t - 1][:, None]
    precision = 1 / (1 - prev) + (1 - beta) / beta
    torch.testing.assert_close(var.expand_as(x0), (1 / precision).expand_as(x0), rtol=1e-4, atol=1e-7)
    expected = (prev.sqrt() * x0 / (1 - prev) + (1 - beta).sqrt() * xt / beta) / precision
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_convert_back_to_x0_and_noise(objective):
    sched = NoiseSchedule(200).double()
    x0, noise = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 17, 100, 150, 199])
    xt = sched.q_sample(x0, t, noise)
    abar = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    start = sched.predict_start(objective, xt, t, sched.target(objective, x0, t, noise))
    torch.testing.assert_close(start, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sched.predict_noise(xt, t, start), noise, rtol=1e-6, atol=1e-5)


def test_ddim_with_eta_one_and_every_step_is_ddpms_posterior_step():
    sched = NoiseSchedule(100).double()
    x0, xt, z = (torch.randn(5, 7, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1, 5, 40, 80, 99])
    mean, var = sched.posterior(x0, xt, t)
    step = sched.ddim_step(xt, t, t - 1, x0, eta=1.0, noise=z)
    torch.testing.assert_close(step, mean + var.sqrt() * z, rtol=1e-4, atol=1e-5)


def test_sampling_loop_with_every_step_and_eta_one_is_ancestral_ddpm():
    sched = NoiseSchedule(20).double()
    model = torch.nn.Linear(3, 3).double()

    def denoise(x, t):  # any eps-predictor
        return torch.tanh(model(x) + t[:, None].double() / 20)

    ours = sched.sample(denoise, (4, 3), objective="eps", steps=20, eta=1.0,
                        generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)  # the textbook loop, from the same noise
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    for i in reversed(range(20)):
        t = torch.full((4,), i)
        x0 = sched.predict_start("eps", x, t, denoise(x, t))
        mean, var = sched.posterior(x0, x, t)
        x = mean + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64) if i > 0 else mean
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("steps", [1, 3, 50])
def test_ddim_with_a_perfect_denoiser_returns_its_x0(objective, steps):
    sched = NoiseSchedule(50).double()
    target = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    def oracle(x, t):
        return sched.target(objective, target, t, sched.predict_noise(x, t, target))

    out = sched.sample(oracle, target.shape, objective=objective, steps=steps, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, target, rtol=1e-6, atol=1e-6)


def test_sample_indices_spread_over_the_schedule():
    sched = NoiseSchedule(1000)
    assert sched.sample_indices(4) == [999, 666, 333, 0]
    assert sched.sample_indices(None) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="at most timesteps"):
        sched.sample_indices(1001)


# --- guidance and the prior's choice ------------------------------------------------------------------------------


def test_decoder_guidance_at_scale_one_is_the_conditional_model_and_otherwise_the_cfg_formula():
    dec = tiny_decoder().eval()
    for p in dec.unet.parameters():  # the zero-initialised residual branches would hide the embedding's effect
        torch.nn.init.normal_(p, std=0.1)
    x, t, e = torch.randn(3, 3, SIZE, SIZE), torch.tensor([3, 20, 49]), unit(3)
    with torch.no_grad():
        cond = dec.unet(x, t, e)
        null = dec.unet(x, t, dec.null_embed.expand(3, -1))
        torch.testing.assert_close(dec.guided_output(x, t, e, 1.0), cond)
        torch.testing.assert_close(dec.guided_output(x, t, e, 3.0), null + 3 * (cond - null), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(cond, null)


def test_prior_guidance_at_scale_one_samples_the_conditional_denoiser():
    prior, text, te = tiny_prior(), text_batch(), unit(3)
    ours = prior.sample(text, te, cond_scale=1.0, candidates=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = prior.schedule.sample(lambda x, t: prior.denoise(text, te, x, t), (3, LATENT), objective="x0",
                                    steps=prior.sample_steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, torch.nn.functional.normalize(raw, dim=-1))
    guided = prior.sample(text, te, cond_scale=4.0, candidates=1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(ours, guided)


def test_prior_keeps_the_candidate_closest_to_the_text_embedding(monkeypatch):
    prior, text = tiny_prior(), text_batch(2)
    te = torch.eye(LATENT)[:2]  # caption 0 points along e0, caption 1 along e1
    drawn = torch.zeros(4, LATENT)  # rows: caption 0's two candidates, then caption 1's
    drawn[0, 1], drawn[1, 0], drawn[2, 1], drawn[3, 0] = 1, 1, 1, 1
    monkeypatch.setattr(prior.schedule, "sample", lambda *a, **k: drawn.clone())
    picked = prior.sample(text, te, candidates=2)
    torch.testing.assert_close(picked, torch.stack([drawn[1], drawn[2]]))  # e0 for caption 0, e1 for caption 1
    cands = unit(6).view(3, 2, LATENT)
    best = DiffusionPrior.best_of(cands, te[:1].expand(3, -1))
    for b in range(3):
        assert torch.equal(best[b], cands[b, int((cands[b] @ te[0]).argmax())])


def test_prior_loss_drops_the_caption_at_the_configured_rate(monkeypatch):
    prior, text, te, ie = tiny_prior(cond_drop_prob=1.0), text_batch(), unit(3), unit(3)
    seen = {}
    real = prior.denoise

    def spy(text, text_embed, noised, t, keep_text=None):
        seen["keep"] = keep_text
        return real(text, text_embed, noised, t, keep_text)

    monkeypatch.setattr(prior, "denoise", spy)
    prior(text, te, ie).backward()
    assert not seen["keep"].any()
    assert prior.null_text_embed.grad is not None and prior.null_text_tokens.grad.abs().sum() > 0


# --- the models, end to end ---------------------------------------------------------------------------------------


def dalle2(tokenizer=None) -> DALLE2:
    torch.manual_seed(0)
    return DALLE2(prior=tiny_prior(), decoder=tiny_decoder(), clip=tiny_clip(), tokenizer=tokenizer)


def test_dalle2_draws_images_in_unit_range_and_variations():
    model = dalle2()
    images = model(text_batch(), cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, SIZE, SIZE) and 0 <= float(images.min()) and float(images.max()) <= 1
    again = model(text_batch(), cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # seeded: reproducible
    assert model.variations(images, generator=torch.Generator().manual_seed(1)).shape == images.shape
    embeds = model.image_embeddings(text_batch(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(3))


def test_dalle2_reads_strings_through_its_tokenizer(tmp_path):
    tok = WordTokenizer(WORDS)
    model = dalle2(tok)
    out = model(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="tokenizer"):
        dalle2()("a red circle")
    model.save_pretrained(tmp_path / "d2")
    loaded = DALLE2.from_pretrained(tmp_path / "d2")
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == tok.vocab_size
    again = loaded(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)


def test_save_and_load_round_trips(tmp_path):
    torch.manual_seed(0)
    for model in (tiny_prior(), tiny_decoder(), dalle2()):
        directory = model.save_pretrained(tmp_path / type(model).__name__)
        loaded = type(model).from_pretrained(directory)
        assert same_weights(model, loaded) and loaded.config == model.config
        assert type(from_pretrained(None, directory)) is type(model)
    with pytest.raises(CheckpointError, match="holds a Decoder"):
        DiffusionPrior.from_pretrained(tmp_path / "Decoder")


def test_hostile_configs_are_refused_before_building(tmp_path):
    """A config asking for a trillion noise levels (tables of terabytes) is refused, not built."""
    import safetensors
    from safetensors.torch import save_file

    from dalle_core.pretrained import _CONFIG_KEY

    directory = tiny_prior().save_pretrained(tmp_path / "p")
    doc = json.loads((directory / "config.json").read_text())
    doc["config"]["timesteps"] = 10**12
    (directory / "config.json").write_text(json.dumps(doc))
    path = directory / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**metadata, _CONFIG_KEY: json.dumps(doc)})
    with pytest.raises(CheckpointError, match="timesteps must be at most"):
        DiffusionPrior.from_pretrained(directory)


def test_bad_input_is_refused_with_what_was_expected():
    prior, dec, text = tiny_prior(), tiny_decoder(), text_batch()
    with pytest.raises(ValueError, match="padded to text_seq_len"):
        prior(text[:, :3], unit(3), unit(3))
    with pytest.raises(ValueError, match="NaN"):
        prior(text, unit(3), torch.full((3, LATENT), float("nan")))
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        prior(text, unit(3, 8), unit(3))
    with pytest.raises(ValueError, match="batch sizes"):
        prior(text, unit(2), unit(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dec(torch.rand(2, 3, SIZE, SIZE) * 255, unit(2))
    with pytest.raises(ValueError, match="shape"):
        dec(torch.rand(2, 3, 8, 8), unit(2))
    with pytest.raises(ValueError, match="objective"):
        tiny_decoder(objective="score")
    with pytest.raises(ValueError, match="divisible"):
        tiny_decoder(image_size=15)
    with pytest.raises(ValueError, match="sample_steps"):
        tiny_prior(sample_steps=500)
    with pytest.raises(ValueError, match="timesteps must be at most"):
        NoiseSchedule(10**9)
    with pytest.raises(ValueError, match="groups"):
        Unet(dim=6, groups=4)
    with pytest.raises(ValueError, match="dim_embed.*dim_latent"):
        DALLE2(prior=tiny_prior(dim_embed=8), decoder=tiny_decoder(), clip=tiny_clip())
    with pytest.raises(ValueError, match="image_size"):
        DALLE2(prior=tiny_prior(), decoder=tiny_decoder(image_size=32), clip=tiny_clip())
    with pytest.raises(TypeError, match="must be a"):
        DALLE2(prior=tiny_decoder(), decoder=tiny_decoder(), clip=tiny_clip())


# --- training over a frozen CLIP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    tiny_clip().save_pretrained(directory)
    save_tokenizer(WordTokenizer(WORDS), directory)  # found by the trainers beside the CLIP
    return directory


def pairs(n: int = 16) -> TensorDataset:
    torch.manual_seed(2)
    return TensorDataset(torch.randint(1, VOCAB, (n, TEXT_LEN)), torch.rand(n, 3, SIZE, SIZE))


def small(**kw):
    return {**dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=0, sample_every=2, save_every=2, log_every=1,
                   cpu=True), **kw}


def test_prior_and_decoder_train_over_a_frozen_clip_and_resume_exactly(tmp_path, clip_dir):
    clip_before = CLIP.from_pretrained(clip_dir)
    prior = train_prior(PriorTrainConfig(clip=str(clip_dir), dim=32, depth=1, heads=2, dim_head=16, timesteps=50,
                                         sample_steps=4, out=str(tmp_path / "prior"), **small()), dataset=pairs())
    assert prior.dim_embed == LATENT and prior.text_seq_len == TEXT_LEN
    assert DiffusionPrior.from_pretrained(tmp_path / "prior" / "model").config == prior.config
    kwargs = dict(clip=str(clip_dir), dim=8, dim_mults=(1, 2), groups=4, attn_dim_head=8, timesteps=50,
                  sample_steps=3, sample_steps_grid=2)
    full = train_decoder(DecoderTrainConfig(out=str(tmp_path / "dec"), **kwargs, **small()), dataset=pairs())
    assert (tmp_path / "dec" / "samples").is_dir() and (tmp_path / "dec" / "loss.png").is_file()
    assert full.image_size == SIZE and full.unet.cond_dim == LATENT
    # stopped after update 3 (its last checkpoint: update 2), then resumed: the weights of the run that never stopped
    with pytest.raises(Stop):
        train_decoder(DecoderTrainConfig(out=str(tmp_path / "dec2"), **kwargs, **small()), dataset=pairs(),
                      callbacks=[StopAt(3)])
    resumed = train_decoder(DecoderTrainConfig(out=str(tmp_path / "dec2"), **kwargs, **small()), dataset=pairs(),
                            resume=True)
    assert same_weights(full, resumed)
    assert same_weights(clip_before, CLIP.from_pretrained(clip_dir))  # the CLIP is never updated
    model = DALLE2(prior=prior, decoder=full, clip=clip_before)
    assert model(torch.randint(1, VOCAB, (2, TEXT_LEN))).shape == (2, 3, SIZE, SIZE)


def test_trainers_need_a_clip(tmp_path):
    with pytest.raises(ValueError, match="--clip"):
        train_prior(PriorTrainConfig(out=str(tmp_path / "p"), **small()), dataset=pairs())
    with pytest.raises(FileNotFoundError, match="not a directory"):
        train_decoder(DecoderTrainConfig(clip=str(tmp_path / "none"), out=str(tmp_path / "d"), **small()),
                      dataset=pairs())


# --- the command line ---------------------------------------------------------------------------------------------


def test_train_prior_and_train_decoder_commands(tmp_path, clip_dir):
    folder = make_folder(tmp_path / "data")  # 16x16 captioned pictures, the tiny CLIP's size
    common = ["--folder", str(folder), "--clip", str(clip_dir), "--steps", "2", "--batch-size", "4", "--cpu",
              "--sample-every", "0", "--log-every", "1", "--timesteps", "50"]
    done = run_cli(["train-prior", *common, "--out", str(tmp_path / "prior"), "--dim", "32", "--depth", "1",
                    "--heads", "2", "--dim-head", "16", "--sample-steps", "4"])
    assert done.returncode == 0, done.stderr
    done = run_cli(["train-decoder", *common, "--out", str(tmp_path / "dec"), "--dim", "8", "--dim-mults", "1", "2",
                    "--groups", "4", "--attn-dim-head", "8", "--sample-steps", "4"])
    assert done.returncode == 0, done.stderr
    model = DALLE2(prior=DiffusionPrior.from_pretrained(tmp_path / "prior" / "model"),
                   decoder=Decoder.from_pretrained(tmp_path / "dec" / "model"), clip=CLIP.from_pretrained(clip_dir))
    assert model(torch.randint(1, VOCAB, (1, TEXT_LEN))).shape == (1, 3, SIZE, SIZE)
    failed = run_cli(["train-decoder", "--folder", str(folder), "--out", str(tmp_path / "d2"), "--steps", "1"])
    assert failed.returncode == 1 and "--clip" in failed.stderr


def test_demo_with_dalle2_runs_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "demo"
    done = run_cli(["demo", "--model", "dalle2", "--quick", "--out", str(out), "--threads", "1"])
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "dalle2" and set(summary["results"]) == {"seen", "heldout"}
    assert set(summary["results"]["seen"]) == {"plain", "guided"} and 0 < summary["distinct_samples"] <= 1
    assert summary["sampling_seconds_per_image"] > 0 and summary["seconds"]["decoder"] > 0
    for name in ("generations_seen.png", "generations_heldout.png", "variations.png", "losses.png"):
        assert (out / name).is_file()
    model = DALLE2.from_pretrained(out / "models" / "dalle2")
    assert model("a red circle on the left", generator=torch.Generator().manual_seed(0)).shape == (1, 3, 32, 32)
    again = run_cli(["demo", "--model", "dalle2", "--quick", "--clip", str(out / "runs" / "clip" / "model"),
                     "--out", str(tmp_path / "again"), "--threads", "1"])  # over a CLIP trained before
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["clip"].endswith("model")
    refused = run_cli(["demo", "--clip", str(out / "runs" / "clip" / "model"), "--quick", "--out", str(tmp_path / "x")])
    assert refused.returncode == 2 and "--clip is for --model dalle2" in refused.stderr


def test_the_hub_model_card_loads_a_dalle2_from_the_top_level_package():
    from dalle_core.hub import model_card

    card = model_card(dalle2(), "someone/shapes-dalle2")
    assert "from dalle_core import DALLE2" in card and 'DALLE2.from_pretrained("someone/shapes-dalle2")' in card
    exec("from dalle_core import DALLE2", {})  # noqa: S102 - the card's own import line
