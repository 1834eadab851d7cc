import os
import tempfile
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one torch thread per worker (the workers share the cores)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="torch-ext-"))
os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-tests" / "tiny-v3"))


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
