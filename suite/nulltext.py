"""The null-text domain UNet (paper Sec. 3.3, Eq. 4-5): UNet surgery, capture of ``E``, save and load.

In every cross-attention layer of a SD1.5 UNet (the ``attn2`` of each transformer block, 16 in SD1.5)

    F'_img = W(softmax(Q K_text^T / sqrt(d)) V_text) + F_img          (Eq. 4)

becomes

    F'_img = E + F_img                                                (Eq. 5)

with a fixed per-layer vector ``E`` (``[1, 1, C]``, broadcast over batch and positions). The projections
``to_q/to_k/to_v/to_out`` are removed and the LayerNorm that fed them (``norm2``) becomes identity.
``E`` is *captured*: the mean, over batch and spatial positions, of the original layer's output for the
domain's text features ``F_T`` (conditional features only). Capture runs before anything is saved, and
the loader is strict, so a model with zero (never captured) ``E`` cannot be produced or loaded silently.

A domain model folder holds ``config.json`` (the UNet's diffusers config), ``diffusion_pytorch_model.safetensors``
(weights without the removed projections, with the ``E`` buffers) and ``nulltext.json`` (metadata: domain
name, base model, prompt used, training steps).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

METADATA_FILE = "nulltext.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


class FixedCrossAttention(nn.Module):
    """Replaces a cross-attention branch by its fixed output ``E`` (Eq. 5). Text input is ignored."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("E", torch.zeros(1, 1, dim))

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[0], hidden_states.shape[1]
        return self.E.to(hidden_states.dtype).expand(b, n, -1)


def _cross_attention_blocks(unet: nn.Module):
    """The transformer blocks that own a cross-attention ``attn2`` (in a stable order)."""
    for name, module in unet.named_modules():
        if hasattr(module, "attn2") and module.attn2 is not None and hasattr(module, "norm2"):
            yield name, module


def capture_E(unet: nn.Module, text_features: torch.Tensor, latents: torch.Tensor | None = None,
              timesteps: torch.Tensor | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run ``unet`` with the domain's text features and return, per cross-attention block, the mean over
    batch and positions of its ``attn2`` output (after ``to_out``): the captured ``E`` (``[1, 1, C]``).

    ``text_features`` are the conditional features only (``[1 or B, 77, D]``). ``latents`` default to
    standard-normal noise (batch 4) and ``timesteps`` to a spread over the schedule.
    """
    blocks = list(_cross_attention_blocks(unet))
    if not blocks:
        raise ValueError("this UNet has no cross-attention layers to convert (is it already null-text?)")
    param = next(unet.parameters())
    gen = torch.Generator().manual_seed(seed)
    if latents is None:
        size = unet.config.sample_size
        latents = torch.randn(4, unet.config.in_channels, size, size, generator=gen)
    b = latents.shape[0]
    if timesteps is None:
        timesteps = torch.linspace(100, 900, b).long()
    feats = text_features.to(param.device, param.dtype)
    if feats.shape[0] == 1:
        feats = feats.expand(b, *feats.shape[1:])
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, block in blocks:
        def hook(_module, _inputs, output, name=name):
            sums[name] = output.float().mean(dim=(0, 1), keepdim=True)

        hooks.append(block.attn2.register_forward_hook(hook))
    try:
        with torch.no_grad():
            unet(latents.to(param.device, param.dtype), timesteps.to(param.device), encoder_hidden_states=feats)
    finally:
        for h in hooks:
            h.remove()
    return sums


def convert_to_nulltext(unet: nn.Module, E: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """In place: replace every ``attn2`` by :class:`FixedCrossAttention` and ``norm2`` by identity.

    ``E`` (from :func:`capture_E`) fills the buffers; pass ``None`` only when weights are loaded next.
    """
    for name, block in list(_cross_attention_blocks(unet)):
        dim = block.attn2.to_out[0].out_features
        fixed = FixedCrossAttention(dim)
        if E is not None:
            if name not in E:
                raise ValueError(f"no captured E for cross-attention block {name}")
            fixed.E.copy_(E[name].reshape(1, 1, dim))
        p = next(block.parameters())
        block.attn2 = fixed.to(p.device, p.dtype)
        block.norm2 = nn.Identity()
    return unet


@dataclass
class DomainMetadata:
    domain: str
    base_model: str = ""
    prompt: str = ""
    training_steps: int = 0
    format: str = "in-domain-suite/nulltext-unet/1"
    extra: dict = field(default_factory=dict)


class DomainModel:
    """A null-text domain UNet and its metadata. ``unet`` is called with ``encoder_hidden_states=None``."""

    def __init__(self, unet: nn.Module, metadata: DomainMetadata):
        self.unet = unet
        self.metadata = metadata

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the folder atomically: a temporary sibling folder, then rename over the target."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            (tmp / "config.json").write_text(json.dumps(dict(self.unet.config), indent=2, default=list))
            state = {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            (tmp / METADATA_FILE).write_text(json.dumps(asdict(self.metadata), indent=2))
            if folder.exists():
                old = folder.with_name(folder.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device=None, dtype=None) -> DomainModel:
        """Load strictly (every weight and every ``E`` must be present; nothing extra)."""
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        meta = json.loads((folder / METADATA_FILE).read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        unet = UNet2DConditionModel.from_config(config)
        convert_to_nulltext(unet)
        state = load_file(str(folder / WEIGHTS_FILE))
        unet.load_state_dict(state, strict=True)
        unet.eval()
        if device is not None or dtype is not None:
            unet.to(device=device, dtype=dtype)
        known = {k: meta[k] for k in DomainMetadata.__dataclass_fields__ if k in meta}
        return cls(unet, DomainMetadata(**known))


def make_domain_model(unet: nn.Module, text_encoder, tokenizer, prompt: str, domain: str, base_model: str = "",
                      text_features: torch.Tensor | None = None) -> DomainModel:
    """Capture ``E`` from ``prompt`` (or from given, e.g. optimised, ``text_features``) and convert ``unet``."""
    from .text import encode_prompts

    if text_features is None:
        p = next(unet.parameters())
        text_features = encode_prompts(tokenizer, text_encoder, [prompt], device=p.device)
    E = capture_E(unet, text_features)
    convert_to_nulltext(unet, E)
    return DomainModel(unet.eval(), DomainMetadata(domain=domain, base_model=base_model, prompt=prompt))


def is_domain_model_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / METADATA_FILE).is_file()
