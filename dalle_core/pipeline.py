"""`DALLEPipeline`: prompt to pictures in one call, from one folder holding every piece that must match.

A pipeline folder holds the DALLE (with its image tokenizer, saved inside it), the caption tokenizer, the
optional CLIP reranker, and `pipeline.json`, which records what the pieces must agree on: the tokenizer file's
SHA-256 and vocabulary size, the DALLE's caption vocabulary and image size, the CLIP's. Loading checks every
one of them, so a tokenizer or a model swapped in by hand is refused with what differs, instead of drawing
from wrong ids::

    pipe = DALLEPipeline(dalle, tokenizer, clip=clip)
    pipe.save_pretrained("my-pipeline")
    pipe = DALLEPipeline.from_pretrained("my-pipeline")
    out = pipe("a red circle", num_images=4, cond_scale=3.0, seed=0, rerank="clip")
    out.images[0].save("best.png")

Everything `DALLE.generate_images` takes goes through (`mask`, `img`, `speculative`, `negative` as a string,
`cfg_interval`, `rerank`); `pipe.stream(...)` yields the rows as they are drawn.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch import Tensor

from .data.images import to_pil
from .files import PathOrStr as PathLike
from .hub import push_to_hub, resolve
from .models.clip import CLIP
from .models.dalle import DALLE
from .tokenizers import Tokenizer, find_tokenizer, load_tokenizer, save_tokenizer

__all__ = ["DALLEPipeline", "PipelineOutput", "PIPELINE_FILE"]

PIPELINE_FILE = "pipeline.json"
FORMAT = 1
MAX_PIPELINE_JSON_BYTES = 1 << 16  # pipeline.json is a few hundred bytes: anything far larger is not one


@dataclass
class PipelineOutput:
    """What a pipeline call returns: `images` (PIL images, `num_images` per prompt, prompt by prompt),
    `tensors` (the same, (N, C, H, W) in [0, 1]) and `scores` ((N,): CLIP's, or the reranking's; None
    without a CLIP or `rerank`)."""

    images: List[Image.Image]
    tensors: Tensor
    scores: Optional[Tensor]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class DALLEPipeline:
    """A DALLE (with its image tokenizer), its caption tokenizer and an optional CLIP, checked to match.

    Args:
        dalle: the trained DALLE.
        tokenizer: the tokenizer it was trained with (its `vocab_size` must be the DALLE's `text_vocab_size`).
        clip: a CLIP reranker trained with the same tokenizer on images of the DALLE's size, or None.
    """

    def __init__(self, dalle: DALLE, tokenizer: Tokenizer, clip: Optional[CLIP] = None):
        if not isinstance(dalle, DALLE):
            raise TypeError(f"dalle must be a dalle_core DALLE, got {type(dalle).__name__}")
        for method in ("tokenize", "encode", "decode"):
            if not callable(getattr(tokenizer, method, None)):
                raise TypeError(f"tokenizer must be a dalle_core tokenizer (with {method}()), got "
                                f"{type(tokenizer).__name__}")
        if tokenizer.vocab_size != dalle.text_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the DALLE was trained on "
                             f"{dalle.text_vocab_size}: this is not the tokenizer it was trained with")
        if clip is not None:
            if not isinstance(clip, CLIP):
                raise TypeError(f"clip must be a dalle_core CLIP or None, got {type(clip).__name__}")
            if clip.num_text_tokens != tokenizer.vocab_size:
                raise ValueError(f"the CLIP reads {clip.num_text_tokens} caption ids but the tokenizer has "
                                 f"{tokenizer.vocab_size}: a pipeline's CLIP shares the DALLE's tokenizer")
            if clip.visual_image_size != dalle.vae.image_size or clip.channels != dalle.vae.channels:
                raise ValueError(f"the CLIP takes {clip.channels}x{clip.visual_image_size}x{clip.visual_image_size}"
                                 f" images but the DALLE draws {dalle.vae.channels}x{dalle.vae.image_size}x"
                                 f"{dalle.vae.image_size}")
        self.dalle, self.tokenizer, self.clip = dalle.eval(), tokenizer, None if clip is None else clip.eval()

    # --- files -------------------------------------------------------------------------------------------------

    def _record(self, tokenizer_file: Path) -> dict:
        dalle, clip = self.dalle, self.clip
        return {"format": FORMAT, "tokenizer": {"file": tokenizer_file.name, "sha256": _sha256(tokenizer_file),
                                                "vocab_size": self.tokenizer.vocab_size},
                "dalle": {"text_vocab_size": dalle.text_vocab_size, "text_seq_len": dalle.text_seq_len,
                          "image_size": dalle.vae.image_size, "num_image_tokens": dalle.num_image_tokens,
                          "image_tokenizer": type(dalle.vae).__name__},
                "clip": None if clip is None else {"num_text_tokens": clip.num_text_tokens,
                                                   "text_seq_len": clip.text_seq_len,
                                                   "visual_image_size": clip.visual_image_size}}

    def save_pretrained(self, directory: PathLike) -> Path:
        """Write dalle/ (with its image tokenizer), clip/ when there is one, the tokenizer file and
        pipeline.json into `directory`; the tokenizer is also saved inside dalle/ and clip/, so that each
        still loads on its own (`dalle-core generate --checkpoint DIR/dalle`). Returns the directory."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.dalle.save_pretrained(root / "dalle")
        save_tokenizer(self.tokenizer, root / "dalle")
        if self.clip is not None:
            self.clip.save_pretrained(root / "clip")
            save_tokenizer(self.tokenizer, root / "clip")
        tokenizer_file = save_tokenizer(self.tokenizer, root)
        (root / PIPELINE_FILE).write_text(json.dumps(self._record(tokenizer_file), indent=2) + "\n")
        return root

    @classmethod
    def from_pretrained(cls, directory: PathLike, *, map_location: Union[str, torch.device, None] = None
                        ) -> "DALLEPipeline":
        """Load a folder written by `save_pretrained` (or a Hub repo id: `dalle_core.hub.resolve`), checking every
        piece against pipeline.json."""
        root = resolve(directory)
        record_path = root / PIPELINE_FILE
        if not record_path.is_file():
            raise FileNotFoundError(f"{root} is not a pipeline folder: it has no {PIPELINE_FILE} (write one with "
                                    f"DALLEPipeline(dalle, tokenizer, clip).save_pretrained)")
        record = _read_record(record_path)
        tokenizer_file = find_tokenizer(root)
        if tokenizer_file is None or tokenizer_file.name != record["tokenizer"]["file"]:
            raise ValueError(f"{root} lacks the tokenizer file {record['tokenizer']['file']!r} that "
                             f"{PIPELINE_FILE} names")
        if _sha256(tokenizer_file) != record["tokenizer"]["sha256"]:
            raise ValueError(f"{tokenizer_file} is not the tokenizer this pipeline was saved with (its SHA-256 "
                             f"differs from the one in {PIPELINE_FILE}): restore the original file")
        tokenizer = load_tokenizer(tokenizer_file)
        dalle = DALLE.from_pretrained(root / "dalle", map_location=map_location)
        clip = CLIP.from_pretrained(root / "clip", map_location=map_location) if record["clip"] is not None else None
        pipe = cls(dalle, tokenizer, clip)
        saved, loaded = record, pipe._record(tokenizer_file)
        for part in ("dalle", "clip"):
            if saved[part] != loaded[part]:
                raise ValueError(f"{root / part} does not match {PIPELINE_FILE}: recorded {saved[part]}, found "
                                 f"{loaded[part]} (a model was replaced by hand)")
        return pipe

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this pipeline's folder and a generated model card to the Hub repo `repo_id` (see
        `dalle_core.hub.push_to_hub`: token, private, trained_on, scores, ...)."""
        return push_to_hub(self, repo_id, **kwargs)

    # --- generation ---------------------------------------------------------------------------------------------

    def _inputs(self, prompt: Union[str, Sequence[str]], num_images: int, negative: Optional[str],
                seed: Optional[int]) -> Tuple[Tensor, dict]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a string or a non-empty list of strings")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
        device = self.dalle.to_logits[1].weight.device
        text = self.tokenizer.tokenize(prompts, self.dalle.text_seq_len, truncate_text=True).to(device)
        text = text.repeat_interleave(num_images, 0)
        extra: dict = {}
        if negative is not None:
            extra["negative_text"] = self.tokenizer.tokenize([negative], self.dalle.text_seq_len,
                                                             truncate_text=True).to(device)
        if seed is not None:
            extra["generator"] = torch.Generator(device=device).manual_seed(seed)
        return text, extra

    def __call__(self, prompt: Union[str, Sequence[str]], *, num_images: int = 4, cond_scale: float = 1.0,
                 temperature: float = 1.0, filter_thres: Optional[float] = 0.9, top_p: Optional[float] = None,
                 seed: Optional[int] = None, negative: Optional[str] = None, rerank: Optional[str] = None,
                 candidates: int = 4, use_cache: bool = True, **options: Any) -> PipelineOutput:
        """Draw `num_images` images per prompt. With a CLIP, `scores` are its scores; `rerank` ("clip",
        "likelihood", "both") keeps the best of `candidates` per image. `options` go to
        `DALLE.generate_images` (img, mask, speculative, cfg_interval, num_init_img_tokens, ...)."""
        text, extra = self._inputs(prompt, num_images, negative, seed)
        if rerank is not None:
            extra.update(rerank=rerank, candidates=candidates)
        out = self.dalle.generate_images(text, clip=self.clip, cond_scale=cond_scale, temperature=temperature,
                                         filter_thres=filter_thres, top_p=top_p, use_cache=use_cache,
                                         **extra, **options)
        images, scores = out if isinstance(out, tuple) else (out, None)
        images = images.float()
        return PipelineOutput([to_pil(im) for im in images], images, scores)

    def stream(self, prompt: Union[str, Sequence[str]], *, num_images: int = 1, seed: Optional[int] = None,
               negative: Optional[str] = None, use_cache: bool = True, **options: Any
               ) -> Iterator[Tuple[int, List[Image.Image]]]:
        """`DALLE.generate_images_stream` for prompts: yields (rows_done, PIL images) after each row."""
        text, extra = self._inputs(prompt, num_images, negative, seed)
        for rows, out in self.dalle.generate_images_stream(text, use_cache=use_cache, **extra, **options):
            images = out[0] if isinstance(out, tuple) else out
            yield rows, [to_pil(im) for im in images.float()]


def _read_record(path: Path) -> dict:
    """pipeline.json as data: bounded in size, a JSON object of the expected shape."""
    if path.stat().st_size > MAX_PIPELINE_JSON_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes; a {PIPELINE_FILE} is a few hundred")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    ok = (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("tokenizer"), dict)
          and isinstance(record["tokenizer"].get("file"), str) and isinstance(record["tokenizer"].get("sha256"), str)
          and isinstance(record.get("dalle"), dict) and (record.get("clip") is None or isinstance(record["clip"], dict)))
    if not ok:
        raise ValueError(f"{path} is not a dalle_core {PIPELINE_FILE} (format {FORMAT}: tokenizer, dalle, clip)")
    return record
