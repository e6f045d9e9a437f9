"""Shapes: a procedural dataset of captioned coloured shapes, and a checker that says whether an image shows its caption.

Every sample is a white picture of one coloured shape ("a large red circle on the left") or, optionally, two shapes
and a relation ("a red circle above a blue square"), rendered with Pillow at any power-of-two size and fully
determined by (seed, split, index). A few colour-shape pairs (`HELDOUT_PAIRS`) never appear in the "train" split;
the "heldout" split shows them, to measure whether a model composes attributes it has only seen apart.

`check(caption, image)` reads the caption's attributes back with `parse_caption` and measures the image: ink pixels
(far enough from the white background), each labelled with the palette colour it is a tint of; the largest
connected blob's bounding box gives size and position, and its mask, resized to a template grid, gives the shape
(best IoU against the rendered templates). It is meant for images of 32 pixels and more.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from ..data.common import PathLike, mix_seed, tokenize_caption
from ..data.images import to_pil
from ..tokenizers import Tokenizer, WordTokenizer, default_tokenizer

__all__ = ["COLOURS", "SHAPES", "SIZES", "POSITIONS", "RELATIONS", "HELDOUT_PAIRS", "ShapeObject", "Scene",
           "CheckResult", "ShapesDataset", "colour_shape_pairs", "random_scene", "render", "make_sample",
           "parse_caption", "check", "caption_length_bound", "MAX_CAPTION_LEN", "word_tokenizer", "write_folder"]

# name -> RGB. Far apart as tints of white (the checker's test, `_colour_labels`): at least 18 degrees between any
# two ink directions (255 - RGB). Eight colours, so that training shows each shape in seven colours: held-out
# composition depends on it (measured against six colours: docs/demo_measurements.md).
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (255, 125, 0), "yellow": (250, 225, 0), "green": (30, 160, 50),
    "blue": (30, 80, 230), "purple": (140, 40, 190), "black": (40, 40, 40), "cyan": (0, 190, 210),
}
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = {"small": 0.28, "large": 0.48}  # side of the shape's box, as a fraction of the image side
POSITIONS = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
POSITION_PHRASES = {"center": ("in the center", "in the middle"), "left": ("on the left",), "right": ("on the right",),
                    "top": ("at the top",), "bottom": ("at the bottom",)}
RELATIONS = {"above": "above", "below": "below", "left of": "to the left of", "right of": "to the right of"}
# never shown in the train split; each shape and four of the eight colours appear once
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("yellow", "square"), ("blue", "circle"), ("green", "cross")})
SPLITS = ("train", "heldout")
JITTER = 0.03  # random shift of a shape's centre and scale, as a fraction of the image side / of its size
BACKGROUND = (255, 255, 255)

_SINGLE_TEMPLATES = ("{a} {colour} {shape}", "{a} {size} {colour} {shape}", "{a} {colour} {shape} {pos}",
                     "{a} {size} {colour} {shape} {pos}", "a picture of {a} {colour} {shape}",
                     "a picture of {a} {size} {colour} {shape} {pos}", "{pos}, {a} {colour} {shape}")
_RELATION_TEMPLATES = ("{a} {colour1} {shape1} {rel} {a} {colour2} {shape2}",
                       "a picture of {a} {colour1} {shape1} {rel} {a} {colour2} {shape2}")


def _fill(template: str, **words: str) -> str:
    """The template with `words` filled in and each {a} made "a" or "an" to suit the next word."""
    text = template.format(a="{a}", **words)
    return re.sub(r"\{a\} (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), text)


@dataclass(frozen=True)
class ShapeObject:
    """One shape in a scene: its named attributes and where it is drawn (centre and box side, image fractions)."""

    colour: str
    shape: str
    size: str
    position: Optional[str]  # None for the objects of a relation scene, placed by the relation instead
    cx: float
    cy: float
    extent: float


@dataclass(frozen=True)
class Scene:
    """What one sample shows (`objects`, `relation` between the first and the second) and its caption."""

    objects: Tuple[ShapeObject, ...]
    relation: Optional[str]
    caption: str


@dataclass
class CheckResult:
    """Per-attribute verdicts of `check`; None where the caption does not name the attribute."""

    colour: bool
    shape: bool
    size: Optional[bool] = None
    position: Optional[bool] = None
    relation: Optional[bool] = None
    found: List[Dict[str, object]] = field(default_factory=list)  # what was measured, one dict per object

    @property
    def colour_and_shape(self) -> bool:
        """Colour and shape (of every object) both right."""
        return self.colour and self.shape

    @property
    def ok(self) -> bool:
        """Every attribute the caption names is right."""
        return all(v for v in (self.colour, self.shape, self.size, self.position, self.relation) if v is not None)


def colour_shape_pairs(split: str = "train") -> List[Tuple[str, str]]:
    """The colour-shape pairs a split draws its objects from (held-out pairs only in "heldout")."""
    _check_split(split)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if (p in HELDOUT_PAIRS) == (split == "heldout")]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _place(rng: random.Random, size: str, anchor: Tuple[float, float]) -> Tuple[float, float, float]:
    extent = SIZES[size] * (1 + rng.uniform(-JITTER, JITTER) * 2)
    half = extent / 2
    cx, cy = (min(max(a + rng.uniform(-JITTER, JITTER), half + 0.01), 0.99 - half) for a in anchor)
    return cx, cy, extent


def random_scene(rng: random.Random, *, split: str = "train", relation_prob: float = 0.0) -> Scene:
    """Draw a scene (and its caption) from `rng`: one object, or two and a relation with `relation_prob`."""
    _check_split(split)
    if not 0.0 <= relation_prob <= 1.0:
        raise ValueError(f"relation_prob must be in [0, 1], got {relation_prob}")
    pairs, all_pairs = colour_shape_pairs(split), colour_shape_pairs("train") + colour_shape_pairs("heldout")
    if rng.random() >= relation_prob:
        (colour, shape), size, position = rng.choice(pairs), rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        obj = ShapeObject(colour, shape, size, position, *_place(rng, size, POSITIONS[position]))
        caption = _fill(rng.choice(_SINGLE_TEMPLATES), colour=colour, shape=shape, size=size,
                        pos=rng.choice(POSITION_PHRASES[position]))
        return Scene((obj,), None, caption)

    relation = rng.choice(list(RELATIONS))
    first = rng.choice(pairs)  # held-out scenes: the first object is a held-out pair, the second anything else
    second = rng.choice([p for p in (pairs if split == "train" else all_pairs) if p[0] != first[0]])
    if rng.random() < 0.5 and (split == "train" or second in HELDOUT_PAIRS):
        first, second = second, first
    near, far = 0.27, 0.73  # the first object goes on the relation's side, the second opposite
    a, b = {"above": (near, far), "below": (far, near), "left of": (near, far), "right of": (far, near)}[relation]
    vertical = relation in ("above", "below")
    objs = []
    for (colour, shape), along in ((first, a), (second, b)):
        across = 0.5 + rng.uniform(-0.2, 0.2)
        anchor = (across, along) if vertical else (along, across)
        objs.append(ShapeObject(colour, shape, "small", None, *_place(rng, "small", anchor)))
    caption = _fill(rng.choice(_RELATION_TEMPLATES), colour1=first[0], shape1=first[1], rel=RELATIONS[relation],
                    colour2=second[0], shape2=second[1])
    return Scene(tuple(objs), relation, caption)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: Tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":  # pointing up, base along the bottom of the box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif shape == "cross":  # a plus sign whose arms are a third of the box wide
        w = (x1 - x0) / 3
        draw.rectangle((x0, y0 + w, x1, y1 - w), fill=fill)
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _to_tensor(img: Image.Image) -> Tensor:
    s = img.size[0]
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(s, s, -1).permute(2, 0, 1).float() / 255  # (C, S, S)


def _paint(objects, image_size: int, antialias: bool, mode: str, background, colours) -> Image.Image:
    scale = image_size * (4 if antialias else 1)
    img = Image.new(mode, (scale, scale), background)
    draw = ImageDraw.Draw(img)
    for obj, colour in zip(objects, colours):
        half = obj.extent * scale / 2
        box = (obj.cx * scale - half, obj.cy * scale - half, obj.cx * scale + half - 1, obj.cy * scale + half - 1)
        _draw(draw, obj.shape, box, colour)
    return img.resize((image_size, image_size), Image.Resampling.BOX) if antialias else img  # BOX: area average


def render(scene: Scene, image_size: int = 32, antialias: bool = True) -> Tensor:
    """The scene as a float tensor (3, image_size, image_size) in [0, 1]; antialiased by 4x supersampling."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two, got {image_size!r}")
    colours = [COLOURS[obj.colour] for obj in scene.objects]
    return _to_tensor(_paint(scene.objects, image_size, antialias, "RGB", BACKGROUND, colours))


