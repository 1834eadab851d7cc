"""bench.miniworld.face_edit's summary: the asked-for attribute's rate, and the control beside it (the same attribute
after the other prompts' edits), which is what shows whether an edit follows its prompt."""

from bench.miniworld.face_edit import PROMPTS, SHORT_PROMPTS, _summary, main


def _edit(prompt, attribute, before, after, strength=0.7):
    return dict(prompt=prompt, attribute=attribute, strength=strength, judge_before=before, judge_after=after,
                seen_before=attribute in before, added=attribute in after and attribute not in before,
                kept_attributes=True, skin_ok=True, outside_identical=True, photo_look=True)


def test_the_control_counts_the_attribute_after_the_other_prompts_only():
    prompts = {"a face with glasses": "glasses", "a face with a hat": "a hat"}
    edits = [
        _edit("a face with glasses", "glasses", [], ["glasses"]),
        _edit("a face with glasses", "glasses", [], ["glasses", "a hat"]),
        _edit("a face with a hat", "a hat", [], ["glasses"]),        # glasses without being asked: the control
        _edit("a face with a hat", "a hat", [], []),
        _edit("a face with a hat", "a hat", ["glasses"], ["glasses"]),  # had them before: not counted
        _edit("a face with a hat", "a hat", [], ["glasses"], strength=0.9),  # another strength: not counted
    ]
    out = _summary(edits, prompts, (0.7, 0.9))
    glasses = out["a face with glasses @0.7"]
    assert glasses["added"][0] == 1.0 and glasses["added_by_others"][0] == 0.5  # 1 of the 2 hat edits counted
    hat = out["a face with a hat @0.7"]
    assert hat["added"][0] == 0.0 and hat["added_by_others"][0] == 0.5  # 1 of the 2 glasses edits
    assert "a face with glasses @0.9" not in out  # no glasses edit at 0.9


def test_a_rate_of_none_or_all_gives_its_bound_not_a_zero_error():
    """0 of 59 is not "0.00 ± 0.00": the binomial standard error is zero there, so the table gives the one-sided
    95% bound (Clopper-Pearson, 1 - 0.05^(1/59) = 0.05)."""
    from bench.miniworld.face_edit import _rate_text

    assert _rate_text((0.0, 0.0, 59)) == "0.00 (95%: ≤ 0.05)"
    assert _rate_text((1.0, 0.0, 2)) == "1.00 (95%: ≥ 0.22)"
    assert _rate_text((0.5, 0.354, 2)) == "0.50 ± 0.35"
    assert _rate_text((0.0, 0.0)) == "0.00 ± 0.00"  # a result written before the count was kept


def test_its_prompts_name_the_face_as_the_mini_captions_do_and_bad_strengths_are_refused(capsys):
    import pytest

    from suite.miniworld.world import prompt_warnings

    assert all(prompt_warnings(p) == [] for p in PROMPTS)
    assert all(prompt_warnings(p) for p in SHORT_PROMPTS)  # the short form: warned about
    with pytest.raises(SystemExit) as stop:
        main(["--output", "unused", "--strengths", "1.5"])
    assert stop.value.code == 2 and "--strengths must be in (0, 1]" in capsys.readouterr().err
