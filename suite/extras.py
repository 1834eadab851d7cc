"""The optional extras of pyproject.toml (``pip install -e ".[3d]"``): which extra brings which module, one check that
names the extra before any work (:func:`require`), and the sentence for an import that failed anyway
(:func:`sentence_for`, read by :func:`suite.failures.explain`).

Without an extra, ``3d`` stopped with scipy's or trimesh's ``ModuleNotFoundError`` (the latter at the mesh export,
after all the training), ``edit`` and the app with OpenCV's and gradio's."""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF_MODULE", "install_command", "require", "sentence_for"]

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF_MODULE = {
    "cv2": "edit",
    "dlib": "faces", "face_recognition_models": "faces",
    "tensorboard": "train",
    "peft": "lora",
    "trimesh": "3d", "mcubes": "3d", "scipy": "3d", "xatlas": "3d", "imageio": "3d", "omegaconf": "3d",
    "nerfacc": "3d",
    "gradio": "app", "gradio_client": "app",
}


def install_command(*extras: str) -> str:
    """The command that adds ``extras`` to an install of the suite (as README's ``scripts/setup.sh`` installs it)."""
    return f"pip install -e \".[{','.join(sorted(set(extras)))}]\" in the suite's folder"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def require(what: str, *modules: str) -> None:
    """A :class:`suite.checks.UserError` naming the extra to install when one of ``modules`` is not installed
    (``"a|b"``: either will do; the first names the extra). Nothing is imported: call it before any work."""
    gone = [m.split("|")[0] for m in modules if not any(_installed(x) for x in m.split("|"))]
    if not gone:
        return
    from .checks import UserError

    extras = sorted({EXTRA_OF_MODULE[m] for m in gone})
    which = " and ".join(extras) + (" extras" if len(extras) > 1 else " extra")
    raise UserError(f"{what} needs the {which} (no module {', '.join(gone)} here): {install_command(*extras)}, "
                    f"or bash scripts/setup.sh for every extra")


def sentence_for(err: ModuleNotFoundError) -> str | None:
    """One sentence for a missing module that an extra brings, or ``None`` (a module of no extra is a bug)."""
    name = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return (f"this needs the {extra} extra (no module {name} here): {install_command(extra)}, or bash "
            f"scripts/setup.sh for every extra")