def _coverage(obj: ShapeObject, image_size: int) -> Tensor:
    """How much of each pixel (image_size, image_size) the object covers, in [0, 1]."""
    return _to_tensor(_paint([obj], image_size, True, "L", 0, [255]))[0]


def _scene_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(mix_seed("shapes", seed, split, index))


def make_sample(seed: int, *, image_size: int = 32, split: str = "train", relation_prob: float = 0.0,
                antialias: bool = True) -> Tuple[str, Tensor]:
    """One (caption, image (3, S, S) in [0, 1]) pair, fully determined by its arguments."""
    scene = random_scene(_scene_rng(seed, split, 0), split=split, relation_prob=relation_prob)
    return scene.caption, render(scene, image_size, antialias)


@lru_cache(maxsize=None)
def _all_captions(relations: bool = True) -> Tuple[str, ...]:
    """Every caption the generator can produce (a few thousand), enumerated on first use."""
    phrases = [p for ps in POSITION_PHRASES.values() for p in ps]
    single = [_fill(t, colour=c, shape=s, size=z, pos=p) for t in _SINGLE_TEMPLATES for c in COLOURS
              for s in SHAPES for z in SIZES for p in phrases]
    pair = [_fill(t, colour1=c, shape1=s, rel=r, colour2=c, shape2=s) for t in _RELATION_TEMPLATES
            for c in COLOURS for s in SHAPES for r in RELATIONS.values()]
    return tuple(single + pair if relations else single)


