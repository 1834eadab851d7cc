"""Image (and text) feature networks for the evaluation metrics (:mod:`suite.metrics`), all loaded through
``transformers`` or shipped with the suite, never through torchvision:

* ``judge``: the mini world's judge (:mod:`suite.miniworld.judge`), its 256-d penultimate features at 64x64; the
  mini preset's default (offline, and trained on the world it measures).
* ``dinov2``: DINOv2's class token (``facebook/dinov2-base``, 768-d), the feature space the generative-evaluation
  literature now prefers to Inception's for Fréchet distances (Stein et al. 2023, "Exposing flaws of generative
  model evaluation metrics").
* ``clip``: CLIP's projected image embedding (``openai/clip-vit-large-patch14``); with a CLIP model the text
  embedding too, for the CLIP score (Hessel et al. 2021; here ``100 * max(cos, 0)`` as torchmetrics writes it).
* Any local folder or hub id of a DINOv2 or CLIP model (``config.json``'s ``model_type`` decides how it is read);
  anything else is refused in one sentence.

Images go in as PIL images; features come out as float64 numpy arrays ``[n, d]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checks import UserError

__all__ = ["FeatureNet", "load_features", "check_feature_model", "clip_score", "NAMES"]

#: short names -> hub ids (``judge`` is the mini world's shipped judge)
NAMES = {"dinov2": "facebook/dinov2-base", "clip": "openai/clip-vit-large-patch14"}
KINDS = {"dinov2": "dinov2", "clip": "clip", "clip_vision_model": "clip"}


class FeatureNet:
    """A feature network: ``images(list of PIL) -> [n, d]``; ``texts(list of str) -> [n, d]`` for CLIP models
    (``has_text``). ``name`` says what it is (recorded with every number it makes)."""

    def __init__(self, name: str, embed_images, embed_texts=None, batch: int = 64):
        self.name, self._images, self._texts, self.batch = name, embed_images, embed_texts, batch

    @property
    def has_text(self) -> bool:
        return self._texts is not None

    def images(self, images) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch):
                out.append(self._images([im.convert("RGB") for im in images[i:i + self.batch]]).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not self.has_text:
            raise UserError(f"the feature model {self.name} has no text encoder: give a CLIP model for text alignment")
        texts = list(texts)
        with torch.inference_mode():
            return np.concatenate([self._texts(texts[i:i + self.batch]).double().cpu().numpy()
                                   for i in range(0, len(texts), self.batch)])


def clip_score(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Per-pair CLIP score ``100 * max(cos(image, text), 0)`` (torchmetrics' convention)."""
    a = image_features / np.linalg.norm(image_features, axis=1, keepdims=True)
    b = text_features / np.linalg.norm(text_features, axis=1, keepdims=True)
    return 100 * np.clip((a * b).sum(1), 0, None)


def load_features(ref: str, device="cpu", flag: str = "--features") -> FeatureNet:
    """``judge``, ``dinov2``, ``clip``, or a folder / hub id of a DINOv2 or CLIP model (see the module)."""
    ref = str(ref).strip()
    if ref.lower() == "judge":
        return _judge(device)
    ref = NAMES.get(ref.lower(), ref)
    from .models import _hub_kwargs, _load

    path, is_local = _resolve(ref, flag)
    model_type = _kind(path, is_local, flag)
    return _load("feature model", flag, path, is_local, lambda: _transformers_net(path, model_type, device,
                                                                                 _hub_kwargs(is_local)))


def check_feature_model(ref: str, flag: str = "--features", text: bool = False) -> None:
    """One sentence, before any model loads, if ``ref`` cannot be a feature model (missing folder, another kind of
    model; with ``text``, one without a text encoder); ``judge`` checks the mini world's files."""
    ref = str(ref).strip()
    no_text = f"{flag} {ref!r} has no text encoder: give a CLIP model (clip, or a CLIP folder or hub id)"
    if ref.lower() == "judge":
        if text:
            raise UserError(no_text)
        from .miniworld.assets import check

        check()
        return
    path, is_local = _resolve(NAMES.get(ref.lower(), ref), flag)
    from .models import offline

    if not is_local and offline():  # else every image is made before it fails
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise UserError(f"{flag} {ref!r} ({path}) is not in the local cache and offline mode (HF_HUB_OFFLINE) "
                            f"forbids downloading it: download it once online, or give a local folder or judge "
                            f"(mini world)")
    if is_local or ref.lower() in NAMES:
        model_type = _kind(path, is_local, flag) if is_local else {"dinov2": "dinov2", "clip": "clip"}[ref.lower()]
        if text and model_type != "clip":
            raise UserError(no_text)


