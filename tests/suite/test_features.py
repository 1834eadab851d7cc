"""Feature networks for FD / KID / CLIP score (suite.features), loaded through the real code from folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from suite.checks import UserError
from suite.features import check_feature_model, clip_score, load_features
from suite.metrics import frechet_distance, kid


def _images(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_nets(tmp_path_factory):
    """A tiny random DINOv2 (with its image processor) and a tiny random CLIP (text + vision, with a tokenizer but
    no image-processor file: the CLIP defaults are used), saved as a user's folders are."""
    from transformers import (
        BitImageProcessorPil,
        CLIPConfig,
        CLIPModel,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
    )

    from suite.testing import make_tokenizer_files

    root = tmp_path_factory.mktemp("features")
    dino = root / "dino"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(dino)
    BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(dino)
    clip = root / "clip"
    make_tokenizer_files(clip)
    tok = CLIPTokenizer.from_pretrained(clip)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      vocab_size=len(tok), max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=224, patch_size=32), projection_dim=16)
    CLIPModel(cfg).save_pretrained(clip)
    return dino, clip


def test_dinov2_and_clip_load_from_folders_and_embed(tiny_nets):
    dino, clip = tiny_nets
    ims = _images(5, 0)
    d = load_features(str(dino))
    f = d.images(ims)
    assert f.shape == (5, 32) and f.dtype == np.float64 and not d.has_text
    assert np.allclose(d.images(ims[:2]), f[:2], atol=1e-5)  # an image's features do not depend on its batch
    c = load_features(str(clip))
    fi, ft = c.images(ims), c.texts(["a photo of a cup", "a vase"])
    assert fi.shape == (5, 16) and ft.shape == (2, 16) and c.has_text
    s = clip_score(fi[:2], ft)
    assert s.shape == (2,) and (s >= 0).all() and (s <= 100).all()
    assert clip_score(ft, ft) == pytest.approx([100, 100])  # a text against itself: cosine 1
    with pytest.raises(UserError, match="no text encoder"):
        d.texts(["a cup"])
    with pytest.raises(UserError, match="no text encoder"):  # refused before any image is made
        check_feature_model(str(dino), "--clip", text=True)
    check_feature_model(str(clip), "--clip", text=True)


def test_not_a_feature_model_is_one_sentence(tmp_path, tiny_dir):
    with pytest.raises(UserError, match="not a feature model"):
        check_feature_model(str(tiny_dir / "sd" / "unet"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="bert model, not a feature model"):
        load_features(str(tmp_path / "bert"))
    with pytest.raises(UserError, match="no config.json"):
        check_feature_model(str(tiny_dir / "sd"))


def test_a_hub_feature_model_not_cached_offline_is_one_sentence_before_any_image(monkeypatch):
    """Offline, a hub id that is not in the cache was accepted by the check and failed only after every method's
    images were made (hours with real weights)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the local cache"):
        check_feature_model("someone/no-such-feature-model-0")


def test_judge_features_separate_two_mini_world_sets():
    """In the judge's space, the Fréchet distance of a set with itself is 0 and two different mini-world sets (the
    porcelain domain and the open world) are far apart, farther than two halves of one set."""
    from suite.miniworld import world as W
    from suite.miniworld.render import render_view

    net = load_features("judge")
    rng = np.random.default_rng(0)

    def renders(porcelain, n):
        out = []
        for _ in range(n):
            obj = W.random_object(rng, porcelain=porcelain, shapes=W.DOMAIN_SHAPES if porcelain else W.SHAPES)
            v = W.random_view(rng, porcelain=porcelain)
            rgb = render_view(obj, v["elevation"], v["azimuth"], size=64).rgb[0]
            out.append(Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        return out

    dom, other = net.images(renders(True, 48)), net.images(renders(False, 24))
    assert frechet_distance(dom, dom) == pytest.approx(0, abs=1e-6 * frechet_distance(dom, other))
    assert frechet_distance(dom[:24], other) > 3 * frechet_distance(dom[:24], dom[24:])
    assert kid(dom[:24], other) > 10 * abs(kid(dom[:24], dom[24:]))
