"""The training loop on tiny models (CPU): loss goes down, resume and a kill mid-checkpoint give identical weights, accelerate's split does not change the run, the paper's defaults."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
from tests.common import accelerate_two_processes
from training.checkpoints import list_checkpoints
from training.config import TrainConfig
from training.data import ImageFolderDataset
from training.loss import denoising_loss
from training.train import train_domain

ROOT = Path(__file__).resolve().parents[2]


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
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    _CALLERS_RANDOM["before"] = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    train_domain(_cfg(data_dir, out), progress=lambda s, d, t, i: events.append((s, d, t, dict(i))))
    _CALLERS_RANDOM["after"] = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    return out, events


_CALLERS_RANDOM = {}


def test_training_leaves_the_callers_random_state(run_a):
    """accelerate's set_seed reseeded the caller's global generators (torch, numpy, python): every call left them
    at the same state, so a script's later random draws repeated from one call to the next."""
    (t0, p0, n0), (t1, p1, n1) = _CALLERS_RANDOM["before"], _CALLERS_RANDOM["after"]
    assert torch.equal(t0, t1) and p0 == p1 and np.array_equal(n0, n1)


def test_every_gpu_of_the_runs_kind_gets_its_generator_back(monkeypatch):
    """set_seed seeds every GPU's generator (manual_seed_all); a run on cuda:1 of three gave back cuda:1's alone."""
    import contextlib

    from suite.devices import kept_random_state

    forked = {}

    @contextlib.contextmanager
    def fork_rng(devices, device_type):
        forked.update(devices=list(devices), device_type=device_type)
        yield

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    with kept_random_state(torch.device("cuda", 1)):
        pass
    assert forked == {"devices": [0, 1, 2], "device_type": "cuda"}
    with kept_random_state(torch.device("cpu")):
        pass
    assert forked["devices"] == []


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
    # the loss curve from step 1, as the uninterrupted run's (it held only the resumed steps, 3-6)
    curve = json.loads((out / "training" / "losses.json").read_text())
    assert curve == json.loads((run_a[0] / "training" / "losses.json").read_text()) and len(curve["losses"]) == 6
    with pytest.raises(ValueError, match="changed settings"):
        train_domain(_cfg(data_dir, out, resume=True, batch_size=4, max_steps=8))