def _resolve(ref: str, flag: str) -> tuple[str, bool]:
    from .models import resolve

    path, is_local = resolve(ref, "feature model", flag)
    if is_local and not (Path(path) / "config.json").is_file():
        raise UserError(f"{path!r} has no config.json, so it is not a transformers feature model: give {flag} judge "
                        f"(mini world), dinov2, clip, or a DINOv2 or CLIP folder or hub id")
    return path, is_local


def _kind(path: str, is_local: bool, flag: str) -> str:
    if is_local:
        try:
            config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
            model_type = config.get("model_type") if isinstance(config, dict) else None
        except (OSError, ValueError) as err:
            raise UserError(f"the feature model {path!r} has an unreadable config.json ({err}): give a DINOv2 or CLIP "
                            f"model folder") from None
    else:
        from transformers import AutoConfig

        from .models import _hub_kwargs, _load

        model_type = _load("feature model", flag, path, False,
                           lambda: AutoConfig.from_pretrained(path, **_hub_kwargs(False))).model_type
    if model_type not in KINDS:
        raise UserError(f"{path!r} is a {model_type or 'unknown'} model, not a feature model this suite reads: give "
                        f"{flag} judge (mini world), dinov2, clip, or a DINOv2 or CLIP folder or hub id")
    return model_type


def _processor(path: str, kind: str, kwargs: dict):  # kind: dinov2 or clip
    """The model's own image processor (PIL backend: no torchvision), or the family's defaults if it has none."""
    from transformers import AutoImageProcessor, BitImageProcessorPil, CLIPImageProcessorPil

    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
    except (OSError, ValueError):
        if kind == "dinov2":  # facebook/dinov2-*'s preprocessing
            return BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                        do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                        image_std=[0.229, 0.224, 0.225])
        return CLIPImageProcessorPil()


def _transformers_net(path: str, model_type: str, device, kwargs: dict) -> FeatureNet:
    kind = KINDS[model_type]
    proc = _processor(path, kind, kwargs)

    def pixels(images):
        return proc(images=images, return_tensors="pt")["pixel_values"].to(device)

    if kind == "dinov2":
        from transformers import Dinov2Model

        net = Dinov2Model.from_pretrained(path, **kwargs).to(device).eval()
        return FeatureNet(f"dinov2:{path}", lambda ims: net(pixel_values=pixels(ims)).pooler_output)
    from transformers import AutoTokenizer, CLIPModel, CLIPVisionModelWithProjection

    if model_type == "clip_vision_model":
        vision = CLIPVisionModelWithProjection.from_pretrained(path, **kwargs).to(device).eval()
        return FeatureNet(f"clip:{path}", lambda ims: vision(pixel_values=pixels(ims)).image_embeds)
    net = CLIPModel.from_pretrained(path, **kwargs).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, **kwargs)

    def texts(prompts):
        t = tok(prompts, padding=True, truncation=True, max_length=net.config.text_config.max_position_embeddings,
                return_tensors="pt").to(device)
        out = net.get_text_features(**t)
        return getattr(out, "pooler_output", out)

    def images(ims):
        out = net.get_image_features(pixel_values=pixels(ims))
        return getattr(out, "pooler_output", out)

    return FeatureNet(f"clip:{path}", images, texts)


def _judge(device) -> FeatureNet:

    from .miniworld.assets import images_to_tensor, load_judge

    judge = load_judge().to(device)

    def images(ims):  # each image at the judge's 64 x 64 (real folders mix sizes)
        from PIL import Image

        return judge.embed(images_to_tensor([im if im.size == (64, 64) else im.resize((64, 64), Image.BICUBIC)
                                             for im in ims]).to(device))

    net = FeatureNet("judge (mini world)", images)
    net.judge = judge
    return net
