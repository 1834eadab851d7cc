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

    def fake(model, cases, guidance_scale=3.0, steps=30, seeds=None, start=None):  # an IoU: a function of case, seed
        assert start == "noise"  # the sampler's default start reaches the measure
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


def _cup_case():
    # a cup turned 90 degrees at the same elevation: its handle swings from the side to the back
    from suite.miniworld.world import make_object

    return (make_object("cup", "red", "stripes"), 10.0, 0.0, 10.0, 90.0)


def test_unit_draws_give_the_worlds_prior_for_every_shape():
    """The observer's parameters are points of the unit cube of make_object's draws: the centre is the class's
    canonical object (make_object without a generator), a corner the low end of every range."""
    from bench.mini_zero123 import _draws, _UnitDraws
    from suite.miniworld.world import SHAPES, make_object

    for shape in SHAPES:
        n = _draws(shape)
        assert n >= 4  # the pattern's three draws and at least one of the shape's
        centre = make_object(shape, "red", "plain", False, _UnitDraws(np.full(n, 0.5)))
        canonical = make_object(shape, "red", "plain")
        assert centre.params.keys() == canonical.params.keys()
        for k in canonical.params:
            assert np.allclose(centre.params[k], canonical.params[k], atol=1e-12), (shape, k)
        flat = [[x for part in o.profile for point in part for x in point] for o in (centre, canonical)]
        assert len(flat[0]) == len(flat[1]) and np.allclose(flat[0], flat[1], atol=1e-12), shape
    low = make_object("box", "red", "plain", False, _UnitDraws(np.zeros(_draws("box"))))
    assert np.allclose(low.params["half"], (0.24, 0.24, 0.26))


@pytest.mark.parametrize("turn", [90.0, -90.0])
def test_a_candidate_that_is_the_object_matches_its_input_and_target_exactly(turn, one_thread):
    """The search's geometry: the candidate at the point of the unit cube the object was made from (its azimuth the
    input's, not 0; the target higher and turned either way) has the input's exact view and the target's exact
    silhouette; the same object a little turned does not."""
    from bench.mini_zero123 import _candidate, _draws, _Search
    from suite.miniworld.views import iou
    from suite.miniworld.world import make_object

    z = np.random.default_rng(3).random(_draws("box") + 1)
    obj, az0 = _candidate(make_object("box", "green", "plain"), "plain", z)
    search = _Search((obj, 12.0, az0, 35.0, az0 + turn), 32)
    turned = z.copy()
    turned[-1] = (turned[-1] + 10 / 360) % 1
    search.add([z, turned])
    assert search.distance[0] < 1e-6 < 0.01 < search.distance[1]
    inputs, targets = search.views([0, 1])
    assert bool((inputs[0] == search.truth[0]).all()) and bool((targets[0] == search.truth[1]).all())
    assert float(iou(targets[1:], search.truth[1:])[0]) < 0.97


def test_the_ideal_observer_reads_the_input_and_a_blind_one_does_not(one_thread):
    """The observer that searches for the cups that look like the input predicts the target far better than copying,
    and better than one that keeps prior draws whatever the input shows."""
    from bench.mini_zero123 import ideal_observer

    seeing = ideal_observer([_cup_case()], candidates=48, keep=4, rounds=2, seed=1, size=32)
    blind = ideal_observer([_cup_case()], candidates=8, keep=8, rounds=0, seed=1, size=32)  # keeps all 8 prior draws
    assert seeing["input_iou"][0] > 0.9, seeing
    assert seeing["fits_iou"][0] > seeing["copy_iou"][0] + 0.1, seeing
    assert seeing["fits_iou"][0] > blind["fits_iou"][0] + 0.05, (seeing, blind)
    assert blind["copy_iou"][0] == seeing["copy_iou"][0] and blind["evaluated"] == [8]


def test_the_ideal_observer_compares_inputs_through_its_encoding(one_thread):
    """``encode`` decides what the observer sees of the input: the identity changes nothing, a map to the mean colour
    (the shape gone) leaves it fits that explain the input's silhouette worse."""
    from bench.mini_zero123 import ideal_observer

    def run(encode=None):
        return ideal_observer([_cup_case()], candidates=24, keep=3, rounds=1, seed=4, size=32, encode=encode)

    pixels = run()
    assert run(lambda x: x) == pixels
    colour = run(lambda x: x.mean((2, 3), keepdim=True))
    assert colour["input_iou"][0] < pixels["input_iou"][0] - 0.05, (colour, pixels)


@pytest.mark.parametrize("argv, words", [(["--no-model"], "--no-model measures nothing"),
                                          (["--ideal", "20", "--ideal-keep", "12"], "at least twice as many"),
                                          (["--ideal", "-1"], "give 0 (off)"),
                                          (["--ideal", "40", "--ideal-picture", "2"], "add e.g. --output"),
                                          (["--ideal", "40", "--ideal-picture", "-1"], "0 or more"),
                                          (["--ideal-latent"], "act on the observer"),
                                          (["--no-model", "--model", "x", "--ideal", "40"], "contradict"),
                                          (["--training-pairs", "-1"], "give a number of objects"),
                                          (["--training-pairs", "50", "--ideal", "40"], "leave out --ideal")])
def test_bad_ideal_observer_flags_are_one_sentence(argv, words, capsys):
    from bench.mini_zero123 import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1



