"""What several test modules share: tiny models and data, CLI runners, reference fixtures, a crash callback.

Tests import it as `helpers` (pyproject's `pythonpath = ["tests"]`). Run as a script it is the `dalle-core`
command with test callbacks installed: `python tests/helpers.py [--kill-at WHERE:STEP] [--record-samples]
COMMAND ...` (also under `accelerate launch`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
from PIL import Image

from dalle_core import DALLE, DiscreteVAE
from dalle_core.training import Callback, SampleRecorder

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
FIXTURE_DIR = TESTS_DIR / "fixtures"
MAKE_FIXTURES = TESTS_DIR / "reference" / "make_fixtures.py"


# --- reference (dalle-pytorch 1.6.6) parity cases ---------------------------------------------------------------


def peer_python() -> Optional[str]:
    """The Python of a venv with dalle-pytorch 1.6.6, from DALLE_CORE_PEER_PYTHON, if set and present."""
    path = os.environ.get("DALLE_CORE_PEER_PYTHON")
    return path if path and Path(path).exists() else None


def load_case(path: Path) -> dict:
    """Load one parity case without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_reference_codes_and_logits(dalle: Any, expected: dict, atol: float = 1e-4) -> None:
    """A DALLE loaded from a reference checkpoint gives the reference's codes for `expected["images"]` (when
    recorded) and its logits for `expected["text"]` and `expected["codes"]` (the same masked positions too)."""
    if "images" in expected:
        assert torch.equal(dalle.vae.get_codebook_indices(expected["images"]), expected["codes"])
    with torch.no_grad():
        logits = dalle(expected["text"], expected["codes"])
    allowed = expected["logits"] > -1e30  # the reference's logits mask writes -finfo.max
    assert torch.equal(allowed, logits > -1e30), "the logits masks differ"
    torch.testing.assert_close(logits[allowed], expected["logits"][allowed], atol=atol, rtol=0)


def committed_cases(prefix: str) -> Dict[str, Path]:
    """Committed fixture files whose name starts with `prefix`, by name."""
    return {p.stem: p for p in sorted(FIXTURE_DIR.glob(f"{prefix}*.pt"))}


# --- tiny DALLEs over a tiny dVAE (decoding and cache tests) -------------------------------------------------------

TEXT_LEN, VOCAB = 6, 40
ATTN_CASES = {
    "full": ("full",),
    "axial_row": ("axial_row",),
    "axial_col": ("axial_col",),
    "conv_like": ("conv_like",),
    "row": ("row",),
    "col": ("col",),
    "conv": ("conv",),
    "mix": ("full", "axial_row", "axial_col", "conv_like"),
}


def make_vae(**kwargs) -> DiscreteVAE:
    return DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8, **kwargs)


def make_dalle(attn_types=("full",), depth=4, **kwargs) -> DALLE:
    torch.manual_seed(1)
    dalle = DALLE(dim=32, vae=make_vae(), num_text_tokens=VOCAB, text_seq_len=TEXT_LEN, depth=depth, heads=2,
                  dim_head=16, attn_types=attn_types, **kwargs)
    with torch.no_grad():  # LayerScale starts at 0.1: widen it so every layer shapes the output
        for block in dalle.transformer.layers:
            block.attn_scale.uniform_(0.5, 1.0)
            block.ff_scale.uniform_(0.5, 1.0)
    return dalle.eval()


def tiny_pipeline(text_seq_len: int = 6):
    """A DALLEPipeline of untrained tiny models over a two-caption word tokenizer (16x16 images, a 4x4 grid)."""
    from dalle_core import CLIP, DALLEPipeline
    from dalle_core.tokenizers import WordTokenizer

    torch.manual_seed(0)
    tokenizer = WordTokenizer.train(["a red circle", "a blue square on the left"])
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=text_seq_len, depth=1,
                  heads=2, dim_head=16)
    clip = CLIP(num_text_tokens=tokenizer.vocab_size, text_seq_len=text_seq_len, dim_text=16, dim_image=16,
                dim_latent=16, text_enc_depth=1, visual_enc_depth=1, text_heads=2, visual_heads=2,
                visual_image_size=16, visual_patch_size=8)
    return DALLEPipeline(dalle, tokenizer, clip=clip)


def captions(batch: int = 2) -> torch.Tensor:
    text = torch.randint(1, VOCAB, (batch, TEXT_LEN), generator=torch.Generator().manual_seed(5))
    text[0, 3:] = 0
    return text


def codes_for(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 32, (batch, 16), generator=torch.Generator().manual_seed(6))


