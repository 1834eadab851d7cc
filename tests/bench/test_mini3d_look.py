"""bench.mini3d_look: the look of a porcelain view through the mini world's VAE and the mini Zero-1-to-3."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_the_vae_round_trip_loses_the_look_some_latent_holds_and_the_encoder_pull_carries_most_of_it(tmp_path):
    from bench.mini3d_look import GAPS, KEYS, measure
    from bench.mini3d_stage3 import world_input
    from suite.miniworld.assets import default_dir
    from suite.zero123 import load_zero123

    image, mask = world_input("cup", 0, tmp_path / "cup")
    blue, blue_mask = world_input("cup", 0, tmp_path / "blue", porcelain=False)
    row, picture = measure(load_zero123(str(default_dir() / "zero123")), Image.open(image), Image.open(mask), "cup", 0,
                           twin=(Image.open(blue), Image.open(blue_mask)), fit_steps=40)
    assert set(row) == {*KEYS, *GAPS} and picture.shape == (3, 64, 64 * 10)
    assert row["input"] < 0.04  # the world's own porcelain (a blue object: about 0.16)
    assert row["vae"] > row["input"] + 0.03, row  # measured: 0.024 -> 0.082 on 36 objects
    assert row["input"] < row["input32"] < row["vae"], row  # the grid softens the look, less than the round trip
    assert all(np.isfinite(row[f"az{a}"]) and row[f"az{a}"] > row["input"] for a in (0, 90, 180, 270)), row
    # Some latent decodes much nearer the input than the encoder's own (measured at 300 steps: 0.039 against 0.082
    # on 36 objects): the round trip's loss is not the decoder's capacity.
    assert row["decoder"] < row["vae"] - 0.015, row
    # The blue twin pulled towards the porcelain view's latent: the latent gap falls (at 300 steps to under 0.2% of
    # the twin's) and the look comes most of the way (36 objects at 300 steps: 0.162 -> 0.068 free, 0.053 on the grid).
    assert row["twin"] > 0.12, row
    for pull in ("pull", "pull32"):
        assert row[f"{pull}_gap"] < 0.2 and row[pull] < row["twin"] - 0.05, row


def test_bad_flags_are_one_sentence(capsys):
    from bench.mini3d_look import main

    for argv in (["--seeds", "0"], ["--weights", "lots"], ["--weights", "1.25", "1.250"], ["--weights", "none", "1"]):
        assert main(["--output", "unused", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_a_view_with_no_object_is_left_out_of_its_column_and_the_table_says_so():
    from bench.mini3d_look import summarise, table

    nan = float("nan")
    rows = [dict(input=0.1, input32=0.12, vae=0.2, decoder=0.15, az0=0.3, az90=nan, az180=0.3, az270=0.3),  # no twin
            dict(input=0.1, input32=0.12, vae=0.4, decoder=0.15, az0=0.5, az90=nan, az180=0.5, az270=0.5)]
    s = summarise(rows)
    assert abs(s["vae"][0] - 0.3) < 1e-12 and s["vae"][2] == 2 and abs(s["vae_change"][0] - 0.2) < 1e-12
    assert s["az90"] == [None, None, 0] and s["az90_change"][2] == 0 and s["pull"] == [None, None, 0]
    assert "twin_change" not in s and s["pull_gap"] == [None, None, 0]
    md = table({"kind": s})
    assert "| kind | 2 | 0.100 ± 0.000 | 0.120 ± 0.000 (+0.020) | 0.300 ± 0.100 (+0.200) |" in md and "| - |" in md
    assert "latent gap" not in md  # no twin, no pulls: no line about them
