"""The mini depth estimator's training pieces: the batch-norm statistics of the EMA copy it ships."""

import torch


def test_recalibration_gives_the_emas_batch_norms_the_statistics_of_their_inputs():
    """An EMA copy moves only parameters, so its batch norms keep their initial statistics (mean 0, variance 1) and
    the shipped model read depth at 0.78 correlation instead of 0.96 (docs/mini-world.md). After recalibration the
    first batch norm's running mean is the mean of what reaches it over all the images, and every other layer is in
    eval mode meanwhile (stochastic depth off: two recalibrations under different random seeds agree exactly)."""
    from transformers import GLPNConfig, GLPNForDepthEstimation

    from training.mini_depth import GLPN_CONFIG, recalibrate_batch_norm

    torch.manual_seed(0)
    model = GLPNForDepthEstimation(GLPNConfig(**{**GLPN_CONFIG, "drop_path_rate": 0.5})).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(float(m.running_mean.abs().max()) == 0.0 for m in norms)
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    order, seen = [], {}

    def hook(m, args):
        order.append(m)
        seen.setdefault(id(m), []).append(args[0].detach())

    hooks = [m.register_forward_pre_hook(hook) for m in norms]
    with torch.no_grad():
        model(pixel_values=images)  # inference's inputs (the first batch norm's do not depend on the others)
    for h in hooks:
        h.remove()
    first = order[0]
    recalibrate_batch_norm(model, images, batch=4)
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.allclose(first.running_mean, torch.cat(seen[id(first)]).mean((0, 2, 3)), atol=1e-6)
    assert all(float(m.running_mean.abs().max()) > 0.0 for m in norms)
    stats = [m.running_var.clone() for m in norms]
    torch.manual_seed(123)
    recalibrate_batch_norm(model, images, batch=4)
    assert all(torch.equal(a, m.running_var) for a, m in zip(stats, norms))
