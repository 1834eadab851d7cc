"""Pipeline components that diffusers has no class for, and the old bundle format.

* :class:`UNetCollection`: named community SD1.5 UNets (fine-tunes used as control terms) as ONE diffusers
  component, so that ``InDomainPipeline`` registers, saves, loads, moves and offloads them like its other models.
  (The domain UNet is :class:`suite.nulltext.NullTextUNet`, a ``UNet2DConditionModel`` itself.)
* :func:`read_bundle`: the folder layout ``InDomainPipeline.save_pretrained`` wrote before it became a
  diffusers pipeline (``bundle.json`` + ``sd/``, ``domain/``, ``controlnet/``, ``community/<name>/``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config

from .threads import building_models

BUNDLE_FILE = "bundle.json"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class UNetCollection(ModelMixin, ConfigMixin):
    """Named ``UNet2DConditionModel``\\ s: ``unets[name]``. The config holds each UNet's config; the weights are
    one safetensors file (keys ``unets.<name>.*``)."""

    @register_to_config
    def __init__(self, unet_configs: dict | None = None):
        super().__init__()
        self.unets = torch.nn.ModuleDict({name: UNet2DConditionModel.from_config(cfg)
                                          for name, cfg in (unet_configs or {}).items()})

    @classmethod
    def of(cls, unets: dict[str, torch.nn.Module]) -> UNetCollection:
        """Wrap existing UNets (no copy of their weights)."""
        from accelerate import init_empty_weights

        for name in unets:
            if not _NAME.match(str(name)):
                raise ValueError(f"community model name {name!r} is not usable: use letters, digits, '_' and '-'")
        configs = {name: {k: v for k, v in dict(u.config).items() if not k.startswith("_")}
                   for name, u in unets.items()}
        with building_models(), init_empty_weights():  # the real modules replace these at once; one thread builds
            collection = cls(unet_configs=configs)
        collection.unets = torch.nn.ModuleDict(unets)
        return collection

    def as_dict(self) -> dict[str, torch.nn.Module]:
        return dict(self.unets.items())

    def set_attention_slice(self, slice_size) -> None:
        """diffusers' attention slicing (``pipe.enable_attention_slicing()``), applied to every UNet."""
        for unet in self.unets.values():
            unet.set_attention_slice(slice_size)

    def forward(self, *args, **kwargs):  # pragma: no cover - a container: its UNets are called directly
        raise TypeError("UNetCollection is a container: call one of its UNets (collection.unets[name])")


def read_bundle(folder: Path) -> dict | None:
    """The references an old bundle folder holds (``sd``, ``domain_model``, ``controlnet``, ``community``,
    ``domain``), or ``None`` when ``folder`` is not one."""
    info_file = Path(folder) / BUNDLE_FILE
    if not info_file.is_file() or (Path(folder) / "model_index.json").is_file():
        return None
    info = json.loads(info_file.read_text())
    return dict(
        sd=str(folder / "sd"),
        domain_model=str(folder / "domain") if info.get("has_domain_model") else None,
        controlnet=str(folder / "controlnet") if info.get("has_controlnet") else None,
        community={name: str(folder / "community" / name) for name in info.get("community", [])},
        domain=info.get("domain"),
    )
