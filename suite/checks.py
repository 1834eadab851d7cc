"""Checks on user input, shared by every layer: the library functions, the CLI's argparse types and the app.

Each check either returns the value in its proper type or raises one sentence that names the bad value and
the fix. :class:`UserError` marks a mistake in the user's input (printed without a traceback, exit code 2);
it is a ``ValueError``, so it reads naturally from Python too.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable

__all__ = ["UserError", "LaunchError", "Progress", "check_finite", "check_int", "check_range", "finite_float", "int_at_least",
           "check_count", "check_weight", "check_prompt", "seed_arg", "changed_settings", "unrecorded_settings", "warn_unrecorded", "said_changes", "RECORDED_SINCE", "format_weight", "format_weights", "AUTO", "RECOMMENDED", "MAX_SEED", "MAX_IMAGES", "MAX_STEPS", "MAX_SIDE", "MAX_WEIGHT", "MAX_PROMPT"]

#: A progress callback: ``progress(stage, done, total, info)`` (``info``: a dict of extra figures, e.g. the loss).
Progress = Callable[[str, int, int, dict], None]


class UserError(ValueError):
    """An error caused by the user's input; printed as one sentence, exit code 2. It is a ``ValueError``, so
    code that calls the library and catches ``ValueError`` catches it too."""


class LaunchError(UserError):
    """A mistake in how a run's processes were launched, which every process of a machine finds alike: only the
    machine's first process (``LOCAL_RANK`` 0) says it, even where the others had set up torch.distributed."""


def check_finite(value, what: str = "weight") -> float:
    """A finite float, or one clear error naming the bad value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    return v


RECORDED_SINCE = {
    "defaults": "the guidance a domain gets where no weight or rule is given (its recommended weights and rule; for a "
                "domain of your own on the mini world they changed on 2026-12-07, from the automatic weights): if "
                "its images used them, the new ones may differ (their weights are in manifest.jsonl or each image's "
                "record); give the weights, or choose another --output",
}
"""Settings a resume's record holds only since some version, and what a record without them may hide."""


def unrecorded_settings(old: dict, new: dict) -> list[str]:
    """The settings of :data:`RECORDED_SINCE` that ``new`` has and the older record ``old`` lacks, each as the
    sentence a resume logs (the record cannot tell whether they changed)."""
    return [f"this folder's record was written before the suite recorded {RECORDED_SINCE[k]}" for k in RECORDED_SINCE
            if k in new and k not in old]


def warn_unrecorded(old: dict, new: dict, warned: set) -> None:
    """Log each of :func:`unrecorded_settings`'s sentences once (``warned``: those a resume logged already)."""
    import logging

    for sentence in unrecorded_settings(old, new):
        if sentence not in warned:
            logging.getLogger("suite").warning("--resume: %s", sentence)
            warned.add(sentence)


def said_changes(old: dict, new: dict, keys) -> str:
    """``key: old then, new now`` for each of :func:`changed_settings`'s keys, for a refused resume's sentence."""
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)


def changed_settings(old: dict, new: dict, equivalent: dict | None = None) -> list[str]:
    """The keys whose values differ between two records of settings (a resume's check), except where both values are
    among ``equivalent[key]`` (e.g. ``(None, 512)``: a native size not given and given by hand)."""
    eq = equivalent or {}
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
            and not (old.get(k) in eq.get(k, ()) and new.get(k) in eq.get(k, ()))]


def check_int(value, what: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]`` (``3.0`` is accepted, ``3.5`` and ``"x"`` are not)."""
    try:
        v = int(value)
        # an integer is taken exactly (2**53 + 1 is no float); anything else must be a whole number; True and False
        # are not counts (max_steps=True trained one step)
        ok = not isinstance(value, bool) and (isinstance(value, numbers.Integral) or v == float(value))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if maximum is not None and (not ok or not minimum <= v <= maximum):
        raise UserError(f"{what} must be a whole number from {minimum} to {maximum}, got {value!r}")
    if not ok:
        raise UserError(f"{what} must be a whole number, got {value!r}")
    if v < minimum:
        raise UserError(f"{what} must be at least {minimum}, got {v}")
    return v


def check_runs_a_step(steps: int, strength: float, what: str = "the photo", steps_flag: str = "--steps",
                      strength_flag: str = "--strength") -> None:
    """One sentence where ``strength`` of ``steps`` runs no denoising step (img2img runs ``int(steps * strength)``;
    diffusers refuses it too): the start image would come back unchanged, through the VAE."""
    if int(steps * strength) < 1:
        fix = (f"raise {steps_flag} to at least {math.ceil(1 / strength)} or {strength_flag}" if strength > 0
               else f"raise {strength_flag} above 0")
        raise UserError(f"{strength_flag} {strength:g} of {steps} steps runs no step, so {what} would come back "
                        f"unchanged: {fix}")


def check_range(value, what: str, lo: float, hi: float, meaning: str = "") -> float:
    """A finite number in ``[lo, hi]``; ``meaning`` explains the ends, e.g. ``"0 keeps the photo, 1 ignores it"``."""
    v = check_finite(value, what)
    if not lo <= v <= hi:
        raise UserError(f"{what} must be between {lo:g} and {hi:g}, got {v:g}" + (f" ({meaning})" if meaning else ""))
    return v


# ----------------------------------------------------------------------------------------------------------
# argparse types: the same checks, reported by argparse as "argument --flag: <sentence>"
def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def seed_arg(text: str) -> int:
    """An argparse type: a random seed, a whole number from 0 to :data:`MAX_SEED`."""
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {MAX_SEED}, got {text!r}")
    return v


def int_at_least(minimum: int, maximum: int | None = None, why: str = ""):
    """An argparse type: a whole number >= ``minimum`` (and <= ``maximum``, ``why`` saying what the bound is)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {maximum}{f' ({why})' if why else ''}")
        return v

    parse.__name__ = f"int_at_least_{minimum}"
    return parse



