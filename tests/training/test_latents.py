"""The latent cache equals the VAE run on the fly."""

from __future__ import annotations

import torch

from training.data import ImageFolderDataset


def test_latent_cache_equals_vae_on_the_fly(data_dir, tmp_path):
    from suite.testing import build_tiny_sd
    from training.latents import CachedLatents, OnTheFlyLatents, build_latent_cache

    vae = build_tiny_sd()["vae"]
    ds = ImageFolderDataset(data_dir, resolution=32, hflip=0.5)
    calls = []
    original = vae.encode

    def counting(x, *a, **kw):
        calls.append(x.shape[0])
        return original(x, *a, **kw)

    vae.encode = counting
    path = build_latent_cache(ds, vae, tmp_path, vae_id="tiny", batch_size=4, num_workers=0)
    assert sum(calls) == 2 * len(ds)  # the VAE ran once per image and flip state
    assert build_latent_cache(ds, vae, tmp_path, vae_id="tiny") == path and sum(calls) == 2 * len(ds)  # reused
    cached, fly = CachedLatents(path, vae.config.scaling_factor, "cpu"), OnTheFlyLatents(ds, vae, num_workers=0)
    eps = torch.randn(4, *cached.latent_shape)
    idx, flips = [0, 3, 5, 3], [False, True, False, False]
    torch.testing.assert_close(cached.get(idx, flips, eps), fly.get(idx, flips, eps), rtol=1e-5, atol=1e-5)