@lru_cache(maxsize=None)
def _byte_length_bound(relations: bool) -> int:
    return max(len(c.encode("utf-8")) for c in _all_captions(relations))


def caption_length_bound(relations: bool = True, tokenizer: Optional[Tokenizer] = None) -> int:
    """The longest caption in tokens of `tokenizer` (default: bytes, as ByteTokenizer counts them), with or
    without two-object captions."""
    if tokenizer is None:
        return _byte_length_bound(bool(relations))
    return max(len(ids) for ids in tokenizer.encode_batch(list(_all_captions(bool(relations)))))


def __getattr__(name: str) -> int:
    """`MAX_CAPTION_LEN`: the longest caption in bytes, two-object captions included (computed on first use, not
    at import)."""
    if name == "MAX_CAPTION_LEN":
        return caption_length_bound()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_folder(folder: PathLike, length: int, *, image_size: int = 64, split: str = "train", seed: int = 0,
                 relation_prob: float = 0.0) -> Path:
    """Write `length` samples as a captioned image folder (00000.png + 00000.txt, ...), the layout
    `TextImageDataset` and `dalle-core train-*` read; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = ShapesDataset(length, image_size=image_size, split=split, seed=seed, relation_prob=relation_prob)
    for i in range(length):
        caption, image = ds.sample(i)
        to_pil(image).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def word_tokenizer() -> WordTokenizer:
    """A `WordTokenizer` over every word the captions use (the same for every seed): about a quarter of the
    byte length, so a DALLE trains faster on these captions than with the default `ByteTokenizer`."""
    return WordTokenizer.train(list(_all_captions()))


class ShapesDataset(Dataset):
    """`length` tokenized (text (text_len,), image (3, S, S)) pairs; item i is the same for every call and worker.

    `text_len` defaults to `MAX_CAPTION_LEN` (every caption fits in bytes, the default tokenizer's ids)."""

    def __init__(self, length: int = 10_000, *, image_size: int = 32, split: str = "train", seed: int = 0,
                 relation_prob: float = 0.0, tokenizer: Optional[Tokenizer] = None, text_len: Optional[int] = None,
                 antialias: bool = True):
        _check_split(split)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        render(Scene((), None, ""), image_size)  # validates image_size
        self.length, self.image_size, self.split, self.seed = length, image_size, split, seed
        self.relation_prob, self.antialias = relation_prob, antialias
        self.text_len = caption_length_bound() if text_len is None else text_len
        self.tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        self.scene(0)  # validates relation_prob

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The scene of item `index`."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} samples")
        rng = _scene_rng(self.seed, self.split, index % self.length)
        return random_scene(rng, split=self.split, relation_prob=self.relation_prob)

    def sample(self, index: int) -> Tuple[str, Tensor]:
        """Item `index` as (caption, image) before tokenization."""
        scene = self.scene(index)
        return scene.caption, render(scene, self.image_size, self.antialias)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        caption, image = self.sample(index)
        return tokenize_caption(self.tokenizer, caption, self.text_len, False, f"shapes item {index}"), image


