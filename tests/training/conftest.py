"""Fixtures shared by this folder's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .common import blob


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("domain-images")
    (root / "sub").mkdir()
    for i in range(6):
        blob(i).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    """Good images in several modes and formats, plus every kind of bad file."""
    root = tmp_path_factory.mktemp("bad-images")
    blob(10).save(root / "good.png")
    blob(11).convert("RGBA").save(root / "rgba.webp")
    blob(12).convert("L").save(root / "gray.jpg")
    blob(13, size=(16, 16)).save(root / "small.png")              # smaller than the resolution (32)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    data = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    return root