# --- tiny captioned pictures, tiny trainer runs and the CLI ------------------------------------------------------

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230)}
SIDES = {"left": (0, 0, 8, 16), "right": (8, 0, 16, 16), "top": (0, 0, 16, 8), "bottom": (0, 8, 16, 16)}

# tiny models: each trains a step in milliseconds on one CPU thread
TINY_VAE = dict(image_size=16, num_tokens=32, codebook_dim=16, num_layers=2, num_resnet_blocks=0, hidden_dim=16)
TINY_DALLE = dict(dim=32, depth=2, heads=2, dim_head=16, text_seq_len=16)
TINY_CLIP = dict(dim_text=32, dim_image=32, dim_latent=32, text_enc_depth=1, visual_enc_depth=1, text_heads=2,
                 visual_heads=2, text_seq_len=16, visual_image_size=16, visual_patch_size=4)
QUIET = dict(warmup_steps=0, log_every=1, sample_every=0, save_every=1000)


def guidance_definition(cond: torch.Tensor, null: torch.Tensor, scale: Any, space: str = "probs") -> torch.Tensor:
    """Classifier-free guidance by its definition: extrapolated logits, or extrapolated probabilities (clamped at
    0, as logs)."""
    if space == "logits":
        return null + scale * (cond - null)
    p_cond, p_null = cond.softmax(-1), null.softmax(-1)
    return torch.log(torch.clamp(p_cond + (scale - 1) * (p_cond - p_null), min=0))


def make_folder(root: Path) -> Path:
    """12 captioned 16x16 pictures: a coloured half on grey, captioned '<colour> <side>'."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (colour, side) in enumerate((c, s) for c in COLOURS for s in SIDES):
        img = Image.new("RGB", (16, 16), (235, 235, 235))
        img.paste(COLOURS[colour], SIDES[side])
        img.save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"{colour} {side}\n")
    return root


def flags(**options) -> List[str]:
    """CLI flags from keyword options (True -> --flag, tuples -> several values)."""
    out: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (tuple, list)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def metrics(out: Path) -> List[Dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> List[float]:
    """The logged losses of a run, in order."""
    return [row["loss"] for row in metrics(out) if "loss" in row]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when the two models hold the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def cli_env() -> Dict[str, str]:
    """Environment for training subprocesses: one thread (deterministic, no contention), this checkout first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_cli(args: List[str], *, kill_at: Optional[str] = None) -> subprocess.CompletedProcess:
    """`dalle-core ARGS` in a subprocess (see `cli_env`); `kill_at="update:5"` SIGKILLs it there (see `KillAt`)."""
    command = helper_command(args, kill_at=kill_at) if kill_at else ["-m", "dalle_core", *args]
    return subprocess.run([sys.executable, *command], env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # tiny models run fastest on one thread; module scope covers the module's fixtures too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- test callbacks, and the `dalle-core` command with them installed ----------------------------------------------


class KillAt(Callback):
    """SIGKILL this process at `where` ("update": after update `step`; "checkpoint": while writing the checkpoint
    of update `step`, after its model/ and ema/, before its training state), so that no cleanup runs."""

    def __init__(self, where: str, step: int):
        if where not in ("update", "checkpoint"):
            raise ValueError(f"KillAt: where must be 'update' or 'checkpoint', got {where!r}")
        self.where, self.step = where, step

    def _kill(self, where: str, step: int) -> None:
        if (where, step) == (self.where, self.step):
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    def on_update(self, trainer, step: int) -> None:
        self._kill("update", step)

    def on_checkpoint(self, trainer, step: int, directory: Path) -> None:
        self._kill("checkpoint", step)


class StopAt(Callback):
    """Raise `Stop` after update `step`: a crash in process, for runs in the test's own interpreter."""

    def __init__(self, step: int):
        self.step = step

    def on_update(self, trainer, step: int) -> None:
        if step == self.step:
            raise Stop(step)


class Stop(Exception):
    """Raised by `StopAt`."""


def helper_command(args: List[str], *, kill_at: Optional[str] = None, record_samples: bool = False) -> List[str]:
    """argv that runs `dalle-core ARGS` through this file with the given test callbacks."""
    extra = (["--kill-at", kill_at] if kill_at else []) + (["--record-samples"] if record_samples else [])
    return [str(Path(__file__).resolve()), *extra, *args]


def _main(argv: List[str]) -> int:
    from dalle_core.cli import main

    callbacks: List[Callback] = []
    while argv and argv[0] in ("--kill-at", "--record-samples"):
        if argv.pop(0) == "--kill-at":
            where, step = argv.pop(0).split(":")
            callbacks.append(KillAt(where, int(step)))
        else:
            callbacks.append(SampleRecorder())
    return main(argv, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
