"""Domain training on tiny models (CPU): data rules, latent cache, F_T, loss, resume, kill-safety, accelerate, CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-tests" / "tiny"))

from training.checkpoints import list_checkpoints  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import ImageFolderDataset, preprocess, scan_images  # noqa: E402
from training.loss import denoising_loss  # noqa: E402
from training.train import train_domain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _blob(seed: int, size=(40, 40)) -> Image.Image:
    """A smooth synthetic 'domain' image: one coloured blob on a dark background."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    img = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 * w * h))[..., None] * np.array([220, 120, 60]) + 20
    return Image.fromarray(img.astype(np.uint8))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("domain-images")
    (root / "sub").mkdir()
    for i in range(6):
        _blob(i).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    """Good images in several modes and formats, plus every kind of bad file."""
    root = tmp_path_factory.mktemp("bad-images")
    _blob(10).save(root / "good.png")
    _blob(11).convert("RGBA").save(root / "rgba.webp")
    _blob(12).convert("L").save(root / "gray.jpg")
    _blob(13, size=(16, 16)).save(root / "small.png")              # smaller than the resolution (32)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    data = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), output=str(out), resolution=32, batch_size=2, max_steps=6, lr=1e-3,
                text_init_steps=2, text_init_batch_size=2, capture_images=4, checkpoint_steps=2, checkpoints_keep=10,
                validation_steps=0, num_workers=0, seed=1)
    base.update(kw)
    return TrainConfig.tiny(**base)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
    """One uninterrupted reference run (6 steps, checkpoints at 2, 4, 6)."""
    out = tmp_path_factory.mktemp("run-a") / "model"
    events = []
    train_domain(_cfg(data_dir, out), progress=lambda s, d, t, i: events.append((s, d, t, dict(i))))
    return out, events


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
        _blob(0, (8, 8)).save(root / "a.png")
    expected = {"missing": "does not exist", "empty": "has no .jpg, .png or .webp", "only-text": "1 other file",
                "all-corrupt": "no usable image", "all-small-skip": "--small-images upscale"}[case]
    with pytest.raises(ValueError, match=expected) as err:
        scan_images(root, resolution=32, small_images="skip" if case == "all-small-skip" else "upscale")
    assert "\n" not in str(err.value)


def test_exif_orientation_resize_crop_and_flip(tmp_path):
    im = _blob(3, size=(40, 20))
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


# ------------------------------------------------------------------------------------------------ pieces
def test_denoising_loss_closed_forms():
    from diffusers import DDPMScheduler

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, z, t, encoder_hidden_states=None, return_dict=False):
            return (z * 0 + self.p,)

    z0 = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 500, 999])
    eps_sched = DDPMScheduler(num_train_timesteps=1000)
    loss = denoising_loss(Zero(), z0, None, eps_sched, noise=noise, timesteps=t)
    torch.testing.assert_close(loss, noise.pow(2).mean())  # target eps, prediction 0
    v_sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    a = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * z0
    torch.testing.assert_close(denoising_loss(Zero(), z0, None, v_sched, noise=noise, timesteps=t), v.pow(2).mean())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert denoising_loss(Zero(), z0, None, eps_sched, generator=g1) == denoising_loss(Zero(), z0, None, eps_sched,
                                                                                      generator=g2)


def test_latent_cache_equals_vae_on_the_fly(data_dir, tmp_path):
    from suite.testing import build_tiny_sd
    from training.latents import CachedLatents, OnTheFlyLatents, build_latent_cache

    vae = build_tiny_sd()["vae"]
    ds = ImageFolderDataset(data_dir, resolution=32, hflip=0.5)
    calls = []
    original = vae.encode

    def counting(x, *a, **kw):
        calls.append(x.shape[0])
        return original(x, *a, **kw)

    vae.encode = counting
    path = build_latent_cache(ds, vae, tmp_path, vae_id="tiny", batch_size=4, num_workers=0)
    assert sum(calls) == 2 * len(ds)  # the VAE ran once per image and flip state
    assert build_latent_cache(ds, vae, tmp_path, vae_id="tiny") == path and sum(calls) == 2 * len(ds)  # reused
    cached, fly = CachedLatents(path, vae.config.scaling_factor, "cpu"), OnTheFlyLatents(ds, vae, num_workers=0)
    eps = torch.randn(4, *cached.latent_shape)
    idx, flips = [0, 3, 5, 3], [False, True, False, False]
    torch.testing.assert_close(cached.get(idx, flips, eps), fly.get(idx, flips, eps), rtol=1e-5, atol=1e-5)


