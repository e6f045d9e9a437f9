"""Tests for dalle_core.data: folder and tar-shard datasets, image decoding, skip accounting, worker/rank splits."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle_core.data import (TextImageDataset, WebTextImageDataset, expand_urls, load_image, random_crop_box,
                             write_shards)
from dalle_core.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
SIZE = 8  # output image side
HALF_RED = (255, 127, 127)  # (255, 0, 0, alpha 128) over white

# name -> (expected RGB 0-255 after decoding, tolerance in 0-255 units)
GOOD: Dict[str, Tuple[Tuple[float, float, float], float]] = {
    "rgb": ((200, 40, 10), 0),
    "photo": ((10, 120, 240), 4),  # JPEG is lossy
    "gray": ((77, 77, 77), 0),
    "palette": ((0, 255, 0), 0),
    "alpha": (HALF_RED, 1),
    "clear": ((255, 255, 255), 0),  # fully transparent LA: white when not `transparent`
    "deep": ((32768 / 257,) * 3, 1e-4),  # 16-bit: 32768 / 65535, not clipped to 1
    "lossless": ((5, 60, 90), 0),
}


def _image(name: str) -> Tuple[Image.Image, str]:
    """The test image called `name` (12x10, a solid colour) and its file suffix."""
    size = (12, 10)
    if name == "rgb":
        return Image.new("RGB", size, (200, 40, 10)), ".png"
    if name == "photo":
        return Image.new("RGB", size, (10, 120, 240)), ".jpg"
    if name == "gray":
        return Image.new("L", size, 77), ".png"
    if name == "palette":
        img = Image.new("P", size, 2)
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
        return img, ".png"
    if name == "alpha":
        return Image.new("RGBA", size, (255, 0, 0, 128)), ".png"
    if name == "clear":
        return Image.new("LA", size, (100, 0)), ".png"
    if name == "deep":
        return Image.new("I;16", size, 32768), ".png"
    if name == "lossless":
        return Image.new("RGB", size, (5, 60, 90)), ".webp"
    raise KeyError(name)


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, lossless=True) if path.suffix == ".webp" else img.save(path)


def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def make_good_folder(root: Path) -> Path:
    """One image per GOOD name (one in a nested folder), each captioned '<name> one' / '<name> two'."""
    for name in GOOD:
        img, suffix = _image(name)
        folder = root / "sub" / "dir" if name == "gray" else root
        _save(img, folder / f"{name}{suffix}")
        (folder / f"{name}.txt").write_text(f"{name} one\n\n{name} two\r\n", encoding="utf-8")
    return root


def make_mixed_folder(root: Path) -> Path:
    """The good folder plus 2 corrupt images, 1 image without caption and 2 with empty captions."""
    make_good_folder(root)
    (root / "noise.jpg").write_bytes(bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).tolist()))
    png = _png_bytes(Image.new("RGB", (12, 10), (1, 2, 3)))
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    for name in ("noise", "truncated"):
        (root / f"{name}.txt").write_text(f"{name} caption\n", encoding="utf-8")
    _save(Image.new("RGB", (12, 10)), root / "lonely.png")
    _save(Image.new("RGB", (12, 10)), root / "blank.png")
    (root / "blank.txt").write_bytes(b"")
    _save(Image.new("RGB", (12, 10)), root / "spaces.png")
    (root / "spaces.txt").write_text("\n   \n\t\n", encoding="utf-8")
    (root / "README.txt").write_text("a caption file without an image is ignored\n", encoding="utf-8")
    return root


def name_of(tokens: torch.Tensor) -> str:
    return TOK.decode(tokens).split(" ")[0]


def assert_expected_image(name: str, image: torch.Tensor) -> None:
    rgb, tol = GOOD[name]
    expected = torch.tensor(rgb, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, SIZE, SIZE)
    torch.testing.assert_close(image[:3], expected, atol=tol / 255 + 1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


# --- folder dataset -------------------------------------------------------------------------------------


def test_folder_yields_only_usable_samples_and_reports_exactly_what_it_skipped(tmp_path):
    root = make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 empty_caption, 1 no_caption"):
        ds = TextImageDataset(root, text_len=32, image_size=SIZE, seed=0)
    assert ds.skipped == {"no_caption": [str(root / "lonely.png")],
                          "empty_caption": [str(root / "blank.png"), str(root / "spaces.png")]}
    assert len(ds) == len(GOOD) + 2  # the corrupt images are found only when loaded

    with pytest.warns(UserWarning, match="bad_image"):
        samples = [ds[i] for i in range(len(ds))]
    assert sorted(ds.skipped["bad_image"]) == [str(root / "noise.jpg"), str(root / "truncated.png")]
    assert "2 bad_image" in ds.skip_summary()
    for tokens, image in samples:
        assert tokens.shape == (32,) and tokens.dtype == torch.long
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert_expected_image(name_of(tokens), image)
    assert {name_of(t) for t, _ in samples} == set(GOOD)


def test_without_required_captions_every_image_is_kept_and_uncaptioned_ones_get_an_empty_caption(tmp_path):
    root = make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning, match="bad_image"):  # broken images are still skipped when loaded
        ds = TextImageDataset(root, text_len=32, image_size=SIZE, seed=0, require_captions=False)
        samples = [ds[i] for i in range(len(ds))]
    assert len(ds) == len(GOOD) + 2 + 3  # + the corrupt two + lonely (no caption), blank and spaces (empty)
    assert set(ds.skipped) == {"bad_image"}
    empty = [t for t, _ in samples if not t.any()]
    assert len(empty) == 3 and all(t.shape == (32,) and t.dtype == torch.long for t in empty)
    assert {name_of(t) for t, _ in samples if t.any()} == set(GOOD)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no images"):
        TextImageDataset(tmp_path / "nothing", require_captions=False)


def test_shards_without_required_captions_keep_uncaptioned_samples(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    Image.new("RGB", (SIZE, SIZE), (200, 0, 0)).save(folder / "a.png")
    (folder / "a.txt").write_text("red\n")
    Image.new("RGB", (SIZE, SIZE), (0, 0, 200)).save(folder / "b.png")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("a.png", "a.txt", "b.png"):
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard = tmp_path / "s.tar"
    shard.write_bytes(buf.getvalue())
    kw = dict(text_len=8, image_size=SIZE, shuffle_buffer=0, seed=0, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="no_caption"):
        assert len(list(WebTextImageDataset(str(shard), **kw))) == 1
    samples = list(WebTextImageDataset(str(shard), **kw, require_captions=False))
    assert len(samples) == 2 and samples[0][0].any() and not samples[1][0].any()
    assert samples[1][1][2].mean() > 0.7  # b: the blue image


def test_transparent_keeps_alpha_as_fourth_channel(tmp_path):
    ds = TextImageDataset(make_good_folder(tmp_path), text_len=32, image_size=SIZE, transparent=True, seed=0)
    by_name = {name_of(t): img for t, img in (ds[i] for i in range(len(ds)))}
    assert all(img.shape == (4, SIZE, SIZE) for img in by_name.values())
    torch.testing.assert_close(by_name["alpha"][:, 0, 0], torch.tensor([1.0, 0.0, 0.0, 128 / 255]))
    assert by_name["clear"][3].max() == 0.0  # fully transparent stays transparent
    for opaque in ("rgb", "gray", "palette", "deep", "photo"):
        assert by_name[opaque][3].min() == 1.0, opaque
    assert_expected_image("deep", by_name["deep"])


def test_sixteen_bit_grayscale_is_scaled_by_65535_not_clipped_or_quantised(tmp_path):
    values = [[0, 1000], [32768, 65535]]
    img = Image.new("I;16", (2, 2))
    for y, row in enumerate(values):
        for x, v in enumerate(row):
            img.putpixel((x, y), v)
    img.save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png", 2, resize_ratio=1.0)  # full 2x2 image, no resampling
    expected = torch.tensor(values, dtype=torch.float32).div(65535).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)  # 8-bit would be off by 4e-4 at 1000


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    img.paste((0, 0, 255), (2, 0, 4, 2))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "rotated.jpg", 2, resize_ratio=1.0)  # upright 2x4: central square, rows 1-2
    assert out.shape == (3, 2, 2)
    red = out[0] > 0.9
    assert red[0].all() and not red[1].any()  # red above blue (unrotated: red left of blue)


def test_random_crop_box_is_square_within_bounds_and_covers_the_scale():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_crop_box(40, 30, (0.5, 1.0), (1.0, 1.0), gen)
        assert w == h and 0 <= left <= 40 - w and 0 <= top <= 30 - h
        assert 0.5 * 1200 - 2 * w <= w * h <= 1200
    assert random_crop_box(100, 10, (0.75, 1.0)) == (45, 0, 10, 10)  # no square fits: central crop


def test_dataloader_with_two_workers_runs_a_full_epoch(tmp_path):
    with pytest.warns(UserWarning, match="skipped"):
        ds = TextImageDataset(make_mixed_folder(tmp_path), text_len=32, image_size=SIZE, seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert sum(len(tokens) for tokens, _ in batches) == len(ds)
    for tokens, images in batches:
        assert tokens.shape[1:] == (32,) and images.shape[1:] == (3, SIZE, SIZE)
        for t, img in zip(tokens, images):
            assert_expected_image(name_of(t), img)


def test_caption_line_choice_is_random_but_reproducible_from_the_seed(tmp_path):
    lines = [f"line {i}" for i in range(6)]
    _save(Image.new("RGB", (12, 10)), tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("\n".join(lines), encoding="utf-8")

    def draws(seed: int) -> List[str]:
        ds = TextImageDataset(tmp_path, text_len=16, image_size=SIZE, seed=seed)
        return [TOK.decode(ds[0][0]) for _ in range(30)]

    first = draws(5)
    assert set(first) <= set(lines) and len(set(first)) >= 4
    assert draws(5) == first
    assert draws(6) != first

    def worker_draws() -> List[str]:
        ds = TextImageDataset(tmp_path, text_len=16, image_size=SIZE, seed=5)
        loader = DataLoader(torch.utils.data.Subset(ds, [0] * 8), batch_size=2, num_workers=2,
                            generator=torch.Generator().manual_seed(1))
        return [TOK.decode(t) for tokens, _ in loader for t in tokens]

    assert worker_draws() == worker_draws()


def test_too_long_caption_raises_value_error_naming_it_unless_truncated(tmp_path):
    caption = "a caption that is much longer than sixteen bytes"
    _save(Image.new("RGB", (12, 10)), tmp_path / "long.png")
    (tmp_path / "long.txt").write_text(caption, encoding="utf-8")
    with pytest.raises(ValueError, match=r"long\.txt.*a caption that is much longer"):
        TextImageDataset(tmp_path, text_len=16, image_size=SIZE)[0]
    tokens, _ = TextImageDataset(tmp_path, text_len=16, image_size=SIZE, truncate_captions=True)[0]
    assert tokens.shape == (16,) and TOK.decode(tokens) == caption[:16]


def test_corrupt_image_is_replaced_by_the_next_sample_or_a_random_one_when_shuffle(tmp_path):
    root = make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning):
        ds = TextImageDataset(root, text_len=32, image_size=SIZE, seed=0)
        bad = [i for i, (image, _) in enumerate(ds.samples) if image.name == "noise.jpg"][0]
        tokens, _ = ds[bad]
        assert name_of(tokens) == ds.samples[bad + 1][0].stem
        shuffled = TextImageDataset(root, text_len=32, image_size=SIZE, shuffle=True, seed=0)
        names = {name_of(shuffled[bad][0]) for _ in range(10)}
    assert names <= set(GOOD) and str(root / "noise.jpg") in shuffled.skipped["bad_image"]


def test_folder_of_only_corrupt_images_raises_instead_of_looping(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    ds = TextImageDataset(tmp_path, text_len=8, image_size=SIZE)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="no image could be loaded"):
        ds[0]


def test_captions_pair_across_directories_by_stem_and_ambiguity_is_skipped(tmp_path):
    _save(Image.new("RGB", (12, 10)), tmp_path / "images" / "x.png")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "x.txt").write_text("x caption", encoding="utf-8")
    _save(Image.new("RGB", (12, 10)), tmp_path / "images" / "y.png")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "y.txt").write_text("y caption", encoding="utf-8")
    with pytest.warns(UserWarning, match="1 ambiguous_caption"):
        ds = TextImageDataset(tmp_path, text_len=16, image_size=SIZE)
    assert ds.samples == [(tmp_path / "images" / "x.png", tmp_path / "texts" / "x.txt")]
    assert ds.skipped == {"ambiguous_caption": [str(tmp_path / "images" / "y.png")]}


def test_bad_arguments_and_empty_folders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextImageDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no usable image/caption pairs"):
        TextImageDataset(tmp_path)
    make_good_folder(tmp_path)
    with pytest.raises(ValueError, match="resize_ratio"):
        TextImageDataset(tmp_path, resize_ratio=0)
    with pytest.raises(ValueError, match="text_len"):
        TextImageDataset(tmp_path, text_len=0)
    with pytest.raises(TypeError, match="tokenizer"):
        TextImageDataset(tmp_path, tokenizer="bytes")


# --- tar shards -----------------------------------------------------------------------------------------


def by_caption(samples) -> Dict[str, torch.Tensor]:
    return {TOK.decode(tokens): image for tokens, image in samples}


def test_shards_round_trip_the_folder_captions_and_images(tmp_path):
    root = make_good_folder(tmp_path / "folder")
    for name in GOOD:  # one line each, so both datasets pick the same caption
        next(root.rglob(f"{name}.txt")).write_text(f"{name} only", encoding="utf-8")
    shards = write_shards(root, tmp_path / "shards", samples_per_shard=3)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames()[:2] == ["000000000.png", "000000000.txt"]

    # resize_ratio=1 on a 12x10 image is the deterministic central 10x10 crop
    folder = by_caption(TextImageDataset(root, text_len=32, image_size=SIZE, resize_ratio=1.0)[i]
                        for i in range(len(GOOD)))
    web = by_caption(WebTextImageDataset(tmp_path / "shards", text_len=32, image_size=SIZE, resize_ratio=1.0,
                                         shuffle_buffer=0, rank=0, world_size=1))
    assert sorted(web) == sorted(folder) == sorted(f"{n} only" for n in GOOD)
    for caption, image in web.items():
        assert torch.equal(image, folder[caption]), caption


def test_shards_from_pairs_accept_pil_images_bytes_and_caption_lists(tmp_path):
    red, blue = Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))
    shards = write_shards([(["red"], red), ("blue", _png_bytes(blue))], tmp_path, samples_per_shard=10)
    got = by_caption(WebTextImageDataset(shards, text_len=8, image_size=4, shuffle_buffer=0, world_size=1, rank=0))
    assert got["red"][0].min() == 1.0 and got["blue"][2].min() == 1.0
    with pytest.raises(ValueError, match="not a format Pillow recognises"):
        write_shards([("x", b"junk")], tmp_path / "bad")


def _write_tar(path: Path, members: List[Tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shard_reader_skips_and_counts_bad_samples_and_bad_shards(tmp_path):
    png = _png_bytes(Image.new("RGB", (6, 6), (9, 9, 9)))
    _write_tar(tmp_path / "a.tar", [
        ("good.png", png), ("good.txt", b"good"), ("good.json", b"{}"),
        ("nocap.png", png), ("nocap.json", b"{}"),
        ("noimg.txt", b"orphan"),
        ("empty.png", png), ("empty.txt", b" \n"),
        ("corrupt.jpg", b"\xff\xd8 not really"), ("corrupt.txt", b"corrupt"),
        ("deep/dir/good2.png", png), ("deep/dir/good2.txt", b"good2"),
    ])
    _write_tar(tmp_path / "b.tar", [("good.png", png), ("good.txt", b"good"), ("cut.png", png), ("cut.txt", b"cut")])
    png_blocks = -(-len(png) // 512) * 512
    cut_at = (512 + png_blocks) + (512 + 512) + 512 + 10  # 10 bytes into cut.png's data
    (tmp_path / "b.tar").write_bytes((tmp_path / "b.tar").read_bytes()[:cut_at])
    ds = WebTextImageDataset([tmp_path / "a.tar", tmp_path / "b.tar"], text_len=8, image_size=4,
                             shuffle_buffer=0, rank=0, world_size=1)
    with pytest.warns(UserWarning):
        captions = sorted(TOK.decode(tokens) for tokens, _ in ds)
    assert captions == ["good", "good", "good2"]  # b.tar yields its first sample, then fails
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert ds.skipped == {"no_caption": [f"{a}:nocap"], "no_image": [f"{a}:noimg"],
                          "empty_caption": [f"{a}:empty"], "bad_image": [f"{a}:corrupt.jpg"],
                          "bad_shard": [str(b)]}


def _numbered_shards(tmp_path: Path, n: int, per_shard: int) -> List[Path]:
    pairs = [(f"c{i}", Image.new("RGB", (4, 4), (i, i, i))) for i in range(n)]
    return write_shards(pairs, tmp_path / f"shards{per_shard}", samples_per_shard=per_shard)


def _read_captions(ds: WebTextImageDataset, num_workers: int) -> List[str]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [TOK.decode(tokens) for tokens, _ in loader]


@pytest.mark.parametrize("per_shard", [3, 12], ids=["shard_split", "sample_stride_fallback"])
def test_every_sample_read_exactly_once_across_two_ranks_with_two_workers_each(tmp_path, per_shard):
    shards = _numbered_shards(tmp_path, 12, per_shard)  # 4 shards (one per reader) or 1 (fewer than readers)
    everything = sorted(f"c{i}" for i in range(12))
    single = _read_captions(WebTextImageDataset(shards, text_len=4, image_size=4, rank=0, world_size=1), 2)
    assert sorted(single) == everything
    per_rank = [_read_captions(WebTextImageDataset(shards, text_len=4, image_size=4, rank=r, world_size=2), 2)
                for r in range(2)]
    assert all(len(set(got)) == len(got) for got in per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == everything


def test_shuffle_buffer_is_seeded_complete_and_changes_with_the_epoch(tmp_path):
    shards = _numbered_shards(tmp_path, 12, 3)

    def order(seed: int, epoch: int, buffer: int = 4) -> List[str]:
        ds = WebTextImageDataset(shards, text_len=4, image_size=4, shuffle_buffer=buffer, seed=seed,
                                 rank=0, world_size=1)
        ds.set_epoch(epoch)
        return [TOK.decode(tokens) for tokens, _ in ds]

    in_order = order(0, 0, buffer=0)
    assert in_order == [f"c{i}" for i in range(12)]
    shuffled = order(0, 0)
    assert sorted(shuffled) == sorted(in_order) and shuffled != in_order
    assert order(0, 0) == shuffled
    assert order(0, 1) != shuffled and order(1, 0) != shuffled


def test_rank_and_world_size_come_from_env_when_not_given(tmp_path, monkeypatch):
    shards = _numbered_shards(tmp_path, 2, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = WebTextImageDataset(shards, text_len=4, image_size=4)
    assert (ds.rank, ds.world_size) == (1, 2)
    assert [TOK.decode(t) for t, _ in ds] == ["c1"]
    with pytest.raises(ValueError, match="rank < world_size"):
        WebTextImageDataset(shards, rank=2, world_size=2)
    with pytest.raises(TypeError, match="shared by every rank"):
        WebTextImageDataset(shards, seed=None)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK and WORLD_SIZE must be integers"):
        WebTextImageDataset(shards)


def test_expand_urls_handles_brace_ranges_lists_and_missing_files(tmp_path):
    for name in ("s-08.tar", "s-09.tar", "s-10.tar", "x.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_urls(str(tmp_path / "s-{08..10}.tar")) == [str(tmp_path / f"s-{i}.tar") for i in ("08", "09", "10")]
    assert expand_urls(str(tmp_path / "{x,s-08}.tar")) == [str(tmp_path / "x.tar"), str(tmp_path / "s-08.tar")]
    assert expand_urls("https://host/s-{0..1}.tar") == ["https://host/s-0.tar", "https://host/s-1.tar"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_urls(str(tmp_path / "s-{10..11}.tar"))


def test_pipe_sources_are_read_from_a_command(tmp_path):
    shards = _numbered_shards(tmp_path, 2, 2)
    ds = WebTextImageDataset(f"pipe:cat {shards[0]}", text_len=4, image_size=4, shuffle_buffer=0, allow_pipe=True,
                             rank=0, world_size=1)
    assert [TOK.decode(t) for t, _ in ds] == ["c0", "c1"]