# --- reading captions back ---------------------------------------------------------------------------------------

_RELATION_RE = re.compile(r"\b(above|below|to the left of|to the right of)\b")
_POSITION_WORDS = {"center": "center", "middle": "center", "left": "left", "right": "right", "top": "top",
                   "bottom": "bottom"}


def _parse_object(text: str, caption: str) -> Dict[str, Optional[str]]:
    words = re.findall(r"[a-z]+", text.lower())

    def one(vocab, what: str, required: bool) -> Optional[str]:
        found = [vocab.get(w, w) if isinstance(vocab, dict) else w for w in words if w in vocab]
        if len(found) > 1 or (required and not found):
            raise ValueError(f"caption {caption!r} must name {'exactly' if required else 'at most'} one {what} "
                             f"per object, got {found}")
        return found[0] if found else None

    return {"colour": one(tuple(COLOURS), "colour", True), "shape": one(SHAPES, "shape", True),
            "size": one(tuple(SIZES), "size", False), "position": one(_POSITION_WORDS, "position", False)}


def parse_caption(caption: str) -> Tuple[List[Dict[str, Optional[str]]], Optional[str]]:
    """The objects (dicts of colour, shape, size, position; None when unnamed) and relation a caption names."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    parts = _RELATION_RE.split(caption.lower())
    if len(parts) == 1:
        return [_parse_object(caption, caption)], None
    if len(parts) != 3:
        raise ValueError(f"caption {caption!r} must name at most one relation")
    relation = {v: k for k, v in RELATIONS.items()}[parts[1]]
    return [_parse_object(parts[0], caption), _parse_object(parts[2], caption)], relation


# --- measuring images --------------------------------------------------------------------------------------------

INK = 0.4  # a pixel is ink when some channel is this far below the white background (about half covered)


@lru_cache(maxsize=1)
def _fill_ratios() -> Dict[str, float]:
    """Area of each shape as a fraction of its box."""
    return {shape: _coverage(ShapeObject("red", shape, "large", None, 0.5, 0.5, 1.0), 64).mean().item()
            for shape in SHAPES}


@lru_cache(maxsize=1)
def _palette() -> Tuple[List[str], Tensor]:
    names = list(COLOURS)
    return names, 1 - torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 255  # ink of each colour


def _colour_labels(ink: Tensor) -> Tuple[Tensor, Tensor]:
    """Per pixel of ink (3, H, W): the palette colour it is a tint of, and how much of that colour (coverage)."""
    names, pal = _palette()  # (K, 3)
    pix = ink.flatten(1).t()  # (HW, 3)
    alpha = ((pix @ pal.t()) / (pal * pal).sum(1)).clamp(0, 1)  # (HW, K): coverage that best explains the pixel
    resid = (pix[:, None, :] - alpha[..., None] * pal[None]).norm(dim=-1)  # (HW, K)
    labels = resid.argmin(dim=1)
    return labels.view(ink.shape[1:]), alpha.gather(1, labels[:, None]).view(ink.shape[1:])


def _components(mask: Tensor) -> List[Tensor]:
    """The 8-connected blobs of a bool mask (H, W), largest first, each as a bool mask."""
    h, w = mask.shape
    m = mask[None, None].float()
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * m
    while True:  # every pixel takes its blob's largest index
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(grown, labels):
            break
        labels = grown
    ids, counts = labels[0, 0][mask].unique(return_counts=True)
    return [labels[0, 0] == i for i in ids[counts.argsort(descending=True)]]


def _measure(mask: Tensor, coverage: Tensor) -> Dict[str, object]:
    """Shape, size and position of the blob `mask` (H, W), given how much of each pixel is inked (H, W).

    Analysis by synthesis: for each shape, the box with the blob's area and centroid is rendered, and the shape
    whose rendering overlaps the blob's coverage best (soft IoU) wins. Coverage, not the thresholded mask,
    because a small shape's antialiased rim carries much of its outline.
    """
    s = mask.shape[-1]
    near = F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0]  # the blob and its rim
    cov = coverage * near  # (H, W)
    total = cov.sum().clamp(min=1e-6)
    centres = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    cx, cy = (cov.sum(0) * centres).sum().item() / total.item(), (cov.sum(1) * centres).sum().item() / total.item()
    best = (-1.0, None)
    for shape, fill in _fill_ratios().items():
        extent = (total.item() / fill) ** 0.5 / s
        box_cy = cy - extent / 6 if shape == "triangle" else cy  # a triangle's centroid is 2/3 of the way down
        hyp = ShapeObject("red", shape, "large", None, cx, box_cy, extent)
        drawn = _coverage(hyp, s)
        score = (torch.minimum(drawn, cov).sum() / torch.maximum(drawn, cov).sum()).item()
        best = max(best, (score, hyp), key=lambda t: t[0])
    obj = best[1]
    return {
        "shape": obj.shape,
        "size": "large" if obj.extent > sum(SIZES.values()) / 2 else "small",
        "position": min(POSITIONS, key=lambda p: (POSITIONS[p][0] - obj.cx) ** 2 + (POSITIONS[p][1] - obj.cy) ** 2),
        "cx": obj.cx, "cy": obj.cy, "extent": obj.extent, "match": best[0],
    }


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (3, S, S) in [0, 1], got {got}")
    return image.detach().float().cpu().clamp(0, 1)


def check(caption: str, image: Tensor) -> CheckResult:
    """Whether `image` (3, S, S) in [0, 1] shows what `caption` says, attribute by attribute."""
    wanted, relation = parse_caption(caption)
    ink = 1 - _check_image(image)  # (3, S, S)
    inked = ink.amax(0) >= INK
    labels, coverage = _colour_labels(ink)
    names = _palette()[0]
    found: List[Dict[str, object]] = []
    if relation is None:  # one object: the largest blob, whatever its colour
        blobs = _components(inked)
        if blobs:
            votes = torch.bincount(labels[blobs[0]], minlength=len(names))
            found.append({"colour": names[int(votes.argmax())], **_measure(blobs[0], coverage)})
    else:  # one object per named colour: the largest blob of that colour
        for want in wanted:
            blobs = _components(inked & (labels == names.index(want["colour"])))
            if blobs:
                found.append({"colour": want["colour"], **_measure(blobs[0], coverage)})
    if len(found) < len(wanted):
        return CheckResult(colour=False, shape=False, found=found,
                           size=None if all(w["size"] is None for w in wanted) else False,
                           position=None if all(w["position"] is None for w in wanted) else False,
                           relation=None if relation is None else False)

    def agree(key: str) -> Optional[bool]:
        named = [(w[key], f[key]) for w, f in zip(wanted, found) if w[key] is not None]
        return all(a == b for a, b in named) if named else None

    rel_ok = None
    if relation is not None:
        a, b = found
        rel_ok = {"above": a["cy"] < b["cy"], "below": a["cy"] > b["cy"],
                  "left of": a["cx"] < b["cx"], "right of": a["cx"] > b["cx"]}[relation]
    return CheckResult(colour=bool(agree("colour")), shape=bool(agree("shape")), size=agree("size"),
                       position=agree("position"), relation=rel_ok, found=found)
