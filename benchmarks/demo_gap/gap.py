"""Old demo loop vs the library trainers, one stage at a time, with toggles for each known difference.

Run from the repository root, one process at a time (one thread each):

  # dVAE stage
  python benchmarks/demo_gap/gap.py vae --arm old     --seed 0
  python benchmarks/demo_gap/gap.py vae --arm trainer --seed 0
  # toggles (either arm): --order randint|perm  --sched old|new  (default: the arm's own)
  # DALLE stage over one fixed dVAE directory (save_pretrained), e.g. a --save-vae output of the vae stage:
  python benchmarks/demo_gap/gap.py dalle --arm old --seed 0 --vae-dir DIR
  #   extra DALLE toggle: --wd all|matrices (default: the arm's own)

Each run appends one JSON line to --results (default outputs/demo_gap/results.jsonl).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from dalle_core.demo import runner, shapes
from dalle_core.demo.runner import DemoConfig, render_set, score, generate
from dalle_core.models.dalle import DALLE
from dalle_core.models.vae import DiscreteVAE, codebook_usage
from dalle_core.tokenizers import save_tokenizer
from dalle_core.training import batches as tb, common as tc, schedules as ts
from dalle_core.training import train_vae, train_dalle
from dalle_core.data.common import generator, mix_seed


# --- toggles ---------------------------------------------------------------------------------------------------

def old_multiplier(s: int, steps: int) -> float:
    """The old loop's LR multiplier: warm-up ramp times a cosine over all steps, to a tenth."""
    warmup = max(1, steps // 20)
    return min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))


