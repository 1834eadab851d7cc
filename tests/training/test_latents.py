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
    from suite.files import umask

    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()  # as every other output (mkstemp's was 0600)
    assert build_latent_cache(ds, vae, tmp_path, vae_id="tiny") == path and sum(calls) == 2 * len(ds)  # reused
    cached, fly = CachedLatents(path, vae.config.scaling_factor, "cpu"), OnTheFlyLatents(ds, vae, num_workers=0)
    eps = torch.randn(4, *cached.latent_shape)
    idx, flips = [0, 3, 5, 3], [False, True, False, False]
    torch.testing.assert_close(cached.get(idx, flips, eps), fly.get(idx, flips, eps), rtol=1e-5, atol=1e-5)


def test_latent_cache_is_the_same_for_any_number_of_processes(data_dir, tmp_path):
    """Each image is encoded in the same global batch whatever the process count (issue 27: a 2-process cache
    grouped images differently and differed from the 1-process one in the last bits, and so did the run)."""
    import numpy as np

    from suite.testing import build_tiny_sd
    from training.latents import build_latent_cache

    class Rank:  # what build_latent_cache reads of an accelerate.Accelerator
        def __init__(self, index, world):
            self.process_index, self.num_processes = index, world

        def wait_for_everyone(self):
            pass

    vae = build_tiny_sd()["vae"]
    ds = ImageFolderDataset(data_dir, resolution=32, hflip=0.5)  # 6 images: batches [0,2) [2,4) [4,6) at size 2
    seen = []
    original = vae.encode
    vae.encode = lambda x, *a, **kw: (seen.append(x.shape[0]), original(x, *a, **kw))[1]
    one = np.load(build_latent_cache(ds, vae, tmp_path / "one", vae_id="tiny", batch_size=2, num_workers=0))
    assert seen == [2] * 6  # 3 batches x 2 flip states
    for world in (2, 4):
        folder = tmp_path / f"p{world}"
        for rank in reversed(range(world)):  # rank 0 (main) last: it merges the others' parts
            path = build_latent_cache(ds, vae, folder, vae_id="tiny", batch_size=2, num_workers=0,
                                      accelerator=Rank(rank, world))
        assert np.array_equal(np.load(path), one), world
        assert [p.name for p in folder.iterdir()] == [path.name]  # the parts are gone


def test_the_latent_cache_is_named_by_its_precision(tmp_path):
    """A float16 cache (written by a bf16 or fp16 run) is not reused by a float32 one."""
    import numpy as np
    from PIL import Image

    from training.data import ImageFolderDataset
    from training.latents import cache_key

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    ds = ImageFolderDataset(tmp_path, resolution=32)
    assert cache_key(ds, "vae", 2, np.float16) != cache_key(ds, "vae", 2, "float32")
    assert cache_key(ds, "vae", 2, np.float32) == cache_key(ds, "vae", 2, "float32")
