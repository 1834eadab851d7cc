"""Outputs of the miniature: a markdown table in the shape of the paper's Table 1, ``results.json`` and an image
grid (rows: methods; columns: prompts, then unconditional samples). Every file is written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from suite.pipeline import save_image_atomic


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def markdown_table(report) -> str:
    """Table 1 in miniature: unconditional in-domain generation (FD, domain score, diversity) and text-guided
    in-domain generation (control accuracy by geometry, domain score, FD)."""
    lines = [
        "| Method | #param. | Uncond. FD↓ | Uncond. domain↑ | Uncond. div. | Text align.↑ | colour | shape | position "
        "| all three | Text domain↑ | Text FD↓ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        a = r.align
        lines.append(
            f"| {r.name} | {r.params} | {r.fd:.1f} | {r.domain:.2f} | {r.diversity:.2f} | **{a['align']:.2f}** | "
            f"{a['colour']:.2f} | {a['shape']:.2f} | {a['position']:.2f} | {a['all']:.2f} | {r.text_domain:.2f} | "
            f"{r.text_fd:.1f} |")
    ref = report.reference
    cfg = report.config
    lines += [
        "",
        f"Reference (real held-out porcelain through the same metrics): FD {ref['real porcelain: FD']:.1f}, "
        f"domain {ref['real porcelain: domain']:.2f}, diversity {ref['real porcelain: diversity']:.2f}, "
        f"geometry accuracy {ref['real porcelain: geometry accuracy']:.2f}.",
        "Metric networks on fresh real images: " + ", ".join(
            f"{k.split(': ')[1]} {v:.2f}" for k, v in ref.items() if k.startswith("metric nets")) + ".",
        "",
        f"Text align. = mean over colour, shape and position of the fraction of text-guided images whose measured "
        f"attribute matches the prompt; all three = fraction with all three right ({cfg['n_prompts']} prompts x "
        f"{cfg['images_per_prompt']} images); domain = mean P(porcelain) of the "
        f"domain classifier; FD = Fréchet distance to real porcelain in the feature network's space "
        f"({cfg['n_uncond']} unconditional samples); div. = mean pairwise feature distance / real data's. "
        f"Sampling: DPM-Solver++ {cfg['sample_steps']} steps, w0 = {cfg['w0']}. @N = N adaptation steps.",
    ]
    return "\n".join(lines) + "\n"


def _label(text: str, width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    words, line, rows = text.split(), "", []
    for w in words:
        if len(line) + len(w) + 1 > width // 6:
            rows.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    rows.append(line)
    for i, row in enumerate(rows[: height // 11]):
        draw.text((3, 3 + 11 * i), row, fill=(0, 0, 0))
    return im


def image_grid(samples: dict, targets: list, n_prompts: int, n_uncond: int = 2, scale: int = 3) -> Image.Image:
    """Rows: methods; columns: the first ``n_prompts`` prompts (one image each), then ``n_uncond`` unconditional
    samples. Images are upscaled ``scale`` times (nearest) so 32x32 pixels stay visible."""
    cell = 32 * scale
    label_w, head_h = 150, 40
    names = list(samples)
    cols = n_prompts + n_uncond
    grid = Image.new("RGB", (label_w + cols * (cell + 2), head_h + len(names) * (cell + 2)), (255, 255, 255))
    heads = [" ".join(t) for t in targets[:n_prompts]] + ["unconditional"] * n_uncond
    for j, h in enumerate(heads):
        grid.paste(_label(h, cell, head_h), (label_w + j * (cell + 2), 0))
    for i, name in enumerate(names):
        y = head_h + i * (cell + 2)
        grid.paste(_label(name, label_w, cell), (0, y))
        row = list(samples[name]["text"][:n_prompts]) + list(samples[name]["uncond"][:n_uncond])
        for j, im in enumerate(row):
            tile = Image.fromarray(np.asarray(im)).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + j * (cell + 2), y))
    return grid


def write_outputs(report, samples: dict, targets: list, out: Path, grid_prompts: int) -> None:
    out = Path(out)
    _write_text(out / "table.md", markdown_table(report))
    _write_text(out / "results.json", json.dumps(asdict(report), indent=2))
    save_image_atomic(image_grid(samples, targets, grid_prompts), out / "grid.png")
