"""The null-text domain UNet (paper Sec. 3.3, Eq. 4-5): UNet surgery, capture of ``E``, save and load.

In every cross-attention layer of a SD1.5 UNet (the ``attn2`` of each transformer block, 16 in SD1.5)

    F'_img = W(softmax(Q K_text^T / sqrt(d)) V_text) + F_img          (Eq. 4)

becomes

    F'_img = E + F_img                                                (Eq. 5)

with a fixed per-layer vector ``E`` (``[1, 1, C]``, broadcast over batch and positions). The projections
``to_q/to_k/to_v/to_out`` are removed and the LayerNorm that fed them (``norm2``) becomes identity.
``E`` is *captured*: the mean, over batch and spatial positions, of the original layer's output for the
domain's text features ``F_T`` (conditional features only, never CFG's empty-prompt half). Capture runs
before anything is saved, saving refuses a model whose ``E`` is zero (the authors' release saves the
converted weights without running the capture and loads them with ``strict=False``, so its buffers stay
zero), and the loader is strict, so such a model can be neither produced nor loaded silently.

``E`` is a buffer, not a parameter: fine-tuning trains every remaining UNet weight and keeps ``E`` fixed,
as in the authors' code.

A domain model folder holds ``config.json`` (the UNet's diffusers config), ``diffusion_pytorch_model.safetensors``
(weights without the removed projections, with the ``E`` buffers) and ``nulltext.json`` (metadata: domain
name, base model, prompt used, training steps). Other files in the folder (a training run's ``training/``
folder, ``text_features.safetensors``) are ignored by the loader.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# ModelMixin must be a name of this module: diffusers looks a component's base class up in the component's module
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401
from torch import nn

from .files import atomic_path, write_text_atomic
from .text import encode_prompts
from .threads import building_models

METADATA_FILE = "nulltext.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "in-domain-suite/nulltext-unet/1"

# Stable Diffusion 1.5's UNet (runwayml / stable-diffusion-v1-5 unet/config.json), written out so that
# parameter counts and benchmarks need no download. Everything else is diffusers' default.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


class FixedCrossAttention(nn.Module):
    """Replaces a cross-attention branch by its fixed output ``E`` (Eq. 5). Text input is ignored."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("E", torch.zeros(1, 1, dim))

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[0], hidden_states.shape[1]
        return self.E.to(hidden_states.dtype).expand(b, n, -1)


def _cross_attention_blocks(unet: nn.Module):
    """The transformer blocks that own a real cross-attention ``attn2`` (in a stable order)."""
    for name, module in unet.named_modules():
        attn2 = getattr(module, "attn2", None)
        if attn2 is not None and not isinstance(attn2, FixedCrossAttention) and hasattr(module, "norm2"):
            yield name, module


def nulltext_layers(unet: nn.Module) -> dict[str, FixedCrossAttention]:
    """The converted layers of a null-text UNet, by transformer-block name."""
    return {name: m.attn2 for name, m in unet.named_modules() if isinstance(getattr(m, "attn2", None),
                                                                           FixedCrossAttention)}