def test_a_missing_model_folder_is_one_sentence_before_any_model_is_measured(tmp_path, capsys, monkeypatch):
    """Every folder is checked first (the measured models, and the VAE's with --ideal-latent): a bad second --model
    does not cost the first one's minutes."""
    import bench.mini_zero123 as bench
    from suite.miniworld import assets

    monkeypatch.setattr(bench, "per_shape", lambda *a, **k: pytest.fail("measured before the folders were checked"))
    shipped = str(assets.default_dir() / "zero123")
    for argv in (["--model", shipped, str(tmp_path / "none")], ["--ideal", "40", "--ideal-latent", "--model",
                                                                 str(tmp_path / "none")]):
        assert bench.main(argv) == 2
        last = capsys.readouterr().err.splitlines()[-1]  # after transformers' import-time notices, if any
        assert last.startswith("error: ") and "none is not a Zero-1-to-3 folder" in last


def test_training_pairs_are_the_box_phases_own_and_fresh_ones_are_drawn_alike(monkeypatch):
    """``--training-pairs``: the "seen" cases are the box-weighted phase's pairs (its seed for build seed 0), the
    fresh ones the same draw with another seed; every target view of each object of the shapes asked, glaze left
    out (its silhouette on white is not readable)."""
    import bench.mini_zero123 as bench
    import suite.miniworld.views as views
    from training import mini_zero123, miniworld

    seen = []

    def fake_measure(model, cases, guidance_scale, steps, start):
        seen.append(cases)
        return dict(iou=[0.9] * len(cases), copy_iou=[0.8] * len(cases))

    monkeypatch.setattr(views, "measure_novel_views", fake_measure)
    out = bench.training_pairs(None, 30, shapes=("box", "cup"))
    spec = miniworld.box_pairs_spec("full")
    drawn = mini_zero123.pair_objects(30, 5, spec["seed"], spec["shapes"])
    wanted = [(o, e[0], a[0], e[k], a[k]) for o, e, a in drawn if o.shape in ("box", "cup") and not o.porcelain
              for k in range(1, 6)]
    assert [(c[0], *c[1:]) for c in seen[0]] == wanted and len(wanted) % 5 == 0 and wanted
    assert {c[0].shape for c in seen[1]} <= {"box", "cup"} and not any(c[0].porcelain for c in seen[1])
    assert seen[1][0][1:] != seen[0][0][1:]  # other objects, seen from other places
    assert out["seen"]["mean"]["gain"] == pytest.approx(0.1) and "box" in bench.training_pairs_table({"m": out})


def test_training_pairs_follow_the_worlds_build_and_stop_at_its_box_phase(tmp_path, monkeypatch, capsys):
    """The "seen" pairs are those of the build the model came from (its world's MANIFEST.json: seed and size; they
    were always build seed 0's), no more objects than its box phase had, and a model outside a world is refused."""
    import json

    import bench.mini_zero123 as bench
    import suite.miniworld.views as views
    from suite.miniworld import assets
    from training import mini_zero123, miniworld

    seen = []
    monkeypatch.setattr(views, "measure_novel_views", lambda model, cases, **k: seen.append(cases) or
                        dict(iou=[0.9] * len(cases), copy_iou=[0.8] * len(cases)))
    bench.training_pairs(None, 30, build_seed=5, build_size="quick")
    spec = miniworld.box_pairs_spec("quick")
    drawn = mini_zero123.pair_objects(30, 5, 5 + spec["seed"], spec["shapes"])
    assert [c[0] for c in seen[0]] == [o for o, *_ in drawn if o.shape == "box" and not o.porcelain for _ in range(5)]
    with pytest.raises(ValueError, match=f"trained on {spec['objects']} objects"):
        bench.training_pairs(None, spec["objects"] + 1, build_size="quick")

    world = tmp_path / "world"
    (world / "zero123").mkdir(parents=True)
    (world / "zero123" / "model_index.json").write_text("{}")
    monkeypatch.setattr(bench, "training_pairs", lambda *a, **k: pytest.fail("measured outside a world"))
    assert bench.main(["--training-pairs", "10", "--model", str(world / "zero123")]) == 2
    assert "needs to know how" in capsys.readouterr().err.splitlines()[-1]
    (world / assets.MANIFEST).write_text(json.dumps({"seed": 3, "size": "quick"}))
    got = {}

    class Reached(Exception):
        pass

    def record(*a, **k):
        got.update(k)
        raise Reached

    monkeypatch.setattr(bench, "training_pairs", record)
    monkeypatch.setattr("suite.zero123.load_zero123", lambda folder: None)
    with pytest.raises(Reached):
        bench.main(["--training-pairs", "10", "--model", str(world / "zero123")])
    assert got["build_seed"] == 3 and got["build_size"] == "quick"


def test_both_starts_are_measured_on_the_same_cases_and_paired(tmp_path, monkeypatch, capsys):
    """``--start noise input``: each model is measured both ways (the sampler from pure noise, and from the input
    view noised), named apart, and the table pairs the second with the first."""
    import json

    import bench.mini_zero123 as bench
    from suite.miniworld import assets

    starts = []

    def fake(model, per, steps, scale, turn, shapes, samples, start):
        starts.append(start)
        iou = {"noise": 0.80, "input": 0.85}[start]
        n = per * len(shapes)
        return bench._by_shape(np.full(n, iou), np.full(n, 0.82), [s for s in shapes for _ in range(per)])

    monkeypatch.setattr(bench, "per_shape", fake)
    monkeypatch.setattr("suite.zero123.load_zero123", lambda folder: object())
    shipped = str(assets.default_dir() / "zero123")
    assert bench.main(["--per-shape", "2", "--shapes", "box", "--start", "noise", "input", "--output",
                       str(tmp_path / "out")]) == 0
    assert starts == ["noise", "input"]
    results = json.loads((tmp_path / "out" / "zero123.json").read_text())["results"]
    assert list(results) == [f"{shipped} (start: noise)", f"{shipped} (start: input)"]
    assert "+0.050 ± 0.000" in capsys.readouterr().out  # input - noise, paired per case
