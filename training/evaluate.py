"""``launch.py eval``: the paper's Table 1 for your domain model: methods side by side against a folder of real
domain images.

For each method (``base``: SD alone; ``ours``: multi-guidance with the domain model, at the recommended or given
weights and rule; ``model:FOLDER``: an SD1.5 fine-tune sampled alone with classifier-free guidance):

1. **Images**, through the batch machinery of ``generate`` (:func:`suite.batch.run_batch`): ``--num-images``
   unconditional images (seeds ``--seed`` ... ``--seed + N - 1``), and with ``--prompts-file`` one image per prompt
   and ``--seeds`` seed. Written under ``OUTPUT/images/<method>/{uncond,text}/`` with their manifests, split between
   processes under ``accelerate launch`` / ``torchrun``, resumable with ``--resume``.
2. **Features** of the real images and of every set (:mod:`suite.features`: the mini world's judge, DINOv2, CLIP
   or a folder/hub id of either), in fixed chunks of images split between processes; each chunk's features and
   exact moments (``n``, ``sum x``, ``sum x x^T`` in float64) are gathered and added in chunk order, so any number
   of processes gives the same numbers.
3. **Metrics**: for the unconditional set, the Fréchet distance and KID (unbiased, with its standard error) to the
   real images; for the text set, the CLIP score (with a CLIP model, ``--clip``) and on the mini world the judge's
   shape/colour/pattern alignment (for prompts that name one) and its porcelain rate.
4. **Outputs**: ``table.md``, ``table.csv`` and ``results.json`` (every number, the methods' settings, the feature
   network, the real set) in ``OUTPUT``.

It lives in ``training`` because it judges a trained domain model against the kind of folder it was trained on, and
reads that folder with the trainer's scanner (:func:`training.data.scan_images`: broken files skipped and counted).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from suite.checks import UserError, check_weight

log = logging.getLogger("suite")

KINDS = ("base", "ours", "model")
METHOD_KEYS = ("domain_weight", "control_weight", "guidance_rule", "caption")
CHUNK = 64  # images per feature chunk (fixed: the split between processes never changes a number)
SETS = ("uncond", "text")


@dataclass(frozen=True)
class Method:
    """One row of the table. ``kind``: ``base`` (SD alone, classifier-free guidance ``control_weight`` on prompts),
    ``ours`` (SD + the domain model, paper Eq. 3 with ``domain_weight``, ``control_weight``, ``guidance_rule``; not
    given: the domain's recommended ones) or ``model`` (the SD1.5 fine-tune in ``model``, alone, with guidance
    ``control_weight``; its unconditional images use ``caption`` as their prompt, e.g. a DreamBooth fine-tune's
    instance prompt)."""

    label: str
    kind: str
    model: str | None = None
    domain_weight: float | str | None = None
    control_weight: float | str | None = None
    guidance_rule: str | None = None
    caption: str = ""


def parse_method(text: str) -> Method:
    """``[LABEL=]KIND[;key=value...]``, KIND ``base``, ``ours`` or ``model:FOLDER``; keys ``domain_weight``,
    ``control_weight``, ``guidance_rule`` (ours), ``control_weight`` (base, model), ``caption`` (model). E.g.
    ``ours``, ``ours-2=ours;domain_weight=2;guidance_rule=paper``, ``ft=model:runs/ft/unet;caption=a photo of
    porcelain;control_weight=5``."""
    from suite.rules import format_rule, parse_rule

    parts = [p.strip() for p in str(text).split(";")]
    head = parts[0]
    label, _, kind = head.partition("=") if "=" in head.split(":")[0] else ("", "", head)
    kind, _, model = kind.strip().partition(":")
    kind = kind.lower()
    label = label.strip() or (kind if kind != "model" else Path(model.strip().rstrip("/")).name or "model")
    fix = "write it [LABEL=]base|ours|model:FOLDER[;key=value...], e.g. ours;domain_weight=1.5"
    if kind not in KINDS:
        raise UserError(f"--method {text!r} is not a method: {fix}")
    if (kind == "model") != bool(model.strip()):
        raise UserError(f"--method {text!r}: " + ("give the fine-tuned model's folder or hub id as model:FOLDER"
                                                  if kind == "model" else f"only model:FOLDER takes a folder; {fix}"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", label):
        raise UserError(f"the method label {label!r} must be letters, digits, '.', '_', '+' or '-' (it names a "
                        f"folder): write LABEL=... before the method")
    keys: dict = {}
    for part in parts[1:]:
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in METHOD_KEYS:
            raise UserError(f"--method {text!r}: {part!r} is not a setting; use {', '.join(METHOD_KEYS)} as key=value")
        if key in keys:
            raise UserError(f"--method {text!r} sets {key} twice: give it once")
        value = value.strip()
        if key in ("domain_weight", "control_weight"):
            from suite.cli import weight_arg

            try:
                value = check_weight(weight_arg(value), key)
            except Exception as e:  # argparse's type error: say it here in one sentence
                raise UserError(f"--method {text!r}: {key} must be a number or auto ({e})") from None
        elif key == "guidance_rule":
            try:
                value = format_rule(parse_rule(value)) or "paper"
            except UserError as e:
                raise UserError(f"--method {text!r}: {e}") from None
        keys[key] = value
    allowed = {"base": ("control_weight",), "ours": ("domain_weight", "control_weight", "guidance_rule"),
               "model": ("control_weight", "caption")}[kind]
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise UserError(f"--method {text!r}: a {kind} method does not take {', '.join(extra)} (it takes "
                        f"{', '.join(allowed)})")
    return Method(label, kind, model.strip() or None, **keys)


@dataclass
class EvalConfig:
    """What ``launch.py eval`` runs (its flags)."""

    output: str
    methods: list[Method]
    real: str | None = None
    num_real: int | None = None
    features: str = "judge"
    clip: str | None = None
    num_images: int = 200
    seed: int = 0
    prompts_file: str | None = None
    seeds: list[int] = field(default_factory=lambda: list(range(4)))
    batch_size: int = 8
    steps: int | None = None
    resume: bool = False
    preset: str = "mini"
    domain: str | None = None
    sd_model: str | None = None
    domain_model: str | None = None
    device: str | None = None
    dtype: str | None = None


# ---------------------------------------------------------------------------------------------------------
def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation (see the module); returns the results (also written to ``results.json``). ``methods``
    take :class:`Method` objects or the CLI's strings (``"ours;domain_weight=2"``). On the mini preset without
    ``real`` the held-out images are rendered in spawned processes, so a script calls this under
    ``if __name__ == "__main__":`` (multiprocessing's rule)."""
    from contextlib import ExitStack

    from suite import batch as B
    from suite.checks import MAX_IMAGES, MAX_SEED, MAX_STEPS, check_int
    from suite.features import check_feature_model, load_features
    from suite.files import check_writable_dir, claim_run_folder, output_lock

    # 1. Everything that can be checked before a model loads.
    # KID needs 3 images a set: num_images=2 through the python API failed only after every image was made
    # the checked values are kept (num_images="3" passed, then was a TypeError), and seeds as the CLI writes them
    # ("0-3"; a string was read a character at a time: seeds="12" sampled seeds "1" and "2")
    given = [config.seeds] if isinstance(config.seeds, int) else config.seeds
    if not isinstance(given, str) and len(given) > B.MAX_ITEMS:
        raise UserError(f"seeds names more than {B.MAX_ITEMS:,} seeds: split the evaluation")
    seeds = B.parse_seeds(given) if isinstance(given, str) else [
        check_int(s, "a seed (seeds, --seeds)", 0, MAX_SEED) for s in given]
    if len(set(seeds)) != len(seeds):
        raise UserError("seeds names a seed twice: give each once")
    config = replace(config, num_images=check_int(config.num_images, "the number of images (num_images, --num-images)",
                                                  3), seed=check_int(config.seed, "the seed (--seed)", 0, MAX_SEED),
                     seeds=seeds, batch_size=check_int(config.batch_size, "the batch size (--batch-size)", 1, MAX_IMAGES),
                     steps=None if config.steps is None else check_int(config.steps, "the steps (--steps)", 1,
                                                                       MAX_STEPS))
    # methods as the CLI writes them ("base", "ours;domain_weight=2"): parsed, not an AttributeError on .label
    given = [config.methods] if isinstance(config.methods, str) else config.methods  # one, as text: not letters
    config = replace(config, methods=[parse_method(m) if isinstance(m, str) else m for m in given])
    labels = [m.label for m in config.methods]
    if not labels:
        raise UserError("no method to evaluate: pass --method base, --method ours, --method model:FOLDER ...")
    if len(set(labels)) != len(labels):
        raise UserError(f"two methods share a label ({labels}): name them LABEL=... (e.g. ours-2=ours;...)")
    ours = [m.label for m in config.methods if m.kind == "ours"]
    if ours and str(config.domain_model or "").lower() == "none":
        raise UserError(f"--domain-model none leaves {', '.join(ours)} without a domain model, so its row would be "
                        f"base's: give the domain model, or compare only --method base and model:FOLDER")
    text_items = _text_items(config)
    check_feature_model(config.features, "--features")
    if config.clip and text_items:
        check_feature_model(config.clip, "--clip", text=True)
    for m in config.methods:
        if m.kind == "model":
            from suite.models import ModelLoadError, check_community_model

            try:  # missing, or a domain model given as a fine-tune: before any method's images are made
                check_community_model(m.model, f"--method {m.label}=model:FOLDER")
            except ModelLoadError as e:
                raise UserError(str(e)) from None
    out = check_writable_dir(Path(config.output).expanduser().resolve())
    real = Path(config.real).expanduser().resolve() if config.real else None
    if real is not None and (out == real or real in out.parents):
        raise UserError(f"--output {str(out)!r} is inside --real {str(real)!r}: the generated images would be "
                        f"counted as real ones on --resume; choose an --output outside it")
    real_scan = _scan_real(config.real, config.num_real) if config.real else _check_can_render(config)
    state = B.process_state(cpu=config.device == "cpu")  # one sentence if not all joined
    # every process on its own device; features on the pipeline's device (not the CPU) in one process too
    from suite.devices import kept_random_state
    from suite.presets import process_device, resolve_device

    device = process_device(config.device, state) or str(resolve_device(None)[0])

    with ExitStack() as stack:
        stack.enter_context(kept_random_state(device))  # the caller's random stream (sampling drew from it)
        if state.is_main_process:
            stack.enter_context(output_lock(out))
        # a folder whose run stopped before its first image (a model that failed to load) is taken as new: it
        # holds only what the run wrote first (methods.json), and asking for --resume there was a riddle
        begun = claim_run_folder(out, "eval", write=state.is_main_process) and any((out / "images").rglob("*.png"))
        if begun and not config.resume:
            raise UserError(f"the folder {str(out)!r} holds an evaluation already: pass --resume to complete it, or "
                            f"choose another --output")
        run = _fingerprint(config)
        _check_methods_file(out, config.methods, run, state)
        real_paths, skipped = _real_images(config, out, state, real_scan)

        # 2. Images of every method and set (the batch machinery: split, resumable, manifests).
        pipe_box: dict = {}
        sets = {}
        for m in config.methods:
            for name, items in (("uncond", _uncond_items(config, m)), ("text", [_for_method(it, m) for it in text_items])):
                if not items:
                    continue
                folder = out / "images" / m.label / name
                missing = B.run_batch(state, folder, items, config.batch_size,
                                      lambda m=m: _loader(config, m, pipe_box, device), resume=True, kind="eval-batch",
                                      what="an evaluation's images", same=SAME_ITEMS[name])
                if missing:
                    raise UserError(f"{missing} image(s) of {m.label}/{name} are missing: run again with --resume")
                sets[(m.label, name)] = (folder, items)
        pipe_box.clear()

        # 3. Features, split in fixed chunks and gathered exactly; then the metrics (process 0 writes them).
        net = load_features(config.features, device=device)
        clip = None
        if config.clip and text_items:
            clip = net if config.clip == config.features and net.has_text else load_features(config.clip, device,
                                                                                            flag="--clip")
        real = _features(state, net, real_paths, cache=out / f"real-{_paths_key(real_paths, net.name)}.npz")
        results = {"features": net.name, "clip": clip.name if clip else None, "run": run,
                   "real": {"folder": str(config.real or _mini_real_folder(config, out)), "n": len(real_paths),
                            "skipped": skipped}, "methods": {}}
        for m in config.methods:
            row = {"method": asdict(m)}
            for (label, name), (folder, items) in sets.items():
                if label != m.label:
                    continue
                paths = [B.item_path(folder, it) for it in items]
                feats = _features(state, net, paths)
                if name == "uncond":
                    row["uncond"] = _distribution_scores(feats, real, len(paths))
                else:
                    row["text"] = {"n": len(paths)}
                    if clip is not None:
                        img = feats if clip is net else _features(state, clip, paths)
                        row["text"].update(_clip_scores(clip, img, [it.prompt for it in items]))
                if hasattr(net, "judge"):
                    row.setdefault(name, {}).update(_judge_scores(state, net, paths, [it.prompt for it in items],
                                                                  _mini_domain(config)))
            results["methods"][m.label] = row
        if state.is_main_process:
            _write(out, results)
            _grid(out, config.methods, sets)
        state.wait_for_everyone()
    B.end_processes(state)
    return results


