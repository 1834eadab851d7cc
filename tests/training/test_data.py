"""Training data: the image-folder rules (bad files reported, good ones kept), EXIF, resize, crop and flip."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import ImageFolderDataset, preprocess, scan_images

from .common import blob


# ------------------------------------------------------------------------------------------------ data
def test_bad_data_is_reported_and_good_images_are_kept(bad_dir, caplog):
    with caplog.at_level(logging.WARNING):
        scan = scan_images(bad_dir, resolution=32)
    names = sorted(p.name for p in scan.images)
    assert names == ["good.png", "gray.jpg", "rgba.webp", "small.png"]
    assert sorted(p.name for p, _ in scan.corrupt) == ["corrupt.jpg", "truncated.png"]
    assert [p.name for p in scan.not_images] == ["notes.txt"]
    text = caplog.text
    assert "skipped 2 corrupt" in text and "ignored 1 file" in text and "1 image(s) are smaller than 32x32" in text
    skipped = scan_images(bad_dir, resolution=32, small_images="skip")
    assert "small.png" not in [p.name for p in skipped.images] and len(skipped.images) == 3
    ds = ImageFolderDataset(bad_dir, resolution=32, hflip=0.0)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("case", ["missing", "empty", "only-text", "all-corrupt", "all-small-skip"])
def test_unusable_folders_give_one_clear_sentence(tmp_path, case):
    root = tmp_path / "d"
    if case != "missing":
        root.mkdir()
    if case == "only-text":
        (root / "a.txt").write_text("x")
    if case == "all-corrupt":
        (root / "a.png").write_bytes(b"garbage")
    if case == "all-small-skip":
        blob(0, (8, 8)).save(root / "a.png")
    expected = {"missing": "does not exist", "empty": "has no .jpg, .png or .webp", "only-text": "1 other file",
                "all-corrupt": "no usable image", "all-small-skip": "--small-images upscale"}[case]
    with pytest.raises(ValueError, match=expected) as err:
        scan_images(root, resolution=32, small_images="skip" if case == "all-small-skip" else "upscale")
    assert "\n" not in str(err.value)


def test_exif_orientation_resize_crop_and_flip(tmp_path):
    im = blob(3, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    ds = ImageFolderDataset(tmp_path, resolution=16, hflip=0.0)
    assert ds.scan.sizes == [(20, 40)]  # EXIF applied: portrait
    from suite.images import load_image

    rgb = load_image(ds.paths[0], max_pixels=None)
    expected = np.asarray(rgb.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(ds.load(0), torch.from_numpy(expected).permute(2, 0, 1))  # no crop: squashed
    torch.testing.assert_close(ds.load(0, flip=True), ds.load(0).flip(-1))
    wide = Image.fromarray(np.concatenate([np.zeros((16, 16, 3)), np.full((16, 16, 3), 255),
                                           np.zeros((16, 16, 3))], axis=1).astype(np.uint8))
    crop = preprocess(wide, 16, center_crop=True)
    assert crop.min() > 0.99  # the white centre square only


def test_a_cached_zero123_of_another_recipe_is_set_aside_not_deleted(tmp_path):
    import json

    from training.miniworld import set_aside_zero123

    stage = tmp_path / "stage"
    # a model of a recipe with a marker goes back to its recipe's last phase folder (reused if that recipe returns)
    (stage / "zero123").mkdir(parents=True)
    (stage / "zero123" / "phases.json").write_text(json.dumps({"phases": 2, "recipe": "abc"}))
    (stage / "zero123" / "weights").write_text("A")
    kept = set_aside_zero123(stage / "zero123")
    assert kept == stage / "zero123-abc-phase2" and (kept / "weights").read_text() == "A"
    assert not (stage / "zero123").exists()
    # an older model without a marker, twice: both kept under distinct names
    for text in ("B", "C"):
        (stage / "zero123").mkdir()
        (stage / "zero123" / "weights").write_text(text)
        set_aside_zero123(stage / "zero123")
    kept = sorted(p for p in stage.iterdir() if p.name.startswith("zero123-previous-"))
    assert sorted((p / "weights").read_text() for p in kept) == ["B", "C"]
