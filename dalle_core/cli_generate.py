"""The `dalle-core generate` subcommand: its flags (`add_generate_parser`, which `dalle_core.cli.build_parser`
calls) and its implementation: reading the prompts, loading a DALLE (a `DALLEPipeline` folder, a model directory or a
DALLE-pytorch dalle.pt) with its caption tokenizer and optional CLIP, sampling (optionally streamed row by row,
reranked, primed or inpainted), refining and reranking the images, and writing one folder of PNGs, a grid and a
prompt.json per prompt. Heavy modules (torch, the models) are imported when the command runs, never at import time,
so that `dalle-core --help` stays fast and `generate` imports neither Accelerate nor the trainers.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, List, Optional

__all__ = ["add_generate_parser", "choose_tokenizer"]


def add_generate_parser(sub: Any, epilog: str) -> argparse.ArgumentParser:
    """Add the `generate` subcommand, with its flags and `epilog` (its --help examples), to the subparsers `sub`."""
    g = sub.add_parser("generate", help="generate images from captions with a trained DALLE",
                       description="Generate images for each prompt; writes one folder of PNGs and a grid per prompt.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompts", nargs="*", help="captions to draw")
    g.add_argument("--prompts-file", type=Path, help="a file with one caption per line")
    g.add_argument("--text", help="captions separated by '|', as DALLE-pytorch's generate.py takes them")
    g.add_argument("--pipeline", type=Path, help="a DALLEPipeline folder (dalle-core demo writes one: "
                                                 "OUT/models): the DALLE, its tokenizer and its CLIP, checked to match")
    g.add_argument("--checkpoint", type=Path,
                   help="a DALLE model directory (runs/dalle/model, or a checkpoint's model/ or ema/), or a "
                        "DALLE-pytorch train_dalle.py checkpoint file (dalle.pt)")
    g.add_argument("--tokenizer", help="tokenizer file, or 'simple' (CLIP's BPE) or 'bytes' (default: the one "
                                       "saved in --checkpoint; for a dalle.pt, CLIP's BPE when its vocabulary is "
                                       "49408)")
    g.add_argument("--bpe-path", type=Path, help="as generate.py: a youtokentome model, or with --hug a Hugging "
                                                 "Face tokenizer.json")
    g.add_argument("--hug", action="store_true", help="--bpe-path is a Hugging Face tokenizer.json")
    g.add_argument("--chinese", action="store_true", help="BERT's Chinese WordPiece (needs transformers)")
    g.add_argument("--gentxt", action="store_true", help="complete each prompt into a caption with the DALLE's "
                                                         "text model first, then draw that caption")
    g.add_argument("--vqgan-model-path", type=Path, help="a dalle.pt over a VQGAN: taming's .ckpt (only when "
                                                         "the dalle.pt lacks the VQGAN's weights)")
    g.add_argument("--vqgan-config-path", type=Path, help="a dalle.pt over a VQGAN: taming's YAML config")
    g.add_argument("--openai-vae-dir", type=Path, help="a dalle.pt over OpenAI's dVAE: the folder with "
                                                       "encoder.pkl and decoder.pkl (only when the dalle.pt lacks "
                                                       "their weights)")
    g.add_argument("--num-images", type=int, default=4, help="images per prompt (default: 4)")
    g.add_argument("--batch-size", type=int, default=4, help="images generated at once (default: 4)")
    g.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    g.add_argument("--filter-thres", type=float, help="top-k: keep the top (1 - thres) of the image vocabulary "
                                                      "(default: 0.9, or off when --top-p is given)")
    g.add_argument("--top-p", type=float, help="nucleus sampling: keep the smallest set of codes with this mass")
    g.add_argument("--clip", type=Path, help="a CLIP model directory: rerank each prompt's images, best first")
    g.add_argument("--img", type=Path, help="an image to start from: its top rows are kept (priming), or with "
                                            "--mask everything outside the mask")
    g.add_argument("--num-init-img-tokens", type=int, help="primed codes (default: 14/32 of the image rows)")
    g.add_argument("--mask", type=Path, help="inpainting: a PNG the size of --img (resized to the model's), "
                                             "white = regenerate")
    g.add_argument("--stream", action="store_true", help="write each batch's images as their rows are drawn "
                                                         "(PROMPT_FOLDER/stream/)")
    g.add_argument("--rerank", choices=["clip", "likelihood", "both"],
                   help="keep the best of --candidates images per image by CLIP (needs --clip with the DALLE's "
                        "tokenizer), by the DALLE's likelihood, or by both ranks")
    g.add_argument("--candidates", type=int, default=4, help="candidates per image with --rerank (default: 4)")
    g.add_argument("--negative", help="a caption to guide away from (needs --cond-scale other than 1)")
    g.add_argument("--cfg-interval", type=float, nargs=2, metavar=("START", "END"),
                   help="guide only this fraction of the image positions, e.g. 0 0.5")
    g.add_argument("--guidance-space", choices=("probs", "logits"), default="probs",  # sampling.GUIDANCE_SPACES
                   help="combine the guided branches' probabilities (default) or their logits (DALLE-pytorch's way)")
    g.add_argument("--speculative", type=int, metavar="K", help="speculative decoding: K drafted codes per "
                                                                "forward pass (the same distribution)")
    g.add_argument("--refine-steps", type=int, default=0, help="CLIP-guided refinement steps after sampling "
                                                               "(VQGAN-CLIP; needs --clip; default 0)")
    g.add_argument("--seed", type=int, help="seed the sampling for reproducible images")
    g.add_argument("--out", type=Path, default=Path("outputs"), help="output directory (default: outputs)")
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--no-cache", action="store_true", help="recompute every position instead of a KV cache")
    g.add_argument("--compile", action="store_true",
                   help="decode through torch.compile (one graph for every position; pays off on a GPU)")
    g.set_defaults(run=_generate)
    return g


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _read_prompts(args: argparse.Namespace) -> List[str]:
    prompts = [p for p in args.prompts if p.strip()]
    if args.text is not None:
        prompts += [p.strip() for p in args.text.split("|") if p.strip()]
    if args.prompts_file is not None:
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give captions as arguments, --text 'a|b' or --prompts-file FILE")
    return prompts


def _load_dalle(args: argparse.Namespace, device: Any) -> Any:
    """The DALLE --checkpoint names: a model directory, or a DALLE-pytorch dalle.pt (with its tokenizer's files)."""
    from .interop import load_dalle_pytorch
    from .models.dalle import DALLE

    if args.checkpoint.is_dir():
        for flag in ("vqgan_model_path", "vqgan_config_path", "openai_vae_dir"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is for a DALLE-pytorch dalle.pt; {args.checkpoint} is "
                                 "a model directory, which holds its image tokenizer")
        return DALLE.from_pretrained(args.checkpoint, map_location=device)
    if not args.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such model directory or dalle.pt")
    dalle = load_dalle_pytorch(args.checkpoint, openai_vae_dir=args.openai_vae_dir,
                               vqgan_model_path=args.vqgan_model_path, vqgan_config_path=args.vqgan_config_path)
    return dalle.to(device)


def choose_tokenizer(args: argparse.Namespace, text_vocab_size: int) -> Any:
    """The caption tokenizer for a DALLE reading `text_vocab_size` ids: the one the flags name, else the one saved
    beside the model, else the one that vocabulary implies (CLIP's BPE for 49408, bytes for 257). A tokenizer
    whose vocabulary is not the model's is an error: its ids would mean other words to the model."""
    from .tokenizers import (ChineseTokenizer, HugTokenizer, YttmTokenizer, find_tokenizer, implied_tokenizer,
                             load_tokenizer)

    chosen = sum(x is not None and x is not False for x in (args.tokenizer, args.bpe_path, args.chinese or None))
    if chosen > 1:
        raise ValueError("give one of --tokenizer, --bpe-path (with --hug for a tokenizer.json) or --chinese")
    if args.hug and args.bpe_path is None:
        raise ValueError("--hug says that --bpe-path is a Hugging Face tokenizer.json: give --bpe-path")
    saved = find_tokenizer(args.checkpoint) if args.checkpoint.is_dir() else None
    if args.tokenizer is not None:
        tokenizer, source = load_tokenizer(args.tokenizer), f"--tokenizer {args.tokenizer}"
    elif args.bpe_path is not None:
        tokenizer, source = (HugTokenizer if args.hug else YttmTokenizer)(args.bpe_path), f"--bpe-path {args.bpe_path}"
    elif args.chinese:
        tokenizer, source = ChineseTokenizer(), "--chinese"
    elif saved is not None:
        tokenizer, source = load_tokenizer(str(saved)), f"the tokenizer saved in {args.checkpoint}"
    else:
        tokenizer = implied_tokenizer(text_vocab_size)
        if tokenizer is None:
            raise ValueError(f"{args.checkpoint} holds no tokenizer and its DALLE reads {text_vocab_size} caption ids, "
                             "which is not the vocabulary of CLIP's BPE (49408) or of bytes (257): pass the "
                             "tokenizer it was trained with (--tokenizer FILE, --bpe-path FILE [--hug], --chinese)")
        return tokenizer
    if tokenizer.vocab_size != text_vocab_size:
        raise ValueError(f"{source} has {tokenizer.vocab_size} ids but this DALLE was trained with "
                         f"{text_vocab_size}: pass the tokenizer it was trained with")
    return tokenizer


def _device(name: Optional[str]) -> Any:
    """The torch device --device names (default: cuda when available, else cpu), checked to exist here."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {name!r}") from None
    if device.type == "cpu":
        return device
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {name}: no {device.type} device is available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {name}: this machine has {count()} {device.type} device(s), "
                         f"numbered from 0")
    return device


def _generate(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from .data.images import load_image, load_mask, save_image_grid, to_pil
    from .models.clip import CLIP
    from .pipeline import DALLEPipeline
    from .refine import clip_refine
    from .sampling import DEFAULT_FILTER_THRES, check_sampling_args
    from .tokenizers import find_tokenizer, load_tokenizer

    for name in ("num_images", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        check_sampling_args(temperature=args.temperature, filter_thres=args.filter_thres, top_p=args.top_p,
                            cond_scale=args.cond_scale)
    except ValueError as err:
        raise ValueError(f"--{str(err).replace('_', '-')}") from None
    if args.num_init_img_tokens is not None and args.num_init_img_tokens < 0:
        raise ValueError(f"--num-init-img-tokens must be >= 0, got {args.num_init_img_tokens}")
    prompts = _read_prompts(args)
    device = _device(args.device)
    if (args.pipeline is None) == (args.checkpoint is None):
        raise ValueError("pass either --pipeline DIR (a DALLEPipeline folder) or --checkpoint DIR (a DALLE)")
    clip = clip_tokenizer = None
    if args.pipeline is not None:
        for flag in ("tokenizer", "bpe_path", "clip"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} does not go with --pipeline, whose folder holds the "
                                 f"tokenizer and the CLIP")
        pipe = DALLEPipeline.from_pretrained(args.pipeline, map_location=device)
        dalle, tokenizer, clip = pipe.dalle, pipe.tokenizer, pipe.clip
        clip_tokenizer = tokenizer
    else:
        dalle = _load_dalle(args, device)
        tokenizer = choose_tokenizer(args, dalle.text_vocab_size)
    if args.clip is not None:
        clip = CLIP.from_pretrained(args.clip, map_location=device)
        saved = find_tokenizer(args.clip)
        clip_tokenizer = load_tokenizer(str(saved)) if saved else tokenizer
        if clip.channels != dalle.vae.channels:
            raise ValueError(f"the CLIP takes {clip.channels}-channel images, the DALLE makes {dalle.vae.channels}")
    for name, flag in (("refine_steps", "--refine-steps"), ("candidates", "--candidates")):
        if getattr(args, name) < (0 if name == "refine_steps" else 1):
            raise ValueError(f"{flag} must be >= {0 if name == 'refine_steps' else 1}, got {getattr(args, name)}")
    if args.refine_steps and clip is None:
        raise ValueError("--refine-steps refines the images towards the caption by CLIP's score: pass --clip")
    if args.rerank in ("clip", "both") and clip is None:
        raise ValueError(f"--rerank {args.rerank} ranks by CLIP's score: pass --clip")
    primer = mask = None
    if args.img is not None:
        primer = load_image(args.img, dalle.vae.image_size, resize_ratio=1.0, transparent=dalle.vae.channels == 4,
                            generator=torch.Generator().manual_seed(0))[None].to(device)  # (1, C, H, W)
    if args.mask is not None:
        if primer is None:
            raise ValueError("--mask marks the part of --img to regenerate: pass --img too")
        if args.num_init_img_tokens is not None:
            raise ValueError("--mask and --num-init-img-tokens both choose the codes kept from --img: pass one")
        mask = load_mask(args.mask, dalle.vae.image_size,  # (1, H, W), True = regenerate; cropped as --img
                         generator=torch.Generator().manual_seed(0)).to(device)[None]
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    filter_thres = args.filter_thres
    if filter_thres is None and args.top_p is None:
        filter_thres = DEFAULT_FILTER_THRES
    negative = None
    if args.negative is not None:
        negative = tokenizer.tokenize([args.negative], dalle.text_seq_len, truncate_text=True).to(device)

    args.out.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        if args.gentxt:
            text, (prompt,) = dalle.generate_texts(tokenizer, prompt, filter_thres=filter_thres or DEFAULT_FILTER_THRES,
                                                   temperature=args.temperature, generator=generator)
        else:
            text = tokenizer.tokenize([prompt], dalle.text_seq_len, truncate_text=True).to(device)  # (1, text_len)
        ctext = None
        if clip is not None:
            ctext = clip_tokenizer.tokenize([prompt], clip.text_seq_len, truncate_text=True).to(device)
            if args.rerank in ("clip", "both") and not _same_ids(text, ctext):
                raise ValueError("--rerank gives the CLIP the DALLE's caption ids, but this CLIP's tokenizer "
                                 "encodes the prompt differently: use --clip alone (it sorts the images by CLIP "
                                 "with the CLIP's own tokenizer)")
        folder = args.out / f"{i:03d}-{_slug(prompt)}"
        folder.mkdir(parents=True, exist_ok=True)
        chunks, rerank_scores = [], []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            for batch_index, start in enumerate(range(0, args.num_images, args.batch_size)):
                b = min(args.batch_size, args.num_images - start)
                settings = dict(
                    filter_thres=filter_thres, top_p=args.top_p, temperature=args.temperature,
                    cond_scale=args.cond_scale, img=None if primer is None else primer.expand(b, -1, -1, -1),
                    mask=mask, num_init_img_tokens=args.num_init_img_tokens, use_cache=not args.no_cache,
                    compile=args.compile, generator=generator, negative_text=negative,
                    cfg_interval=None if args.cfg_interval is None else tuple(args.cfg_interval),
                    guidance_space=args.guidance_space,
                    speculative=args.speculative)
                if args.rerank is not None:
                    settings.update(rerank=args.rerank, candidates=args.candidates,
                                    clip=clip if args.rerank != "likelihood" else None)
                if args.stream:
                    (folder / "stream").mkdir(exist_ok=True)
                    for rows, out in dalle.generate_images_stream(text.expand(b, -1), **settings):
                        partial = out[0] if isinstance(out, tuple) else out
                        if rows < dalle.image_fmap_size or args.rerank is None:
                            save_image_grid(partial.float().clamp(0, 1),
                                            folder / "stream" / f"batch{batch_index:02d}-rows{rows:02d}.png")
                else:
                    out = dalle.generate_images(text.expand(b, -1), **settings)
                images, scores = out if isinstance(out, tuple) else (out, None)
                chunks.append(images.float())
                if scores is not None:
                    rerank_scores.extend(scores.float().tolist())
        images = torch.cat(chunks)  # (num_images, C, H, W)
        if args.refine_steps:
            images = clip_refine(dalle.vae, clip, ctext, images, steps=args.refine_steps, text_mask=ctext != 0,
                                 generator=generator).float()
        scores = None
        if clip is not None:
            size = clip.visual_image_size
            scaled = images if images.shape[-1] == size else F.interpolate(images, size=(size, size),
                                                                           mode="bilinear", antialias=True)
            best = clip.rerank(ctext, scaled.clamp(0, 1)[None], top=len(images), text_mask=ctext != 0)
            images, scores = images[best.indices[0]], best.scores[0].tolist()
            if rerank_scores:
                rerank_scores = [rerank_scores[j] for j in best.indices[0].tolist()]
        for j, image in enumerate(images):
            to_pil(image).save(folder / f"{j:03d}.png")
        save_image_grid(images, folder / "grid.png")
        info = {"prompt": prompt, "images": [f"{j:03d}.png" for j in range(len(images))], "clip_scores": scores}
        if args.rerank is not None:
            info.update(rerank=args.rerank, candidates=args.candidates, rerank_scores=rerank_scores)
        (folder / "prompt.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        print(f"{prompt!r}: {len(images)} images in {folder}")
    return 0


def _same_ids(text: Any, ctext: Any) -> bool:
    """Whether two tokenizations of one prompt hold the same ids (padding aside)."""
    a, b = text[0][text[0] != 0], ctext[0][ctext[0] != 0]
    return a.shape == b.shape and bool((a == b).all())