# ----------------------------------------------------------------------------------------------------------
# limits on one request: checked at the edge, before any model loads (the CLI's --allow-large lifts the first three)
MAX_IMAGES = 64        # images per run
MAX_STEPS = 999        # sampling steps per run (the paper samples with 100; at 1000 a 1000-step schedule takes a
                       # timestep twice, and the image was black: NaN latents)
MAX_SIDE = 4096        # pixels per side of a generated image
MAX_PROMPT = 10_000    # characters of a prompt (the text encoder reads 77 tokens; a JPEG's settings comment holds 64 KB)
MAX_SEED = 2**32 - 1   # random seeds (numpy's and every torch generator's range)
MAX_WEIGHT = 100.0     # |w| of any guidance weight (the paper's weights are below 10; 1e308 overflows to black)
LARGE_HINT = "or pass --allow-large if you really mean it"


def check_count(value, what: str, maximum: int, minimum: int = 1, allow_large: bool = False) -> int:
    """A whole number in ``[minimum, maximum]``; above the maximum only with ``allow_large`` (the flag named)."""
    v = check_int(value, what, minimum)
    if v > maximum and not allow_large:
        raise UserError(f"{what} is {v}, more than the limit of {maximum}: choose a smaller value, {LARGE_HINT}")
    return v


AUTO = "auto"                # a guidance weight set by the paper's automatic rule (Sec. 3.4)

def format_weight(v) -> str:
    """A guidance weight as logs and the app show it: ``1``, ``7.45``, per sample ``[7.59, 7.45]``."""
    if isinstance(v, list | tuple):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return f"{v:.3g}" if isinstance(v, float | int) else str(v)


def format_weights(weights: dict) -> str:
    """``domain=1, control=7``: the weights a sampling run used (its ``weights``)."""
    return ", ".join(f"{k}={format_weight(v)}" for k, v in weights.items())

RECOMMENDED = "recommended"  # a guidance weight not given: the domain's recommended one (else automatic)


def check_weight(value, what: str) -> float | str | None:
    """A guidance weight: ``None`` or ``"recommended"`` (not given: the domain's recommended weight), ``"auto"``
    (the paper's automatic rule) or a finite number with ``|w| <= MAX_WEIGHT``."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in (AUTO, RECOMMENDED):
        return AUTO if value.strip().lower() == AUTO else None
    if isinstance(value, bool):  # JSON's true was taken as the weight 1
        raise UserError(f"{what} must be a number, \"auto\" or \"recommended\", got {str(value).lower()}")
    v = check_finite(value, what)
    if abs(v) > MAX_WEIGHT:
        raise UserError(f"{what} is {v:g}: guidance weights must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g} "
                        f"(the paper uses 1 to 10; larger weights overflow to a black image)")
    return v


AUTO_NORMS = ("direction", "prediction")  # what the automatic weights' norms are of (suite.guidance.AutoWeights)


def check_guidance_settings(domain_weight, control_weight, w0, auto_norm: str) -> None:
    """The guidance settings of a sampling request, one sentence each: the weights (:func:`check_weight`), ``w0``
    and ``auto_norm``; checked whether or not they are read (fixed weights never read ``w0`` or ``auto_norm``)."""
    for value, what in ((domain_weight, "the domain weight"), (control_weight, "the control weight")):
        check_weight(value, what)
    check_finite(w0, "w0")
    if auto_norm not in AUTO_NORMS:
        raise UserError(f"auto_norm must be {' or '.join(map(repr, AUTO_NORMS))}, got {auto_norm!r}")


def check_prompt(text: str | None, what: str = "the prompt") -> str:
    """A prompt as clean text: surrounding whitespace removed (a prompt of only spaces is the empty prompt).

    Bytes that are not UTF-8 (a shell passing ``$'\\xff'``, a file in another encoding) arrive as lone
    surrogates; they are refused with one sentence rather than guessed at."""
    if isinstance(text, list | tuple):  # what every diffusers user writes; silently str()-ing it would be garbage
        if len(text) == 1:
            text = text[0]
        else:
            raise UserError(f"{what} is a list of {len(text)} prompts: give one prompt here (the pipeline's prompt "
                            f"argument takes a list, with num_images_per_prompt images of each)")
    if text is not None and not isinstance(text, str):
        raise UserError(f"{what} must be text, got {type(text).__name__}")
    text = "" if text is None else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        bad = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
        raise UserError(f"{what} is not valid UTF-8 text (it holds the byte 0x{ord(bad) & 0xFF:02x}): type it again, "
                        f"or save the file it came from as UTF-8") from None
    text = text.strip()
    if len(text) > MAX_PROMPT:  # sampled in full, then lost at the save (a .jpg's settings comment holds 64 KB)
        raise UserError(f"{what} is {len(text):,} characters long, over the {MAX_PROMPT:,} allowed: the text encoder "
                        f"reads only its first 77 tokens (a few hundred characters), so shorten it")
    return text
