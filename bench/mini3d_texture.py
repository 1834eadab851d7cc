"""``python -m bench.mini3d_texture --output DIR``: do the exported meshes keep the pattern? (issue 24, part 1)

For each known object of :mod:`bench.mini3d` (a ground-truth reference view -> stage 2 -> meshes; the runs are
shared with ``bench.mini3d --output DIR`` and reused when found), the stage-2 checkpoint is exported again at
several texture sizes (``launch.py 3d --export-only CKPT --texture-size N``) and, at 256 px, with fewer of the
colours from images (``--side-views 0``: the reference projected, no Zero-1-to-3 side views; with
``--no-project-reference`` too: the NeRF's colours alone, the export before 2026-12-06), and from the five held-out
views (NeRF frame, :data:`bench.mini3d.HELD_OUT`) it renders, with :func:`generators3d.raster.render_mesh`:

* the textured ``model.glb`` (its UV layer and embedded texture, read back through trimesh),
* the vertex colours (``model.ply``: the surface and colours of ``model-vertex-colors.glb``),
* and the NeRF itself (volume rendering of the checkpoint).

``--seed S``: the side views' Zero-1-to-3 seed (their exports in folders ending ``-sS``, results in
``texture-sS.*``; 0: no suffix).

The meshes are drawn unlit (``shading=False``): the NeRF's colours already hold the lighting of the views it was
fitted to, as its own renders do.

Each is compared with the renderer's ground truth of the object from the same views: PSNR (whole 64 px image,
same background), silhouette IoU, and whether the judge reads the right pattern (stripes / dots / plain; per view,
and the majority of the five). Writes ``texture.json``, ``texture.md`` and ``texture.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench.mini3d_texture")

SIZES = (64, 128, 256, 512)
SIDE_VIEWS = 3  # the export's default (ExportConfig.side_views)
# (column, folder, texture size, reference projected, Zero-1-to-3 side views): the default export at each texture
# size, then at 256 px the colours without the side views and from the NeRF alone (the export before 2026-12-06)
EXPORTS = tuple((f"texture {s}", f"texture-{s}", s, True, SIDE_VIEWS) for s in SIZES) + (
    ("reference only", "colours-reference", 256, True, 0), ("NeRF colours", "colours-nerf", 256, False, 0))
COLUMNS = ["nerf", "NeRF colours", "reference only", "vertex colours"] + [f"texture {s}" for s in SIZES]


def _load_mesh(path: Path, transform: dict):
    """Vertices (NeRF frame), faces, and the UV + texture (the textured GLB) or the vertex colours (the PLY, the
    same surface and colours as ``model-vertex-colors.glb``)."""
    import trimesh

    from bench.miniworld.geometry import from_export

    m = trimesh.load(path, force="mesh", process=False)
    v = from_export(np.asarray(m.vertices), transform)
    if path.suffix == ".glb":
        return dict(vertices=v, faces=np.asarray(m.faces), uv=np.asarray(m.visual.uv),
                    texture=m.visual.material.baseColorTexture)
    return dict(vertices=v, faces=np.asarray(m.faces), colors=np.asarray(m.visual.vertex_colors)[:, :3] / 255.0)


def _scores(rgb: np.ndarray, mask: np.ndarray, truth: torch.Tensor, truth_mask: torch.Tensor, pattern: str,
            judge) -> dict:
    """PSNR of ``rgb [B, 3, H, W]`` against ``truth``, the IoU of its silhouettes ``mask [B, H, W]`` (bool) against
    ``truth_mask``, and the judge's pattern reading."""
    from suite.miniworld.views import iou, psnr

    x = torch.from_numpy(rgb).float()
    reads = judge.predict(x)["pattern"]
    right = [r == pattern for r in reads]
    return {"psnr": float(psnr(x, truth).mean()), "iou": float(iou(torch.from_numpy(mask), truth_mask).mean()),
            "pattern_views": sum(right), "pattern_majority": sum(right) > len(right) / 2, "reads": reads}


def held_out_truth(obj, framing, size: int = 64):
    """The held-out views' cameras in the NeRF frame (:data:`bench.mini3d.HELD_OUT`) and the renderer's truth from
    them: ``(cams, rgb [B, 3, size, size] on the world's backdrop, as the judge saw in training, masks [B, size,
    size])``. The truth is drawn from the world cameras that see the object as ``cams`` see it moved into the NeRF
    frame (:func:`bench.miniworld.geometry.world_cameras`: a dolly; the zoom of ``framed_cameras``, used here before
    2026-12-07, has another perspective where the framing's scale is not 1), its masks by one ray through each
    pixel's centre, as the meshes' silhouettes are tested (:func:`bench.miniworld.geometry.mesh_silhouettes`)."""
    from bench.mini3d import HELD_OUT
    from bench.miniworld.geometry import render_masks, world_cameras
    from generators3d.cameras import orbit_cameras
    from suite.miniworld.render import render
    from suite.miniworld.world import BACKGROUND

    cams = orbit_cameras([v[0] for v in HELD_OUT], [v[1] for v in HELD_OUT], framing.distance, 20.0)
    world = world_cameras(cams, framing)
    return cams, render(obj, world, size=size, background=BACKGROUND).rgb, render_masks(obj, world, size)


