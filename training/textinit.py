"""Text-feature initialisation (paper Sec. 3.3): optimise ``F_T`` with the SD1.5 UNet frozen.

``F_T`` starts as the text-encoder output for the domain prompt ("a photo of <domain>", ``[1, 77, D]``) and
is optimised by the denoising loss ``|| eps - eps_theta(z_t, t, F_T) ||^2`` over the domain's images, only
``F_T`` receiving gradients (paper: 3,200 images, batch 32, 100 steps). ``E`` is then captured from the
optimised ``F_T`` (:func:`suite.nulltext.capture_E`), so the null-text UNet starts as close to the domain as
a single text condition can bring SD1.5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from suite.text import encode_prompts

from .data import ImageFolderDataset
from .latents import OnTheFlyLatents
from .loss import denoising_loss

log = logging.getLogger(__name__)


def _as_source(data, vae, num_workers: int = 0):
    """A latent source with ``get(indices, flips, eps)``, ``__len__`` and ``latent_shape``."""
    if isinstance(data, torch.Tensor):
        return _TensorLatents(data)
    if isinstance(data, ImageFolderDataset):
        if vae is None:
            raise ValueError("optimising F_T on an image folder needs the VAE to encode the images")
        return OnTheFlyLatents(data, vae, num_workers=num_workers)
    if hasattr(data, "get") and hasattr(data, "latent_shape"):
        return data
    raise TypeError(f"expected image latents, an ImageFolderDataset or a latent source, got {type(data).__name__}")


class _TensorLatents:
    """Already-encoded, already-scaled latents ``[N, C, h, w]`` (no posterior noise, no flips)."""

    def __init__(self, latents: torch.Tensor):
        if latents.ndim != 4:
            raise ValueError(f"latents must be [N, C, h, w], got {tuple(latents.shape)}")
        self.latents = latents
        self.latent_shape = tuple(latents.shape[1:])

    def __len__(self):
        return self.latents.shape[0]

    def get(self, indices, flips, eps):
        return self.latents[list(indices)]


def optimize_text_features(unet, vae, text_encoder, tokenizer, scheduler, dataset_or_latents, prompt: str,
                           steps: int = 100, batch_size: int = 32, lr: float = 1e-3, device=None,
                           num_images: int = 3200, seed: int = 0, text_features: torch.Tensor | None = None,
                           progress: Callable[[int, int, dict], None] | None = None,
                           ) -> tuple[torch.Tensor, list[float]]:
    """Optimise ``F_T`` (``[1, 77, D]``) by the denoising loss with ``unet`` frozen; return ``(F_T, losses)``.

    ``dataset_or_latents``: scaled image latents ``[N, C, h, w]``, an :class:`training.data.ImageFolderDataset`
    (encoded with ``vae`` on the fly), or a latent source from :mod:`training.latents` (the cache). The first
    ``num_images`` of a fixed seeded permutation are used (paper: 3,200), in its order, batch after batch. ``scheduler`` gives the noise schedule
    (``add_noise``; a DDPM-family scheduler). ``losses`` holds the loss of every step (the curve to log). ``lr``
    is Adam's step size on the features (the paper gives none; 1e-3 moves features of unit scale in 100 steps).
    ``text_features`` starts from given features instead of encoding ``prompt``. ``steps=0`` returns the
    prompt's features unchanged.
    """
    # 1. The starting point: the prompt's text features (conditional only), as a trainable float32 tensor.
    p = next(unet.parameters())
    device = torch.device(device) if device is not None else p.device
    if text_features is None:
        text_features = encode_prompts(tokenizer, text_encoder, [prompt], device=device)
    F_T = text_features.detach().to(device, torch.float32).clone().requires_grad_(True)
    if steps <= 0:
        return F_T.detach(), []

    # 2. Data: a fixed subset of the images; batches drawn from a seeded generator.
    source = _as_source(dataset_or_latents, vae)
    n = min(len(source), int(num_images))
    if n < 1:
        raise ValueError("no images to optimise the text features on")
    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(source), generator=gen)[:n]

    # 3. Frozen UNet (no weight receives a gradient), Adam on F_T only.
    was_training, grads = unet.training, [q.requires_grad for q in unet.parameters()]
    unet.eval().requires_grad_(False)
    optimizer = torch.optim.Adam([F_T], lr=lr)
    losses: list[float] = []
    from tqdm.auto import tqdm

    try:
        for step in tqdm(range(steps), desc="optimising F_T", leave=False, disable=True if progress is None else None):
            # the subset in its order, batch after batch (the paper's 3,200 images, 32 x 100 steps: each once); they
            # were drawn with replacement, and 100 batches of 32 saw 2,006 of the 3,200
            pick = subset[(step * min(batch_size, n) + torch.arange(min(batch_size, n))) % n]
            eps = torch.randn((len(pick),) + tuple(source.latent_shape), generator=gen)
            with torch.no_grad():
                latents = source.get(pick.tolist(), [False] * len(pick), eps).to(device)
            loss = denoising_loss(unet, latents, F_T, scheduler, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps, {"loss": losses[-1]})
    finally:
        unet.train(was_training)
        for q, g in zip(unet.parameters(), grads):
            q.requires_grad_(g)
    k = max(1, len(losses) // 2) if len(losses) < 20 else 10  # two halves of a short run, not one set twice
    log.info("F_T optimised for %d steps: loss %.4f (first %d mean) -> %.4f (last %d mean)", steps,
             sum(losses[:k]) / len(losses[:k]), k, sum(losses[-k:]) / len(losses[-k:]), k)
    return F_T.detach(), losses
