"""The `dalle-core` command: demo, train-vae, train-dalle, train-clip, train-prior, train-decoder, generate and app
(also `python -m dalle_core`).

Training flags are the fields of the trainers' config dataclasses (`dalle-core train-vae --help` lists them
with their defaults). Multi-GPU and multi-node runs use the same command under `accelerate launch`:

    accelerate launch --multi_gpu --num_processes 8 -m dalle_core train-dalle --vae runs/vae/model --folder data/

The `generate` subcommand's flags and implementation live in `dalle_core.cli_generate`.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .cli_generate import add_generate_parser, choose_tokenizer
from .version import __version__

__all__ = ["main", "build_parser", "choose_tokenizer"]  # choose_tokenizer: from cli_generate, as before

TRAINERS = {  # command: (module, trainer class, help)
    "train-vae": ("training", "VAETrainer", "train an image tokenizer (stage 1): --kind dvae, vq, fsq, lfq or vqgan"),
    "train-dalle": ("training", "DALLETrainer", "train the DALLE transformer on a trained dVAE's codes (stage 2)"),
    "train-clip": ("training", "CLIPTrainer", "train the CLIP reranker"),
    "train-prior": ("dalle2.training", "PriorTrainer",
                    "train DALL-E 2's diffusion prior (caption -> CLIP image embedding) over a trained CLIP"),
    "train-decoder": ("dalle2.training", "DecoderTrainer",
                      "train DALL-E 2's diffusion decoder (CLIP image embedding -> image) over a trained CLIP"),
}


DEMO_HELP = ("train dVAE, DALLE and CLIP (or, with --model dalle2, CLIP, prior and decoder) on the built-in shapes "
             "data and score them")

EXAMPLES = {  # shown at the end of each subcommand's --help
    "train-vae": ["dalle-core train-vae --folder data/ --out runs/vae --steps 2000",
                  "dalle-core train-vae --kind vq --folder data/ --out runs/vq --num-tokens 512",
                  "dalle-core train-vae --config vae.yaml --steps 500   # flags override the file"],
    "train-dalle": ["dalle-core train-dalle --folder data/ --vae runs/vae/model --out runs/dalle --steps 5000",
                    "dalle-core train-dalle --out runs/dalle --resume --steps 8000"],
    "train-clip": ["dalle-core train-clip --folder data/ --out runs/clip --steps 2000"],
    "train-prior": ["dalle-core train-prior --folder data/ --clip runs/clip/model --out runs/prior --steps 2000"],
    "train-decoder": ["dalle-core train-decoder --folder data/ --clip runs/clip/model --out runs/decoder "
                      "--dim 64 --steps 4000"],
    "demo": ["dalle-core demo", "dalle-core demo --quick --out /tmp/demo",
             "dalle-core demo --tokenizer vq --steps-scale 2",
             "dalle-core demo --model dalle2 --clip outputs/demo/models/clip   # DALL-E 2 over the demo's CLIP"],
    "generate": ['dalle-core generate "a red circle" --pipeline outputs/demo/models --num-images 8 --seed 0',
                 'dalle-core generate "a red circle" --checkpoint runs/dalle/model --clip runs/clip/model '
                 '--cond-scale 1.5',
                 'dalle-core generate "a blue square" --pipeline DIR --img in.png --mask mask.png --stream',
                 'dalle-core generate "a red circle" --pipeline DIR --rerank both --candidates 4 --speculative 8'],
    "app": ["dalle-core app --pipeline outputs/demo/models", "dalle-core app --pipeline user/repo --port 8080"],
}


def _epilog(command: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


def _trainer_class(command: str) -> type:
    import importlib  # the trainers are imported when needed: `generate` and --help do not pay for accelerate

    module, name, _ = TRAINERS[command]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand `argv` names (its first word that is one), or None."""
    names = {*TRAINERS, "demo", "generate", "app"}
    return next((a for a in argv if a in names), None)


def _add_train_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """--resume and the flags of the trainer's config dataclass."""
    from .training.config import add_config_arguments

    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its saved flags are the "
                        "defaults; flags given here replace them, except the model's; a 'pipe:' --shards "
                        "value is never taken from the saved flags: give --shards again). A run already past "
                        "--steps is an error (exit 1); one exactly at --steps says so and exits 0")
    p.add_argument("--config", type=Path, help="a JSON or YAML file of settings (field names as the flags', "
                                               "e.g. steps: 1000); flags given on the command line override it")
    add_config_arguments(p, _trainer_class(command).config_class)
    p.set_defaults(run=_train)