def measure(case, folder: Path, judge, seed: int = 0) -> dict:
    from bench.mini3d import known_object
    from bench.miniworld.geometry import mesh_silhouettes
    from generators3d import ThreeDConfig, run_text_to_3d
    from generators3d.nerf import Background
    from generators3d.raster import render_mesh
    from generators3d.render import render as render_nerf
    from generators3d.stage import load_checkpoint
    from generators3d.texture import side_turns, side_views_keep
    from suite.miniworld.views import reference_framing
    from suite.miniworld.world import BACKGROUND, make_object

    shape, colour, pattern, el, az = case
    known_object(case, folder, {})  # the stage-2 run (reused when finished)
    obj = make_object(shape, colour, pattern)
    framing = reference_framing(obj, el, az, size=256)
    cams, truth_rgb, truth_mask = held_out_truth(obj, framing)
    ckpt = folder / "run" / "checkpoints" / "stage2-zero123.safetensors"
    field, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        nerf = render_nerf(field, Background(BACKGROUND), cams, 64, chunk=8192)
    res = {"case": f"{colour} {shape}, {pattern}", "pattern": pattern,
           "nerf": _scores(nerf["rgb"].permute(0, 3, 1, 2).clamp(0, 1).numpy(),
                           nerf["opacity"][..., 0].numpy() > 0.5, truth_rgb, truth_mask, pattern, judge)}
    renders = {"truth": truth_rgb.numpy(), "nerf": nerf["rgb"].permute(0, 3, 1, 2).clamp(0, 1).numpy()}
    for name, sub, size, project, sides in EXPORTS:
        out = folder / (f"{sub}-s{seed}" if seed else sub)
        cfg = ThreeDConfig(preset="mini", export_only=str(ckpt), output=str(out), preview_frames=1,
                           texture_size=size, project_reference=project, side_views=sides, seed=seed)
        export = cfg.resolved().export
        want = {"reference_projected": project, "side_views": sides,  # how this version colours that export
                "side_views_keep_reference": side_views_keep(export), "side_view_turns": side_turns(export)}
        summary = out / "summary.json"
        if not (summary.is_file() and {k: json.loads(summary.read_text()).get("colours", {}).get(k)
                                       for k in want} == want):  # missing, or made by another version's colours
            if out.exists() or out.is_symlink():
                check_replaceable(out)
                shutil.rmtree(out)
            run_text_to_3d(cfg)
        transform = json.loads(summary.read_text())["export_transform"]
        files = [(name, "model.glb")] + ([("vertex colours", "model.ply")] if name == "texture 256" else [])
        for label, file in files:
            mesh = _load_mesh(out / "mesh" / file, transform)
            rgb, _ = render_mesh(cams=cams, size=64, shading=False, **mesh)
            # silhouettes by the pixel centres (a majority of render_mesh's 2 x 2 sub-pixels drops the pixels an
            # edge halves)
            silhouettes = mesh_silhouettes(mesh["vertices"], mesh["faces"], cams, 64)
            res[label] = _scores(rgb, silhouettes, truth_rgb, truth_mask, pattern, judge)
            renders[label] = rgb
    res["_renders"] = renders
    return res


def check_replaceable(out: Path) -> None:
    """An export folder of an earlier version is removed and made again only when it is one of the suite's own 3D
    runs (its marker says so, or it is a 3D run written before runs were marked); anything else found under that
    name (a user's files, a link) is refused with one sentence (``ValueError``) and left as it is."""
    from generators3d.run import _is_3d_run
    from suite.files import claim_run_folder

    if out.is_dir() and not out.is_symlink():
        try:
            claim_run_folder(out, "3d", recognise=_is_3d_run, write=False)  # only checks: writes nothing
            return
        except ValueError:
            pass
    raise ValueError(f"the folder {str(out)!r}, where this benchmark makes an export again, is not one of the suite's "
                     f"3D runs, so it is not removed: move it away, or choose another --output")


def _picture(results: list, path: Path) -> None:
    from PIL import Image

    cols = ["truth"] + COLUMNS
    tile, view = 96, 1
    grid = Image.new("RGB", (tile * len(cols), tile * len(results)), (255, 255, 255))
    for i, r in enumerate(results):
        for j, c in enumerate(cols):
            arr = (np.clip(r["_renders"][c][view].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
            grid.paste(Image.fromarray(arr).resize((tile, tile), Image.NEAREST), (j * tile, i * tile))
    grid.save(path)


def markdown(results: list) -> str:
    cols = COLUMNS
    lines = ["| object | " + " | ".join(f"{c}: PSNR / IoU / pattern" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in results:
        cells = [f"{r[c]['psnr']:.1f} / {r[c]['iou']:.3f} / {r[c]['pattern_views']}/5" for c in cols]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    patterned = [r for r in results if r["pattern"] != "plain"]
    lines.append("| patterned objects read right (majority of 5 views) | " + " | ".join(
        f"{sum(r[c]['pattern_majority'] for r in patterned)} of {len(patterned)}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini3d_texture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="the folder of bench.mini3d (its known-object runs are reused)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the side views' Zero-1-to-3 seed (default: %(default)s)")
    args = p.parse_args(argv)
    from bench import claim_output
    from bench.mini3d import EARLIER_OUTPUT, KIND, KNOWN, case_files

    folder = claim_output(args.output, KIND, EARLIER_OUTPUT)  # bench.mini3d's folder; a user's: one sentence
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from suite.cli import quiet_libraries
    from suite.miniworld import assets

    quiet_libraries()
    torch.set_num_threads(args.threads)
    judge = assets.load_judge()
    try:  # e.g. a run of another geometry in --output, a folder of the user's in the way of an export: one sentence
        results = [measure(c, case_files(folder, c[0])[0], judge, args.seed) for c in KNOWN]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = f"texture-s{args.seed}" if args.seed else "texture"
    _picture(results, folder / f"{stem}.png")
    (folder / f"{stem}.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "_renders"} for r in results],
                                                    indent=1))
    (folder / f"{stem}.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