def new_multiplier(s: int, steps: int) -> float:
    """The trainer's: linear warm-up over steps // 20, then cosine to a tenth over the remaining steps."""
    return ts.warmup_cosine(s, warmup_steps=steps // 20, total_steps=steps, min_ratio=0.1)


def patch_trainer(order: str, sched: str, wd: str) -> None:
    """Monkeypatch the library trainer (this process only) toward the old loop."""
    if order == "randint":  # each epoch's "permutation" replaced by draws with replacement
        def _iter(self):
            g = generator(mix_seed(self.seed, "order", self.epoch))
            return iter(torch.randint(0, self.size, (self.size,), generator=g).tolist())
        tb.EpochShuffle.__iter__ = _iter
    if sched == "old":

        def _wc(step, *, warmup_steps, total_steps, min_ratio):
            assert min_ratio == 0.1 and warmup_steps == max(1, total_steps // 20)
            return old_multiplier(step, total_steps)
        ts.warmup_cosine = _wc
    if wd == "all":
        def _opt(model, config):
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
        tc.make_optimizer = _opt


class Resampled(torch.utils.data.Dataset):
    """`count` items of `dataset` drawn with replacement (seeded): the old loop's order, through the trainer."""

    def __init__(self, dataset, count, seed):
        self.dataset = dataset
        self.index = torch.randint(len(dataset), (count,), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.dataset[int(self.index[i])]


def old_train(name, model, loss_fn, num_items, steps, batch_size, lr, weight_decay=0.0, *, order="randint",
              sched="old", wd="all", seed=0):
    """The old demo's `train` (git show 7ebceb6^:dalle_core/demo/runner.py), with toggles."""
    params = [p for p in model.parameters() if p.requires_grad]
    if wd == "all":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                                 {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    mult = old_multiplier if sched == "old" else new_multiplier
    sched_ = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: mult(s, steps))
    if order == "perm":  # the trainer's exact order: EpochShuffle(seed) epochs, drop_last
        shuffle = tb.EpochShuffle(num_items, seed)
        per_epoch = num_items // batch_size

        def batches():
            epoch = 0
            while True:
                shuffle.set_epoch(epoch)
                perm = torch.tensor(list(iter(shuffle)))
                for b in range(per_epoch):
                    yield perm[b * batch_size:(b + 1) * batch_size]
                epoch += 1
        it = batches()
        draw = lambda: next(it)
    else:
        draw = lambda: torch.randint(0, num_items, (batch_size,))
    losses = []
    model.train()
    with tqdm(range(steps), desc=name, unit="step", mininterval=5.0) as bar:
        for step in bar:
            loss = loss_fn(draw())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched_.step()
            losses.append(loss.item())
    model.eval()
    return losses


def old_build_vae(cfg: DemoConfig) -> DiscreteVAE:
    return DiscreteVAE(image_size=cfg.image_size, num_layers=2 + int(math.log2(cfg.image_size // 32)),
                       num_tokens=128, codebook_dim=64, hidden_dim=32, kl_div_loss_weight=cfg.vae_kl_weight,
                       entropy_loss_weight=cfg.vae_entropy_weight)


def old_build_dalle(vae, text_len, vocab) -> DALLE:
    return DALLE(dim=128, vae=vae, num_text_tokens=vocab, text_seq_len=text_len, depth=4, heads=4, dim_head=32)


# --- data, as runner.run (and the old run) does it --------------------------------------------------------------

def demo_data(cfg: DemoConfig):
    torch.manual_seed(cfg.seed)
    tokenizer = shapes.word_tokenizer()
    text_len = shapes.caption_length_bound(relations=False, tokenizer=tokenizer)
    captions, images = render_set(cfg.train_images, "train", cfg.seed, cfg.image_size)
    text = tokenizer.tokenize(captions, text_len)
    prompts = {name: render_set(cfg.eval_prompts, split, cfg.seed + 1, cfg.image_size)
               for name, split in (("seen", "train"), ("heldout", "heldout"))}
    return tokenizer, text_len, captions, images, text, prompts


@torch.no_grad()
def vae_scores(vae, images, captions):
    """The old (and current) demo's numbers: usage over all training images, checker on 2000 hard-code recons."""
    vae.eval()
    codes = torch.cat([vae.get_codebook_indices(chunk) for chunk in images.split(500)])
    usage = codebook_usage(codes, vae.num_tokens)
    recon = vae.decode(codes[:2000])
    rs = score(captions[:2000], recon)
    mse = float(((recon - images[:2000]) ** 2).mean())
    # colour misses per named colour (the trainer's dVAE turned out to miss orange)
    misses, counts = {}, {}
    for c, r in zip(captions[:2000], recon):
        col = next(w for w in c.split() if w in shapes.COLOURS)
        counts[col] = counts.get(col, 0) + 1
        misses[col] = misses.get(col, 0) + (shapes.check(c, r).colour is False)
    return {"usage": usage.usage, "perplexity": usage.perplexity, "recon_pass": rs["colour_and_shape"],
            "recon_colour": rs["colour"], "recon_shape": rs["shape"], "recon_mse": mse,
            "colour_miss": {k: round(misses[k] / counts[k], 4) for k in sorted(counts)}}, codes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["vae", "dalle"])
    p.add_argument("--arm", choices=["old", "trainer"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", choices=["randint", "perm"], default=None)
    p.add_argument("--sched", choices=["old", "new"], default=None)
    p.add_argument("--wd", choices=["all", "matrices"], default=None)
    p.add_argument("--vae-dir", default=None)
    p.add_argument("--save-vae", default=None)
    p.add_argument("--data-seed", type=int, default=None, help="data/prompts seed (default: --seed)")
    p.add_argument("--tag", default="")
    p.add_argument("--temp-end", type=float, default=None,
                   help="trainer arm, vae stage: anneal the Gumbel temperature from 0.9 to this over all the steps")
    p.add_argument("--vae-kw", action="append", default=[],
                   help="trainer arm, vae stage: set a VAETrainConfig field, e.g. straight_through=true (JSON value)")
    p.add_argument("--resampled", action="store_true",
                   help="trainer arm, vae stage: the dVAE's data drawn with replacement (Resampled below)")
    p.add_argument("--steps", type=int, default=None, help="smoke tests only: override the step count")
    p.add_argument("--results", default="outputs/demo_gap/results.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    own = {"old": dict(order="randint", sched="old", wd="all"), "trainer": dict(order="perm", sched="new", wd="matrices")}[a.arm]
    opts = {k: getattr(a, k) or v for k, v in own.items()}
    data_seed = a.seed if a.data_seed is None else a.data_seed
    cfg = DemoConfig(seed=data_seed)
    tokenizer, text_len, captions, images, text, prompts = demo_data(cfg)
    if a.steps:
        cfg.vae_steps = cfg.dalle_steps = a.steps
    cfg.seed = a.seed  # training seed (same as data seed unless --data-seed)
    row = {"stage": a.stage, "arm": a.arm, "seed": a.seed, "data_seed": data_seed, **opts, "tag": a.tag,
           "threads": torch.get_num_threads(), "cmd": " ".join(sys.argv)}
    work = Path(f"outputs/demo_gap/runs/{a.stage}-{a.arm}-{a.seed}-{'-'.join(opts.values())}{a.tag}{'' if a.temp_end is None else '-t' + str(a.temp_end)}{''.join('-' + k for k in a.vae_kw)}{'-resampled' if a.resampled else ''}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()

    if a.stage == "vae":
        if a.arm == "old":
            if a.seed != data_seed:
                torch.manual_seed(a.seed)
            vae = old_build_vae(cfg)
            losses = old_train("dVAE", vae, lambda i: vae(images[i], return_loss=True), len(images), cfg.vae_steps,
                               cfg.batch_size, lr=2e-3, seed=a.seed, **opts)
        else:
            patch_trainer(**opts)
            vcfg = runner.vae_config(cfg, work / "vae")
            if a.temp_end is not None:
                vcfg.temp_end, vcfg.temp_anneal_steps = a.temp_end, cfg.vae_steps
                row["temp_end"] = a.temp_end
            for kw in a.vae_kw:
                key, value = kw.split("=", 1)
                setattr(vcfg, key, json.loads(value))
                row[key] = json.loads(value)
            pairs = TensorDataset(text, images)
            if a.resampled:
                pairs = Resampled(pairs, cfg.vae_steps * cfg.batch_size, cfg.seed)
                row["resampled"] = True
            vae = train_vae(vcfg, dataset=pairs).eval()
            losses = runner.loss_curve(work / "vae", cfg.vae_steps)
        row["train_s"] = round(time.time() - t0, 1)
        row["final_loss"] = sum(losses[-50:]) / 50
        s, _ = vae_scores(vae, images, captions)
        row.update(s)
        if a.save_vae:
            vae.save_pretrained(a.save_vae)
    else:
        vae = DiscreteVAE.from_pretrained(a.vae_dir).eval()
        row["vae_dir"] = a.vae_dir
        if a.arm == "old":
            with torch.no_grad():
                codes = torch.cat([vae.get_codebook_indices(chunk) for chunk in images.split(500)])
            torch.manual_seed(a.seed)
            dalle = old_build_dalle(vae, text_len, tokenizer.vocab_size)
            losses = old_train("DALLE", dalle, lambda i: dalle(text[i], codes[i], return_loss=True, null_cond_prob=0.1),
                               len(text), cfg.dalle_steps, cfg.dalle_batch_size, lr=cfg.dalle_lr, weight_decay=0.01,
                               seed=a.seed, **opts)
        else:
            patch_trainer(**opts)
            tokenizer_file = save_tokenizer(tokenizer, work)
            dalle = train_dalle(runner.dalle_config(cfg, work / "dalle", Path(a.vae_dir), tokenizer_file, text_len),
                                dataset=TensorDataset(text, images))
            losses = runner.loss_curve(work / "dalle", cfg.dalle_steps)
        dalle.eval()
        row["train_s"] = round(time.time() - t0, 1)
        row["final_loss"] = sum(losses[-50:]) / 50
        gen = torch.Generator().manual_seed(a.seed)
        for split, (caps, _) in prompts.items():
            ptext = tokenizer.tokenize(caps, text_len)
            row[f"{split}_plain"] = score(caps, generate(dalle, None, ptext, "plain", cfg, gen))["colour_and_shape"]
        # a larger prompt set (less evaluation noise): 2000 seen, 1000 held-out, prompt seed 1000 + data seed
        for split, name, n in (("train", "seen", 2000), ("heldout", "heldout", 1000)):
            caps, _ = render_set(n, split, 1000 + data_seed, cfg.image_size)
            ptext = tokenizer.tokenize(caps, text_len)
            g2 = torch.Generator().manual_seed(1000 + a.seed)
            row[f"{name}_plain_big"] = score(caps, generate(dalle, None, ptext, "plain", cfg, g2))["colour_and_shape"]
        # the frozen dVAE inside the trained DALLE still gives the fixed dVAE's codes
        with torch.no_grad():
            row["vae_codes_same"] = bool(torch.equal(dalle.vae.get_codebook_indices(images[:2000]),
                                                     vae.get_codebook_indices(images[:2000])))
    row["total_s"] = round(time.time() - t0, 1)
    print(json.dumps(row))
    with open(a.results, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "run":  # queue.sh helper: gap.py run OTHER_SCRIPT.py ARGS...
        import runpy
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        main()
