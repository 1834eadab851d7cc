"""Build the mini world's models from nothing: ``python -m training.miniworld`` (about 168 minutes on 2 CPU
cores with native bfloat16; docs/mini-world.md).

Steps, each timed and printed (and cached in ``--work``, so an interrupted build resumes at the step it was in; no
step takes an hour without resuming on its own: the Zero-1-to-3's, about 85 minutes in all, is cached phase by phase):

1. Render the data, each set cached on its own: open-world objects and faces with captions (faces in the world's
   look, any pose and framing, captions naming their attributes), the unlabeled porcelain domain (vases and bowls,
   front-ish views) and the unlabeled face domain (FFHQ-aligned faces in a photographic look, attributes at uneven
   frequencies: :data:`suite.miniworld.faces.DOMAIN_FREQUENCIES`), written as PNG files like any user's image
   folder, and the judge's labelled renders of both.
2. Train the VAE (diffusers ``AutoencoderKL``, 64x64x3 <-> 16x16x4) on open-world and domain renders.
3. Train the base text-to-image model from scratch (``UNet2DConditionModel`` + ``CLIPTextModel`` jointly, word-level
   ``CLIPTokenizer``, v-prediction), with caption dropout for classifier-free guidance.
4. Train the judge (:mod:`suite.miniworld.judge`, trained by :func:`training.mini_models.train_judge`) on augmented
   renders only.
5. Train the porcelain and face domain models with the suite's own trainer (:func:`training.train.train_domain`:
   ``F_T`` optimisation, ``E`` capture, null-text fine-tuning), exactly as ``launch.py train`` does.
6. Render view pairs and train the mini Zero-1-to-3 (:mod:`training.mini_zero123`) around the trained VAE (its
   three phases cached apart: on the pairs and as many again weighted towards boxes, cups and bowls, twice, then on
   fresh pairs a third of them boxes; each phase's folder is named by the recipe up to it, :func:`zero123_recipe`,
   so a recipe that adds a phase continues from the phases it shares, and a cached model of another recipe is set
   aside, never deleted).
7. Render single views with their exact depth and train the depth estimator of the 3D flow's ``--depth auto``
   (:mod:`training.mini_depth`: transformers' GLPN at the mini world's size; ``python -m training.mini_depth`` adds
   it to an already built mini world).
8. Measure the shipped quality (:func:`suite.miniworld.assets.measure_quality`, ``measure_faces``,
   ``measure_zero123``, ``measure_depth``) and write ``MANIFEST.json``.

The output folder is replaced atomically at the end: an interrupted build leaves the shipped models untouched.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # run as a tool: transformers' import-time notes stay out of its log, as launch.py keeps
    # them out of every subcommand's ("install torchvision", which breaks diffusers beside this torch: README)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import errno
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from suite.checks import UserError, int_at_least
from suite.cli import quiet_libraries
from suite.files import (
    OS_METADATA,
    atomic_dir,
    check_writable_dir,
    is_temporary,
    output_lock,
    remove_leftovers,
    write_text_atomic,
)
from suite.miniworld import assets, judge
from suite.miniworld import faces as F
from suite.miniworld import world as W
from suite.miniworld.assets import default_dir
from suite.miniworld.render import render_view
from suite.threads import apply_threads
from suite.zero123 import load_zero123, save_zero123

from . import mini_depth, mini_zero123
from .config import TrainConfig
from .mini_models import (
    IMAGE_SIZE,
    encode_latents,
    make_tokenizer,
    psnr,
    run_chunks,
    save_sd_folder,
    to_tensor,
    train_base,
    train_judge,
    train_vae,
)
from .train import train_domain

log = logging.getLogger("training.miniworld")


# ---------------------------------------------------------------------------------------------------------
# 1. data
FACE_KINDS = ("open-face", "face-domain", "judge-face")


def _render_chunk(args):
    kind, seed, n, shapes = args
    torch.set_num_threads(1)
    if kind in FACE_KINDS:
        return _render_faces(kind, seed, n, shapes)
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(n):
        if kind == "open":
            obj = W.random_object(rng)
        elif kind == "domain":
            obj = W.random_object(rng, porcelain=True, shapes=shapes or W.DOMAIN_SHAPES)
        else:  # judge: every shape, open-world and porcelain appearance, any view
            obj = W.random_object(rng, porcelain=bool(rng.random() < 0.3))
        view = W.random_view(rng, porcelain=obj.porcelain and kind == "domain")
        r = render_view(obj, view["elevation"], view["azimuth"], size=IMAGE_SIZE)
        images.append((r.rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        captions.append(obj.caption(rng) if kind == "open" else "")
        labels.append(judge.object_labels(obj))
    return np.stack(images), captions, labels


def _render_faces(kind: str, seed: int, n: int, attributes) -> tuple:
    """Faces: ``open-face`` (the open world's look, any pose and framing, captioned), ``face-domain`` (the face
    domain: the photo look, aligned, the domain's uneven attribute frequencies, unlabeled; ``attributes``: phrases
    every face is given, for the ideal answer to a prompt) and ``judge-face`` (both looks, every attribute
    often, half mirrored as the domain trainer's flips are)."""
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(n):
        if kind == "face-domain":
            face, photo, aligned = F.random_face(rng, F.DOMAIN_FREQUENCIES), True, True
            for phrase in attributes or ():
                face = F.with_attribute(face, phrase)
        elif kind == "open-face":
            face, photo, aligned = F.random_face(rng), False, False
        else:
            face = F.random_face(rng, {"bald": 0.12, "long hair": 0.35})
            photo = bool(rng.random() < 0.5)
            aligned = photo and bool(rng.random() < 0.7)
        view = F.random_face_view(rng, aligned=aligned)
        r = F.render_face_view(face, view["elevation"], view["azimuth"], view["distance"], view["fovy"],
                               size=IMAGE_SIZE, look="photo" if photo else "world", backdrop=view["backdrop"],
                               aligned=view["aligned"])
        im = (r.rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if kind == "judge-face" and rng.random() < 0.5:
            im = im[:, ::-1].copy()
        images.append(im)
        captions.append(face.caption(rng) if kind == "open-face" else "")
        labels.append(judge.face_labels(face, photo))
    return np.stack(images), captions, labels


def render_set(kind: str, n: int, seed: int, workers: int = 2, shapes: tuple[str, ...] | None = None) -> dict:
    """``n`` renders of ``kind`` (open / domain / judge for objects, open-face / face-domain / judge-face for
    faces): ``images [n, 64, 64, 3] uint8``, ``captions``, ``labels [n, len(judge.HEADS)]`` (the judge's classes,
    ``judge.IGNORE`` where a head does not apply). ``shapes``: for ``domain``, the forms drawn in the domain's look
    instead of its own, e.g. ``("cup",)`` for the ideal answer to "a porcelain cup"; for ``face-domain``, the
    attribute phrases every face is given, e.g. ``("glasses",)``."""
    chunk = 250
    jobs = [(kind, seed * 100003 + i, min(chunk, n - i * chunk), tuple(shapes) if shapes else None)
            for i in range(math.ceil(n / chunk))]
    # one chunk (a small set) renders in this process: a pool would only add its start-up (3 s)
    parts = run_chunks(_render_chunk, jobs, min(workers, len(jobs)), name=f"render {kind}")
    return dict(images=np.concatenate([p[0] for p in parts]), captions=sum((p[1] for p in parts), []),
                labels=np.array(sum((p[2] for p in parts), []), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------
# 5. the porcelain domain model, by the suite's own trainer
def write_image_folder(images: np.ndarray, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")


def train_domain_model(sd_folder: Path, data: Path, output: Path, steps: int, seed: int = 0,
                       domain: str = W.DOMAIN_NAME) -> Path:
    config = TrainConfig.for_preset("mini", domain=domain, data=str(data), output=str(output),
                                    sd_model=str(sd_folder), max_steps=steps, seed=seed)
    return train_domain(config)


# ---------------------------------------------------------------------------------------------------------
#: renders per set, and training steps per model
SIZES = {
    "full": dict(open=12000, open_face=4000, domain=2000, face_domain=2000, judge=8000, judge_face=6000,
                 vae=1000, base=2400, judge_steps=1500, domain_steps=800, zero123_objects=3500,
                 zero123_box_objects=2400),
    "quick": dict(open=600, open_face=200, domain=200, face_domain=200, judge=600, judge_face=400,
                  vae=40, base=60, judge_steps=60, domain_steps=20, zero123_objects=60, zero123_box_objects=40),
}
BUILD_VERSION = 2  # the data and steps above; a cache made by another version is refused

ZERO123_PHASES = {  # (steps, learning rate, data) per phase, each continuing from the previous EMA; data: True = the
    # pairs and the extra pairs weighted by HARD_SHAPES, "boxes" = fresh pairs weighted by BOX_SHAPES (alone)
    "full": ((3000, 1e-3, True), (3000, 3e-4, True), (3000, 3e-4, "boxes")),
    "quick": ((30, 1e-3, True), (10, 3e-4, True), (10, 3e-4, "boxes")),
}


def zero123_recipe(size: str, phases: int | None = None) -> str:
    """A short fingerprint of the Zero-1-to-3's architecture and its first ``phases`` phases (default: all), with the
    data of its box-weighted phases (their shapes, object count and seed): a cached model or phase made with another
    recipe is not continued, and a recipe that only adds phases shares the fingerprints (the cached folders) of the
    phases it keeps."""
    kept = ZERO123_PHASES[size][:phases]
    recipe = dict(unet=mini_zero123.UNET_CONFIG, phases=kept)
    if any(kind == "boxes" for *_, kind in kept):
        recipe["boxes"] = box_pairs_spec(size)
    return _fingerprint(recipe, 10)


def _fingerprint(spec: dict, length: int) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:length]


def box_pairs_spec(size: str) -> dict:
    """What the box-weighted pairs are: the shapes they are drawn from, how many objects, the seed offset."""
    return dict(shapes=mini_zero123.BOX_SHAPES, objects=SIZES[size]["zero123_box_objects"], seed=31)


def zero123_phase_folder(stage: Path, size: str, phase: int) -> Path:
    """Where the build keeps the Zero-1-to-3 after ``phase`` (1-based) of ``size``'s recipe; a set-aside model of a
    recipe that this one extends (see :func:`set_aside_zero123`) is found there."""
    return stage / f"zero123-{zero123_recipe(size, phase)}-phase{phase}"


def build(output: Path, work: Path, size: str = "full", seed: int = 0) -> dict:
    """Every step above; returns the timings (seconds) and quality figures, also written to MANIFEST.json. The
    work folder is locked for the whole build (two builds into one cache undid each other's steps)."""
    check_writable_dir(output, "--output")
    check_writable_dir(work, "--work")
    out, cache = output.resolve(), work.resolve()
    if out == cache or out in cache.parents:  # the finished models replace --output, and the cache with it
        raise UserError(f"--work {str(work)!r} is --output or inside it: the finished models would replace the cache; "
                        f"give --work outside --output")
    check_models_folder(output)
    with output_lock(work, "--work"):
        # a killed build's half-made models folder beside the output, and its half-saved steps in the cache
        remove_leftovers(paths=[output], folders=[work, work / "stage"])
        return _build(output, work, size, seed)


def _is_models_manifest(path: Path) -> bool:
    """Whether ``path`` is a mini world's manifest (its files, size and seed), not any ``manifest.json`` (a
    case-insensitive file system finds a web app's under that name too)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"files", "size", "seed"} <= set(data)


def check_models_folder(output: Path) -> None:
    """The finished models replace ``output`` whole: it must be new, empty or a mini world's models folder (its
    ``MANIFEST.json``), never a folder of the user's, whose files the end of the build would delete."""
    if not output.is_dir() or _is_models_manifest(output / assets.MANIFEST):
        return
    others = sorted(p.name for p in output.iterdir() if p.name not in OS_METADATA and not is_temporary(p))
    if others:
        shown = ", ".join(repr(n) for n in others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(f"--output {str(output)!r} holds files that are not a mini world's models ({shown}), and the "
                        f"finished models replace it whole: give a new or empty folder")


def _recipe(size: str) -> str:
    """A short fingerprint of :data:`SIZES` at ``size`` (steps and object counts of the cached data and steps; the
    Zero-1-to-3's phases and the depth estimator's data are cached by their own recipes, so a change there
    retrains only what it changes)."""
    return _fingerprint({k: v for k, v in SIZES[size].items() if k != "zero123_box_objects"}, 12)  # that one is
    # in zero123_recipe's fingerprint


def _build(output: Path, work: Path, size: str, seed: int) -> dict:
    n = SIZES[size]
    version_file = work / "version.json"
    stored = json.loads(version_file.read_text()) if version_file.exists() else {}
    ours = [p for p in work.iterdir() if not p.name.startswith(".")]  # not the lock, a .DS_Store, ...
    version = stored.get("version", 1 if ours else None)  # 1: a cache from before versions
    if version == 1 and not any((work / name).exists()
                                for name in ("stage", "times.json", "data-open.npz", "data.npz", "tokenizer")):
        raise UserError(f"--work {str(work)!r} holds other files, not a build cache of the mini world: give an empty "
                        f"or new folder")
    if version not in (None, BUILD_VERSION):
        raise UserError(f"the build cache {work} was made by an older build (version {version}, this is "
                        f"{BUILD_VERSION}): delete it, or pass --work with another folder")
    if stored.get("size", size) != size:
        raise UserError(f"the build cache {work} holds a --size {stored['size']} build, not {size}: delete it, or "
                        f"pass --work with another folder")
    # the cached data and steps are those of one seed and recipe: another would be mixed with them
    for key, now, what in (("seed", seed, "--seed"), ("recipe", _recipe(size), "recipe (SIZES)")):
        if stored.get(key, now) != now:
            raise UserError(f"the build cache {work} was made with another {what} ({stored[key]}, now {now}): its "
                            f"data and steps would be reused as they are; delete it, or pass --work with another "
                            f"folder")
    write_text_atomic(version_file, json.dumps({"version": BUILD_VERSION, "size": size, "seed": seed,
                                                "recipe": _recipe(size)}))
    # Seconds per step; a step found finished in the cache keeps the time it took when it ran.
    times_file = work / "times.json"
    ran = json.loads(times_file.read_text()) if times_file.exists() else {}
    times: dict[str, float] = {}
    t_last = time.time()

    def step(name, cached: bool = False, earlier: float = 0.0):
        """``earlier``: seconds an interrupted run already spent on the step's parts that this run resumed from."""
        nonlocal t_last
        now = time.time()
        times[name] = ran.get(name, now - t_last) if cached else now - t_last + earlier
        t_last = now
        ran[name] = times[name]
        write_text_atomic(times_file, json.dumps(ran))
        log.info("== %s %s %.1f s", name, "(cached) took" if cached else "done in", times[name])

    # 1. data (each set cached on its own)
    kinds = (("open", "open"), ("open-face", "open_face"), ("domain", "domain"), ("face-domain", "face_domain"),
             ("judge", "judge"), ("judge-face", "judge_face"))
    cached = all((work / f"data-{k}.npz").exists() for k, _ in kinds)
    data = {}
    for i, (kind, key) in enumerate(kinds):
        path = work / f"data-{kind}.npz"
        if not path.exists():
            part = render_set(kind, n[key], seed + i)
            tmp = work / f"data-{kind}.tmp.npz"
            np.savez(tmp, **{f: np.asarray(part[f]) for f in ("images", "captions", "labels")})
            tmp.rename(path)
        with np.load(path) as part:
            data.update({f"{key}_{f}": part[f] for f in ("images", "captions", "labels")})
    open_images = np.concatenate([data["open_images"], data["open_face_images"]])
    captions = [str(c) for c in data["open_captions"]] + [str(c) for c in data["open_face_captions"]]
    dom_images = {W.DOMAIN_NAME: data["domain_images"], F.DOMAIN_NAME: data["face_domain_images"]}
    judge_images = np.concatenate([data["judge_images"], data["judge_face_images"]])
    judge_labels = np.concatenate([data["judge_labels"], data["judge_face_labels"]])
    step("render", cached)

    stage = work / "stage"
    tokenizer = make_tokenizer(work / "tokenizer")
    # 2. VAE
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    # a step is finished when its weights are there (a killed save left the config alone, and every later run
    # failed on it); each is saved whole into place
    cached = (stage / "vae" / "diffusion_pytorch_model.safetensors").exists()
    if not cached:
        vae = train_vae(np.concatenate([open_images, *dom_images.values()]), n["vae"], seed=seed)
        with atomic_dir(stage / "vae") as tmp:
            vae.save_pretrained(tmp)
    vae = AutoencoderKL.from_pretrained(stage / "vae").eval()
    with torch.no_grad():  # reconstruction of held-out renders (the judge's set was not in the VAE's data)
        x = to_tensor(data["judge_images"][:256])
        vae_psnr = psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x)
        x = to_tensor(data["judge_face_images"][:256])
        vae_face_psnr = psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x)
    step("vae", cached)
    # 3. base
    cached = (stage / "unet" / "diffusion_pytorch_model.safetensors").exists()
    if not cached:
        lat = encode_latents(vae, open_images)
        unet, text = train_base(lat, captions, tokenizer, vae.config.scaling_factor, n["base"], seed=seed)
        with atomic_dir(stage / "text_encoder") as tmp:
            text.save_pretrained(tmp)
        with atomic_dir(stage / "unet") as tmp:  # last: the step's mark of being finished
            unet.save_pretrained(tmp)
    unet = UNet2DConditionModel.from_pretrained(stage / "unet").eval()
    text = CLIPTextModel.from_pretrained(stage / "text_encoder").eval()
    step("base", cached)
    # 4. judge
    cached = (stage / "judge.safetensors").exists()
    if not cached:
        stage.mkdir(parents=True, exist_ok=True)
        net = train_judge(judge_images, judge_labels, n["judge_steps"], seed=seed)
        judge.save_judge(net, stage / "judge.safetensors")
    step("judge", cached)
    # 6. Zero-1-to-3 (its view pairs cached with the other data)

    earlier = zero123_phase_seconds(stage, size)  # phases an interrupted build trained: their time counts too
    cached = build_zero123(stage, work, size, seed, vae)
    step("zero123", cached, earlier)
    # 7. the depth estimator of the 3D flow's --depth auto (its renders cached with the other data)
    depth = mini_depth.SIZES[size]
    cached = mini_depth.build_depth(stage, work, depth["objects"], depth["steps"], seed)
    step("depth", cached)

    with atomic_dir(output) as tmp:
        save_sd_folder(tmp / "sd", unet, vae, text, tokenizer)
        shutil.copy(stage / "judge.safetensors", tmp / assets.JUDGE_FILE)
        # 5. the domain models, trained from the shipped (float16) base as any user would
        for name in assets.DOMAINS:
            cached = (stage / f"domain-{name}" / "nulltext.json").exists()
            if not cached:
                shutil.rmtree(stage / f"domain-{name}", ignore_errors=True)  # an interrupted run starts again
                write_image_folder(dom_images[name], work / f"{name}-images")
                train_domain_model(tmp / "sd", work / f"{name}-images", stage / f"domain-{name}",
                                   n["domain_steps"], seed, domain=name)
            dst = tmp / f"domain-{name}"
            dst.mkdir()
            for f in (stage / f"domain-{name}").iterdir():
                if f.is_file() and not f.name.startswith("."):  # not the trainer's run marker
                    shutil.copy(f, dst / f.name)
            assets.to_float16(dst)
            meta = json.loads((dst / "nulltext.json").read_text())
            meta["base_model"] = "../sd"  # the shipped base beside it (not the build's temporary folder)
            (dst / "nulltext.json").write_text(json.dumps(meta, indent=2))
            step(f"domain-{name}", cached)
        shutil.copytree(stage / "depth", tmp / "depth", ignore=shutil.ignore_patterns(mini_depth.MADE_FILE))
        shutil.copytree(stage / "zero123", tmp / "zero123", ignore=shutil.ignore_patterns("phases.json", PHASE_SECONDS))
        for sub in (tmp / "zero123").iterdir():
            if sub.is_dir():
                assets.to_float16(sub)
        # 8. measure and record
        quality = dict(assets.measure_quality(tmp), **assets.measure_faces(tmp), vae_psnr=round(vae_psnr, 2),
                       vae_face_psnr=round(vae_face_psnr, 2), **assets.measure_zero123(tmp), **assets.measure_depth(tmp))
        step("measure")
        manifest = assets.write_manifest(tmp, dict(size=size, seed=seed, seconds=times, quality=quality))
    log.info("built the mini world in %.1f min of work: %s", sum(times.values()) / 60, json.dumps(quality))
    return manifest


PHASE_SECONDS = "seconds.json"  # in each Zero-1-to-3 phase's folder: the seconds its training took


def zero123_phase_seconds(stage: Path, size: str) -> float:
    """Seconds the finished phases of ``size``'s recipe in ``stage`` took to train (0 where the final model is
    there already, or a phase's time was not recorded): what a resumed build adds to the step's own time."""
    marker = stage / "zero123" / "phases.json"
    if marker.exists() and json.loads(marker.read_text()).get("recipe") == zero123_recipe(size):
        return 0.0
    total = 0.0
    for i in range(len(ZERO123_PHASES[size])):
        record = zero123_phase_folder(stage, size, i + 1) / PHASE_SECONDS
        if record.is_file():
            total += float(json.loads(record.read_text()).get("seconds", 0.0))
    return total


def build_zero123(stage: Path, work: Path, size: str, seed: int, vae) -> bool:
    """Step 6: the Zero-1-to-3's phases (:data:`ZERO123_PHASES`) into ``stage / "zero123"``, each phase cached in
    :func:`zero123_phase_folder`; returns whether the final model was already there."""
    n = SIZES[size]
    phases = ZERO123_PHASES[size]
    for i, (*_, kind) in enumerate(phases):  # checked before any phase trains
        if kind not in (True, False, "boxes"):
            raise ValueError(f"Zero-1-to-3 phase {i + 1} asks for the data {kind!r}: use True (the pairs and the "
                             "extra pairs), False (the pairs) or 'boxes' in ZERO123_PHASES")
    recipe = zero123_recipe(size)
    final = stage / "zero123"
    marker = final / "phases.json"  # {"phases", "recipe"}: written into the last phase before it becomes final
    cached = marker.exists() and json.loads(marker.read_text()).get("recipe") == recipe
    if not cached:
        if final.exists():  # a model of another recipe (another architecture or other phases): first set aside, to
            set_aside_zero123(final)  # its recipe's last phase folder, where a recipe that extends it finds it
        # every phase in its own folder, named by the recipe up to it: an interrupted build resumes after the last
        # one done, and a recipe with a phase added continues from the phases it shares with the cached one
        folders = [zero123_phase_folder(stage, size, i + 1) for i in range(len(phases))]
        first = max([i + 1 for i, f in enumerate(folders) if (f / "model_index.json").exists()], default=0)
        z_parts = _load_zero123_parts(folders[first - 1]) if 0 < first < len(phases) else None
        data = {}  # the training sets, rendered or read once
        for i in range(first, len(phases)):
            z_steps, z_lr, kind = phases[i]
            if kind not in data:
                if kind == "boxes":
                    box = box_pairs_spec(size)
                    data[kind] = _zero123_pairs(work, box["objects"], seed + box["seed"], box["shapes"],
                                                f"-boxes-{_fingerprint(dict(box, build_seed=seed), 8)}")
                else:
                    pairs = _zero123_pairs(work, n["zero123_objects"], seed + 7)
                    if kind:  # and the extra pairs
                        extra = _zero123_pairs(work, n["zero123_objects"], seed + 11, mini_zero123.HARD_SHAPES, "-hard")
                        pairs = {k: np.concatenate([pairs[k], extra[k]]) for k in pairs}
                    data[kind] = pairs
            t_phase = time.time()
            z_parts = mini_zero123.train_zero123(data[kind], vae, z_steps, lr=z_lr, seed=seed + i, init=z_parts)
            save_zero123(z_parts, folders[i])
            write_text_atomic(folders[i] / PHASE_SECONDS, json.dumps({"seconds": time.time() - t_phase}))
        write_text_atomic(folders[-1] / "phases.json", json.dumps({"phases": len(phases), "recipe": recipe}))
        folders[-1].rename(final)
    return cached


def set_aside_zero123(final: Path) -> Path:
    """Move a cached Zero-1-to-3 of another recipe out of the way, never deleting it: to its own recipe's last phase
    folder (found again if the build goes back to that recipe), else to ``zero123-previous-<time>``."""
    marker = final / "phases.json"
    old = json.loads(marker.read_text()) if marker.exists() else {}
    keep = final.with_name(f"zero123-{old['recipe']}-phase{old['phases']}" if "recipe" in old else
                           f"zero123-previous-{int(time.time())}")
    if keep.exists():
        keep = keep.with_name(f"{keep.name}-{time.time_ns()}")
    log.info("the cached Zero-1-to-3 was made with another recipe: it is kept as %s", keep.name)
    final.rename(keep)
    return keep


def _zero123_pairs(work: Path, n: int, seed: int, shapes=None, suffix: str = "") -> dict:
    """The Zero-1-to-3 view pairs of ``n`` objects (of every shape alike, or drawn from ``shapes``), rendered once
    and cached in ``work``."""
    path = work / f"zero123-pairs{suffix}.npz"
    if not path.exists():
        pairs = mini_zero123.render_pairs(n, 5, seed, **({} if shapes is None else dict(shapes=shapes)))
        np.savez(work / f"zero123-pairs{suffix}.tmp.npz", **pairs)
        (work / f"zero123-pairs{suffix}.tmp.npz").rename(path)
    return dict(np.load(path))


def _load_zero123_parts(folder: Path) -> dict:
    m = load_zero123(str(folder))
    return dict(unet=m.unet, vae=m.vae, image_encoder=m.image_encoder, projection=m.projection, scheduler=m.scheduler)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.miniworld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    p.add_argument("--output", default=None,
                   help="where the models go (default: the shipped folder; with --size quick, WORK/models-quick: "
                        "quick models never replace the shipped ones unless named here)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "in-domain-suite" / "mini-build"),
                   help="cache of rendered data and finished steps (delete it to rebuild from nothing)")
    p.add_argument("--size", choices=list(SIZES), default="full", help="'quick': minutes, for testing the build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch threads (default: automatic, as launch.py's --threads: every core when the machine "
                        "is idle, fewer beside other jobs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    quiet_libraries()

    apply_threads(args.threads)
    t0 = time.time()
    quick = Path(args.work) / "models-quick" if args.size == "quick" else None
    output = Path(args.output) if args.output else quick or default_dir()
    try:
        build(output, Path(args.work), args.size, args.seed)
    except UserError as e:  # a refused request, another build's lock
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: the disk is full ({e.filename or args.work}): free some space and run the same command "
              f"again (finished steps are kept in --work)", file=sys.stderr)
        return 2
    print(f"mini world built in {(time.time() - t0) / 60:.1f} minutes -> {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
