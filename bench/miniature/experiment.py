"""The miniature experiment, top to bottom: train a base model on the open world, adapt it to the unlabeled
porcelain domain by every method, sample, measure, report (paper Table 1 / Fig. 2 in miniature).

Methods, all from the same base (paper Sec. 4.4, 4.5):

* ``base``: the base model alone, prompted "a photo of porcelain, a red circle on the left" (CFG, w = w0);
* ``fine-tuning@N``: vanilla full fine-tuning of the UNet on the domain images with the template caption
  "a photo of porcelain" for N steps (several N: the forgetting curve), sampled with its own CFG;
* ``fine-tuning@N + rect.``: the same UNet used as a control term with the BASE model's unconditional prediction
  (unconditional guidance rectification, Sec. 4.5, as applied to community fine-tunes);
* ``LoRA``: fine-tuning of rank-4 LoRA matrices on every attention projection instead of the full UNet;
* ``ours@N``: a null-text domain UNet (copy of the base, ``E`` from optimised text features ``F_T``, Sec. 3.3,
  then N steps of training on the images alone) combined with the untouched base by multi-guidance
  (:class:`suite.guidance.MultiGuidance` via :class:`suite.pipeline.InDomainPipeline`, automatic weights, w0);
* ``ours w/o rect.``: the same, but the unconditional prediction ``eps_0`` comes from the domain model itself
  instead of the base (no rectification).

Every method is sampled with the same sampler (DPM-Solver++), steps, seeds and prompts; the metrics
(:mod:`bench.miniature.metrics`) only see images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .world import COLOURS, DOMAIN_NAME, DOMAIN_TEMPLATE, POSITIONS, SHAPES, control_prompt, domain_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """Every knob of a run, with the full run's values. :data:`QUICK` is the CI preset."""

    seed: int = 0
    width: int = 64                      # UNet width (block_out_channels = (width, width))
    base_steps: int = 2500               # base model training steps on the open world
    base_batch: int = 32
    base_lr: float = 1e-3
    p_uncond: float = 0.1                # caption dropout (base and fine-tuning)
    n_domain: int = 2000                 # unlabeled porcelain training images
    adapt_steps: tuple = (100, 300, 1000)  # fine-tuning / domain-model checkpoints (the forgetting curve)
    adapt_batch: int = 32
    adapt_lr: float = 2.5e-4             # the same for vanilla fine-tuning and the domain model
    lora: bool = True                    # run the LoRA baseline
    lora_rank: int = 4
    lora_lr: float = 1e-3                # LoRA's usual 4-10x higher rate than full fine-tuning
    text_init_steps: int = 100           # F_T optimisation (paper: 100 steps)
    text_init_lr: float = 5e-3
    sample_steps: int = 15               # DPM-Solver++ steps
    w0: float = 7.0                      # CFG scale / multi-guidance w0 (paper: 7)
    n_prompts: int = 48                  # text-guided prompts (all 4 x 3 x 4 combinations)
    images_per_prompt: int = 2
    n_uncond: int = 64                   # unconditional in-domain samples per method
    metric_train: int = 800              # real images per class for the metric networks
    metric_steps: int = 250
    grid_prompts: int = 8

    def fingerprint(self, *fields: str) -> str:
        data = {k: getattr(self, k) for k in fields}
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


FULL = Config()
# The CI run: the SAME base model as the full run (loaded from bench/miniature/assets when present, see
# docs/miniature.md), shorter adaptation, no LoRA, fewer prompts and samples.
QUICK = replace(FULL, n_domain=500, adapt_steps=(40, 150), adapt_batch=16, lora=False, text_init_steps=20,
                sample_steps=8, n_prompts=12, images_per_prompt=2, n_uncond=24, metric_train=300, metric_steps=120,
                grid_prompts=6)

ASSETS = Path(__file__).resolve().parent / "assets"

_BASE_FIELDS = ("seed", "width", "base_steps", "base_batch", "base_lr", "p_uncond")
_ADAPT_FIELDS = _BASE_FIELDS + ("n_domain", "adapt_steps", "adapt_batch", "adapt_lr")


def prompt_set(n: int) -> list[tuple[str, str, str]]:
    """``n`` (colour, shape, position) targets: all 48 combinations in a fixed interleaved order, so any
    prefix covers every colour, shape and position about equally."""
    combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    order = sorted(range(len(combos)), key=lambda i: ((i * 29) % len(combos)))
    return [combos[i] for i in order[:n]]


