"""The judge's labels: one column per head, IGNORE where a head does not apply, and no learning from those."""

from __future__ import annotations

import numpy as np
import torch

from suite.miniworld import faces as F
from suite.miniworld import judge as J
from suite.miniworld import world as W


def test_labels_fill_the_heads_that_apply():
    obj = J.object_labels(W.make_object("cup", "green", "dots"))
    glaze = J.object_labels(W.make_object("vase", "blue", "stripes", porcelain=True))
    face = J.face_labels(F.Face(hair_colour="red", glasses=True, smiling=True), photo=True)
    bald = J.face_labels(F.Face(hair_style="bald"), photo=False)
    col = {k: i for i, k in enumerate(J.HEADS)}
    assert obj[col["shape"]] == W.SHAPES.index("cup") and obj[col["colour"]] == 1 and obj[col["hair"]] == J.IGNORE
    assert glaze[col["porcelain"]] == 1 and glaze[col["colour"]] == J.IGNORE and glaze[col["pattern"]] == J.IGNORE
    assert face[col["shape"]] == J.JUDGE_SHAPES.index("face") and face[col["colour"]] == J.IGNORE
    assert face[col["photo"]] == 1 and face[col["glasses"]] == 1 and face[col["hat"]] == 0
    assert face[col["hair"]] == J.HAIR.index("red") and bald[col["hair"]] == J.HAIR.index("bald")
    pred = {k: [J.NAMES[k][v]] for k, v in zip(J.HEADS, face) if v != J.IGNORE}
    assert J.face_attributes(pred, 0) == {"glasses", "smiling", "red hair"}


def test_a_head_whose_labels_are_all_ignored_learns_nothing():
    from training.mini_models import train_judge

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
    labels = np.array([J.object_labels(W.make_object("ball", "red")) for _ in range(16)])  # no face heads apply
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in J.Judge().state_dict().items()}
    net = train_judge(images, labels, steps=3, batch=8, log=lambda *_: None)
    after = net.state_dict()
    assert not torch.equal(before["heads.shape.weight"], after["heads.shape.weight"])  # a labelled head moved
    assert torch.equal(before["heads.hair.weight"], after["heads.hair.weight"])  # no gradient, so AdamW skips it (decay too)


def test_the_mini_trainers_use_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """On a CPU without native bf16 (AVX2 only) autocast made a mini Zero-1-to-3 step 16x slower (22.7 s against
    1.4 s); the trainers run in float32 there and in bf16 where oneDNN computes it."""
    from training import mini_models

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        mini_models.native_bf16.cache_clear()  # asked once per process: ask again for this CPU
        with mini_models.cpu_autocast():
            assert (a @ b).dtype == dtype
    mini_models.native_bf16.cache_clear()
