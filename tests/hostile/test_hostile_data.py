"""Hostile datasets: dalle_core.data must never block, balloon memory, or run a command the caller did not allow.

Covers, by category: commands from sources (a `pipe:` source without `allow_pipe` raises and runs nothing;
with it, it runs), brace ranges (huge and nested patterns refused before expansion; nesting and empty ranges),
non-regular files (FIFOs, /dev/zero, a FIFO swapped in after indexing, a FIFO shard; symlinks to regular files
still work), symlink loops (a directory loop and an alias of a sibling count each image once), size caps
(captions and images over their byte caps in folders and shards, an oversized pax header, the shuffle buffer's
byte cap), pixel budget (a 12000x12000 PNG refused undecoded, the `max_image_pixels` keyword, a 6000x4000 JPEG
decoded at reduced scale with the same crop) and truncated tars (four kinds of cut reported as bad shards,
four complete tar flavours reporting nothing). 33 cases in all, parametrised cases counted
(`test_hostile_counts.py` keeps the number true).
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import threading
import tracemalloc
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
from PIL import Image, JpegImagePlugin

from dalle_core.data import TextImageDataset, WebTextImageDataset, expand_urls, load_image, write_shards
from dalle_core.data import shards as shards_module
from dalle_core.data.images import ImageTooLargeError
from dalle_core.data.sources import open_shard
from dalle_core.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() run in a daemon thread; fails the test instead of hanging when it takes longer than `seconds`."""
    result: Dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"call still blocked after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def quietly(fn: Callable[[], Any]) -> Any:
    """fn() with the datasets' skip warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def captioned(root: Path, name: str, caption: str = "a caption", size: Tuple[int, int] = (6, 6)) -> Path:
    """root/name.png with a root/name.txt caption; returns the image path."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 10)).save(root / f"{name}.png")
    (root / f"{name}.txt").write_text(caption, encoding="utf-8")
    return root / f"{name}.png"


def folder_dataset(root: Path, **kwargs: Any) -> TextImageDataset:
    return quietly(lambda: TextImageDataset(root, text_len=16, image_size=4, **kwargs))


def shard_dataset(urls: Any, **kwargs: Any) -> WebTextImageDataset:
    kwargs = {"text_len": 16, "image_size": 4, "shuffle_buffer": 0, "rank": 0, "world_size": 1, **kwargs}
    return WebTextImageDataset(urls, **kwargs)


def read_all(ds: Any) -> List[str]:
    return [TOK.decode(tokens) for tokens, _ in quietly(lambda: list(ds))]


def write_tar(path: Path, members: List[Tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT,
              mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


PNG = png_bytes(Image.new("RGB", (6, 6), (9, 9, 9)))


# --- commands from sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dataset", "expand_urls", "brace_alternative"])
def test_pipe_source_without_allow_pipe_raises_and_runs_nothing(tmp_path, how):
    real = write_shards([("c0", Image.new("RGB", (4, 4)))], tmp_path / "shards")[0]
    marker = tmp_path / "MARKER"
    source = f"pipe:touch {marker}; cat {real}"
    with pytest.raises(ValueError, match=r"pipe:.*allow_pipe=True"):
        if how == "dataset":
            shard_dataset(source)
        elif how == "expand_urls":
            expand_urls([str(real), source])
        else:
            expand_urls(f"{{{real},pipe:touch {marker}; cat {real}}}")
    with pytest.raises(ValueError, match="allow_pipe=True"):
        with open_shard(source):  # the opener refuses too, whoever calls it
            pass
    assert not marker.exists()


def test_pipe_source_runs_when_explicitly_allowed(tmp_path):
    real = write_shards([("c0", Image.new("RGB", (4, 4)))], tmp_path / "shards")[0]
    marker = tmp_path / "MARKER"
    ds = shard_dataset(f"pipe:touch {marker}; cat {real}", allow_pipe=True)
    assert read_all(ds) == ["c0"] and marker.exists()


# --- brace ranges --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, count", [("c-{0..100000000}.tar", 100000001),
                                            ("c-{a,{0..999}}-{0..999}-{0..999}.tar", 1001 * 1000 * 1000)],
                         ids=["huge_range", "nested_product"])