@dataclass
class Method:
    name: str
    params: str                                   # trainable parameters, as the paper's "#param." column
    uncond: Callable[[int, int], np.ndarray]      # (n, seed) -> uint8 images, unconditional in-domain
    text: Callable[[str, int, int], np.ndarray]   # (prompt, n, seed) -> uint8 images, text-guided in-domain
    note: str = ""


@dataclass
class Result:
    name: str
    params: str
    fd: float
    domain: float
    diversity: float
    align: dict
    text_domain: float
    text_fd: float
    note: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    config: dict
    results: list[Result]
    reference: dict
    timings: dict = field(default_factory=dict)


def _state_path(folder: Path, name: str, fingerprint: str) -> Path:
    return folder / f"{name}-{fingerprint}.safetensors"


def _save_state(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _load_state(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)), strict=True)


def run(config: Config, output: str | os.PathLike, progress: bool = True, threads: int | None = None) -> Report:
    """The whole experiment; writes ``table.md``, ``results.json`` and ``grid.png`` to ``output`` and caches the
    trained models in ``output/models`` (a rerun with the same settings reuses them). ``threads`` sets torch's
    CPU threads for the run (restored afterwards)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(config, output, progress)
    finally:
        torch.set_num_threads(previous)


def _run(config: Config, output: str | os.PathLike, progress: bool) -> Report:
    from suite.denoisers import UNetDenoiser
    from suite.nulltext import DomainModel, capture_E, convert_to_nulltext
    from suite.pipeline import Control, InDomainPipeline
    from suite.text import encode_prompts

    from . import models as M
    from . import train as T
    from .metrics import MetricNets, control_accuracy
    from .report import write_outputs

    # 1. Setup: output folders, timings.
    out = Path(output)
    cache = out / "models"
    cache.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    # 2. Base model: UNet + CLIP text encoder trained together on the open world (cached).
    parts = M.build_components(config.seed, config.width)
    vae, tokenizer, text_encoder = parts["vae"], parts["tokenizer"], parts["text_encoder"]
    base_fp = config.fingerprint(*_BASE_FIELDS)
    base_path, te_path = _state_path(cache, "base-unet", base_fp), _state_path(cache, "base-text", base_fp)
    asset, te_asset = _state_path(ASSETS, "base-unet", base_fp), _state_path(ASSETS, "base-text", base_fp)
    if base_path.exists() and te_path.exists():
        _load_state(parts["unet"], base_path)
        _load_state(text_encoder, te_path)
    elif asset.exists() and te_asset.exists():
        _load_state(parts["unet"], asset)
        _load_state(text_encoder, te_asset)
        timings["base model from assets"] = 1.0
    else:
        T.train_base(parts, config.base_steps, config.base_batch, config.base_lr, config.seed, config.p_uncond,
                     progress)
        _save_state(parts["unet"], base_path)
        _save_state(text_encoder, te_path)
    base_unet = parts["unet"].eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    train_sched = parts["scheduler"]
    lap("base model")

    # 3. The domain: unlabeled porcelain images (a seed no metric network uses).
    dom_images, _ = domain_images(config.n_domain, config.seed + 1000)
    template = encode_prompts(tokenizer, text_encoder, [DOMAIN_TEMPLATE])
    empty = encode_prompts(tokenizer, text_encoder, [""])
    adapt_fp = config.fingerprint(*_ADAPT_FIELDS)
    steps_total = max(config.adapt_steps)

    # 4. Vanilla fine-tuning with the template caption, checkpoints along the way (the forgetting curve).
    ft_units: dict[int, torch.nn.Module] = {}
    paths = {n: _state_path(cache, f"finetune-{n}", adapt_fp) for n in config.adapt_steps}
    if all(p.exists() for p in paths.values()):
        for n, p in paths.items():
            ft_units[n] = M.clone(base_unet)
            _load_state(ft_units[n], p)
    else:
        unet = M.clone(base_unet).requires_grad_(True)
        ft_units = T.finetune(unet, template, empty, vae, train_sched, dom_images, steps_total, config.adapt_batch,
                              config.adapt_lr, config.seed + 1, config.adapt_steps, config.p_uncond,
                              "fine-tuning", progress)
        for n, p in paths.items():
            _save_state(ft_units[n], p)
    lap("fine-tuning")

    # 5. LoRA fine-tuning (same data, caption and steps; only the LoRA matrices train).
    lora_unet, lora_params = None, 0
    if config.lora:
        lora_unet = M.clone(base_unet)
        lora_params = M.add_lora(lora_unet, config.lora_rank, seed=config.seed)
        lora_path = _state_path(cache, f"lora-{steps_total}",
                                config.fingerprint(*_ADAPT_FIELDS, "lora_rank", "lora_lr"))
        if lora_path.exists():
            _load_state(lora_unet, lora_path)
        else:
            T.finetune(lora_unet, template, empty, vae, train_sched, dom_images, steps_total, config.adapt_batch,
                       config.lora_lr, config.seed + 2, (), config.p_uncond, "LoRA", progress)
            _save_state(lora_unet, lora_path)
        lora_unet.eval().requires_grad_(False)
        lap("LoRA")

    # 6. Ours: F_T optimised from "a photo of porcelain" (Sec. 3.3), E captured from it, the copy converted to a
    #    null-text UNet (Eq. 5) and trained on the images alone, checkpoints as for fine-tuning.
    dm_fp = config.fingerprint(*_ADAPT_FIELDS, "text_init_steps", "text_init_lr")
    dm_paths = {n: cache / f"domain-{n}-{dm_fp}" for n in config.adapt_steps}
    domain_models: dict[int, DomainModel] = {}
    if all((p / "config.json").exists() for p in dm_paths.values()):
        domain_models = {n: DomainModel.from_pretrained(p) for n, p in dm_paths.items()}
    else:
        F_T = T.optimize_text_features(base_unet, template, vae, train_sched, dom_images, config.text_init_steps,
                                       config.adapt_batch, config.text_init_lr, config.seed + 3, progress)
        unet = M.clone(base_unet)
        convert_to_nulltext(unet, capture_E(unet, F_T, seed=config.seed))
        unet.requires_grad_(True)
        saved = T.finetune(unet, None, None, vae, train_sched, dom_images, steps_total, config.adapt_batch,
                           config.adapt_lr, config.seed + 1, config.adapt_steps, desc="domain model (ours)",
                           progress=progress)
        for n, u in saved.items():
            from suite.nulltext import DomainMetadata

            domain_models[n] = DomainModel(u, DomainMetadata(domain=DOMAIN_NAME, base_model="miniature-base",
                                                             prompt=DOMAIN_TEMPLATE, training_steps=n))
            domain_models[n].save_pretrained(dm_paths[n])
    lap("domain model (ours)")

    # 7. Metric networks, trained on held-out real images only.
    metrics = MetricNets.train(config.metric_train, max(config.n_uncond, 64), config.metric_steps, config.seed + 5000)
    lap("metric networks")

    # 8. The methods as samplers (every one through InDomainPipeline, same scheduler, steps and seeds).
    sched = M.sampling_scheduler()

    def pipe(unet, domain_model=None):
        return InDomainPipeline(vae, text_encoder, tokenizer, unet, sched, domain_model=domain_model)

    common = dict(num_inference_steps=config.sample_steps, height=32, width=32, output_type="np", progress=False)

    def run_pipe(p, n, seed, **kw):
        images = p(num_images=n, seed=seed, **common, **kw).images
        return (np.clip(np.asarray(images), 0, 1) * 255 + 0.5).astype(np.uint8)

    def cfg_method(name, unet, params, note=""):
        p = pipe(unet)
        return Method(name, params,
                      uncond=lambda n, s: run_pipe(p, n, s, prompt=DOMAIN_TEMPLATE, control_weight=config.w0),
                      text=lambda prompt, n, s: run_pipe(p, n, s, prompt=prompt, control_weight=config.w0), note=note)

    def rectified(name, unet, params, note=""):
        p = pipe(base_unet)
        return Method(name, params,
                      uncond=lambda n, s: run_pipe(p, n, s, controls=[Control(DOMAIN_TEMPLATE, config.w0, unet=unet)]),
                      text=lambda prompt, n, s: run_pipe(p, n, s, controls=[Control(prompt, config.w0, unet=unet)]),
                      note=note)

    def ours(name, dm, rectify=True, note="", fixed=None):
        p = pipe(base_unet, dm)
        params = f"{M.count_parameters(dm.unet) / 1e6:.2f}M"
        if fixed is not None:  # fixed w_d = w_c (the authors' released example uses 2.5 / 2.5)
            return Method(name, params, uncond=lambda n, s: run_pipe(p, n, s, domain_weight=fixed),
                          text=lambda prompt, n, s: run_pipe(p, n, s, prompt=prompt, domain_weight=fixed,
                                                             control_weight=fixed), note=note)
        if rectify:
            return Method(name, params, uncond=lambda n, s: run_pipe(p, n, s, w0=config.w0),
                          text=lambda prompt, n, s: run_pipe(p, n, s, prompt=prompt, w0=config.w0), note=note)
        domain_eps = UNetDenoiser(dm.unet, None, prediction_type=sched.config.prediction_type,
                                  alphas_cumprod=sched.alphas_cumprod, name="uncond (domain model)")

        def unrectified(prompt):
            g = p.build_guidance(prompt=prompt, height=32, width=32, w0=config.w0)
            g.base = domain_eps  # eps_0 from the domain model instead of the base: no rectification
            return g

        return Method(name, params, uncond=lambda n, s: run_pipe(p, n, s, guidance=unrectified(None)),
                      text=lambda prompt, n, s: run_pipe(p, n, s, guidance=unrectified(prompt)), note=note)

    full_params = f"{M.count_parameters(base_unet) / 1e6:.2f}M"
    methods = [cfg_method("Base model (prompted)", base_unet, "0", "no domain data")]
    methods += [cfg_method(f"Fine-tuning @{n}", ft_units[n], full_params) for n in config.adapt_steps]
    methods += [rectified(f"Fine-tuning @{steps_total} + rect.", ft_units[steps_total], full_params,
                          "base's eps_0 (Sec. 4.5)")]
    if lora_unet is not None:
        methods += [cfg_method(f"Fine-tuning + LoRA @{steps_total}", lora_unet, f"{lora_params / 1e6:.3f}M")]
    methods += [ours(f"Ours @{n}", domain_models[n]) for n in config.adapt_steps]
    methods += [ours(f"Ours @{steps_total} w/o rect.", domain_models[steps_total], rectify=False,
                     note="domain model's eps_0")]
    methods += [ours(f"Ours @{steps_total}, w_d = w_c = 2.5", domain_models[steps_total], fixed=2.5,
                     note="fixed weights of the authors' example")]

    # 9. Sample and measure every method on the same prompts and seeds.
    targets = prompt_set(config.n_prompts)
    results: list[Result] = []
    samples: dict[str, dict] = {}
    from tqdm.auto import tqdm

    for method in tqdm(methods, desc="sampling + metrics", disable=not progress, leave=False):
        t0 = time.perf_counter()
        uncond = method.uncond(config.n_uncond, config.seed + 7)
        text_images, text_targets = [], []
        for j, target in enumerate(targets):
            text_images.append(method.text(control_prompt(*target), config.images_per_prompt, config.seed + 100 + j))
            text_targets += [target] * config.images_per_prompt
        text_images = np.concatenate(text_images)
        results.append(Result(
            name=method.name, params=method.params, fd=metrics.fd(uncond), domain=metrics.domain_score(uncond),
            diversity=metrics.diversity(uncond), align=control_accuracy(text_images, text_targets),
            text_domain=metrics.domain_score(text_images), text_fd=metrics.fd(text_images), note=method.note,
            seconds=round(time.perf_counter() - t0, 1)))
        samples[method.name] = {"uncond": uncond, "text": text_images[:: config.images_per_prompt]}
    lap("sampling + metrics")

    # 10. Reference rows (real data through the same metrics) and the outputs.
    ref_dom, ref_attrs = domain_images(max(config.n_uncond, 64), config.seed + 9000)
    reference = {
        "real porcelain: FD": metrics.fd(ref_dom), "real porcelain: domain": metrics.domain_score(ref_dom),
        "real porcelain: diversity": metrics.diversity(ref_dom),
        "real porcelain: geometry accuracy": control_accuracy(ref_dom, [(a.colour, a.shape, a.position)
                                                                        for a in ref_attrs])["all"],
        **{f"metric nets held-out accuracy: {k}": v for k, v in metrics.holdout_accuracy.items()},
    }
    report = Report(config=asdict(config), results=results, reference=reference, timings=timings)
    write_outputs(report, samples, targets, out, config.grid_prompts)
    return report


def export_base(run_dir: str | os.PathLike, config: Config = FULL) -> list[Path]:
    """Copy the base model trained by a run into :data:`ASSETS` (float16 safetensors, a few MB), so that
    ``--quick`` (the same base settings) starts from it instead of training it."""
    from safetensors.torch import load_file, save_file

    fp = config.fingerprint(*_BASE_FIELDS)
    ASSETS.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("base-unet", "base-text"):
        src = _state_path(Path(run_dir) / "models", name, fp)
        if not src.exists():
            raise ValueError(f"{src} does not exist: run the full experiment with --output {run_dir} first")
        dst = _state_path(ASSETS, name, fp)
        tmp = dst.with_name(f".{dst.name}.tmp")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}, str(tmp))
        os.replace(tmp, dst)
        written.append(dst)
    return written