def test_a_resume_of_a_finished_run_leaves_its_model_and_asks_for_more_steps(run_a, data_dir, tmp_path):
    """``--resume --max-steps 4`` on a run at step 6 wrote the step-6 weights as the model without a word (a user
    who wanted step 4 got step 6), and a resume of a finished run rewrote its model. A run killed after its last
    checkpoint but before the model was written still gets its model."""
    import shutil

    out = tmp_path / "model"
    shutil.copytree(run_a[0], out)
    model_files = [out / "diffusion_pytorch_model.safetensors", out / "nulltext.json"]
    before = [p.stat().st_mtime_ns for p in model_files]
    with pytest.raises(ValueError, match=r"already at step 6, past --max-steps 4.*--max-steps above 6"):
        train_domain(_cfg(data_dir, out, resume=True, max_steps=4))
    assert train_domain(_cfg(data_dir, out, resume=True)) == out.resolve()
    assert [p.stat().st_mtime_ns for p in model_files] == before
    # killed between the step-6 checkpoint and the model: the resume writes the model, the uninterrupted run's
    (out / "nulltext.json").unlink()
    train_domain(_cfg(data_dir, out, resume=True))
    assert json.loads((out / "nulltext.json").read_text())["training_steps"] == 6
    a, b = _weights(run_a[0]), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_at_a_checkpoint_has_that_steps_validation_sample(data_dir, tmp_path):
    """The sample of a validation step is written before its checkpoint: a run killed right after the checkpoint
    resumes after that step and never made the sample."""
    out = tmp_path / "model"

    def stop(stage, done, total, info):
        if stage == "checkpoint" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_domain(_cfg(data_dir, out, max_steps=4, validation_steps=2), progress=stop)
    train_domain(_cfg(data_dir, out, max_steps=4, validation_steps=2, resume=True))
    assert sorted(p.name for p in (out / "training" / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]


def test_an_ema_run_resumes_to_identical_weights_and_its_checkpoints_are_the_ema_models(data_dir, tmp_path):
    """With --ema a checkpoint's folder held the raw weights, though it is itself a domain model and the run's model
    is the EMA's; now it holds the EMA weights and the raw ones beside them. A run stopped after its step-2
    checkpoint and resumed ends with the uninterrupted run's model, from the new layout and from the old one
    (raw weights as the model, the EMA in ema.safetensors)."""

    from safetensors.torch import save_file

    from training.checkpoints import OLD_EMA, TRAINING_WEIGHTS

    cfg = dict(max_steps=4, ema=True, ema_decay=0.9, lr=1e-2)
    whole = tmp_path / "whole"
    train_domain(_cfg(data_dir, whole, **cfg))
    final, last = _weights(whole), _weights(list_checkpoints(whole)[-1][1])
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    raw = _weights_file(list_checkpoints(whole)[-1][1] / TRAINING_WEIGHTS)
    assert max(float((raw[k] - final[k]).abs().max()) for k in final) > 1e-4  # the EMA is not the raw weights

    def stop(stage, done, total, info):
        if stage == "train" and done == 3:
            raise KeyboardInterrupt

    for layout in ("new", "old"):
        out = tmp_path / layout
        with pytest.raises(KeyboardInterrupt):
            train_domain(_cfg(data_dir, out, **cfg), progress=stop)
        ckpt = list_checkpoints(out)[-1][1]
        if layout == "old":  # as a checkpoint written before: the raw weights as the model, the EMA beside them
            ema_model = _weights(ckpt)
            old_raw = _weights_file(ckpt / TRAINING_WEIGHTS)
            save_file({k: ema_model[k] for k in old_raw if k in dict(_named_parameters_of(ckpt))}, str(ckpt / OLD_EMA))
            save_file(old_raw, str(ckpt / "diffusion_pytorch_model.safetensors"))
            (ckpt / TRAINING_WEIGHTS).unlink()
        train_domain(_cfg(data_dir, out, resume=True, **cfg))
        b = _weights(out)
        assert all(torch.equal(final[k], b[k]) for k in final), layout


def _weights_file(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _named_parameters_of(folder: Path):
    from suite.nulltext import DomainModel

    return DomainModel.from_pretrained(folder).unet.named_parameters()


def test_a_resume_refuses_changed_images_and_a_dropped_ema_and_f_t_is_not_reused_across_data(data_dir, tmp_path):
    """Refused on --resume: images renamed or replaced with the same count (only the count was compared, so the run
    went on with other data in another order), --ema left off (the checkpoint's EMA was dropped for good) and
    another prompt or base model (the model's F_T and E came from the first). An
    F_T file is reused only with the images and settings it was optimised for (before: the prompt and steps)."""
    import shutil

    from training.checkpoints import reusable_text_features

    data = tmp_path / "images"
    shutil.copytree(data_dir, data)
    out = tmp_path / "model"
    train_domain(_cfg(data, out, max_steps=2, ema=True, ema_decay=0.9))
    ft = out / "text_features.safetensors"
    with pytest.raises(ValueError, match=r"changed settings \(ema\)"):
        train_domain(_cfg(data, out, max_steps=4, resume=True, ema_decay=0.9))
    # another mixed precision was taken (and recorded as the new one); in a process of its own, as accelerate's
    # state is set once per process
    code = ("from tests.training.test_train import _cfg; from training.train import train_domain; "
            f"train_domain(_cfg({str(data)!r}, {str(out)!r}, max_steps=4, resume=True, ema=True, ema_decay=0.9, "
            "mixed_precision='bf16'))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "changed settings (mixed_precision)" in run.stderr, run.stderr[-1000:]
    with pytest.raises(ValueError, match=r"changed settings \(prompt\)"):  # F_T and E came from the first prompt
        train_domain(_cfg(data, out, max_steps=4, resume=True, ema=True, ema_decay=0.9, prompt="a photo of a cat"))
    # the optimiser's and the data's settings: the checkpoint's optimiser state kept its weight decay whatever was
    # given (and the new value was recorded), and another --small-images was blamed on the folder ("restore it")
    for changed in (dict(weight_decay=0.5), dict(lr=1e-2), dict(lr_warmup_steps=4), dict(small_images="skip")):
        with pytest.raises(ValueError, match=rf"changed settings \({next(iter(changed))}\)"):
            train_domain(_cfg(data, out, max_steps=4, resume=True, ema=True, ema_decay=0.9, **changed))
    (data / "img0.png").rename(data / "img9.png")  # the same count, another file
    with pytest.raises(ValueError, match="renamed, replaced or edited"):
        train_domain(_cfg(data, out, max_steps=4, resume=True, ema=True, ema_decay=0.9))
    (data / "img9.png").rename(data / "img0.png")  # restored: the resume goes on
    import os
    import shutil

    from suite.presets import sd_ref

    other = tmp_path / "other-sd"  # another base model: the tiny one with other weights
    shutil.copytree(sd_ref("tiny"), other)
    unet = next((other / "unet").glob("*.safetensors"))
    raw = bytearray(unet.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # the first tensor's bytes, after the safetensors header
    raw[start:start + 8] = bytes(8)
    unet.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"the run was trained from the base model .*whose weights differ"):
        train_domain(_cfg(data, out, max_steps=4, resume=True, ema=True, ema_decay=0.9, sd_model=str(other)))
    same_base = os.path.relpath(sd_ref("tiny"))  # the preset's own base, named by a relative path: the same model
    train_domain(_cfg(data, out, max_steps=4, resume=True, ema=True, ema_decay=0.9, sd_model=same_base))
    # the same weights in another folder (the suite cloned or moved elsewhere: the mini preset's base is one of its
    # folders) continue the run; it was refused as "changed settings (sd_model)"
    moved = tmp_path / "moved" / "sd"
    shutil.copytree(sd_ref("tiny"), moved)
    train_domain(_cfg(data, out, max_steps=6, resume=True, ema=True, ema_decay=0.9, sd_model=str(moved)))
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]

    key = ImageFolderDataset(data, resolution=32).fingerprint()
    (data / "sub" / "img1.png").write_bytes((data / "img2.png").read_bytes())
    assert ImageFolderDataset(data, resolution=32).fingerprint() != key
    from safetensors import safe_open

    with safe_open(str(ft), "pt") as f:
        saved = f.metadata()
    assert json.loads(saved["key"])[0] == key  # the images it was optimised on
    assert reusable_text_features(ft, saved["prompt"], int(saved["steps"]), saved["key"])
    other = json.dumps([ImageFolderDataset(data, resolution=32).fingerprint(), *json.loads(saved["key"])[1:]])
    assert not reusable_text_features(ft, saved["prompt"], int(saved["steps"]), other)


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
    leftovers = list((out / "training" / "checkpoints").glob(".in-domain-tmp-*-step-000004.tmp"))
    assert leftovers, "the half-written checkpoint should be left under its temporary name"
    assert [s for s, _ in list_checkpoints(out)] == [2]
    train_domain(_cfg(data_dir, out, resume=True))
    a, b = _weights(run_a[0]), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "training" / "checkpoints").glob(".*"))  # the resumed run removed the temporary