def check_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Every tensor of a UNet's weights file is a float and finite. A file whose header relabels float32 tensors as
    integers (or whose values are NaN) loads without an error and gives NaN weights and black images: refused."""
    for name, t in state.items():
        if not t.is_floating_point():
            raise ValueError(f"{where} stores {name} as {str(t.dtype).replace('torch.', '')}, not as floating-point "
                             f"weights: the weights file is damaged or not a domain model; train or copy it again")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where} has non-finite values (NaN or infinity) in {name}: the weights file is damaged "
                             f"or the training diverged; train or copy it again")


def check_E(unet: nn.Module, where: str = "this null-text UNet") -> None:
    """Raise ``ValueError`` unless every ``E`` is finite and non-zero (i.e. was actually captured)."""
    layers = nulltext_layers(unet)
    if not layers:
        raise ValueError(f"{where} has no null-text layers: convert it with convert_to_nulltext first")
    zero = [n for n, m in layers.items() if m.E.device.type != "meta" and not bool(m.E.abs().sum() > 0)]
    bad = [n for n, m in layers.items() if m.E.device.type != "meta" and not bool(torch.isfinite(m.E).all())]
    if bad:
        raise ValueError(f"{where} has non-finite E in {len(bad)} layer(s) (first: {bad[0]}): re-capture E")
    if zero:
        raise ValueError(
            f"{where} has E = 0 in {len(zero)} of {len(layers)} layer(s) (first: {zero[0]}): E was never captured "
            f"(the defect of the authors' release); capture it with make_domain_model / capture_E before saving"
        )


def capture_E(unet: nn.Module, text_features: torch.Tensor, latents: torch.Tensor | None = None,
              timesteps: torch.Tensor | None = None, seed: int = 0, batch_size: int = 8,
              scheduler=None) -> dict[str, torch.Tensor]:
    """Run ``unet`` with the domain's text features and return, per cross-attention block, the mean over
    batch and positions of its ``attn2`` output (after ``to_out``): the captured ``E`` (``[1, 1, C]``, float32).

    ``text_features`` are the conditional features ``F_T`` only (``[1, 77, D]``), never an empty-prompt half.
    ``latents`` are the inputs at which the mean is taken: default standard-normal noise (batch 4); pass
    real image latents with a ``scheduler`` (anything with ``add_noise``) to noise them to ``timesteps``
    first, which is where the domain model will be used. ``timesteps`` default to a spread over the
    schedule. Runs in chunks of ``batch_size``; the mean is over all inputs.
    """
    blocks = list(_cross_attention_blocks(unet))
    if not blocks:
        raise ValueError("this UNet has no cross-attention layers to convert (is it already null-text?)")
    if text_features.ndim != 3 or text_features.shape[0] != 1:
        raise ValueError(f"capture_E needs the conditional text features F_T of shape [1, 77, D], "
                         f"got {tuple(text_features.shape)}")
    param = next(unet.parameters())
    gen = torch.Generator().manual_seed(seed)
    if latents is None:
        size = unet.config.sample_size
        latents = torch.randn(4, unet.config.in_channels, size, size, generator=gen)
    n = latents.shape[0]
    if timesteps is None:
        timesteps = torch.linspace(100, 900, n).long() if n > 1 else torch.tensor([500])
    timesteps = torch.as_tensor(timesteps).long().reshape(-1)
    if timesteps.numel() == 1:
        timesteps = timesteps.expand(n)
    if scheduler is not None:
        noise = torch.randn(latents.shape, generator=gen)
        latents = scheduler.add_noise(latents.float().cpu(), noise, timesteps.cpu())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, block in blocks:
        def hook(_module, _inputs, output, name=name):
            s = output.float().sum(dim=(0, 1), keepdim=True)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + output.shape[0] * output.shape[1]

        hooks.append(block.attn2.register_forward_hook(hook))
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                z = latents[i:i + batch_size].to(param.device, param.dtype)
                feats = text_features.to(param.device, param.dtype).expand(z.shape[0], -1, -1)
                unet(z, timesteps[i:i + batch_size].to(param.device), encoder_hidden_states=feats)
    finally:
        for h in hooks:
            h.remove()
        unet.train(was_training)
    # Mean over batch and positions = sum over both / (inputs x positions of that layer).
    return {name: (sums[name] / counts[name]).cpu() for name, _ in blocks}


def convert_to_nulltext(unet: nn.Module, E: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """In place: replace every ``attn2`` by :class:`FixedCrossAttention` and ``norm2`` by identity.

    ``E`` (from :func:`capture_E`) fills the buffers; pass ``None`` only when weights are loaded next.
    """
    blocks = list(_cross_attention_blocks(unet))
    if not blocks:
        raise ValueError("this UNet has no cross-attention layers to convert (is it already null-text?)")
    if E is not None:
        missing = [name for name, _ in blocks if name not in E]
        if missing:
            raise ValueError(f"no captured E for {len(missing)} cross-attention block(s) (first: {missing[0]})")
    for name, block in blocks:
        dim = block.attn2.to_out[0].out_features
        p = next(block.parameters())
        fixed = FixedCrossAttention(dim).to(p.device)
        if E is not None and p.device.type != "meta":
            fixed.E.copy_(E[name].reshape(1, 1, dim))
        block.attn2 = fixed.to(p.device, p.dtype)
        block.norm2 = nn.Identity()
    if type(unet) is UNet2DConditionModel:
        unet.__class__ = NullTextUNet  # what it now is: diffusers saves and reloads it as one
    return unet


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: dict | None = None) -> dict[str, int]:
    """Parameters of the full UNet and of its null-text version for ``config`` (default: SD1.5's),
    built on the meta device (no memory, no download). Also the number of converted layers."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**(config or SD15_UNET_CONFIG))
    full = count_parameters(unet)
    layers = len(list(_cross_attention_blocks(unet)))
    convert_to_nulltext(unet)
    null = count_parameters(unet)
    e_values = sum(m.E.numel() for m in nulltext_layers(unet).values())
    return dict(full=full, nulltext=null, removed=full - null, layers=layers, E_values=e_values)


@dataclass
class DomainMetadata:
    domain: str
    base_model: str = ""
    prompt: str = ""
    training_steps: int = 0
    format: str = FORMAT
    extra: dict = field(default_factory=dict)


def load_nulltext_unet(folder: str | os.PathLike) -> NullTextUNet:
    """Load a domain model folder strictly: every weight and every ``E`` must be present, nothing extra, and
    ``E`` non-zero. The metadata (``nulltext.json``) goes to ``unet.metadata``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"domain model folder {str(folder)!r} has no {name}: it is incomplete; "
                             f"train it again or copy the whole folder")
    config = json.loads((folder / CONFIG_FILE).read_text())
    meta = json.loads((folder / METADATA_FILE).read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with building_models():  # not while another thread loads a model (suite.threads)
        unet = NullTextUNet.from_config(config)
    state = load_file(str(folder / WEIGHTS_FILE))
    check_weights(state, f"the domain model in {str(folder)!r}")
    unet.load_state_dict(state, strict=True)
    check_E(unet, f"the domain model in {str(folder)!r}")
    unet.metadata = DomainMetadata(**{k: meta[k] for k in DomainMetadata.__dataclass_fields__ if k in meta})
    return unet.eval()


def _one_device(device_map):
    """The device a ``device_map`` names, or None; a map that splits the model is refused in one sentence."""
    if device_map is None or isinstance(device_map, str | int | torch.device):
        return device_map
    places = set(device_map.values()) if isinstance(device_map, dict) else {None, "several"}
    if len(places) != 1:
        raise ValueError("the domain UNet is loaded whole onto one device: pass device_map as one device "
                         "(e.g. 'cuda'), or load it and call .to(device)")
    return places.pop()


class NullTextUNet(UNet2DConditionModel):
    """A SD1.5-type UNet whose cross-attention layers are the fixed ``E`` (Eq. 5): the domain UNet.

    It is a diffusers ``UNet2DConditionModel`` that diffusers can save and load as a pipeline component
    (``InDomainPipeline.domain_unet``): ``from_config`` builds the converted architecture, ``from_pretrained``
    loads a domain model folder (or its hub id) strictly through :func:`load_nulltext_unet`, and
    ``save_pretrained`` writes the folder with :class:`DomainModel`'s format (refusing an ``E`` never captured).
    ``metadata`` is its :class:`DomainMetadata` (domain name, prompt, base model, training steps).
    """

    metadata: DomainMetadata | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        convert_to_nulltext(out[0] if return_unused_kwargs else out)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, torch_dtype=None,
                        cache_dir=None, local_files_only: bool | None = None, revision=None, token=None,
                        device_map=None, **ignored) -> NullTextUNet:
        """A domain model folder, or a hub id (only its ``*.json`` and ``*.safetensors`` files are fetched).
        ``device_map`` may name one device (``"cuda"``, or ``{"": device}`` as diffusers passes it); diffusers'
        other loading options (variants, low-memory loading) do not apply to this small model and are ignored."""
        device = _one_device(device_map)
        folder = Path(os.path.expanduser(str(pretrained_model_name_or_path))) / (subfolder or "")
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            prefix = f"{subfolder}/" if subfolder else ""
            root = snapshot_download(str(pretrained_model_name_or_path), cache_dir=cache_dir, revision=revision,
                                     token=token, local_files_only=bool(local_files_only),
                                     allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"])
            folder = Path(root) / (subfolder or "")
        unet = load_nulltext_unet(folder)
        if torch_dtype not in (None, unet.dtype):
            unet.to(dtype=torch_dtype)
        return unet.to(device) if device is not None else unet

    def save_pretrained(self, save_directory: str | os.PathLike, **ignored) -> Path:
        return DomainModel(self, self.metadata or DomainMetadata(domain="")).save_pretrained(save_directory)


class DomainModel:
    """A null-text domain UNet and its metadata. ``unet`` is called with ``encoder_hidden_states=None``."""

    def __init__(self, unet: nn.Module, metadata: DomainMetadata):
        self.unet = unet
        self.metadata = metadata
        unet.metadata = metadata

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json``, the weights and ``nulltext.json`` into ``folder``, each file atomically
        (temporary file, then rename), the metadata last. Other files in ``folder`` are kept (a training run
        keeps its ``training/`` folder next to the model). Refuses a model whose ``E`` was never captured."""
        from safetensors.torch import save_file

        check_E(self.unet, "the domain model to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / CONFIG_FILE, self.unet.to_json_string())
        state = {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(state, tmp, metadata={"format": FORMAT})
        write_text_atomic(folder / METADATA_FILE, json.dumps(asdict(self.metadata), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device=None, dtype=None) -> DomainModel:
        """Load strictly (see :func:`load_nulltext_unet`)."""
        unet = load_nulltext_unet(folder)
        if device is not None or dtype is not None:
            unet.to(device=device, dtype=dtype)
        return cls(unet, unet.metadata)


def make_domain_model(unet: nn.Module, text_encoder, tokenizer, prompt: str, domain: str, base_model: str = "",
                      text_features: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                      scheduler=None, seed: int = 0) -> DomainModel:
    """Capture ``E`` from ``prompt`` (or from given, e.g. optimised, ``text_features`` ``F_T``) and convert
    ``unet`` in place. ``latents`` / ``scheduler``: see :func:`capture_E`."""
    if text_features is None:
        p = next(unet.parameters())
        text_features = encode_prompts(tokenizer, text_encoder, [prompt], device=p.device)
    E = capture_E(unet, text_features, latents=latents, scheduler=scheduler, seed=seed)
    convert_to_nulltext(unet, E)
    check_E(unet)
    return DomainModel(unet.eval(), DomainMetadata(domain=domain, base_model=base_model, prompt=prompt))
