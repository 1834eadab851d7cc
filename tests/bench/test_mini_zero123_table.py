"""bench.mini_zero123's comparison of two models: the paired difference is taken case by case."""

from __future__ import annotations

import numpy as np
import pytest


def test_paired_difference_is_per_case_and_appears_in_the_table():
    from bench.mini_zero123 import paired, table
    from suite.miniworld.world import SHAPES

    rng = np.random.default_rng(0)
    shapes = [SHAPES[i % len(SHAPES)] for i in range(4 * len(SHAPES))]
    a = rng.uniform(0.6, 0.9, len(shapes))
    b = a + np.where(np.asarray(shapes) == "box", 0.05, 0.0)  # better on boxes only, case by case

    def result(iou):
        stats = dict(n=4, iou=float(iou.mean()), iou_se=0.0, copy_iou=0.8, copy_iou_se=0.0, gain=0.0, gain_se=0.0)
        return {**{s: stats for s in (*SHAPES, "mean")},
                "cases": dict(shape=shapes, iou=iou.tolist(), copy_iou=[0.8] * len(shapes))}

    results = {"old": result(a), "new": result(b)}
    d = paired(results, "old", "new")
    assert abs(d["box"][0] - 0.05) < 1e-9 and d["box"][1] < 1e-9  # the same gain on every box: no spread
    assert abs(d["cup"][0]) < 1e-9 and abs(d["mean"][0] - 0.05 / len(SHAPES)) < 1e-9
    md = table(results)
    assert "new - old (paired)" in md and "+0.050 ± 0.000" in md.split("| box")[1].split("\n")[0]
    fewer = {**results["new"], "cases": {k: v[:7] for k, v in results["new"]["cases"].items()}}
    with pytest.raises(ValueError, match="different cases"):
        paired({"old": results["old"], "fewer": fewer}, "old", "fewer")


def test_a_subset_of_shapes_keeps_its_cases_and_seeds_and_samples_average_other_seeds(monkeypatch):
    import suite.miniworld.views as views
    from bench.mini_zero123 import SAMPLE_STRIDE, per_shape

    calls = []

    def fake(model, cases, guidance_scale=3.0, steps=30, seeds=None):  # an IoU that is a function of case and seed
        calls.append(list(seeds))
        return {"iou": [(s % 997) / 997 for s in seeds], "copy_iou": [c[1] / 100 for c in cases]}

    monkeypatch.setattr(views, "measure_novel_views", fake)
    everything = per_shape(None, per_shape=3)
    assert calls[0] == list(range(3 * 7))  # sample 0: the seeds measure_novel_views has always used (0 + i)
    boxes = per_shape(None, per_shape=3, shapes=["box"])
    assert list(boxes) == ["box", "mean", "cases"] and boxes["box"] == everything["box"]
    both = per_shape(None, per_shape=3, shapes=["box"], samples=2)
    assert calls[-1] == [SAMPLE_STRIDE + i for i in calls[-2]]  # the second sample: other seeds, same cases
    expect = [((s % 997) + ((SAMPLE_STRIDE + s) % 997)) / 2 / 997 for s in calls[-2]]
    assert np.allclose(both["cases"]["iou"], np.round(expect, 4))
    assert both["box"]["copy_iou"] == boxes["box"]["copy_iou"]
