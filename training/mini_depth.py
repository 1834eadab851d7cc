"""The mini world's monocular depth estimator (a step of ``python -m training.miniworld``), for the 3D flow's
reference-depth loss (``--depth auto``; docs/3d-measurements.md, "Reference depth").

Data: random objects of every shape (a third with the porcelain glaze), each seen from one random view (elevation
-10..60 degrees, any azimuth), framed as the 3D flow frames its reference view
(:func:`suite.miniworld.views.reference_framing`: the object centred, filling 80% of the frame) and rendered on
white at 64 px, with the renderer's exact depth and silhouette.

Model: transformers' ``GLPNForDepthEstimation`` (SegFormer's hierarchical encoder and GLPN's light decoder) at the
mini world's size, so that :func:`suite.depth.load_depth_estimator` loads it as it loads a real estimator from the
hub. It outputs depth (larger = farther), in no particular unit: the loss is ``1 - Pearson correlation`` with the
true depth over the object's pixels, the relative loss the 3D flow applies it with (blind to scale and offset).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # run as a tool: transformers' import-time notes stay out of its log, as launch.py keeps
    # them out of every subcommand's ("install torchvision", which breaks diffusers beside this torch: README)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from suite.depth import pearson
from suite.files import atomic_dir
from suite.miniworld.assets import depth_views

from .mini_models import cosine_lr, log_progress, optimise, run_chunks

log = logging.getLogger("training")

IMAGE_SIZE = 64
SIZES = {"full": dict(objects=3000, steps=3000), "quick": dict(objects=40, steps=10)}  # per build size (miniworld's)
GLPN_CONFIG = dict(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1],
                   hidden_sizes=[16, 32, 64, 96], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                   num_attention_heads=[1, 1, 2, 4], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32,
                   max_depth=10, head_in_index=-1)


def _depth_chunk(args):
    seed, n = args
    torch.set_num_threads(1)
    return depth_views(n, seed, IMAGE_SIZE)


def render_depth_set(n_objects: int, seed: int, workers: int = 2) -> dict:
    """``images [n, 64, 64, 3] uint8`` (on white), ``depth [n, 64, 64] float32`` (distance along each pixel's ray;
    0 off the object) and ``mask [n, 64, 64] bool`` (the object's pixels)."""
    chunk = 100
    jobs = [(seed * 100019 + i, min(chunk, n_objects - i * chunk)) for i in range(math.ceil(n_objects / chunk))]
    parts = run_chunks(_depth_chunk, jobs, workers, name="render depth views")
    return dict(images=np.concatenate([p[0] for p in parts]), depth=np.concatenate([p[1] for p in parts]),
                mask=np.concatenate([p[2] for p in parts]))


def pixel_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> the model's input ``[B, 3, H, W]`` in [0, 1] (GLPN's image processor rescales by
    1/255 and does not normalise)."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float() / 255.0


def train_depth(data: dict, steps: int, batch: int = 32, lr: float = 2e-3, seed: int = 0, ema_decay: float = 0.995):
    """A ``GLPNForDepthEstimation`` of :data:`GLPN_CONFIG` trained on :func:`render_depth_set` data (horizontal flips
    as augmentation); returns its EMA copy, in eval mode."""
    from transformers import GLPNConfig, GLPNForDepthEstimation

    torch.manual_seed(seed)
    model = GLPNForDepthEstimation(GLPNConfig(**GLPN_CONFIG)).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    images = pixel_input(data["images"])
    depth, mask = torch.from_numpy(data["depth"]), torch.from_numpy(data["mask"])
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - 1, steps, lr)
        pick = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x, d, m = images[pick], depth[pick], mask[pick]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        d, m = torch.where(flip[:, None, None], d.flip(-1), d), torch.where(flip[:, None, None], m.flip(-1), m)
        loss = 1.0 - pearson(model(pixel_values=x).predicted_depth, d, m).mean()
        optimise(opt, loss, params, [(ema, model)], step - 1, ema_decay)
        log_progress("depth", step, steps, t0, float(loss))
    recalibrate_batch_norm(ema, images)
    return ema.eval()