def test_kill_while_pruning_old_checkpoints_leaves_no_half_checkpoint(data_dir, tmp_path, monkeypatch):
    """Pruning renames an old checkpoint away before deleting it: a kill in the middle of the deletion leaves a
    temporary (removed by the next run), never a half-deleted ``step-*`` folder that looks complete (issue 26)."""
    import shutil

    out = tmp_path / "model"
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *a, **kw):
        weights = Path(path) / "diffusion_pytorch_model.safetensors"
        if weights.is_file():  # deletes part of the folder, then the process dies
            weights.unlink()
            raise KeyboardInterrupt("killed while pruning")
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        train_domain(_cfg(data_dir, out, checkpoints_keep=1))
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    listed = list_checkpoints(out)
    assert [s for s, _ in listed] == [4], listed  # step 2's half-deleted copy is not listed
    assert all((p / "diffusion_pytorch_model.safetensors").is_file() for _, p in listed)
    train_domain(_cfg(data_dir, out, checkpoints_keep=1, resume=True))
    assert not list((out / "training" / "checkpoints").glob(".*"))


def test_two_process_accelerate_run_matches_one_process(data_dir, tmp_path, monkeypatch, one_thread, caplog):
    """`accelerate launch --multi_gpu --num_processes 2 ... --cpu` (gloo): each process takes half of every global
    batch and DDP averages the gradients. That is the same arithmetic as one process taking the two halves as two
    accumulation steps (DDP divides each half's gradient by 2 and sums; accumulation backpropagates loss / 2 and
    sums, and halving is exact in floating point), so with the same thread count the weights are equal bit for
    bit. (Against a single batch of 4 they agree only to float32 reduction order, amplified by Adam; that bound
    moved with the machine, issue 27.)"""
    common = ["--preset", "tiny", "--data", str(data_dir), "--resolution", "32", "--batch-size", "4",
              "--max-steps", "2", "--text-init-steps", "1", "--text-init-batch-size", "2", "--checkpoint-steps", "2",
              "--seed", "1", "--lr", "1e-3", "--num-workers", "0", "--cpu"]
    two, one = tmp_path / "two", tmp_path / "one"
    # accelerate's own --cpu flag starts ONE process unless MPI is set up; its torchrun launcher (--multi_gpu) with
    # our --cpu starts two CPU processes that talk over gloo.
    res = accelerate_two_processes("train", *common, "--output", str(two), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es) x 2 per device" in res.stdout + res.stderr
    assert res.stdout.count("domain model written") == 1  # the main process reports, once
    # one process, here (one thread, as each of the two)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    caplog.set_level(logging.INFO)
    assert launch.main(["train", *common, "--gradient-accumulation-steps", "2", "--output", str(one)]) == 0
    assert "1 process(es) x 2 per device x 2 accumulation step(s)" in caplog.text
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, (len(different), max((a[k] - b[k]).abs().max().item() for k in different))


