"""Training state on disk: the EMA of the weights, checkpoints and the ``F_T`` file.

Checkpoints are folders ``OUTPUT/training/checkpoints/step-NNNNNN``, each itself a loadable domain-model folder
(the model the run would end with at that step: with ``--ema`` the EMA weights) plus ``optimizer.pt`` (read back
with ``weights_only=True``), ``trainer_state.json`` and, with ``--ema``, ``training_weights.safetensors`` (the
weights the optimiser continues from). Checkpoints written before 2026-12-07 hold the raw weights as the model and
the EMA in ``ema.safetensors``; :func:`load_checkpoint_weights` reads both.
They are written with :func:`suite.files.atomic_dir` (a hidden temporary folder, fsync, rename): a run killed
at any moment, even during a checkpoint write, loses at most one checkpoint interval and never corrupts the last
good checkpoint; a half-written temporary folder is removed by the next checkpoint. Old checkpoints are
renamed away before they are deleted, so a kill while pruning never leaves a half-deleted ``step-*`` folder.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from suite.files import atomic_dir, atomic_path, discard, remove_leftovers
from suite.nulltext import DomainModel

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
TRAINING_WEIGHTS = "training_weights.safetensors"  # with --ema: the raw weights, beside the EMA model
OLD_EMA = "ema.safetensors"  # with --ema before 2026-12-07: the EMA, beside the raw weights as the model


class EMA:
    """Exponential moving average of the trainable weights: ``shadow <- shadow + (1 - d_t)(w - shadow)`` with
    ``d_t = min(decay, (1 + t) / (10 + t))`` (the usual warmup, as diffusers' EMAModel)."""

    def __init__(self, named_params: dict[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().clone() for k, v in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [named_params[k].detach().float() for k in keys], 1 - d)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        params = dict(module.named_parameters())
        for k, v in self.shadow.items():
            params[k].copy_(v.to(params[k].dtype))

    @contextmanager
    def applied(self, module: torch.nn.Module):
        """``module`` with the EMA weights inside the block and its own weights back after it (a copy of them
        is kept on the CPU meanwhile, not a second module on the device)."""
        params = dict(module.named_parameters())
        own = {k: params[k].detach().to("cpu", copy=True) for k in self.shadow}
        try:
            self.copy_to(module)
            yield module
        finally:
            with torch.no_grad():
                for k, v in own.items():
                    params[k].copy_(v)


def checkpoint_dir(output: Path) -> Path:
    return output / "training" / "checkpoints"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place), oldest first. Hidden temporary folders are ignored."""
    root = checkpoint_dir(output)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file():
                try:
                    found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(found)


def save_checkpoint(output: Path, step: int, unet, metadata, optimizer, ema: EMA | None, state: dict,
                    keep: int) -> Path:
    """Write checkpoint ``step`` atomically (:func:`suite.files.atomic_dir`), then prune old ones and remove
    temporary folders that a killed run left behind."""
    from safetensors.torch import save_file

    root = checkpoint_dir(output)
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    # A checkpoint of the same step from an earlier attempt that crashed after writing it is replaced.
    with atomic_dir(final) as tmp:
        if ema is None:
            DomainModel(unet, metadata).save_pretrained(tmp)
        else:
            # the folder is the model the run would end with at this step (a checkpoint picked as a domain model
            # held the raw weights while the run's model is the EMA's); the raw weights are kept beside it
            save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()},
                      str(tmp / TRAINING_WEIGHTS))
            with ema.applied(unet):
                DomainModel(unet, metadata).save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2, default=str))
    for _, old in list_checkpoints(output)[:-keep]:
        discard(old)  # renamed away first: a kill while deleting never leaves a half checkpoint under its name
    remove_leftovers(folders=[root])
    return final


def load_checkpoint_weights(folder: Path, ema: bool):
    """The UNet to continue training from checkpoint ``folder``, and the EMA's weights (None without ``ema``).
    Refuses ``ema`` for a checkpoint written without it."""
    from safetensors.torch import load_file

    unet = DomainModel.from_pretrained(folder).unet
    if (folder / TRAINING_WEIGHTS).is_file():  # the folder holds the EMA's weights, the optimiser's beside them
        shadow = {k: v.detach().float().clone() for k, v in unet.named_parameters()}
        unet.load_state_dict(load_file(str(folder / TRAINING_WEIGHTS)))
        return unet, shadow if ema else None
    if not ema:
        return unet, None
    if (folder / OLD_EMA).is_file():
        return unet, load_file(str(folder / OLD_EMA))
    raise ValueError("--ema was added on --resume but the checkpoint has no EMA: resume without --ema")


def reusable_text_features(path: Path, prompt: str, steps: int, key: str = "") -> bool:
    """An ``F_T`` file from an earlier attempt of this run (same prompt, steps and ``key``: the images and the
    settings it was optimised with) is reused, not recomputed; one that diverged (saved by a version that did not
    check) is not."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        same = meta.get("prompt") == prompt and meta.get("steps") == str(steps) and meta.get("key", "") == key
        return same and "F_T" in f.keys() and bool(torch.isfinite(f.get_tensor("F_T")).all())


def save_text_features(path: Path, F_T: torch.Tensor, prompt: str, steps: int, key: str = "") -> Path:
    """Write the optimised ``F_T`` atomically, with the prompt, step count and ``key`` that make it reusable."""
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"F_T": F_T.detach().float().cpu().contiguous()}, tmp,
                  metadata={"prompt": prompt, "steps": str(steps), "key": key})
    return path