# ---------------------------------------------------------------------------------------------------------
def _text_items(config: EvalConfig) -> list:
    from suite import batch as B

    if not config.prompts_file:
        return []
    items = B.read_items(config.prompts_file, config.seeds)
    for it in items:
        if it.domain_weight is not None or it.control_weight is not None or it.guidance_rule or it.negative_prompt:
            raise UserError(f"the prompts file sets guidance on item {it.index} ({it.prompt!r}); in eval the methods "
                            f"set guidance: keep only prompt and seed in each line")
    return items


def _uncond_items(config: EvalConfig, m: Method) -> list:
    from suite.batch import Item

    return [_for_method(Item(i, "", config.seed + i), m) for i in range(config.num_images)]


def _for_method(item, m: Method):
    """The item as this method makes it (its settings recorded in the manifest and checked on resume)."""
    from dataclasses import replace

    wd = 0.0 if m.kind != "ours" else m.domain_weight
    return replace(item, domain_weight=wd, control_weight=m.control_weight, guidance_rule=m.guidance_rule)


#: the flags that say each set's items (a resume with others names them: it named generate's --seeds for --seed)
SAME_ITEMS = {"uncond": "the same --num-images and --seed", "text": "the same prompts file and --seeds"}


def _fingerprint(config: EvalConfig) -> dict:
    """What every method's images depend on besides the method: the models (hashes of their weight files, or hub
    ids), the preset, the sampling steps and the dtype. A resume with others is refused."""
    from suite import batch as B
    from suite.presets import model_refs, recorded_dtype

    refs = model_refs(config.preset, config.domain, config.sd_model, config.domain_model)
    # the dtype the models run in (the flag's None was float16 on a GPU and float32 on a CPU: mixed in one table)
    from suite.pipeline import DEFAULT_STEPS

    dom = refs["domain_obj"]  # the guidance of "ours" where its weights and rule are not given
    # the steps by number: --steps 25 (the default) was refused on the resume of a run made without the flag
    steps = DEFAULT_STEPS if config.steps is None else config.steps
    return {"preset": config.preset, "steps": steps, "dtype": recorded_dtype(config.device, config.dtype),
            "models": B.model_hashes({"sd": refs["sd"], "domain": refs["domain"]}),
            "defaults": {"domain": dom.name, "domain_weight": dom.domain_weight,
                         "control_weight": dom.control_weight, "rule": dom.rule}}