def test_config_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.resolution, c.center_crop, c.hflip, c.lr_warmup_steps) == (1e-5, 32, 512, False, 0.5, 0)
    assert (c.text_init_steps, c.text_init_batch_size, c.text_init_images) == (100, 32, 3200)
    assert (c.weight_decay, c.max_grad_norm) == (1e-2, 1.0)
    assert replace(c, data="d", output="o", gradient_accumulation_steps=4).validate(num_processes=2) == 4


def test_sigkill_twice_then_resume_gives_the_uninterrupted_weights(run_a, data_dir, tmp_path):
    """A real SIGKILL (no cleanup at all), twice: after the first checkpoint and after the second; each time
    ``--resume`` continues, and the final weights equal the uninterrupted run's bit for bit. No temporary folder
    or lock file is left, and a second run into the folder while one holds it is refused (issue 15)."""
    import signal
    import time

    out = tmp_path / "model"
    code = ("import sys; from tests.training.test_train import _cfg; from training.train import train_domain; "
            f"train_domain(_cfg({str(data_dir)!r}, {str(out)!r}, resume='--resume' in sys.argv))")
    ckpts = out / "training" / "checkpoints"

    def run_until(step_dir: str, *extra) -> bool:
        proc = subprocess.Popen([sys.executable, "-c", code, *extra], cwd=ROOT, stderr=subprocess.PIPE)
        while proc.poll() is None:
            if (ckpts / step_dir).is_dir():
                if step_dir == "step-000002":  # while it runs, the folder is locked against a second run
                    with pytest.raises(ValueError, match=r"another run \(process \d+\) is writing to"):
                        train_domain(_cfg(data_dir, out, resume=True))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return False

    assert run_until("step-000002"), "finished before the kill"
    assert run_until("step-000004", "--resume"), "finished before the kill"
    # the last resume is not killed: it runs in this process (the same code, without a new process's imports)
    train_domain(_cfg(data_dir, out, resume=True))
    a, b = _weights(run_a[0]), _weights(out)
    differ = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {sorted(differ.items())[:3]}"
    assert not [p.name for p in out.rglob(".*") if p.name != ".in-domain-run.json"], "temporary or lock files left behind"


