"""The optional extras of pyproject.toml (``pip install -e ".[3d]"``): which extra brings which module, one check that
names the extra before any work (:func:`require`), and the sentence for an import that failed anyway
(:func:`sentence_for`, read by :func:`suite.failures.explain`).

Without an extra, ``3d`` stopped with scipy's or trimesh's ``ModuleNotFoundError`` (the latter at the mesh export,
after all the training), ``edit`` and the app with OpenCV's and gradio's."""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF_MODULE", "install_command", "load", "require", "sentence_for"]

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
# where a module installed but broken is best replaced by another distribution (OpenCV's desktop wheel needs libGL)
_REINSTALL = {"cv2": "pip uninstall opencv-python, then pip install 'opencv-python-headless<5'"}


def install_command(*extras: str) -> str:
    """The command that adds ``extras`` to an install of the suite (as README's ``scripts/setup.sh`` installs it)."""
    return f"pip install -e \".[{','.join(sorted(set(extras)))}]\" in the suite's folder"


def _installed(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a broken or half-removed package
        return False
    # a folder left by an uninstall (only __pycache__ in it) is found as a namespace package, without an origin
    return spec is not None and spec.origin is not None


def require(what: str, *modules: str) -> None:
    """A :class:`suite.checks.UserError` naming the extra to install when one of ``modules`` is not installed
    (``"a|b"``: either will do; the first names the extra). Nothing is imported: call it before any work."""
    gone = [m.split("|") for m in modules if not any(_installed(x) for x in m.split("|"))]
    if not gone:
        return
    from .checks import UserError

    extras = sorted({next(EXTRA_OF_MODULE[x] for x in either if x in EXTRA_OF_MODULE) for either in gone})
    gone = [either[0] for either in gone]
    which = " and ".join(extras) + (" extras" if len(extras) > 1 else " extra")
    raise UserError(f"{what} needs the {which} (no module {', '.join(gone)} here): {install_command(*extras)}, "
                    f"or bash scripts/setup.sh for every extra")


def load(module: str, what: str):
    """``module`` imported, or one sentence: the extra to install (:func:`require`), or how to mend an installed one
    that does not import (an OpenCV desktop wheel on a machine without libGL)."""
    require(what, module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        from .checks import UserError

        fix = _REINSTALL.get(module) or f"reinstall it: {install_command(EXTRA_OF_MODULE[module])}"
        raise UserError(f"{what} needs {module}, which is installed but does not import ({err}): {fix}") from None


def sentence_for(err: ModuleNotFoundError) -> str | None:
    """One sentence for a missing module that an extra brings, or ``None``: a module of no extra, or a submodule
    missing from a package that is installed, is a bug (a typo, a package that moved it), shown as a traceback."""
    name = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None or _installed(name):
        return None
    return (f"this needs the {extra} extra (no module {name} here): {install_command(extra)}, or bash "
            f"scripts/setup.sh for every extra")
