import os
import tempfile
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one torch thread per worker (the workers share the cores)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# fixed folders, reused: a mkdtemp here (evaluated even when the variable was set) left a new empty folder in the
# temporary folder with every pytest process
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "in-domain-tests" / "torch-ext"))
os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-tests" / "tiny-v3"))
# your own domain models ($INDOMAIN_HOME/domains): none of the machine's (not even with INDOMAIN_HOME set), which
# the app lists and `--domain NAME` loads; a test that needs some sets its own
os.environ["INDOMAIN_HOME"] = str(Path(tempfile.gettempdir()) / "in-domain-tests" / "home")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test leaves torch's thread count as it found it. A benchmark's main (``torch.set_num_threads(2)``) or
    ``compare.run(threads=...)`` left the worker at 2 threads, and a later test comparing an in-process run with a
    1-thread subprocess bit for bit (the SIGKILL resume test) then failed in the last bits (1e-7 to 1e-6)."""
    import sys

    torch = sys.modules.get("torch")  # no torch import for the tests that need none
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        if before is None:
            before = int(os.environ.get("OMP_NUM_THREADS") or 0) or None
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The tiny model folders, written once per test session through the real saving code."""
    from suite.testing import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_parts():
    """Tiny SD components in memory (fixed seed)."""
    from suite.testing import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    """An InDomainPipeline loaded from the tiny folders (face domain + ControlNet)."""
    from suite.domains import FACE
    from suite.pipeline import InDomainPipeline

    pipe = InDomainPipeline.load(str(tiny_dir / "sd"), domain_model=str(tiny_dir / "domain-face"),
                                 controlnet=str(tiny_dir / "controlnet"), domain=FACE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_thread():
    """Small-tensor work (NeRF steps, the mini renderer) runs faster, and steadier on a shared machine, on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