def _check_methods_file(out: Path, methods: list[Method], run: dict, state) -> None:
    """``methods.json``: the run's fingerprint and each method's settings. A resume with other models or steps, or
    a label reused for other settings while its images exist, is refused (the table would mix two methods)."""
    from suite import batch as B
    from suite.files import write_text_atomic

    path = out / "methods.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    made = {f.parent.name for f in (out / "images").glob("*/*") if f.is_dir() and B.done_items(f)}
    have = {m.label for m in methods} & made
    old = saved.get("_run")
    if isinstance(old, dict) and old.get("dtype") is None:  # recorded before the dtype the models ran in was
        old = {**old, "dtype": run["dtype"]}
    if isinstance(old, dict) and "steps" in old and old["steps"] is None:  # the default, recorded as not given
        from suite.pipeline import DEFAULT_STEPS

        old = {**old, "steps": DEFAULT_STEPS}
    if isinstance(old, dict) and "defaults" not in old:  # recorded before the default guidance was: cannot tell
        from suite.checks import warn_unrecorded

        if made and state.is_main_process:
            warn_unrecorded(old, run, set())
        old = {**old, "defaults": run["defaults"]}
    # any method's images, not only this run's: a resume with other settings and only new methods passed, then
    # recorded its settings as the folder's, and a later resume of the old methods reused their images as made so
    if made and old not in (None, run):
        raise UserError(f"the folder's images were made with other models or settings ({saved['_run']}): choose "
                        f"another --output, or the same models, --steps and --dtype to resume")
    entries = {m.label: dict(asdict(m), model_hash=B.model_hashes({"m": m.model}).get("m") if m.model else None)
               for m in methods}
    for label, entry in entries.items():
        if label in have and label in saved and saved[label] != entry:
            raise UserError(f"the folder's method {label!r} was made with other settings ({saved[label]}): give "
                            f"this one another label, or choose another --output")
    state.wait_for_everyone()
    if state.is_main_process:
        write_text_atomic(path, json.dumps({**saved, **entries, "_run": run}, indent=1))


def _check_can_render(config: EvalConfig) -> None:
    from suite.presets import get_preset

    if not get_preset(config.preset).offline:
        raise UserError("give --real FOLDER with real images of the domain (the paper uses the domain's dataset)")
    domain = _mini_domain(config)
    if domain not in ("porcelain", "face"):  # FD and KID against porcelain renders would say nothing about it
        raise UserError(f"give --real FOLDER with held-out images of {domain!r} (images it was not trained on): the "
                        f"mini world renders its own only for porcelain and face")


def _scan_real(folder, num_real: int | None = None) -> object:
    from .data import scan_images

    try:
        scan = scan_images(folder)
    except ValueError as e:
        raise UserError(str(e).replace("pass --data", "pass --real")) from None
    _usable(scan, folder, num_real)
    return scan


def _real_images(config: EvalConfig, out: Path, state, scan=None) -> tuple[list[Path], int]:
    """The real images (sorted; at most ``num_real``, the first in order) and how many broken files were skipped.
    On the mini preset without ``--real``: held-out renders of its domain (porcelain or face), written once."""
    folder, num_real = config.real, config.num_real
    if scan is None:
        face = _mini_domain(config) == "face"
        folder = _mini_real_folder(config, out)
        n = num_real = config.num_real or MINI_REAL  # the first 500 (an earlier run's --num-real 600 rendered more)
        if state.is_main_process and len(list(folder.glob("*.png"))) < n:
            from PIL import Image

            from suite.images import save_image_atomic

            from .miniworld import render_set

            log.info("eval: rendering %d held-out %s images into %s", n, "face" if face else "porcelain", folder)
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(render_set("face-domain" if face else "domain", n, seed=9091)["images"]):
                save_image_atomic(Image.fromarray(im), folder / f"{i:05d}.png")
        state.wait_for_everyone()
        scan = _scan_real(folder)
    paths = _usable(scan, folder, num_real)
    if num_real and len(paths) < num_real and state.is_main_process:
        log.warning("eval: --num-real %d, but %s has %d usable images: the real set is those %d", num_real, folder,
                    len(paths), len(paths))
    return paths, len(scan.corrupt)


MINI_REAL = 500  # the mini preset's held-out renders when --num-real is not given


def _mini_domain(config) -> str:
    """The domain evaluated: ``--domain``, else the model's own (its ``nulltext.json``), else the preset's."""
    from suite.presets import chosen_domain, default_domain

    return default_domain(config.preset, chosen_domain(config.domain, config.domain_model))


def _mini_real_folder(config, out: Path) -> Path:
    """The mini preset's held-out domain renders: ``real-mini`` (porcelain) or ``real-mini-face``."""
    return out / ("real-mini-face" if _mini_domain(config) == "face" else "real-mini")


def _usable(scan, folder, num_real: int | None) -> list[Path]:
    paths = scan.images[:num_real] if num_real else scan.images
    if len(paths) < 3:
        raise UserError(f"the real-image folder {str(folder)!r} has {len(paths)} usable image(s); KID and the Fréchet "
                        f"distance need at least 3 (thousands for the paper's figures): add images")
    return paths


_PIPE_KEY = "pipe"


def _loader(config: EvalConfig, m: Method, box: dict, device):
    """``(sample, models)`` for :func:`suite.batch.run_batch`: one pipeline for every method of this process."""
    import torch

    from suite import batch as B
    from suite.pipeline import DEFAULT_STEPS, Control, quiet
    from suite.presets import build_pipeline, model_refs

    if _PIPE_KEY not in box:
        box[_PIPE_KEY] = build_pipeline(config.preset, config.domain, config.sd_model, config.domain_model,
                                        device=device, dtype=config.dtype)
    pipe = box[_PIPE_KEY]
    refs = model_refs(config.preset, config.domain, config.sd_model, config.domain_model)
    models = {"sd": refs["sd"]} | ({"domain": refs["domain"]} if m.kind == "ours" else {}) | \
             ({"model": m.model} if m.kind == "model" else {})
    steps = DEFAULT_STEPS if config.steps is None else config.steps
    unet = None
    if m.kind == "model":
        from suite.models import load_unet

        unet = load_unet(m.model, device=pipe.device, dtype=pipe.dtype, flag="--method model:", like=pipe.unet)
    cw = m.control_weight if m.control_weight is not None else pipe.guidance_weights()[1] or 7.5

    def sample(group):
        latents = torch.cat([pipe.prepare_latents(1, None, None, seed=it.seed) for it in group])
        prompts = [it.prompt for it in group]
        with quiet(pipe):
            if m.kind == "ours":
                out = pipe(prompts if prompts[0] else None, num_images_per_prompt=1 if prompts[0] else len(group),
                           domain_weight=m.domain_weight, control_weight=m.control_weight,
                           guidance_rule=m.guidance_rule, num_inference_steps=steps, latents=latents)
                return out.images, out.weights, out.guidance_rule
            if m.kind == "base":
                out = pipe(prompts if prompts[0] else None, num_images_per_prompt=1 if prompts[0] else len(group),
                           use_domain=False, control_weight=cw, num_inference_steps=steps, latents=latents)
                return out.images, out.weights, "paper"
            images = []  # a fine-tune: one call per run of equal prompts (a Control has one prompt)
            start = 0
            for prompt, run in itertools.groupby(prompts):
                k = len(list(run))
                ctl = [Control(prompt=prompt or m.caption, unet=unet, weight=cw, name="fine-tuned")]
                images += pipe(None, controls=ctl, use_domain=False, rectify=False, num_images_per_prompt=k,
                               num_inference_steps=steps, latents=latents[start:start + k]).images
                start += k
            return images, {"fine-tuned": cw}, "paper"

    return sample, B.model_hashes(models)


# ---------------------------------------------------------------------------------------------------------
def _paths_key(paths: list[Path], net_name: str) -> str:
    from suite.files import files_fingerprint

    return files_fingerprint(paths, salt=net_name)


def _features(state, net, paths: list[Path], cache: Path | None = None) -> dict:
    """``{"features": [n, d], "moments": (n, s1, s2)}`` of the images at ``paths``: chunks of :data:`CHUNK` images,
    chunk ``j`` on process ``j % P``; the chunks' features gathered, and their float64 moments added in chunk
    order (exact sums, not per-process means)."""
    from accelerate.utils import gather_object

    from suite.images import load_image
    from suite.metrics import add_moments, moments

    def load(path):  # at any size, as training reads them (the folder's scan took every one)
        return load_image(path, "image", max_pixels=None)

    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            f = z["features"]
        # the file is named by the images and the network's name, not its weights: a mini world rebuilt, or a
        # --features folder replaced, gave other features under the same name, and the table compared the two.
        # The first image again through today's network says whether they are its features.
        again = net.images([load(paths[0])])[0]
        if f.shape[1:] == again.shape and np.allclose(f[0], again, rtol=1e-3, atol=1e-3 * np.abs(again).max()):
            return {"features": f, "moments": add_moments(moments(f[j:j + CHUNK]) for j in range(0, len(f), CHUNK))}
        log.info("eval: the cached real-image features %s were made by another feature network: computing them again",
                 cache.name)
    chunks = range(0, len(paths), CHUNK)
    mine = []
    for k, j in enumerate(chunks):
        if k % state.num_processes != state.process_index:
            continue
        mine.append((k, net.images([load(p) for p in paths[j:j + CHUNK]])))
    parts = sorted(gather_object(mine) if state.num_processes > 1 else mine, key=lambda x: x[0])
    feats = np.concatenate([p[1] for p in parts])
    # every process adds the same chunks' moments in the same order: the same numbers for any process count
    out = {"features": feats, "moments": add_moments(moments(p[1]) for p in parts)}
    if cache is not None and state.is_main_process:
        from suite.files import write_bytes_atomic

        buf = io.BytesIO()
        np.savez(buf, features=feats)
        write_bytes_atomic(cache, buf.getvalue())
    return out


def _distribution_scores(gen: dict, real: dict, n: int) -> dict:
    from suite.metrics import frechet_from_stats, kid_with_se

    k, se = kid_with_se(gen["features"], real["features"])  # the whole sets, at any size (in blocks)
    return {"n": n, "fd": frechet_from_stats(gen["moments"], real["moments"]), "kid": k, "kid_se": se}


def _clip_scores(clip, image_feats: dict, prompts: list[str]) -> dict:
    from suite.features import clip_score
    from suite.metrics import standard_error

    unique = list(dict.fromkeys(prompts))
    text = dict(zip(unique, clip.texts(unique)))
    s = clip_score(image_feats["features"], np.stack([text[p] for p in prompts]))
    return {"clip_score": float(s.mean()), "clip_score_se": standard_error(s)}  # None for one image (it said ± 0)


def _judge_scores(state, net, paths: list[Path], prompts: list[str], domain: str = "porcelain") -> dict:
    """The mini world's judge on a set: its domain rate (``domain``: porcelain; the photo look for the face domain,
    also kept as ``porcelain`` for porcelain; none for a domain of your own, whose look the judge does not know), and for prompts naming a shape / colour / pattern the fraction of
    images where it reads that attribute, for face prompts naming attributes ("with glasses", "red hair") the
    fraction where it reads all of them (each with its binomial standard error)."""
    from suite.images import load_image
    from suite.miniworld import world as W
    from suite.miniworld.assets import images_to_tensor
    from suite.miniworld.judge import face_attributes

    pred: dict = {}
    for j in range(0, len(paths), CHUNK):  # small and cheap: every process reads every image, no gather needed
        p = net.judge.predict(images_to_tensor([load_image(q, "image") for q in paths[j:j + CHUNK]]))
        for key, values in p.items():
            pred.setdefault(key, []).extend(values)
    face = domain == "face"
    out = {}
    if domain in ("porcelain", "face"):  # the looks the judge reads; a domain of your own has no such score
        out.update(_rate("domain", [bool(x) for x in pred["photo" if face else "porcelain"]]))
    if domain == "porcelain":
        out.update(_rate("porcelain", [bool(x) for x in pred["porcelain"]]))
    vocab = {"shape": W.SHAPES, "colour": tuple(W.COLOURS), "pattern": ("stripes", "dots")}
    is_face = [bool(re.search(r"\bface\b", p.lower())) or bool(_named_attributes(p)) for p in prompts]
    for key, names in vocab.items():
        hits = []
        for prompt, got, fp in zip(prompts, pred[key], is_face):
            words = set(re.findall(r"[a-z]+", prompt.lower()))
            named = [n for n in names if n in words]
            if len(named) == 1 and not fp:
                hits.append(got == named[0])
        if hits:
            out.update(_rate(f"{key}_alignment", hits))
    hits = [set(_named_attributes(p)) <= face_attributes(pred, i) for i, p in enumerate(prompts)
            if _named_attributes(p)]
    if hits:
        out.update(_rate("attribute_alignment", hits))
    return out


def _named_attributes(prompt: str) -> list[str]:
    """The mini world's face attributes a prompt names ("wearing glasses" -> ["glasses"])."""
    from suite.miniworld.faces import ATTRIBUTES

    text = " " + " ".join(re.findall(r"[a-z]+", prompt.lower())) + " "
    return [a for a in ATTRIBUTES if f" {a} " in text or (a.startswith("a ") and f" {a[2:]} " in text)]


def _rate(name: str, hits: list[bool]) -> dict:
    p = sum(hits) / len(hits)
    return {name: p, f"{name}_se": float(np.sqrt(p * (1 - p) / len(hits))), f"{name}_n": len(hits)}


# ---------------------------------------------------------------------------------------------------------
COLUMNS = (("uncond", "n", "images"), ("uncond", "fd", "FD"), ("uncond", "kid", "KID"),
           ("uncond", "domain", "domain (judge)"), ("text", "n", "text images"),
           ("text", "clip_score", "CLIP score"), ("text", "shape_alignment", "shape"),
           ("text", "colour_alignment", "colour"), ("text", "pattern_alignment", "pattern"),
           ("text", "attribute_alignment", "face attributes"), ("text", "domain", "text domain (judge)"))


def _number(v: float) -> str:
    """Four significant digits, without an exponent for the distances of 10,000 and more (1.235e+04 was printed)."""
    return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (columns with no number in any row left out)."""
    cols = [c for c in COLUMNS if any(c[1] in r.get(c[0], {}) for r in results["methods"].values())]
    header = ["method"] + [c[2] for c in cols]
    rows = []
    for label, r in results["methods"].items():
        row = [label]
        for part, key, _ in cols:
            v = r.get(part, {}).get(key)
            se = r.get(part, {}).get(f"{key}_se")
            row.append("" if v is None else f"{v:d}" if isinstance(v, int) else
                       _number(v) + (f" ± {se:.2g}" if se is not None else ""))
        rows.append(row)
    return header, rows


def _grid(out: Path, methods: list[Method], sets: dict, per_set: int = 8) -> Path:
    """``grid.png``: a row per method, its first unconditional images then the first image of each prompt."""
    from PIL import Image

    from suite import batch as B
    from suite.images import save_image_atomic, tile_grid

    rows = []
    for m in methods:
        row = []
        for name in SETS:
            if (m.label, name) in sets:
                folder, items = sets[(m.label, name)]
                firsts = list({it.prompt: it for it in reversed(items)}.values())[::-1][:per_set]  # each prompt's first
                chosen = {it.index for it in firsts}
                for it in (firsts + [it for it in items[:2 * per_set] if it.index not in chosen])[:per_set]:
                    with Image.open(B.item_path(folder, it)) as im:
                        row.append(im.convert("RGB").resize((96, 96), Image.BICUBIC) if im.width > 96 else
                                   im.convert("RGB"))
        rows.append(row)
    scale = 2 if rows[0][0].width <= 64 else 1
    n_uncond = min(per_set, len(next(iter(sets.values()))[1]))
    cols = [""] * max(map(len, rows))
    cols[0] = "unconditional"
    if len(cols) > n_uncond:
        cols[n_uncond] = "prompted"
    return save_image_atomic(tile_grid(rows, [m.label for m in methods], cols, scale=scale), out / "grid.png")


def _write(out: Path, results: dict) -> None:
    from suite.files import write_text_atomic

    header, rows = table_rows(results)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    note = (f"\nFeatures: {results['features']}; real images: {results['real']['n']} from {results['real']['folder']}"
            f"{' (' + str(results['real']['skipped']) + ' broken file(s) skipped)' if results['real']['skipped'] else ''}"
            f". FD and KID: lower is closer to the real images (KID unbiased, on the whole sets, ± the jackknife's "
            f"standard error over the generated images).\n")
    write_text_atomic(out / "table.md", "\n".join(md) + "\n" + note)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(out / "table.csv", buf.getvalue())
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, sort_keys=True, default=str))
    log.info("eval: wrote %s, table.csv and results.json\n%s", out / "table.md", "\n".join(md))
