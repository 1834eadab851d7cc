"""An optional extra that is not installed (pyproject's ``[3d]``, ``[edit]``, ``[app]``, ...) gets one sentence naming
it, before any work. Found by installing the suite with fewer extras: ``3d`` stopped with scipy's traceback after
stage 1, or with trimesh's at the mesh export after all the training; ``edit`` with OpenCV's (its own sentence told the
user to try ``--whole-image``, which needs OpenCV too); ``app`` with gradio's, after making its output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import launch
import suite.extras as extras
from suite.checks import UserError
from suite.failures import explain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def without(monkeypatch):
    """``without("trimesh", ...)``: those modules look uninstalled to the checks (as ``find_spec`` reports it)."""
    gone: set[str] = set()
    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m not in gone and real(m))
    return lambda *names: gone.update(names)


def test_every_module_named_is_in_its_extra():
    """The table agrees with pyproject.toml: each extra it names exists, and lists a distribution for the module."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distribution = {"cv2": "opencv-python-headless", "dlib": "dlib-bin", "face_recognition_models":
                    "face-recognition-models", "mcubes": "PyMCubes", "gradio_client": "gradio_client"}
    for module, extra in extras.EXTRA_OF_MODULE.items():
        wanted = distribution.get(module, module).lower()
        assert any(req.lower().startswith(wanted) for req in optional[extra]), (module, extra)


def test_require_names_the_extra_and_either_of_two_will_do(without):
    extras.require("text-to-3D", "scipy", "mcubes|skimage")  # installed here: nothing said
    without("mcubes")
    extras.require("text-to-3D", "mcubes|skimage")  # scikit-image marches the cubes instead
    without("skimage", "trimesh", "cv2")
    with pytest.raises(UserError) as err:
        extras.require("text-to-3D", "scipy", "trimesh", "mcubes|skimage", "cv2")
    text = str(err.value)
    assert "needs the 3d and edit extras (no module trimesh, mcubes, cv2 here)" in text
    assert 'pip install -e ".[3d,edit]"' in text and "scipy" not in text


def test_either_of_two_names_its_extra_whichever_comes_first(without):
    without("skimage", "mcubes")
    with pytest.raises(UserError, match=r"the 3d extra \(no module skimage here\)"):
        extras.require("text-to-3D", "skimage|mcubes")  # skimage is of no extra; mcubes names it (was a KeyError)


def test_an_import_that_failed_anyway_is_one_sentence(without):
    """A missing module of an extra is its sentence; a submodule missing from an installed package (a typo of ours, a
    package that moved it) or a module of no extra is a bug, left to its traceback."""
    missing = ModuleNotFoundError("No module named 'trimesh'", name="trimesh")
    assert explain(ModuleNotFoundError("No module named 'trimesh.nope'", name="trimesh.nope")) is None  # installed
    assert explain(missing) is None  # installed here: something else went wrong
    without("trimesh", "gradio")
    assert 'the 3d extra (no module trimesh here): pip install -e ".[3d]"' in explain(missing)
    assert "the app extra" in explain(ModuleNotFoundError("x", name="gradio.routes"))
    assert explain(ModuleNotFoundError("No module named 'suite.nowhere'", name="suite.nowhere")) is None


def test_a_folder_left_by_an_uninstall_is_not_an_installed_package(tmp_path, monkeypatch):
    (tmp_path / "leftover_pkg" / "__pycache__").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not extras._installed("leftover_pkg") and extras._installed("json")


def test_an_installed_module_that_does_not_import_is_one_sentence(monkeypatch):
    """An OpenCV desktop wheel on a machine without libGL is found but does not import: it was a traceback after the
    models loaded (and before suite.extras, one sentence naming the headless wheel)."""
    import importlib

    real = importlib.import_module

    def broken(name, *a):
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
        return real(name, *a)

    monkeypatch.setattr(extras, "_installed", lambda m: True)
    monkeypatch.setattr(importlib, "import_module", broken)
    from suite.control import canny

    with pytest.raises(UserError) as err:
        canny(Image.new("RGB", (8, 8)))
    assert "canny edges needs cv2, which is installed but does not import (libGL.so.1" in str(err.value)
    assert "opencv-python-headless<5" in str(err.value)


def test_edit_photo_from_python_names_the_extra_first(without):
    from editing import edit_photo

    without("cv2")
    with pytest.raises(UserError, match="editing a photo needs the edit extra"):
        edit_photo(None, Image.new("RGB", (64, 64)))  # before the pipeline is touched


def test_3d_without_its_extra_stops_before_any_work(tmp_path, capsys, without):
    without("trimesh")
    (tmp_path / "prompts.txt").write_text("a vase\n")
    for request in (["--prompt", "a vase"], ["--prompts-file", str(tmp_path / "prompts.txt")]):  # one run, a batch
        code = launch.main(["3d", "--preset", "tiny", "--output", str(tmp_path / "run"), *request])
        err = capsys.readouterr().err
        assert code == 2 and 'needs the 3d extra (no module trimesh here): pip install -e ".[3d]"' in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_3d_from_python_stops_before_any_work(tmp_path, without):
    from generators3d import ThreeDConfig, run_text_to_3d

    without("scipy")
    with pytest.raises(UserError, match="3d extra"):
        run_text_to_3d(ThreeDConfig(prompt="a vase", output=str(tmp_path / "run"), preset="tiny"))
    assert not (tmp_path / "run").exists()


def test_edit_without_opencv_names_the_edit_extra(tmp_path, capsys, without):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "gray").save(photo)
    without("cv2")
    for framing in ([], ["--whole-image"]):
        code = launch.main(["edit", "--preset", "tiny", "--image", str(photo), "--output", str(tmp_path / "out.png"),
                            *framing])
        err = capsys.readouterr().err
        assert code == 2 and 'needs the edit extra (no module cv2 here): pip install -e ".[edit]"' in err, err
    assert not (tmp_path / "out.png").exists()


def test_app_without_gradio_makes_no_folder(tmp_path, capsys, without):
    without("gradio")
    code = launch.main(["app", "--preset", "tiny", "--output-dir", str(tmp_path / "app")])
    err = capsys.readouterr().err
    assert code == 2 and "the app needs the app extra" in err and "Traceback" not in err, err
    assert not (tmp_path / "app").exists()