def test_huge_brace_patterns_are_refused_before_expanding(tmp_path, pattern, count):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{re.escape(pattern[:4])}.*expands to {count} sources.*max_sources"):
            expand_urls(str(tmp_path / pattern))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # counted, not expanded


def test_nested_braces_expand_once_each_and_empty_ranges_are_refused(tmp_path):
    for name in ("s-a.tar", "s-1.tar", "s-2.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_urls(str(tmp_path / "s-{a,{1..2}}.tar")) == [str(tmp_path / f"s-{x}.tar") for x in "a12"]
    with pytest.raises(ValueError, match=r"\{2\.\.1\}.*is empty"):
        expand_urls(str(tmp_path / "s-{2..1}.tar"))


# --- non-regular files ---------------------------------------------------------------------------------------


@needs_fifo
@pytest.mark.parametrize("case", ["fifo_caption", "fifo_image", "dev_zero_caption"])
def test_non_regular_files_are_skipped_and_counted_never_opened(tmp_path, case):
    captioned(tmp_path, "good", "good one")
    if case == "fifo_caption":
        odd = tmp_path / "x.txt"
        os.mkfifo(odd)
        Image.new("RGB", (6, 6)).save(tmp_path / "x.png")
    elif case == "fifo_image":
        odd = tmp_path / "x.png"
        os.mkfifo(odd)
        (tmp_path / "x.txt").write_text("never used")
    else:
        odd = tmp_path / "x.txt"
        odd.symlink_to("/dev/zero")
        Image.new("RGB", (6, 6)).save(tmp_path / "x.png")
    ds = within(60, lambda: folder_dataset(tmp_path))
    assert ds.skipped["not_regular_file"] == [str(odd)]
    if case != "fifo_image":  # the image lost its only caption
        assert ds.skipped["no_caption"] == [str(tmp_path / "x.png")]
    assert [TOK.decode(ds[i][0]) for i in range(len(ds))] == ["good one"]


@needs_fifo
def test_fifo_swapped_in_after_indexing_is_refused_at_load(tmp_path):
    captioned(tmp_path, "a", "first")
    captioned(tmp_path, "b", "second")
    ds = folder_dataset(tmp_path, seed=0)
    (tmp_path / "a.txt").unlink()
    os.mkfifo(tmp_path / "a.txt")
    with pytest.warns(UserWarning, match="not_regular_file"):
        tokens, _ = within(60, lambda: ds[0])
    assert TOK.decode(tokens) == "second" and ds.skipped["not_regular_file"] == [str(tmp_path / "a.png")]


@needs_fifo
def test_fifo_shard_is_refused_with_a_clear_error(tmp_path):
    os.mkfifo(tmp_path / "s.tar")
    with pytest.raises(ValueError, match=r"s\.tar.*not a regular file"):
        within(60, lambda: expand_urls(str(tmp_path / "s.tar")))
    with pytest.raises(ValueError, match=r"s\.tar.*not a regular file"):
        within(60, lambda: expand_urls(str(tmp_path)))  # a directory's *.tar


def test_symlinks_to_regular_files_still_work(tmp_path):
    real = captioned(tmp_path / "real", "pic", "linked caption")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pic.png").symlink_to(real)
    (tmp_path / "data" / "pic.txt").symlink_to(real.with_suffix(".txt"))
    ds = folder_dataset(tmp_path / "data")
    assert ds.skipped == {} and TOK.decode(ds[0][0]) == "linked caption"


# --- symlink loops -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["loop", "alias_of_sibling"])
def test_symlinked_directories_are_walked_once(tmp_path, layout):
    captioned(tmp_path / "root", "one", "one")
    captioned(tmp_path / "root" / "sub", "two", "two")
    if layout == "loop":
        (tmp_path / "root" / "sub" / "back").symlink_to(tmp_path / "root")  # root/sub/back/sub/back/...
        (tmp_path / "root" / "self").symlink_to(".")
    else:
        (tmp_path / "root" / "zz_alias").symlink_to(tmp_path / "root" / "sub")
    ds = within(60, lambda: folder_dataset(tmp_path / "root"))
    assert len(ds) == 2 and sorted(TOK.decode(ds[i][0]) for i in range(2)) == ["one", "two"]


# --- size caps -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["folder_caption", "folder_image", "shard_caption", "shard_image"])
def test_files_over_their_byte_cap_are_skipped_and_counted(tmp_path, case):
    noise = png_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))  # far over 2000 bytes; PNG is not
    assert len(noise) > 2000 > len(PNG)
    if case.startswith("folder"):
        captioned(tmp_path, "good", "good")
        (tmp_path / "big.png").write_bytes(noise)
        (tmp_path / "big.txt").write_text("big")
        if case == "folder_caption":  # default cap, 1 MiB: a sparse file one byte over it, never read
            with open(tmp_path / "big.txt", "r+b") as f:
                f.truncate((1 << 20) + 1)
            ds, reason = folder_dataset(tmp_path), "caption_too_large"
        else:
            ds, reason = folder_dataset(tmp_path, max_image_bytes=2000), "image_too_large"
        assert read_all(ds) == ["good"] and ds.skipped == {reason: [str(tmp_path / "big.png")]}
        return
    shard = write_tar(tmp_path / "s.tar", [("good.png", PNG), ("good.txt", b"good"),
                                           ("big.png", noise), ("big.txt", b"x" * 64)])
    if case == "shard_caption":
        ds, expected = shard_dataset(shard, max_caption_bytes=10), {"caption_too_large": [f"{shard}:big"]}
    else:
        ds, expected = shard_dataset(shard, max_image_bytes=2000), {"image_too_large": [f"{shard}:big.png"]}
    assert read_all(ds) == ["good"] and ds.skipped == expected


