"""The shapes dataset (determinism, sizes, splits, captions) and its checker (accepts true pairs, rejects others)."""
import random

import pytest
import torch

from dalle_core.demo import shapes
from dalle_core.demo.shapes import COLOURS, HELDOUT_PAIRS, SHAPES, ShapesDataset, check, parse_caption
from dalle_core.tokenizers import ByteTokenizer


def scenes(n, split="train", relation_prob=0.3, seed=0):
    ds = ShapesDataset(n, split=split, relation_prob=relation_prob, seed=seed)
    return [ds.scene(i) for i in range(n)]


def test_same_seed_gives_identical_samples_and_another_seed_differs():
    a, b, c = (ShapesDataset(20, seed=s, relation_prob=0.3) for s in (7, 7, 8))
    for i in range(20):
        (ca, ia), (cb, ib) = a.sample(i), b.sample(i)
        assert ca == cb and torch.equal(ia, ib)
    assert [a.sample(i)[0] for i in range(20)] != [c.sample(i)[0] for i in range(20)]
    assert shapes.make_sample(3)[0] == shapes.make_sample(3)[0]
    assert torch.equal(shapes.make_sample(3)[1], shapes.make_sample(3)[1])


def test_items_do_not_depend_on_access_order():
    ds = ShapesDataset(10, seed=1)
    forward = [ds.sample(i)[0] for i in range(10)]
    backward = [ds.sample(i)[0] for i in reversed(range(10))][::-1]
    assert forward == backward


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
def test_renders_at_any_power_of_two_size_in_unit_range(size):
    caption, image = shapes.make_sample(0, image_size=size)
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert (image < 0.5).any() and (image == 1).any()  # some ink on a white background


@pytest.mark.parametrize("size", [0, 12, 33, True])
def test_rejects_image_sizes_that_are_not_powers_of_two(size):
    with pytest.raises(ValueError, match="power of two"):
        ShapesDataset(4, image_size=size)


def test_antialias_off_gives_only_palette_and_background_pixels():
    _, image = shapes.make_sample(5, image_size=32, antialias=False)
    colours = {tuple(p) for p in (image * 255).round().int().flatten(1).t().tolist()}
    assert colours <= set(COLOURS.values()) | {(255, 255, 255)}


def test_palette_colours_are_far_apart_as_tints_of_white():
    # the checker labels a pixel by the ink direction (255 - RGB) it is a tint of; the palette keeps every two
    # directions at least 18 degrees apart (the old orange and yellow, 14 degrees apart, were the most confused)
    ink = 255 - torch.tensor(list(COLOURS.values()), dtype=torch.float64)
    ink = ink / ink.norm(dim=1, keepdim=True)
    cos = (ink @ ink.t()).fill_diagonal_(-1)
    assert torch.rad2deg(torch.arccos(cos.max())).item() >= 18.0
    assert len(COLOURS) == 8 and len(set(COLOURS.values())) == 8


def test_captions_parse_back_to_the_scene():
    for scene in scenes(400):
        objects, relation = parse_caption(scene.caption)
        assert relation == scene.relation
        assert [(o["colour"], o["shape"]) for o in objects] == [(o.colour, o.shape) for o in scene.objects]
        for named, obj in zip(objects, scene.objects):
            assert named["size"] in (None, obj.size)
            assert named["position"] in (None, obj.position)


def test_every_caption_fits_the_length_bound():
    assert max(len(s.caption.encode()) for s in scenes(500, relation_prob=0.5)) <= shapes.MAX_CAPTION_LEN
    assert shapes.caption_length_bound(relations=False) < shapes.MAX_CAPTION_LEN
    assert max(len(s.caption.encode()) for s in scenes(500, relation_prob=0.0)) <= \
        shapes.caption_length_bound(relations=False)


def test_captions_are_enumerated_on_first_use_not_at_import():
    import subprocess
    import sys

    probe = ("from dalle_core.demo import shapes; before = shapes._all_captions.cache_info().currsize; "
             "bound = shapes.MAX_CAPTION_LEN; print(before, bound, shapes._all_captions.cache_info().currsize)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, bound, after = map(int, done.stdout.split())
    assert before == 0 and after == 1 and bound == shapes.caption_length_bound() == ShapesDataset(1).text_len
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        shapes.NO_SUCH_NAME


def test_dataset_items_are_tokenized_captions_and_images():
    ds = ShapesDataset(5, image_size=16, text_len=80)
    text, image = ds[0]
    assert text.shape == (80,) and text.dtype == torch.long and image.shape == (3, 16, 16)
    assert ByteTokenizer().decode(text) == ds.sample(0)[0]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="context_length"):
        ShapesDataset(5, text_len=10)[0]


