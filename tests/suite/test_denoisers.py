"""The denoiser interface's batching protocol: denoisers with equal ``batch_key`` run through their class's
``evaluate_group`` once per group; others are called one by one; the same object listed twice runs once."""

from __future__ import annotations

import torch

from suite.denoisers import FunctionDenoiser, UNetDenoiser, evaluate_batched


class Shared:
    """A denoiser double that shares a 'network' with others of the same key and counts group evaluations."""

    groups: list[int] = []

    def __init__(self, key: str, scale: float):
        self.key, self.scale = key, scale

    def batch_key(self):
        return ("shared", self.key)

    @classmethod
    def evaluate_group(cls, members, z, t):
        cls.groups.append(len(members))
        return [z * m.scale for m in members]

    def __call__(self, z, t):
        return type(self).evaluate_group([self], z, t)[0]


def test_groups_run_once_each_and_results_keep_their_order():
    Shared.groups = []
    a, b, c = Shared("net1", 1.0), Shared("net1", 2.0), Shared("net2", 3.0)
    calls = []
    f = FunctionDenoiser(lambda z, t: calls.append(1) or z * 4.0)
    z = torch.ones(2, 1, 2, 2)
    out = evaluate_batched([a, f, b, c, a], z, 10)
    assert sorted(Shared.groups) == [1, 2]  # net1's two members in one evaluation, net2's one
    assert len(calls) == 1
    assert [float(o.flatten()[0]) for o in out] == [1.0, 4.0, 2.0, 3.0, 1.0]
    assert out[4] is out[0]  # the same object listed twice is evaluated once


def test_unet_adapters_with_and_without_image_channels_do_not_mix(tiny_parts):
    """Zero-1-to-3's branches carry concatenated image channels; a plain call of the same UNet has none. They
    get different keys (they cannot share a forward), and each equals its own unbatched call."""
    unet = tiny_parts["unet"]
    ehs = torch.randn(1, 77, unet.config.cross_attention_dim)
    plain = UNetDenoiser(unet, ehs, name="plain")
    assert plain.batch_key() != UNetDenoiser(unet, ehs, concat=torch.zeros(1, 0, 32, 32)).batch_key()
    z = torch.randn(2, unet.config.in_channels, 32, 32)
    forwards = []
    h = unet.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    both = evaluate_batched([plain, UNetDenoiser(unet, torch.zeros_like(ehs), name="uncond")], z, 500)
    h.remove()
    assert forwards == [4]  # two adapters of one UNet: one forward on the stacked batch
    with torch.no_grad():
        alone = unet(z, torch.tensor([500, 500]), encoder_hidden_states=ehs.expand(2, -1, -1)).sample
    assert torch.allclose(both[0], alone, atol=1e-5)