def test_oversized_pax_header_fails_the_shard(tmp_path):
    shard = tmp_path / "pax.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.txt")
        info.size, info.pax_headers = 1, {"comment": "x" * ((1 << 20) + 10)}
        tar.addfile(info, io.BytesIO(b"a"))
    ds = shard_dataset(shard)
    with pytest.warns(UserWarning, match=r"pax\.tar.*extended header"):
        assert list(ds) == []
    assert ds.skipped == {"bad_shard": [str(shard)]}


def test_shuffle_buffer_holds_a_bounded_number_of_bytes_and_loses_nothing(tmp_path, monkeypatch):
    shards = write_shards([(f"c{i}", Image.new("RGB", (4, 4), (i, i, i))) for i in range(12)], tmp_path / "s")
    with open(shards[0], "rb") as f:
        sample_bytes = max(sum(map(len, files.values())) for _, files in shards_module.iter_tar_samples(f))
    monkeypatch.setattr(shards_module, "_SHUFFLE_BYTES", 3 * sample_bytes)  # room for 3 of 1000 samples
    everything = sorted(f"c{i}" for i in range(12))
    for seed in range(4):  # the first sample out is one of the first 4 in: the buffer never held more than 3
        got = read_all(shard_dataset(shards, shuffle_buffer=1000, seed=seed))
        assert sorted(got) == everything and got[0] in {"c0", "c1", "c2", "c3"}


# --- pixel budget --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 12000x12000 one-bit PNG: about 40 KB on disk, 432 MB as RGB."""
    data = png_bytes(Image.new("1", (12000, 12000), 1))
    assert len(data) < 500_000
    return data


@pytest.mark.parametrize("where", ["folder", "shard"])
def test_pixel_bomb_is_refused_from_its_header_without_decoding(tmp_path, bomb_png, where):
    captioned(tmp_path / "d", "good", "good")
    (tmp_path / "d" / "bomb.png").write_bytes(bomb_png)
    (tmp_path / "d" / "bomb.txt").write_text("bomb")
    ds: Any = (TextImageDataset(tmp_path / "d", text_len=16, image_size=32) if where == "folder"
               else shard_dataset(write_shards(tmp_path / "d", tmp_path / "s"), image_size=32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [TOK.decode(ds[i][0]) for i in range(2)] if where == "folder" else [TOK.decode(t) for t, _ in ds]
    assert "good" in got and "bomb" not in got
    assert len(ds.skipped["bad_image"]) == 1 and "bomb" in ds.skipped["bad_image"][0]
    messages = [str(w.message) for w in caught]
    assert any("12000x12000" in m and "max_image_pixels" in m for m in messages), messages
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_max_image_pixels_keyword_sets_the_budget(tmp_path):
    data = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageTooLargeError, match=r"image bytes is 100x100 = 10000 pixels.*budget of 5000"):
        load_image(data, 8, max_image_pixels=5000)
    assert load_image(data, 8, max_image_pixels=10000).shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8)