def test_heldout_split_is_disjoint_from_train_combinations():
    train, held = shapes.colour_shape_pairs("train"), shapes.colour_shape_pairs("heldout")
    assert set(held) == HELDOUT_PAIRS and not set(train) & set(held)
    assert len(train) + len(held) == len(COLOURS) * len(SHAPES)
    for scene in scenes(500, "train", relation_prob=0.5):
        assert all((o.colour, o.shape) not in HELDOUT_PAIRS for o in scene.objects)
    for scene in scenes(300, "heldout", relation_prob=0.5):
        assert any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects)
    # every held-out colour and shape is still seen in training, only never together
    assert {c for c, _ in HELDOUT_PAIRS} <= {c for c, _ in train} and {s for _, s in HELDOUT_PAIRS} <= {s for _, s in train}


def test_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(3, split="test")


@pytest.mark.parametrize("size", [32, 64])
def test_checker_accepts_at_least_99_percent_of_true_pairs(size):
    ds = ShapesDataset(500, image_size=size, relation_prob=0.3, seed=11)
    results = [check(*ds.sample(i)) for i in range(500)]
    assert sum(r.ok for r in results) >= 495
    assert sum(r.colour_and_shape for r in results) >= 495


def test_checker_accepts_heldout_renders():
    ds = ShapesDataset(200, split="heldout", seed=3)
    assert sum(check(*ds.sample(i)).ok for i in range(200)) >= 198


def test_checker_rejects_mismatched_pairs():
    ds = ShapesDataset(300, relation_prob=0.3, seed=5)
    accepted = total = 0
    for i in range(300):
        caption, _ = ds.sample(i)
        j = (i + 1) % 300
        named, _ = parse_caption(caption)
        shown = ds.scene(j)
        if [(o["colour"], o["shape"]) for o in named] == [(o.colour, o.shape) for o in shown.objects]:
            continue  # a random pair that happens to agree on colour and shape is not a mismatch
        total += 1
        accepted += check(caption, ds.sample(j)[1]).colour_and_shape
    assert total > 250 and accepted <= total * 0.01


@pytest.mark.parametrize("attribute", ["colour", "shape", "size", "position"])
def test_checker_flags_the_one_wrong_attribute(attribute):
    rng = random.Random(0)
    vocab = {"colour": list(COLOURS), "shape": list(SHAPES), "size": ["small", "large"],
             "position": ["left", "right", "top", "bottom", "center"]}
    for i in range(40):
        scene = scenes(1, relation_prob=0.0, seed=100 + i)[0]
        obj = scene.objects[0]
        attrs = {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "position": obj.position}
        attrs[attribute] = rng.choice([v for v in vocab[attribute] if v != attrs[attribute]])
        caption = f"a {attrs['size']} {attrs['colour']} {attrs['shape']} in the {attrs['position']}"
        result = check(caption, shapes.render(scene))
        assert getattr(result, attribute) is False and not result.ok
        assert all(getattr(result, a) for a in vocab if a != attribute)


def test_checker_on_relations_checks_each_object_and_the_relation():
    scene = next(s for s in scenes(50, relation_prob=1.0) if s.relation == "above")
    image = shapes.render(scene)
    assert check(scene.caption, image).ok
    flipped = check(scene.caption.replace(" above ", " below "), image)
    assert flipped.relation is False and flipped.colour_and_shape and not flipped.ok


def test_checker_rejects_a_blank_image():
    result = check("a red circle on the left", torch.ones(3, 32, 32))
    assert not result.colour and not result.shape and result.position is False and not result.ok


def test_parse_caption_and_check_reject_bad_input():
    with pytest.raises(ValueError, match="colour"):
        parse_caption("a circle")
    with pytest.raises(ValueError, match="shape"):
        parse_caption("a red square circle")
    with pytest.raises(TypeError):
        parse_caption(3)
    with pytest.raises(ValueError, match=r"\(3, S, S\)"):
        check("a red circle", torch.ones(1, 3, 32, 32))


def test_write_folder_writes_captioned_images_that_text_image_dataset_reads(tmp_path):
    from dalle_core.data import TextImageDataset

    folder = shapes.write_folder(tmp_path / "shapes", 6, image_size=32, seed=2)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["00000.png", "00000.txt"]
    ds = TextImageDataset(folder, text_len=shapes.MAX_CAPTION_LEN, image_size=32, resize_ratio=1.0)
    assert len(ds) == 6 and not ds.skipped
    caption, image = ShapesDataset(6, image_size=32, seed=2).sample(3)
    assert (folder / "00003.txt").read_text().strip() == caption
    text, loaded = ds[3]
    assert ByteTokenizer().decode(text) == caption
    assert (loaded - image).abs().max() <= 1 / 255 + 1e-6  # PNG keeps 8 bits