def test_text_feature_optimisation_lowers_the_loss_with_the_unet_frozen():
    from diffusers import DDPMScheduler

    from suite.testing import build_tiny_sd
    from training.textinit import optimize_text_features

    parts = build_tiny_sd()
    unet = parts["unet"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sched = DDPMScheduler.from_config(parts["scheduler"].config)
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.5
    F_T, losses = optimize_text_features(unet, None, parts["text_encoder"], parts["tokenizer"], sched, latents,
                                         "a photo of a face", steps=25, batch_size=8, lr=5e-2, seed=0)
    from suite.text import encode_prompts

    F0 = encode_prompts(parts["tokenizer"], parts["text_encoder"], ["a photo of a face"])
    assert F_T.shape == F0.shape == (1, 77, 32) and len(losses) == 25
    noise = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    t = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        l0 = denoising_loss(unet, latents, F0, sched, noise=noise, timesteps=t)
        l1 = denoising_loss(unet, latents, F_T, sched, noise=noise, timesteps=t)
    assert l1 < 0.97 * l0, (float(l0), float(l1))
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # UNet frozen
    assert all(p.grad is None for p in unet.parameters())


# ------------------------------------------------------------------------------------------------ training
def _eval_loss(folder: Path, data_dir: Path) -> float:
    """Fixed-noise denoising loss of a domain model on the training latents (same draws for every model)."""
    from suite.nulltext import DomainModel
    from suite.testing import build_tiny_sd
    from training.loss import training_scheduler

    parts = build_tiny_sd()
    ds = ImageFolderDataset(data_dir, resolution=32, hflip=0.0)
    with torch.no_grad():
        z = parts["vae"].encode(torch.stack([ds.load(i) for i in range(len(ds))])).latent_dist.mean * \
            parts["vae"].config.scaling_factor
        unet = DomainModel.from_pretrained(folder).unet
        g = torch.Generator().manual_seed(123)
        losses = [denoising_loss(unet, z, None, training_scheduler(parts["scheduler"]), generator=g) for _ in range(4)]
    return float(torch.stack(losses).mean())


def test_training_reduces_the_loss_and_writes_a_domain_model(run_a, data_dir):
    from suite.nulltext import DomainModel, check_E

    out, events = run_a
    model = DomainModel.from_pretrained(out)
    check_E(model.unet)
    assert model.metadata.training_steps == 6 and model.metadata.domain == "face"
    assert [s for s, *_ in list_checkpoints(out)] == [2, 4, 6]
    train_losses = [i["loss"] for s, _, _, i in events if s == "train"]
    assert len(train_losses) == 6 and all("images_per_s" in i for s, _, _, i in events if s == "train")
    assert {"scan", "cache", "text_init", "train", "checkpoint"} <= {s for s, *_ in events}
    early = _eval_loss(list_checkpoints(out)[0][1], data_dir)
    final = _eval_loss(out, data_dir)
    assert final < 0.9 * early, (early, final)
    assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])
    F_T = json.loads((out / "training" / "text_init_losses.json").read_text())
    assert len(F_T["losses"]) == 2 and (out / "text_features.safetensors").is_file()


def test_interrupted_run_resumes_to_identical_weights(run_a, data_dir, tmp_path):
    """Stopped at step 3 (after the step-2 checkpoint), resumed: bit-identical to the uninterrupted run, because
    data order, flips, timesteps and noise are functions of (seed, position) and the optimizer state is restored."""
    out = tmp_path / "model"

    def stop(stage, done, total, info):
        if stage == "train" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_domain(_cfg(data_dir, out), progress=stop)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    with pytest.raises(ValueError, match="--resume"):
        train_domain(_cfg(data_dir, out))
    train_domain(_cfg(data_dir, out, resume=True))
    a, b = _weights(run_a[0]), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="changed settings"):
        train_domain(_cfg(data_dir, out, resume=True, batch_size=4, max_steps=8))


