"""The denoising loss against its closed forms."""

from __future__ import annotations

import torch

from training.loss import denoising_loss


# ------------------------------------------------------------------------------------------------ pieces
def test_denoising_loss_closed_forms():
    from diffusers import DDPMScheduler

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, z, t, encoder_hidden_states=None, return_dict=False):
            return (z * 0 + self.p,)

    z0 = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 500, 999])
    eps_sched = DDPMScheduler(num_train_timesteps=1000)
    loss = denoising_loss(Zero(), z0, None, eps_sched, noise=noise, timesteps=t)
    torch.testing.assert_close(loss, noise.pow(2).mean())  # target eps, prediction 0
    v_sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    a = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * z0
    torch.testing.assert_close(denoising_loss(Zero(), z0, None, v_sched, noise=noise, timesteps=t), v.pow(2).mean())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert denoising_loss(Zero(), z0, None, eps_sched, generator=g1) == denoising_loss(Zero(), z0, None, eps_sched,
                                                                                      generator=g2)