@torch.no_grad()
def recalibrate_batch_norm(model, images: torch.Tensor, batch: int = 256) -> None:
    """Set the batch-norm statistics of ``model`` (GLPN's decoder has some) to their averages over ``images``, every
    other layer in eval mode (stochastic depth off). An EMA copy moves only the parameters: its running statistics
    are the initial ones until this (SWA's ``update_bn``)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    for i in range(0, images.shape[0], batch):
        model(pixel_values=images[i:i + batch])
    model.eval()


def save_depth_model(model, folder) -> None:
    """The model and its image processor (``AutoImageProcessor`` / ``AutoModelForDepthEstimation`` load both)."""
    from transformers import GLPNImageProcessor

    model.save_pretrained(folder)
    GLPNImageProcessor(do_resize=True, size_divisor=32, do_rescale=True).save_pretrained(folder)


def build_depth(stage: Path, work: Path, n_objects: int, steps: int, seed: int = 0) -> bool:
    """The build's depth step: its renders cached in ``work`` (``data-depth-<objects>-<seed>.npz``), the model in
    ``stage / "depth"``; returns whether the model was already there."""
    folder = stage / "depth"
    made = {"objects": n_objects, "steps": steps, "seed": seed}
    if (folder / "config.json").is_file():
        try:
            recorded = json.loads((folder / MADE_FILE).read_text())
        except (OSError, ValueError):
            recorded = None  # a model of a build before it was recorded: the build's version check vouches for it
        if recorded in (None, made):
            return True
        # a quick build's model (10 steps) was installed by a full `mini_depth` run as if it were the full one
        log.info("depth: the cached model was trained with %s, this build asks for %s: training it again", recorded, made)
    data_path = work / f"data-depth-{n_objects}-{seed}.npz"
    if not data_path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        data = render_depth_set(n_objects, seed)
        tmp = data_path.with_name(data_path.stem + ".tmp.npz")
        np.savez(tmp, **data)
        tmp.rename(data_path)
    with np.load(data_path) as f:
        data = {k: f[k] for k in f.files}
    model = train_depth(data, steps, seed=seed)
    with atomic_dir(folder) as tmp:
        save_depth_model(model, tmp)
        (tmp / MADE_FILE).write_text(json.dumps(made))
    return False


MADE_FILE = "build.json"  # beside the cached depth model: the objects, steps and seed it was trained with


def add_to_models(output: Path, work: Path, size: str = "full", seed: int | None = None) -> dict:
    """Build the depth step (cached in ``work``, locked as the build locks it) and add its model to a finished mini
    world in ``output``: the ``depth`` folder, its seconds and held-out correlation in ``MANIFEST.json`` (the other
    models untouched). ``seed``: the world's own (its manifest's) unless given."""
    import json
    import shutil

    from suite.files import output_lock
    from suite.miniworld import assets

    manifest = json.loads((output / assets.MANIFEST).read_text())
    seed = int(manifest.get("seed", 0)) if seed is None else seed
    t0 = time.time()
    with output_lock(work, "--work"):  # a build writing the same cache would undo this step, and it that one
        cached = build_depth(work / "stage", work, SIZES[size]["objects"], SIZES[size]["steps"], seed)
    seconds = time.time() - t0
    if not cached or "depth" not in manifest["seconds"]:  # trained now: its time, not an earlier model's
        manifest["seconds"]["depth"] = seconds
    # measured before the swap: a kill during the measurement (20 s) left the new model beside the old manifest, and
    # every mini command then refused the models as corrupt; now the swap and the manifest follow each other
    manifest["quality"].update(assets.measure_depth(work / "stage"))
    with atomic_dir(output / "depth") as tmp:
        shutil.copytree(work / "stage" / "depth", tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MADE_FILE))
    info = {k: v for k, v in manifest.items() if k not in ("files", "total_bytes")}
    return assets.write_manifest(output, info)


def main(argv=None) -> int:
    import argparse
    import logging
    import sys

    from suite.miniworld.assets import default_dir

    p = argparse.ArgumentParser(prog="python -m training.mini_depth",
                                description="Train the mini world's depth estimator and add it to the built models "
                                            "(the step `python -m training.miniworld` runs in a full build).")
    p.add_argument("--output", default=str(default_dir()), help="the built mini world (default: the shipped folder)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "in-domain-suite" / "mini-build"),
                   help="the build's cache (renders and the trained model)")
    p.add_argument("--size", choices=list(SIZES), default="full")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    out = add_to_models(Path(args.output), Path(args.work), args.size)
    print(json.dumps({k: out["quality"][k] for k in ("depth_corr", "depth_corr_darkness")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
