"""Devices and dtypes: which device a run (or each process of a run of several) uses, checked before any model
is read, and the dtype the models run in (read by the CLIs, the app, the pipeline and the presets alike)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

DTYPES = ("float32", "float16", "bfloat16")  # what --dtype offers; the models run in one of these


def check_device(device, flag: str = "--device") -> None:
    """One sentence for a device this machine cannot use (no CUDA GPU, a GPU index it does not have, a build of torch
    without MPS, a misspelt name), before any model is read; ``None`` (the default device) passes. Without it a run
    failed with torch's traceback once the models had been found, hashed and read."""
    if device is None:
        return
    import torch

    from .checks import UserError

    name = str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} {name!r} is not a torch device: use cpu, cuda, cuda:N or mps, or leave it out (cuda "
                        f"if available, else cpu)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":  # not by allocating: each process of a run of several would hold a context on GPU 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (dev.index is None or dev.index < count):
            return
    elif dev.type == "mps" and torch.backends.mps.is_available():
        return
    try:
        torch.zeros(1, device=dev)
    except Exception as err:  # noqa: BLE001 - torch says why in its own words: AssertionError, RuntimeError, ...
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            reason = (f"it has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}" if count else
                      "no usable CUDA GPU: a torch built without CUDA, or no GPU or driver")
        elif dev.type == "mps":
            reason = "MPS needs an Apple GPU and a torch built with it"
        else:  # torch's first sentence
            reason = (str(err).strip().split(". ")[0].splitlines() or [type(err).__name__])[0][:120]
        raise UserError(f"{flag} {name}: this machine cannot run on it ({reason}); pass another device, e.g. "
                        f"{flag} cpu, or leave it out (cuda if available, else cpu)") from None


def process_device(device: str | None, state) -> str | None:
    """The device of this process of a run of several (accelerate's ``PartialState``): its own GPU
    (``cuda:<local rank>``) where no device or a bare ``cuda`` was given, which put every process on GPU 0; a device
    with an index (``cuda:1``) or ``cpu`` as given. One process: as given."""
    if state.num_processes > 1 and device in (None, "cuda"):
        return str(state.device)
    return device


def resolve_device(device: str | None = None, dtype=None) -> tuple:
    """``(torch.device, torch.dtype)``: cuda if available, else cpu; float16 on cuda, float32 on cpu. ``device``
    is checked (:func:`check_device`); ``dtype`` is one of :data:`DTYPES`, by name or as a ``torch.dtype``."""
    import torch  # here, not at the top: the preset table is read by --help, which loads no torch

    from .checks import UserError

    check_device(device, "device")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    name = dtype or ("float16" if str(device).startswith("cuda") else "float32")
    if name not in DTYPES:
        raise UserError(f"dtype {name!r} is not one the models run in: use one of {', '.join(DTYPES)}")
    return torch.device(device), getattr(torch, name)


def recorded_dtype(device: str | None, dtype=None) -> str:
    """The name of the dtype the models will run in, as a run records it to compare on ``--resume`` (a set or batch
    made in float32 beside one in bfloat16 would mix two runs). A record written before the dtype was recorded has
    none (``None``): it is not compared on it."""
    return str(resolve_device(device, dtype)[1]).removeprefix("torch.")


#: Held while a thread seeds, saves or restores the process's global random state (torch's, numpy's, python's):
#: jobs run side by side in one process (the app's ``--max-jobs`` above 1) share it, and a NeRF seeded in one thread
#: while another job seeded it or restored its own state came out unlike the same seed's alone (a script: eight
#: threads at once, five rounds, 39 of 40 fields before this lock; ``tests/generators3d/test_nerf.py``). Taken by
#: :func:`generators3d.nerf.make_field`, the tiny models' first build (:mod:`suite.testing`), training's
#: ``set_seed`` and :func:`kept_random_state`. Draws that take an explicit generator need none.
RANDOM_STATE_LOCK = threading.RLock()


@contextmanager
def kept_random_state(device):
    """The caller's global random state (python's, numpy's, torch's on the CPU and on ``device``) as it was, after a
    run that seeds or draws from them: training's ``set_seed`` left every call's caller at the same state (a script's
    later draws repeated from one call to the next), and a 3D run or an evaluation moved the caller's stream. Saved
    and restored under :data:`RANDOM_STATE_LOCK`, so that neither lands inside another thread's seeded section. (Runs
    that overlap in threads each restore the state they found: the last to finish decides the state left.)"""
    import random

    import numpy as np
    import torch

    device = torch.device(device)

    # set_seed seeds every GPU of the run's kind (manual_seed_all), so every one of them is given back, not only the
    # run's own (cuda, mps, xpu; a CPU run touches no GPU's generator)
    accelerated = device.type not in ("cpu", "meta")
    count = getattr(getattr(torch, device.type), "device_count", lambda: 1)() if accelerated else 0
    with RANDOM_STATE_LOCK:
        py, npy = random.getstate(), np.random.get_state()
        fork = torch.random.fork_rng(devices=list(range(count)), device_type=device.type if accelerated else "cuda")
        fork.__enter__()
    try:
        yield
    finally:
        with RANDOM_STATE_LOCK:
            try:
                fork.__exit__(None, None, None)
            finally:
                random.setstate(py)
                np.random.set_state(npy)