def build_parser(command: Optional[str] = "all") -> argparse.ArgumentParser:
    """The argument parser of `dalle-core`. Every subcommand is listed; the flags of the trainers and of the
    demo are added for `command` only (all of them by default), so that `generate` and a bare `--help`
    import neither `dalle_core.training` nor Accelerate."""
    parser = argparse.ArgumentParser(prog="dalle-core", description="Train DALL-E models and generate images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in TRAINERS.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}. Data: "
                           "--folder DIR or --shards PATTERN. Run it under `accelerate launch` for several GPUs.",
                           epilog=_epilog(name), formatter_class=argparse.RawDescriptionHelpFormatter)
        if command in (name, "all"):
            _add_train_arguments(p, name)

    d = sub.add_parser("demo", help=DEMO_HELP, description=f"{DEMO_HELP[0].upper()}{DEMO_HELP[1:]}.",
                       epilog=_epilog("demo"), formatter_class=argparse.RawDescriptionHelpFormatter)
    if command in ("demo", "all"):
        from .demo import runner as demo

        demo.add_arguments(d)
        d.set_defaults(run=lambda args: _demo(d, args))

    add_generate_parser(sub, _epilog("generate"))

    a = sub.add_parser("app", help="serve a web app (Gradio) over a pipeline folder",
                       description="A web app over a DALLEPipeline: prompt, sampling settings, a gallery that "
                                   "fills row by row, reranking, inpainting. Needs the [app] extra (gradio).",
                       epilog=_epilog("app"), formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--pipeline", required=True, help="a DALLEPipeline folder (dalle-core demo writes OUT/models) "
                                                     "or a Hugging Face Hub repo id")
    a.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    a.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    a.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    a.set_defaults(run=_app)
    return parser


def _train(args: argparse.Namespace) -> int:
    from .training.batches import runs_commands
    from .training.common import RUN_CONFIG_NAME
    from .training.config import config_from_args, load_config_file, load_user_config

    trainer_class = _trainer_class(args.command)
    config_class = trainer_class.config_class
    out = Path(getattr(args, "out", config_class().out))
    saved = out / RUN_CONFIG_NAME
    if args.config is not None and args.resume:
        raise ValueError("--resume takes the run's saved settings: drop --config (or pass its flags)")
    base = load_config_file(config_class, saved) if args.resume and saved.is_file() else None
    if args.config is not None:
        base = load_user_config(config_class, args.config)
        out = Path(getattr(args, "out", base.out))
    given_shards = "shards" in vars(args)  # only shards typed on this command line may run a command
    if base is not None and runs_commands(base.shards) and not given_shards:
        source = saved if args.config is None else args.config
        raise ValueError(f"{source} names shards that run a command ({base.shards!r}); a settings file never "
                         "runs commands: pass --shards again on the command line")
    config = config_from_args(config_class, args, base)
    trainer = trainer_class(config, resume=args.resume, allow_pipe=given_shards, callbacks=args.callbacks)
    trainer.train()
    trainer.accelerator.end_training()
    return 0


def _app(args: argparse.Namespace) -> int:
    from .app import launch

    launch(args.pipeline, host=args.host, port=args.port, share=args.share)
    return 0


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .demo import runner as demo

    args = demo.check_arguments(parser, args)
    if args.model == "dalle2":
        from .dalle2 import demo as dalle2_demo

        dalle2_demo.run_from_args(args)
    else:
        demo.run_from_args(args)
    return 0


def _describe(err: BaseException) -> str:
    """One line for a user error: OSErrors as 'what: path' (disk full said plainly), others as their message."""
    if isinstance(err, OSError) and err.strerror:
        what = err.strerror
        if err.errno == errno.ENOSPC and "disk full" not in what:
            what = f"disk full (no space left on the device): {what}"
        text = f"{what}: {err.filename}" if err.filename else what
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname_prefix)s%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        record.levelname_prefix = "warning: " if record.levelno >= logging.WARNING else ""
        super().emit(record)


def _show_library_messages() -> None:
    """Show the library's INFO messages (trainer progress) on stdout while the command runs, once."""
    logger = logging.getLogger("dalle_core")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None, *, callbacks: Sequence[Any] = ()) -> int:
    """Run `dalle-core` with `argv` (default: sys.argv[1:]); returns the exit status (1 for a user error).

    `callbacks` (`dalle_core.training.Callback` instances) are given to the trainer of a `train-*` command.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    args.callbacks = list(callbacks)
    _show_library_messages()
    from .errors import NonFiniteError

    try:
        return args.run(args)
    # user errors: a one-line message, no traceback (CheckpointError is a ValueError; FileNotFoundError and
    # PermissionError are OSErrors); anything else is a bug and keeps its traceback
    except (ValueError, TypeError, OSError, ImportError, NonFiniteError) as err:
        print(f"dalle-core {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
