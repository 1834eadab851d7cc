"""The mini Zero-1-to-3's trainer on a zero-terminal-SNR schedule (issue 24, part 3's experiments): what it asks
for, and what it returns."""

import numpy as np
import pytest
import torch


def _pairs(objects=3, views=3, size=32):
    rng = np.random.default_rng(0)  # 32 px through the tiny VAE: the trainer's 16 x 16 latents
    return dict(images=rng.integers(0, 256, (objects, views, size, size, 3), dtype=np.uint8),
                poses=rng.uniform(-30, 30, (objects, views, 2)).astype(np.float32))


def test_zero_terminal_snr_needs_v_prediction_and_samples_from_the_last_step(tmp_path):
    from suite.testing import build_tiny_zero123
    from suite.zero123 import Zero123Guidance, load_zero123, novel_views, save_zero123
    from training.mini_zero123 import train_zero123

    parts = build_tiny_zero123(seed=5)
    with pytest.raises(ValueError, match="zero terminal SNR needs prediction_type='v_prediction'"):
        train_zero123(_pairs(), parts["vae"], 1, batch=2, init=parts, zero_snr=True)
    trained = train_zero123(_pairs(), parts["vae"], 2, batch=2, init=parts, prediction_type="v_prediction",
                            zero_snr=True)
    config = trained["scheduler"].config
    assert config.rescale_betas_zero_snr and config.timestep_spacing == "trailing"
    assert config.prediction_type == "v_prediction" and float(trained["scheduler"].alphas_cumprod[-1]) == 0.0
    assert not any(p.requires_grad for p in trained["unet"].parameters())  # the EMA copy, ready to save
    model = load_zero123(str(save_zero123(trained, tmp_path / "z")))
    guide = Zero123Guidance(model, torch.rand(1, 3, 64, 64), ref_elevation=5.0)
    view = novel_views(guide, 20.0, 45.0, 3.8, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(view).all() and view.std() > 0  # NaN before finite_terminal_snr
    back = train_zero123(_pairs(), parts["vae"], 1, batch=2, init=trained, zero_snr=False)  # and back again
    assert not back["scheduler"].config.rescale_betas_zero_snr
    assert back["scheduler"].config.timestep_spacing == "leading"