def test_kill_during_checkpoint_write_keeps_the_last_good_checkpoint(run_a, data_dir, tmp_path, monkeypatch):
    """The process dies while writing the step-4 checkpoint (here: an exception in the middle of the write, with
    no cleanup, which leaves the same files on disk as SIGKILL). The step-2 checkpoint stays the last complete
    one, loads, and a resume from it reaches the uninterrupted run's weights."""
    import training.train as tt

    out = tmp_path / "model"
    real_save = torch.save

    def dying_save(obj, path, *a, **kw):
        if "step-000004" in str(path):
            Path(path).write_bytes(b"half an optimizer state")
            raise KeyboardInterrupt("killed during checkpoint write")
        return real_save(obj, path, *a, **kw)

    import shutil

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(tt.torch, "save", dying_save)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **kw: None)  # SIGKILL runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        train_domain(_cfg(data_dir, out))
    monkeypatch.setattr(tt.torch, "save", real_save)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    leftovers = list((out / "training" / "checkpoints").glob(".step-*"))
    assert leftovers, "the half-written checkpoint should be left under its temporary name"
    assert [s for s, _ in list_checkpoints(out)] == [2]
    train_domain(_cfg(data_dir, out, resume=True))
    a, b = _weights(run_a[0]), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "training" / "checkpoints").glob(".tmp-*"))


def test_two_process_accelerate_run_matches_one_process(data_dir, tmp_path):
    """`accelerate launch --cpu --num_processes 2` (gloo): each process takes half of every global batch; DDP
    averages the gradients, so the model equals a 1-process run with the same global batch up to float32
    reduction order (see the tolerance below)."""
    common = ["--preset", "tiny", "--data", str(data_dir), "--resolution", "32", "--batch-size", "4",
              "--max-steps", "2", "--text-init-steps", "1", "--text-init-batch-size", "2", "--checkpoint-steps", "2",
              "--seed", "1", "--lr", "1e-3", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = tmp_path / "two"
    # accelerate's own --cpu flag starts ONE process unless MPI is set up; its torchrun launcher (--multi_gpu) with
    # our --cpu starts two CPU processes that talk over gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(ROOT / "launch.py"), "train", "--cpu", *common, "--output", str(two)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es) x 2 per device" in res.stdout + res.stderr
    assert res.stdout.count("domain model written") == 1  # the main process reports, once
    import launch

    one = tmp_path / "one"
    assert launch.main(["train", *common, "--output", str(one)]) == 0
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    mean = sum((a[k] - b[k]).abs().sum().item() for k in a) / sum(v.numel() for v in a.values())
    # Tolerance: Adam divides each gradient by its running RMS, so float32 reduction-order differences in
    # near-zero gradients can change a weight by a visible fraction of one step (lr = 1e-3); on average the
    # two runs agree to float precision.
    assert diff < 1e-4 and mean < 1e-7, (diff, mean)


def test_cli_trains_on_a_messy_folder_and_generate_uses_the_model(bad_dir, tmp_path, capsys):
    import launch

    out = tmp_path / "porcelain-model"
    code = launch.main(["train", "--preset", "tiny", "--domain", "porcelain", "--data", str(bad_dir), "--output",
                        str(out), "--max-steps", "2", "--batch-size", "2", "--text-init-steps", "1",
                        "--no-latent-cache", "--ema", "--validation-steps", "2", "--report-to", "tensorboard"])
    assert code == 0
    sample = Image.open(out / "training" / "samples" / "step-000002.png")
    assert sample.size == (2 * 32, 32)  # two validation images (MultiGuidance: SD1.5 uncond + domain)
    assert list((out / "training" / "logs").rglob("events.out.tfevents*"))
    meta = json.loads((out / "nulltext.json").read_text())
    assert meta["domain"] == "porcelain" and meta["prompt"] == "a photo of porcelain" and meta["training_steps"] == 2
    assert meta["extra"]["num_images"] == 4  # 2 corrupt and 1 text file left out, the small one upscaled
    png = tmp_path / "sample.png"
    assert launch.main(["generate", "--preset", "tiny", "--domain", "porcelain", "--domain-model", str(out),
                        "--output", str(png), "--steps", "2", "--width", "32", "--height", "32",
                        "--domain-weight", "2"]) == 0
    assert Image.open(png).size == (32, 32)
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert launch.main(["train", "--preset", "tiny", "--data", str(empty), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has no .jpg, .png or .webp" in err and len(err.splitlines()) == 1
    assert launch.main(["train", "--preset", "tiny", "--data", str(bad_dir), "--output", str(out),
                        "--batch-size", "3", "--gradient-accumulation-steps", "2"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_config_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.resolution, c.center_crop, c.hflip, c.lr_warmup_steps) == (1e-5, 32, 512, False, 0.5, 0)
    assert (c.text_init_steps, c.text_init_batch_size, c.text_init_images) == (100, 32, 3200)
    assert (c.weight_decay, c.max_grad_norm) == (1e-2, 1.0)
    assert replace(c, data="d", output="o", gradient_accumulation_steps=4).validate(num_processes=2) == 4