@pytest.mark.parametrize("bad,phrase", [
    (dict(log_steps=0), "log_steps must be at least 1"),  # was a ZeroDivisionError after the cache and F_T
    (dict(capture_images=0), "capture_images must be at least 1"),  # torch's empty-stack error, as late
    (dict(max_steps=2.5), "--max-steps must be a whole number"),  # trained 3 steps, recorded as 3
    (dict(validation_steps=-1), "--validation-steps must be at least 0"),  # sampled at every step
    (dict(resolution=32.0 + 0.5), "--resolution must be a whole number"),
    (dict(batch_size="four"), "--batch-size must be a whole number"),  # was a bare TypeError
    (dict(seed=-1), "--seed must be a whole number from 0 to 4294967295"),  # numpy's, inside accelerate
    (dict(lr_warmup_steps=-5), "--lr-warmup-steps must be at least 0"),
    (dict(validation_domain_weight=float("nan")), "--validation-domain-weight must be a finite number"),
    (dict(adam_beta2=1.0), "adam_beta2 must be at least 0 and below 1"),
    (dict(lr="fast"), "--lr must be a number"),
])
def test_settings_from_python_are_checked_before_any_work(bad, phrase, tmp_path):
    """The CLI's types checked these; from Python they failed late, with a traceback, or silently."""
    with pytest.raises(ValueError, match=phrase):
        TrainConfig.tiny(data=str(tmp_path), output=str(tmp_path / "m"), **bad).validate()
    assert TrainConfig.tiny(data=str(tmp_path), output=str(tmp_path / "m"), max_steps=3.0).validate() == 4


def test_the_callers_config_is_left_as_it_was_given(data_dir, tmp_path):
    """train_domain normalised the caller's TrainConfig in place (its prompt stripped, max_steps "1" made 1)."""
    cfg = _cfg(data_dir, tmp_path / "m", max_steps="1", prompt="  a photo of a face ")
    train_domain(cfg)
    assert cfg.max_steps == "1" and cfg.prompt == "  a photo of a face "


def test_text_features_that_diverge_are_one_sentence_and_never_saved_for_reuse(data_dir, tmp_path):
    """F_T optimised at an absurd --text-init-lr came out non-finite and was saved: every retry reused it and failed
    later with "re-capture E", which no command-line user can do."""
    from safetensors.torch import save_file

    from training.checkpoints import reusable_text_features

    out = tmp_path / "model"
    with pytest.raises(ValueError, match=r"text features diverged .*lower --text-init-lr"):
        train_domain(_cfg(data_dir, out, max_steps=2, text_init_lr=1e12))
    assert not (out / "text_features.safetensors").exists()
    bad = tmp_path / "old.safetensors"  # as an earlier version saved it
    save_file({"F_T": torch.full((1, 77, 32), float("nan"))}, str(bad), metadata={"prompt": "p", "steps": "2", "key": ""})
    assert not reusable_text_features(bad, "p", 2)
    save_file({"F_T": torch.zeros((1, 77, 32))}, str(bad), metadata={"prompt": "p", "steps": "2", "key": ""})
    assert reusable_text_features(bad, "p", 2)