def test_big_jpeg_is_decoded_at_reduced_scale_with_the_same_crop(monkeypatch):
    gradient = Image.linear_gradient("L").resize((6000, 4000))
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, gradient.transpose(Image.FLIP_LEFT_RIGHT), gradient)).save(buffer, "JPEG")
    data = buffer.getvalue()
    opened: List[Image.Image] = []
    real_open = Image.open

    def spy(*args: Any, **kwargs: Any) -> Image.Image:
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(Image, "open", spy)
    drafted = load_image(data, 32, resize_ratio=0.5, generator=torch.Generator().manual_seed(5))
    assert opened[0].size == (750, 500)  # decoded at 1/8 scale: 0.4 MB, not 72 MB
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: None)
    full = load_image(data, 32, resize_ratio=0.5, generator=torch.Generator().manual_seed(5))
    assert opened[1].size == (6000, 4000)
    assert (drafted - full).abs().max() < 0.05  # the same crop box, scaled onto the drafted image


# --- truncated tars ------------------------------------------------------------------------------------------


def three_sample_tar(path: Path) -> Tuple[Path, List[int]]:
    """A USTAR tar of samples s0..s2 (png + txt) and the byte offset where each member's header starts."""
    members = [(f"s{i}.{ext}", PNG if ext == "png" else f"s{i}".encode()) for i in range(3) for ext in ("png", "txt")]
    write_tar(path, members)
    offsets, at = [], 0
    for _, data in members:
        offsets.append(at)
        at += 512 + -(-len(data) // 512) * 512
    return path, offsets + [at]  # the last: where the end-of-archive blocks start


@pytest.mark.parametrize("cut", ["member_boundary", "inside_header", "inside_member_data", "one_end_block"])
def test_truncated_tar_is_reported_as_a_bad_shard(tmp_path, cut):
    shard, offsets = three_sample_tar(tmp_path / "cut.tar")
    at = {"member_boundary": offsets[4], "inside_header": offsets[4] + 200,
          "inside_member_data": offsets[4] + 512 + 10, "one_end_block": offsets[6] + 512}[cut]
    shard.write_bytes(shard.read_bytes()[:at])
    ds = shard_dataset(shard)
    with pytest.warns(UserWarning, match=r"cut\.tar \(bad_shard"):
        got = [TOK.decode(tokens) for tokens, _ in ds]
    # a cut header may have split the sample before it, so that one is dropped; a cut in data keeps it
    assert got == {"member_boundary": ["s0"], "inside_header": ["s0"], "inside_member_data": ["s0", "s1"],
                   "one_end_block": ["s0", "s1", "s2"]}[cut]
    assert ds.skipped == {"bad_shard": [str(shard)]}


@pytest.mark.parametrize("flavour", ["ustar", "gnu", "pax", "gzip"])
def test_complete_tars_report_nothing_skipped(tmp_path, flavour):
    fmt = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT}.get(flavour, tarfile.PAX_FORMAT)
    long_dir = "d" * 120 + "/"  # a name too long for a plain header: GNU and PAX write extra headers
    members = [(f"{long_dir if flavour != 'ustar' else ''}k{i}.{ext}", PNG if ext == "png" else f"k{i}".encode())
               for i in range(3) for ext in ("png", "txt")]
    shard = write_tar(tmp_path / "ok.tar", members, fmt, "w:gz" if flavour == "gzip" else "w")
    ds = shard_dataset(shard)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [TOK.decode(tokens) for tokens, _ in ds] == ["k0", "k1", "k2"]
    assert ds.skipped == {}
