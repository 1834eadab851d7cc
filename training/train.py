"""Domain training: full fine-tuning of the null-text UNet on a folder of images (paper Sec. 3.3).

:func:`train_domain` reads top to bottom: load SD1.5, check the images, cache their latents (the VAE
runs once per image), optimise the text features ``F_T`` (:mod:`training.textinit`), capture ``E`` from
them and convert a copy of the UNet to null-text (:mod:`suite.nulltext`; the text encoder is freed
here), then fine-tune every remaining UNet weight with the denoising loss, on accelerate (one GPU,
``accelerate launch --multi_gpu``, several nodes, or CPU), with checkpoints, validation samples made
with :class:`suite.guidance.MultiGuidance` (SD1.5 unconditional + domain), and an atomic final save.

Determinism and resume: the data order, the flips, the timesteps and every noise draw of the sample at
stream position ``p`` are a pure function of ``(seed, p)`` (:class:`training.data.SampleOrder`). A run's state is
therefore its step count plus the weights, optimizer, EMA and loss-scaler state that a checkpoint holds:
``--resume`` continues exactly where the checkpoint left off (bit-identical on CPU in float32, a test
checks it), and the way the global batch is split over processes and accumulation steps does not change
the samples (a test checks a 2-process run against a 1-process one).

This module is the loop only; its parts live beside it: the settings in :mod:`training.config` (no torch),
the loss in :mod:`training.loss`, the image folder and the sample stream in :mod:`training.data`, the latent
cache in :mod:`training.latents`, ``F_T`` in :mod:`training.textinit`, checkpoints and the EMA in
:mod:`training.checkpoints` (a run killed at any moment, even during a checkpoint write, loses at most one
checkpoint interval), validation samples in :mod:`training.validation`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm

from suite import models
from suite.batch import check_processes_joined, in_daemon, model_hashes, process_wait
from suite.checks import Progress
from suite.devices import RANDOM_STATE_LOCK, kept_random_state
from suite.files import check_writable_dir, claim_run_folder, output_lock, remove_leftovers, write_text_atomic
from suite.nulltext import DomainMetadata, DomainModel, check_E, make_domain_model
from suite.progress import LogProgress
from suite.text import encode_prompts
from suite.threads import continue_threads, kept_threads

from .checkpoints import (
    EMA,
    TRAINER_STATE,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint_weights,
    reusable_text_features,
    save_checkpoint,
    save_text_features,
)
from .config import RESUME_KEYS, TrainConfig
from .data import ImageFolderDataset, SampleOrder
from .latents import CachedLatents, OnTheFlyLatents, build_latent_cache
from .loss import denoising_loss, training_scheduler
from .textinit import optimize_text_features
from .validation import sample_validation

log = logging.getLogger(__name__)


def train_domain(config: TrainConfig, progress: Progress | None = None) -> Path:
    """Train a null-text domain model on ``config.data``; return ``config.output``, a domain-model folder
    (``python launch.py generate --domain-model OUTPUT``). ``progress(stage, done, total, info)`` is called for
    the stages ``"scan"``, ``"cache"``, ``"text_init"``, ``"train"`` (info has ``loss``, ``images_per_s``,
    ``lr``) and ``"checkpoint"``."""
    # 1. Accelerator (one GPU, several, several nodes, or CPU), settings, output folder (locked for the run by the
    #    main process; what a killed run left there is removed first).
    # every field, and the optional packages the settings need, checked before anything is built: before the
    # Accelerator, which warns about a missing tracker first (the processes' count is checked again below)
    config = replace(config)  # validate() normalises the fields it checks: on a copy, not the caller's object
    config.validate(1)
    output = Path(os.path.expanduser(config.output)).resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"the output {str(output)!r} is a file: --output must be a folder (it becomes the domain "
                         f"model); choose a new folder name")
    check_writable_dir(output)
    if config.mixed_precision == "fp16" and (config.cpu or not torch.accelerator.is_available()):
        # accelerate turns fp16 autocast off on a CPU: the run trained in float32 without a word, while its
        # text-feature step ran the frozen UNet in float16, ten times slower on a CPU than in float32
        raise ValueError("--mixed-precision fp16 needs a GPU (accelerate does not autocast float16 on a CPU): use "
                         "--mixed-precision bf16 or no on this machine")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                              log_with=None if config.report_to == "none" else config.report_to,
                              project_dir=str(output / "training" / "logs"),
                              # the others wait while process 0 merges the latent cache, samples or saves
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=process_wait())])
    check_processes_joined(accelerator.num_processes, "--cpu")
    per_device = config.validate(accelerator.num_processes)
    data = Path(os.path.expanduser(str(config.data))).resolve()
    if output == data or data in output.parents:
        raise ValueError(f"the output {str(output)!r} is inside the image folder {str(data)!r}: the run's own "
                         f"samples and checkpoints would be read as training images; choose an --output outside it")
    if (output / "nulltext.json").is_file() and not list_checkpoints(output):
        raise ValueError(f"{str(output)!r} already holds a domain model (nulltext.json) and no checkpoint to "
                         f"continue from: a new run would replace it; choose another --output")
    with ExitStack() as stack:
        stack.enter_context(kept_threads())  # a resume runs at its recorded thread count; the caller's is restored
        stack.enter_context(kept_random_state(accelerator.device))  # set_seed below seeds the global generators
        if accelerator.is_main_process:
            stack.enter_context(output_lock(output))
            # A folder of the user's is refused before anything is written into it; in one of our runs only our
            # own temporaries (of a killed run) are removed, in the folders a run writes.
            claim_run_folder(output, "train", recognise=_is_training_run)
            train_dir = output / "training"
            remove_leftovers(folders=[output, train_dir] + [train_dir / s for s in ("checkpoints", "latents", "samples")])
            stack.callback(_remove_if_empty, train_dir)
        else:  # the same check, read-only: a refused folder stops every process, none waits for the main one
            claim_run_folder(output, "train", recognise=_is_training_run, write=False)
        accelerator.wait_for_everyone()  # the other processes write nothing before the folder is claimed and clean
        return _train(config, accelerator, per_device, output, progress)


def _sd_identity(sd_model: str | None, preset: str) -> str:
    """The base model a run trains from: ``--sd-model``, else the preset's (``$INDOMAIN_SD_MODEL`` for the full
    one); a local folder as its absolute, resolved path (a relative path means the same folder from anywhere)."""
    from suite.presets import sd_ref

    ref = sd_model or sd_ref(preset)
    path = Path(os.path.expanduser(str(ref)))
    return str(path.resolve()) if path.is_dir() else str(ref)


def _is_training_run(folder: Path) -> bool:
    """A training run (or domain model) written before run folders were marked."""
    return (folder / "training" / "train_config.json").is_file() or (folder / "nulltext.json").is_file()


def _remove_if_empty(folder: Path) -> None:
    """A run that failed before writing anything leaves no empty ``training/`` folder (or empty folders in it)."""
    if folder.is_dir() and not folder.is_symlink():
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()


def _train(config: TrainConfig, accelerator, per_device: int, output: Path, progress: Progress | None) -> Path:
    lines = LogProgress("train", units={"cache": "image"})  # in a log (stderr not a terminal): progress lines

    def report(stage, done, total, info=None):
        if not accelerator.is_main_process:
            return
        if stage in ("cache", "text_init", "train"):
            lines(stage, done, total, info)
        if progress is not None:
            progress(stage, done, total, dict(info or {}))

    with RANDOM_STATE_LOCK:  # not inside another job's seeded section (the app's --max-jobs above 1)
        set_seed(config.seed)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    checkpoints = list_checkpoints(output)
    if checkpoints and not config.resume:
        raise ValueError(f"{str(output)!r} already holds a training run (checkpoint {checkpoints[-1][1].name}): "
                         f"pass --resume to continue it, or choose another --output")
    resume_from = checkpoints[-1][1] if (config.resume and checkpoints) else None
    if config.resume and resume_from is None and accelerator.is_main_process:
        log.warning("--resume: no checkpoint in %s yet, starting from the beginning", output)
    state = None
    sd_identity = _sd_identity(config.sd_model, config.preset)  # recorded in every checkpoint, with its weights' hash
    sd_hash = model_hashes({"sd": sd_identity}).get("sd")
    if resume_from is not None:  # checked before anything loads: a refused resume costs nothing
        state = json.loads((resume_from / TRAINER_STATE).read_text())
        def same(k):  # the prompt as the run used it: not given there, the domain's (typed out now: the same)
            then, now = state["config"][k], getattr(config, k)
            if k == "prompt":
                then = then or replace(config, prompt=None).resolved_prompt()
                now = now or config.resolved_prompt()
            return then == now

        changed = [k for k in RESUME_KEYS if k in state["config"] and k != "sd_model" and not same(k)]
        if changed:
            raise ValueError(f"--resume with changed settings ({', '.join(changed)}) would not continue the same run: "
                             f"use the original values or a new --output")
        done = int(state["step"])
        if config.max_steps < done:
            # the loop would not run and the final save would write the step-`done` weights as the model: a user
            # who asked for an earlier step got the later one without a word (and the model was rewritten)
            raise ValueError(f"--resume: the run is already at step {done}, past --max-steps {config.max_steps}, so "
                             f"there is nothing to train: pass --max-steps above {done} to train further (a kept "
                             f"earlier checkpoint, {checkpoint_dir(output)}/step-NNNNNN, is itself a domain model)")
        if config.max_steps == done and _finished_at(output) == done:
            if accelerator.is_main_process:
                log.info("--resume: the run already finished at step %d; the model in %s is kept as it is (pass "
                         "--max-steps above %d to train further)", done, output, done)
            end_training(accelerator)
            return output
        # F_T is not made again on a resume: its settings are the run's, from its file, not this command's flags
        # (nulltext.json and train_config.json recorded --text-init-steps 10 for an F_T of 3 steps)
        made = _text_feature_settings(output / "text_features.safetensors")
        given = {k: getattr(config, k) for k in made if getattr(config, k) != made[k]}
        if given and accelerator.is_main_process:
            log.info("--resume: the run's text features were made with %s; %s given now are not used",
                     ", ".join(f"{k}={made[k]}" for k in given), ", ".join(given))
        config = replace(config, **made)
        # the base model as the run read it (a path as typed, or $INDOMAIN_SD_MODEL, is the same model or not)
        old_base = state.get("sd_identity") or _sd_identity(state["config"].get("sd_model"),
                                                            state["config"].get("preset", config.preset))
        if "sd_model" in state["config"] and old_base != sd_identity:
            # the same weights in another folder (the suite cloned or moved: the mini preset's base is a folder of
            # the suite's) continue the run; a run recorded before the hash was is compared with its folder, if there
            old_hash = state.get("sd_hash") or model_hashes({"sd": old_base}).get("sd")
            if old_hash is None or old_hash == old_base or old_hash != sd_hash:
                why = "whose weights differ" if state.get("sd_hash") or Path(old_base).exists() else "which is gone"
                raise ValueError(f"--resume: the run was trained from the base model {old_base!r}, {why}; this one "
                                 f"would use {sd_identity!r}: pass --sd-model with the run's base model, or choose "
                                 f"a new --output")
    output.mkdir(parents=True, exist_ok=True)
    train_dir = output / "training"
    train_dir.mkdir(exist_ok=True)

    # 2. SD1.5 components (frozen) and the DDPM noise schedule.
    sd_ref = config.resolved_sd_model()
    parts = models.load_sd(sd_ref, device=device, dtype=torch.float32)
    vae, sd_unet, noise_scheduler = parts["vae"], parts["unet"], training_scheduler(parts["scheduler"])
    unet = copy.deepcopy(sd_unet)  # the weights to fine-tune: float32 master copy
    sd_unet.to(weight_dtype)       # frozen SD1.5: F_T optimisation, capture of E, validation
    prompt = config.resolved_prompt()

    # 3. Images: scan (corrupt files skipped and counted), then latents: cached (VAE once per image) or not.
    report("scan", 0, 1)
    dataset = ImageFolderDataset(config.data, resolution=config.resolution, center_crop=config.center_crop,
                                 hflip=config.hflip, small_images=config.small_images,
                                 progress=accelerator.is_main_process)
    report("scan", 1, 1, {"images": len(dataset), "corrupt": len(dataset.scan.corrupt)})
    if accelerator.is_main_process:
        log.info("%s", dataset.scan.summary())
    data_key = dataset.fingerprint()
    if state is not None:  # before the latents are cached
        if state.get("num_images") != len(dataset):
            raise ValueError(f"the image folder changed since the checkpoint ({state.get('num_images')} -> "
                             f"{len(dataset)} usable images): restore it, or start a new run with another --output")
        if state.get("data", data_key) != data_key:  # checkpoints before it was recorded: the count above only
            raise ValueError("the image folder changed since the checkpoint (images renamed, replaced or edited, or "
                             "copied without their modification times): restore it, or start a new run with another "
                             "--output")
    if config.cache_latents:
        cache_dtype = "float32" if config.mixed_precision == "no" else "float16"
        cache_path = build_latent_cache(dataset, vae, train_dir / "latents", vae_id=f"{sd_ref}|{vae.config}",
                                        accelerator=accelerator, batch_size=config.cache_batch_size,
                                        dtype=cache_dtype, num_workers=config.num_workers, progress=report)
        source = CachedLatents(cache_path, vae.config.scaling_factor, device)
    else:
        source = OnTheFlyLatents(dataset, vae, num_workers=config.num_workers)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, config.resolution // f, config.resolution // f)
    order = SampleOrder(len(dataset), config.seed, config.hflip, noise_scheduler.config.num_train_timesteps)

    # 4. F_T (optimised text features, main process) and E captured from it; or the checkpoint's weights.
    uncond = encode_prompts(parts["tokenizer"], parts["text_encoder"], [""], device=device, dtype=weight_dtype)
    ft_path = output / "text_features.safetensors"
    # F_T of an earlier attempt of this run is reused only if it was optimised on the same images and settings.
    ft_key = json.dumps([data_key, sd_ref, config.seed, config.text_init_lr, config.text_init_batch_size,
                         config.text_init_images, config.resolution, config.center_crop, config.mixed_precision])
    if resume_from is None:
        if accelerator.is_main_process and not reusable_text_features(ft_path, prompt, config.text_init_steps,
                                                                      ft_key):
            report("text_init", 0, config.text_init_steps)  # the stage starts (its first line then has a rate)
            with accelerator.autocast():
                F_T, losses = optimize_text_features(
                    sd_unet, vae, parts["text_encoder"], parts["tokenizer"], noise_scheduler, source, prompt,
                    steps=config.text_init_steps, batch_size=config.text_init_batch_size, lr=config.text_init_lr,
                    device=device, num_images=config.text_init_images, seed=config.seed,
                    progress=lambda d, t, info: report("text_init", d, t, info))
            write_text_atomic(train_dir / "text_init_losses.json", json.dumps({"prompt": prompt, "losses": losses}))
            if bool(torch.isfinite(F_T).all()):  # a diverged F_T was saved and reused by every retry (failing as E)
                save_text_features(ft_path, F_T, prompt, config.text_init_steps, ft_key)
        accelerator.wait_for_everyone()
        if not reusable_text_features(ft_path, prompt, config.text_init_steps, ft_key):  # every process says it
            raise ValueError(f"the text features diverged (non-finite after {config.text_init_steps} steps at "
                             f"--text-init-lr {config.text_init_lr:g}): lower --text-init-lr, e.g. to "
                             f"{config.text_init_lr / 10:g}, or pass --text-init-steps 0")
        F_T = load_file(str(ft_path))["F_T"].to(device)
        # E: mean cross-attention output for F_T over noised image latents (conditional features only).
        n_cap = min(len(dataset), config.capture_images)
        cap = order.draw(range(n_cap), latent_shape)
        with torch.no_grad():
            cap_latents = source.get(cap["indices"], cap["flips"], cap["eps"]).float().cpu()
        unet = unet.to(device)
        # Capture from the float32 UNet that will be trained (its E matches its own cross-attention exactly).
        model = make_domain_model(unet, None, None, prompt, domain=config.domain, base_model=sd_ref,
                                  text_features=F_T, latents=cap_latents, scheduler=noise_scheduler, seed=config.seed)
        unet = model.unet
        start_step = 0
    else:
        unet, ema_weights = load_checkpoint_weights(resume_from, config.ema)
        unet = unet.to(device)
        continue_threads(state.get("threads"), "the training run")
        start_step = int(state["step"])
    check_E(unet)
    # The text encoder is not needed any more: E holds what the domain prompt contributed.
    del parts["text_encoder"]
    parts.pop("tokenizer")
    metadata = DomainMetadata(domain=config.domain, base_model=sd_ref, prompt=prompt, training_steps=start_step,
                              extra={"resolution": config.resolution, "batch_size": config.batch_size,
                                     "lr": config.lr, "text_init_steps": config.text_init_steps,
                                     "num_images": len(dataset), "center_crop": config.center_crop})

    # 5. Trainable null-text UNet, optimizer (+ state on resume), EMA, accelerate.
    unet.train().requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = _make_optimizer(config, [p for p in unet.parameters() if p.requires_grad])
    ema = EMA(dict(unet.named_parameters()), config.ema_decay) if config.ema else None
    scaler_state = None
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=True))
        if ema is not None:
            ema.shadow = {k: v.to(device) for k, v in ema_weights.items()}
        scaler_state = state.get("scaler")
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if scaler_state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers("domain-training", config={k: v for k, v in asdict(config).items()
                                                             if isinstance(v, int | float | str | bool)})
    if accelerator.is_main_process:
        write_text_atomic(train_dir / "train_config.json", json.dumps(asdict(config), indent=2, default=str))
        log.info("training %s on %d image(s): %d process(es) x %d per device x %d accumulation step(s) = batch %d, "
                 "steps %d -> %d, device %s", config.domain, len(dataset), accelerator.num_processes, per_device,
                 config.gradient_accumulation_steps, config.batch_size, start_step, config.max_steps, device)

    # 6. Training loop: global batch B = per-device x processes x accumulation, sample positions s*B + k.
    B, P, A, rank = config.batch_size, accelerator.num_processes, config.gradient_accumulation_steps, \
        accelerator.process_index
    bar = tqdm(total=config.max_steps, initial=start_step, desc=f"training {config.domain}", unit="step",
               disable=None if accelerator.is_main_process else True, dynamic_ncols=True)  # None: a terminal only
    if accelerator.is_main_process:
        lines.start("train", config.max_steps, start_step)
    t0, seen = time.perf_counter(), 0
    losses_log = _earlier_losses(train_dir / "losses.json", start_step)  # a resumed run keeps the history before it
    step = start_step
    last_loss = float("nan")

    threads = torch.get_num_threads()  # recorded in each checkpoint: a resume continues with the same count

    def state_dict_for(step):
        return dict(step=step, num_images=len(dataset), data=data_key, images_seen=step * B, loss=last_loss,
                    sd_identity=sd_identity, sd_hash=sd_hash,
                    threads=threads,
                    config={k: getattr(config, k) for k in RESUME_KEYS},
                    scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None)

    while step < config.max_steps:
        lr = _lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for m in range(A):
            first = (step * A + m) * P * per_device + rank * per_device
            batch = order.draw(range(first, first + per_device), latent_shape)
            latents = source.get(batch["indices"], batch["flips"], batch["eps"])
            sync = m == A - 1
            ctx = accelerator.no_sync(unet) if not sync and P > 1 else nullcontext()
            with ctx, accelerator.autocast():
                loss = denoising_loss(unet, latents, None, noise_scheduler, noise=batch["noise"],
                                      timesteps=batch["timesteps"])
                accelerator.backward(loss / A)
            step_loss += loss.detach() / A
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.update(dict(accelerator.unwrap_model(unet).named_parameters()), step)
        last_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"the loss became {last_loss} at step {step}: {_diverged_advice(output)}")
        seen += B
        ips = seen / max(time.perf_counter() - t0, 1e-9)
        losses_log.append(last_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
        report("train", step, config.max_steps, {"loss": last_loss, "images_per_s": ips, "lr": lr})
        if step % config.log_steps == 0 or step == config.max_steps:
            accelerator.log({"loss": last_loss, "lr": lr, "images_per_s": ips}, step=step)
        # the step's validation sample before its checkpoint: a run killed between the two redoes the step on
        # --resume, where one killed after the checkpoint never had the sample
        if config.validation_steps and (step % config.validation_steps == 0 or step == config.max_steps):
            if accelerator.is_main_process:
                sample_validation(config, accelerator, sd_unet, vae, parts["scheduler"], uncond, unet, ema,
                                   output, step)
            accelerator.wait_for_everyone()
        if step % config.checkpoint_steps == 0 or step == config.max_steps:
            # the step's loss was measured before its update: the weights about to be saved are tried once on the
            # same batch (a last update that diverged was saved as a model that made black images, and as a
            # checkpoint that every --resume then failed from)
            with torch.no_grad(), accelerator.autocast():
                after = denoising_loss(unet, latents, None, noise_scheduler, noise=batch["noise"],
                                       timesteps=batch["timesteps"]).detach()
            after = float(accelerator.reduce(after, reduction="mean"))
            if not math.isfinite(after):
                raise FloatingPointError(f"the model's predictions became {after} after step {step}, so it was not "
                                         f"saved: {_diverged_advice(output)}")
            if accelerator.is_main_process:
                metadata.training_steps = step
                save_checkpoint(output, step, accelerator.unwrap_model(unet), metadata, optimizer, ema,
                                state_dict_for(step), config.checkpoints_keep)
                _write_losses(train_dir / "losses.json", losses_log)  # the history up to the checkpoint
                report("checkpoint", step, config.max_steps, {"loss": last_loss})
            accelerator.wait_for_everyone()
    bar.close()

    # 7. Final domain model (EMA weights when EMA is on) written atomically into OUTPUT.
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        metadata.training_steps = step
        with ema.applied(final) if ema is not None else nullcontext():  # no second UNet on the device
            DomainModel(final.eval(), metadata).save_pretrained(output)
        _write_losses(train_dir / "losses.json", losses_log)
    accelerator.wait_for_everyone()
    end_training(accelerator)
    return output


def _finished_at(output: Path) -> int | None:
    """The step of the finished model in ``output`` (its ``nulltext.json``, written last), or None."""
    try:
        return int(json.loads((output / "nulltext.json").read_text())["training_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _diverged_advice(output: Path) -> str:
    """What to do when training diverged: a lower --lr, from the last checkpoint if there is one."""
    found = list_checkpoints(output)
    where = (f"resume from the last checkpoint ({found[-1][1].name}) with --resume" if found else
             "start again (no checkpoint was written yet)")
    return f"lower --lr (or use bf16 instead of fp16) and {where}"


def _text_feature_settings(path: Path) -> dict:
    """The ``text_init_*`` settings an ``F_T`` file was made with (:func:`save_text_features`' metadata: its step
    count, and the key ``[data, base, seed, lr, batch size, images, ...]``); {} where the file or its key is
    missing or unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        key = json.loads(meta.get("key") or "null")
        return dict(text_init_steps=int(meta["steps"]), text_init_lr=float(key[3]),
                    text_init_batch_size=int(key[4]), text_init_images=int(key[5]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def _earlier_losses(path: Path, start_step: int) -> list:
    """The loss of each step before ``start_step`` from ``losses.json`` (``{"losses": [step 1, step 2, ...]}``,
    written with each checkpoint), ``None`` for a step it lacks; ``[]`` for a new run."""
    if start_step == 0:
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        first = int(saved.get("start_step", 0))  # files of earlier versions began at their run's first step
        losses = [None] * first + list(saved["losses"])
    except (OSError, ValueError, KeyError, TypeError):
        losses = []
    return (losses + [None] * start_step)[:start_step]


def _write_losses(path: Path, losses: list) -> None:
    """``losses.json``: the training loss of every step from step 1 (``losses[i]`` is step ``i + 1``'s)."""
    write_text_atomic(path, json.dumps({"start_step": 0, "losses": losses}))


def end_training(accelerator, timeout: float = 60.0) -> None:
    """accelerate's end of training (trackers, then torch.distributed's process group). With several processes that
    shutdown now and then never returns (pytorch/pytorch#75097; seen here once in CI, two CPU processes over gloo,
    after the model was written): it runs in a daemon thread, and after ``timeout`` seconds it is left behind with a
    warning, so that the process can exit. Everything is written and every process has passed the last barrier by
    then."""
    if accelerator.num_processes == 1:
        accelerator.end_training()
        return
    in_daemon(accelerator.end_training, timeout, "torch.distributed's shutdown")


def _lr_at(config: TrainConfig, step: int) -> float:
    """Constant learning rate after a linear warmup of ``lr_warmup_steps`` (paper: constant 1e-5)."""
    if config.lr_warmup_steps > 0:
        return config.lr * min(1.0, (step + 1) / config.lr_warmup_steps)
    return config.lr


def _make_optimizer(config: TrainConfig, params):
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes, or drop the flag") from None
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
               weight_decay=config.weight_decay)
