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



def test_linked_folders_are_searched_and_hidden_ones_left_out(tmp_path):
    """Images in a linked subfolder were missed (rglob does not follow links on Python 3.11; a folder of links only
    was "no images"), and images in hidden folders (.thumbnails/, .ipynb_checkpoints/) were trained on."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (root / ".thumbnails", elsewhere):
        folder.mkdir(parents=True)
    blob(1).save(root / "a.png")
    blob(2).save(root / ".thumbnails" / "a.png")
    blob(3).save(elsewhere / "b.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle ends
    assert [p.relative_to(root).as_posix() for p in scan_images(root).images] == ["a.png", "linked/b.png"]

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


def test_center_crop_resamples_only_the_square_it_keeps():
    """--center-crop resized the whole image before cutting the square out: a 4000 x 10 strip became 204,800 x 512
    (300 MB) for a 512 crop. The crop is the same as resizing first (to one grey level on a few pixels)."""
    import subprocess
    import sys

    smooth = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 100, 3), dtype=np.uint8)).resize(
        (300, 111), Image.BICUBIC)
    big = smooth.resize((round(300 * 64 / 111), 64), Image.BICUBIC)
    left = (big.width - 64) // 2
    expected = np.asarray(big.crop((left, 0, left + 64, 64)), dtype=np.float32) / 127.5 - 1
    got = preprocess(smooth, 64, center_crop=True).permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 1.01 / 127.5 and np.abs(got - expected).mean() < 1e-3
    code = ("import resource; from PIL import Image; from training.data import preprocess; "
            "im = Image.new('RGB', (4000, 10), (200, 10, 10)); before = resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss; t = preprocess(im, 512, center_crop=True); "
            "print(tuple(t.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    shape, grown_kb = run.stdout.rsplit(")", 1)
    assert shape + ")" == "(3, 512, 512)" and int(grown_kb) < 100_000, run.stdout  # 300 MB before


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


def test_a_recipe_that_adds_a_phase_continues_from_the_cached_model_of_the_shorter_one(tmp_path, monkeypatch):
    """The cached final model of a two-phase recipe, set aside, lands where the three-phase recipe looks for its
    second phase (so the build trains only the third); a recipe that changes an earlier phase does not find it."""
    import json

    from training import miniworld

    # the shipped two-phase recipe's fingerprint, which existing build caches are named by, is unchanged
    assert miniworld.zero123_recipe("full", 2) == "a042d8ae3b"
    three = miniworld.ZERO123_PHASES["quick"]
    assert len(three) == 3
    monkeypatch.setitem(miniworld.ZERO123_PHASES, "quick", three[:2])
    two = miniworld.zero123_recipe("quick")
    stage = tmp_path / "stage"
    (stage / "zero123").mkdir(parents=True)
    (stage / "zero123" / "phases.json").write_text(json.dumps({"phases": 2, "recipe": two}))
    monkeypatch.setitem(miniworld.ZERO123_PHASES, "quick", three)
    assert miniworld.zero123_recipe("quick") != two and miniworld.zero123_recipe("quick", 2) == two
    kept = miniworld.set_aside_zero123(stage / "zero123")
    assert kept == miniworld.zero123_phase_folder(stage, "quick", 2)
    third = miniworld.zero123_recipe("quick")
    monkeypatch.setattr(miniworld.mini_zero123, "BOX_SHAPES", ("box",))  # other data for the box phase: retrained
    assert miniworld.zero123_recipe("quick") != third and miniworld.zero123_recipe("quick", 2) == two
    changed = ((three[0][0] + 1, *three[0][1:]), *three[1:])
    monkeypatch.setitem(miniworld.ZERO123_PHASES, "quick", changed)
    assert miniworld.zero123_phase_folder(stage, "quick", 2) != kept


def test_the_zero123_step_trains_only_the_phases_it_lacks_on_their_own_data(tmp_path, monkeypatch):
    """Orchestration of build step 6 (the training itself stubbed): an old two-phase final model is set aside and
    continued by the third phase alone, on the box-weighted pairs, from that model; run again, nothing is trained."""
    import json

    import numpy as np

    from training import mini_zero123, miniworld

    calls, rendered = [], []

    def fake_pairs(work, n, seed, shapes=None, suffix=""):
        rendered.append((n, seed, shapes, suffix))
        return dict(images=np.zeros((n, 6, 2, 2, 3), np.uint8), poses=np.zeros((n, 6, 2), np.float32))

    def fake_train(data, vae, steps, lr, seed, init):
        calls.append((len(data["images"]), steps, lr, seed, init))
        return {"trained": steps}

    def fake_save(parts, folder):
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps(parts))

    monkeypatch.setattr(miniworld, "_zero123_pairs", fake_pairs)
    monkeypatch.setattr(mini_zero123, "train_zero123", fake_train)
    monkeypatch.setattr(miniworld, "save_zero123", fake_save)
    monkeypatch.setattr(miniworld, "_load_zero123_parts", lambda folder: {"loaded": folder.name})
    stage = tmp_path / "stage"
    (stage / "zero123").mkdir(parents=True)
    (stage / "zero123" / "model_index.json").write_text("{}")
    (stage / "zero123" / "phases.json").write_text(json.dumps({"phases": 2, "recipe": miniworld.zero123_recipe(
        "quick", 2)}))
    assert miniworld.build_zero123(stage, tmp_path / "work", "quick", 0, vae=None) is False
    steps, lr, kind = miniworld.ZERO123_PHASES["quick"][2]
    n = miniworld.SIZES["quick"]["zero123_box_objects"]
    assert kind == "boxes" and len(rendered) == 1 and rendered[0][:3] == (n, 31, mini_zero123.BOX_SHAPES)
    assert rendered[0][3].startswith("-boxes-")  # the cached pairs are named by what they are
    assert calls == [(n, steps, lr, 2, {"loaded": miniworld.zero123_phase_folder(stage, "quick", 2).name})]
    assert (miniworld.zero123_phase_folder(stage, "quick", 2) / "model_index.json").exists()  # the old model is kept
    marker = json.loads((stage / "zero123" / "phases.json").read_text())
    assert marker == {"phases": 3, "recipe": miniworld.zero123_recipe("quick")}
    assert miniworld.build_zero123(stage, tmp_path / "work", "quick", 0, vae=None) is True and len(calls) == 1
    # from nothing: all three phases, the first two on the pairs and the extra pairs, each from the one before
    calls.clear()
    fresh = tmp_path / "fresh"
    assert miniworld.build_zero123(fresh, tmp_path / "work", "quick", 0, vae=None) is False
    pairs = 2 * miniworld.SIZES["quick"]["zero123_objects"]
    assert [c[:4] for c in calls] == [(pairs, 30, 1e-3, 0), (pairs, 10, 3e-4, 1), (n, 10, 3e-4, 2)]
    assert [c[4] for c in calls] == [None, {"trained": 30}, {"trained": 10}]


def test_a_resumed_zero123_step_counts_the_time_of_the_phases_an_interrupted_build_trained(tmp_path, monkeypatch):
    """A build killed after two of three phases resumes at the third; the step's recorded time adds the first two's
    (it was the third's alone, and near zero where only the final rename was left)."""
    import json

    import numpy as np

    from training import mini_zero123, miniworld

    stage = tmp_path / "stage"
    for i, seconds in ((1, 100.0), (2, 50.0)):
        folder = miniworld.zero123_phase_folder(stage, "quick", i)
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")
        (folder / miniworld.PHASE_SECONDS).write_text(json.dumps({"seconds": seconds}))
    assert miniworld.zero123_phase_seconds(stage, "quick") == 150.0
    monkeypatch.setattr(miniworld, "_zero123_pairs", lambda work, n, *a: dict(images=np.zeros((n, 6, 2, 2, 3)),
                                                                            poses=np.zeros((n, 6, 2))))
    monkeypatch.setattr(mini_zero123, "train_zero123", lambda *a, **k: {})
    monkeypatch.setattr(miniworld, "save_zero123", lambda parts, folder: folder.mkdir(parents=True))
    monkeypatch.setattr(miniworld, "_load_zero123_parts", lambda folder: {})
    assert miniworld.build_zero123(stage, tmp_path / "work", "quick", 0, vae=None) is False
    assert json.loads((stage / "zero123" / miniworld.PHASE_SECONDS).read_text())["seconds"] >= 0
    assert miniworld.zero123_phase_seconds(stage, "quick") == 0.0  # finished: a cached step keeps its own time


def test_a_phase_asking_for_unknown_data_is_refused_before_anything_is_rendered_or_trained(tmp_path, monkeypatch):
    import pytest

    from training import miniworld

    phases = miniworld.ZERO123_PHASES["quick"]
    monkeypatch.setitem(miniworld.ZERO123_PHASES, "quick", (*phases[:2], (10, 3e-4, "box")))  # a typo for "boxes"
    monkeypatch.setattr(miniworld, "_zero123_pairs", lambda *a, **k: pytest.fail("rendered"))
    monkeypatch.setattr(miniworld.mini_zero123, "train_zero123", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="'box'"):
        miniworld.build_zero123(tmp_path / "stage", tmp_path / "work", "quick", 0, vae=None)


def test_pair_objects_are_the_objects_and_views_render_pairs_renders():
    """``pair_objects`` (what a Zero-1-to-3 phase saw, for measuring a model on its own training pairs) draws
    exactly ``render_pairs``' objects and cameras: the poses match, and the first object's input
    view renders to the same image."""
    import numpy as np

    from suite.miniworld.views import reference_framing, render_framed
    from training import mini_zero123

    pairs = mini_zero123.render_pairs(3, 2, seed=5, workers=1, shapes=("box", "cup"))
    drawn = mini_zero123.pair_objects(3, 2, seed=5, shapes=("box", "cup"))
    assert len(drawn) == 3
    assert np.allclose(pairs["poses"], np.array([np.stack([els, azs], -1) for _, els, azs in drawn]))
    obj, els, azs = drawn[0]
    assert obj.shape in ("box", "cup")
    rgb, _ = render_framed(obj, reference_framing(obj, els[0], azs[0]), els[:1], azs[:1], mini_zero123.IMAGE_SIZE)
    assert np.array_equal((rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), pairs["images"][0, 0])


def test_the_rebuild_refuses_what_would_mix_or_lose_work_before_any_work(tmp_path, monkeypatch):
    """``training.miniworld``: quick models go to WORK/models-quick unless --output names a folder (they replaced
    the shipped models); a cache made with another seed or SIZES, a work folder of other files, an --output that is
    a file, and a second build into the same cache are each one sentence before anything is rendered or trained."""
    import json

    from suite.checks import UserError
    from suite.files import output_lock
    from training import miniworld

    built = []
    monkeypatch.setattr(miniworld, "build", lambda output, work, size, seed: built.append(output))
    assert miniworld.main(["--size", "quick", "--work", str(tmp_path / "w")]) == 0
    assert built == [tmp_path / "w" / "models-quick"]
    monkeypatch.undo()

    def no_work(*a, **k):
        raise AssertionError("work was done before the refusal")

    monkeypatch.setattr(miniworld, "render_set", no_work)
    work = tmp_path / "cache"
    work.mkdir()
    (work / "version.json").write_text(json.dumps({"version": miniworld.BUILD_VERSION, "size": "quick", "seed": 1}))
    with pytest.raises(UserError, match="another --seed"):
        miniworld.build(tmp_path / "out", work, "quick", seed=0)
    (work / "version.json").write_text(json.dumps({"version": miniworld.BUILD_VERSION, "size": "quick",
                                                    "recipe": "0123456789ab"}))
    with pytest.raises(UserError, match="recipe"):
        miniworld.build(tmp_path / "out", work, "quick", seed=0)
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a build cache"):
        miniworld.build(tmp_path / "out", mine, "quick", seed=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        miniworld.build(tmp_path / "file", tmp_path / "w2", "quick", seed=0)
    with output_lock(tmp_path / "w3", "--work"), pytest.raises(UserError, match="choose another --work"):
        miniworld.build(tmp_path / "out", tmp_path / "w3", "quick", seed=0)
    with pytest.raises(UserError, match="inside it"):  # the finished models would replace the cache
        miniworld.build(tmp_path / "out", tmp_path / "out" / "cache", "quick", seed=0)
    # the finished models replace --output whole: a folder of the user's is refused (it was deleted at the end)
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    (pictures / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(UserError, match="'holiday.jpg'.*new or empty folder"):
        miniworld.build(pictures, tmp_path / "w4", "quick", seed=0)
    assert (pictures / "holiday.jpg").read_bytes() == b"\xff\xd8"
    (pictures / "holiday.jpg").unlink()
    (pictures / ".DS_Store").write_bytes(b"x")  # empty but for a file browser's file; a models folder: accepted
    miniworld.check_models_folder(pictures)
    (pictures / "vae").mkdir()
    (pictures / "MANIFEST.json").write_text('{"name": "a web app"}')  # not a mini world's: refused
    with pytest.raises(UserError, match="not a mini world's models"):
        miniworld.check_models_folder(pictures)
    (pictures / "MANIFEST.json").write_text(json.dumps({"files": [], "size": "quick", "seed": 0}))
    miniworld.check_models_folder(pictures)
    # the box pairs' count is in the Zero-1-to-3 recipe, which retrains only its phase: not a refusal
    recipe = miniworld._recipe("quick")
    monkeypatch.setitem(miniworld.SIZES, "quick", {**miniworld.SIZES["quick"], "zero123_box_objects": 7})
    assert miniworld._recipe("quick") == recipe
    monkeypatch.setitem(miniworld.SIZES, "quick", {**miniworld.SIZES["quick"], "vae": 7})
    assert miniworld._recipe("quick") != recipe
    assert (mine / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()


def test_a_broken_link_is_counted_as_unreadable_not_silently_left_out(tmp_path):
    from PIL import Image

    from training.data import scan_images

    for i in range(2):
        Image.new("RGB", (64, 64), (i * 90, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "moved.png").symlink_to(tmp_path / "gone" / "moved.png")  # its target was moved away
    scan = scan_images(tmp_path)
    assert len(scan.images) == 2 and [p.name for p, _ in scan.corrupt] == ["moved.png"]
