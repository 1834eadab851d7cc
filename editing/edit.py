"""SDEdit editing of photos with in-domain multi-guidance (paper Sec. 4, Fig. 9), made for face photos.

The photo's face is detected, cropped and aligned to the framing the face domain was trained on (FFHQ),
resized to the model's native resolution, edited by the core pipeline's start-image path (SDEdit: the
crop's latent is noised to the start step that ``strength`` selects, then denoised by the same sampling
loop with ``eps_sd + w_d (eps_d - eps_sd) + w_c (eps_c - eps_sd)``, Eq. 3), and pasted back into the full
photo with a feathered mask. Pixels outside the mask are never written: they stay identical to the input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from suite.checks import Progress, check_guidance_settings, check_int, check_prompt, check_range
from suite.checks import check_runs_a_step as _runs_a_step
from suite.extras import require
from suite.images import DEFAULT_MAX_PIXELS
from suite.pipeline import DEFAULT_STEPS, quiet, report_steps
from suite.rules import parse_rule

from .align import Region, animal_region, extract, face_region, feather_mask, paste, whole_image_region
from .faces import Face, FaceDetector, GivenLandmarks, detector_for
from .images import load_mask, prepare_photo

STAGES = ("detect", "align", "encode", "denoise", "decode", "paste")
MIN_FACE = 64  # px: a smaller face would be upscaled more than 8x into the model's 512 px crop
MAX_COPIES_BYTES = 4e9  # the edited copies of the photo, all held until they are returned (64 of 120 MP: 23 GB)


def _no_face(detector, rgb: np.ndarray, framing: str) -> str:
    """The sentence for a photo without a face: names a lost EXIF rotation when the face is found turned."""
    what = "face" if framing == "face" else "animal face"
    found = []
    turns = ((1, "90 degrees counter-clockwise"), (3, "90 degrees clockwise")) if framing == "face" else ()
    for k, turn in turns:  # (the cat cascades fire too often on turned photos to ask them)
        faces = detector.detect(np.ascontiguousarray(np.rot90(rgb, k)))
        if faces:
            found.append((max(f.area for f in faces), turn))
    if found:  # the larger face wins (a face upside down can give a small false detection)
        turn = max(found)[1]
        return (f"no upright {what} was found, but there is one when the photo is turned {turn}: its EXIF "
                f"orientation was probably lost; rotate the photo upright and edit it again")
    if framing == "face":
        return ("no face was found in the image: edit the whole image with --whole-image (whole_image=True), or "
                "give a photo with a face seen from the front or partly turned")
    return ("no animal face was found in the image: edit the whole image with --whole-image (whole_image=True), "
            "or give a photo of a cat's face seen from the front")


@dataclass
class EditResult:
    """``images``: full-size edited photos (same size and orientation as the input, as the user sees it).
    ``face_boxes``: the edited faces' ``(x0, y0, x1, y1)`` in input pixel coordinates ([] for the whole image).
    ``timings``: seconds spent in detect (incl. loading the detector), align (the crops), encode, denoise, decode,
    paste.
    ``regions``: the crop regions (affine maps crop -> image). ``weights``: the guidance weights used per crop."""

    images: list[Image.Image]
    face_boxes: list[tuple[float, float, float, float]]
    timings: dict[str, float]
    faces: list[Face] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    guidance_rule: str | None = None  # the rule applied ("paper" for none; suite.rules)


def check_runs_a_step(steps: int, strength: float) -> None:
    """One sentence where ``strength`` of ``steps`` runs no denoising step (:func:`suite.checks.check_runs_a_step`):
    the photo would come back unchanged. Strength 0 (keep the photo) is allowed."""
    if strength > 0:
        _runs_a_step(steps, strength)


def edit_photo(pipe, image: Image.Image, *, prompt: str = "", strength: float = 0.6, domain_weight=None,
               control_weight=None, mask: Image.Image | None = None, all_faces: bool = False,
               whole_image: bool = False, num_images: int = 1, seed: int = 0, steps: int | None = None,
               progress: Progress | None = None, negative_prompt: str = "", w0: float = 7.0,
               auto_norm: str = "direction", detector: FaceDetector | None = None, feather: float = 0.08,
               framing: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               guidance_rule=None, mask_blend: bool = False) -> EditResult:
    """Edit a photo with SDEdit through ``pipe`` (an :class:`suite.pipeline.InDomainPipeline`).

    ``prompt``: control text (``""`` = domain guidance only). ``strength``: 0 keeps the photo (bit-identical: no
    model runs, the faces are still found and reported), 1 starts from pure noise. ``domain_weight`` / ``control_weight``: ``w_d`` / ``w_c``: a number,
    ``"auto"`` (Sec. 3.4), or not given (``None``): the domain's recommended weights, as the pipeline decides.
    ``guidance_rule``: a guidance rule or its string (:mod:`suite.rules`; not given: the domain's recommended
    one, as the pipeline decides). ``mask``: only its white part may change: the whole crop is redrawn and the mask's
    part pasted. ``mask_blend``: the kept part holds the denoising too (the pipeline's ``mask_image``, blended latent
    diffusion); measured on the mini faces it added a hat less often (0.17 against 0.36 pasted, 59 edits each) and
    glasses as rarely (docs/mini-world.md, "Face editing"), so it is off. ``all_faces``: edit every face, else the
    largest. ``whole_image``: edit the whole photo (scaled to the model's resolution) instead of the face.
    ``num_images``: variations; face ``k`` of variation ``i`` uses ``seed + k`` (its own generator per face).
    ``framing``: how the domain's photos are framed (``"face"``: FFHQ's alignment; ``"animal"``: a cat's face;
    ``"whole"``; default: the pipeline's domain's, ``whole_image=True`` means ``"whole"``).
    ``detector``: any :class:`editing.faces.FaceDetector` (default: :func:`editing.faces.detector_for` the framing).
    Raises ValueError (one sentence) when no face is found, naming ``whole_image`` / ``--whole-image``; when the
    largest face (with ``all_faces``: every face) is under :data:`MIN_FACE` pixels wide (with ``all_faces``, faces
    that small are left as they are, with a warning); and when a face is found only with the photo turned by
    90 degrees (its EXIF orientation was lost). A face cut by the photo's border is edited: the crop is padded by
    reflection (as FFHQ pads) and only pixels inside the photo are written back.
    """
    timings = dict.fromkeys(STAGES, 0.0)
    report = progress or (lambda *a: None)
    t0 = time.perf_counter()

    # 1. Check the request before any work (one clear sentence each).
    require("editing a photo", "cv2")  # OpenCV crops and pastes back every edit, the whole image's too
    strength = check_range(strength, "strength", 0.0, 1.0, "0 keeps the photo, 1 ignores it")
    num_images = check_int(num_images, "the number of images", 1)
    steps = DEFAULT_STEPS if steps is None else check_int(steps, "the number of steps", 1)
    check_runs_a_step(steps, strength)
    seed = check_int(seed, "the seed", 0)
    # checked here too, not by the CLI alone: NaN or a feather past 0.5 gave the photo back unedited, after the
    # whole denoise; a list of prompts was cut to its first
    feather = check_range(feather, "feather (--feather)", 0.0, 0.5)
    prompt = check_prompt(prompt)
    negative_prompt = check_prompt(negative_prompt, "the negative prompt")
    # the guidance settings too (strength 0 returns before the pipeline, which checks them, is called)
    check_guidance_settings(domain_weight, control_weight, w0, auto_norm)
    if isinstance(guidance_rule, str):
        parse_rule(guidance_rule)  # a rule that does not parse: its sentence now
    if mask_blend and mask is None:
        raise ValueError("mask_blend (--mask-blend) holds the part a mask keeps: give the mask too")
    if whole_image and framing not in (None, "whole"):
        raise ValueError(f"whole_image (--whole-image) edits the whole photo, but framing (--framing) is {framing!r}: "
                         f"drop one of the two")

    # 2. The photo, upright and in 8-bit RGB; the user's mask at its size.
    photo = prepare_photo(image, max_pixels)
    per_copy = photo.rgb.nbytes + sum(a.nbytes for a in (photo.alpha, photo.rgb_raw) if a is not None)
    if num_images * per_copy > MAX_COPIES_BYTES:
        raise ValueError(f"{num_images} edited copies of a {photo.size[0]}x{photo.size[1]} photo would hold about "
                         f"{num_images * per_copy / 1e9:.0f} GB in memory: ask for fewer images (--num-images), or "
                         f"downscale the photo")
    user_mask = load_mask(mask, photo.size) if mask is not None else None

    # 3. Where to edit: aligned face crops at the model's native size, or the whole photo.
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    report("detect", 0, 1, {})
    faces: list[Face] = []
    if whole_image:
        framing = "whole"
    if framing is None:  # the domain's; a pipeline without a domain preset edits faces
        domain = getattr(pipe, "domain", None)
        framing = domain.framing if domain is not None else "face"
    if isinstance(detector, GivenLandmarks) and framing != "face":
        raise ValueError(f"landmarks frame a face (FFHQ's alignment), but this edit's framing is {framing!r}: edit "
                         f"without the landmarks, or with the face framing (a face domain)")
    if framing == "whole":
        if max(photo.size) * 8 < native:  # as for a face: upscaled more than 8x, the edit is mostly invented
            raise ValueError(f"the photo is only {photo.size[0]}x{photo.size[1]} pixels: the edit at the model's "
                             f"{native} px would be mostly invented; use a photo at least {-(-native // 8)} px on its "
                             f"longer side")
        multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        regions = [whole_image_region(photo.size, native, multiple)]
        weight = np.ones(regions[0].size[::-1], np.float32)
    else:
        detector = detector or detector_for(framing)
        faces = sorted(detector.detect(photo.rgb), key=lambda f: f.area, reverse=True)
        if not faces:
            raise ValueError(_no_face(detector, photo.rgb, framing))
        if len(faces) > 1 and not all_faces:
            logging.getLogger("editing").warning("%d faces found: editing the largest (pass --all-faces, "
                                                 "all_faces=True, to edit every one)", len(faces))
        faces = faces if all_faces else faces[:1]
        smallest = min(MIN_FACE, native // 8)  # a face upscaled more than 8x into the crop is mostly invented
        large = [f for f in faces if f.box[2] - f.box[0] >= smallest]
        if not large:
            raise ValueError(f"the {'face' if framing == 'face' else 'animal face'} found is only "
                             f"{faces[0].box[2] - faces[0].box[0]:.0f} px wide, under {smallest} px: the edit at the "
                             f"model's {native} px would be mostly invented; use a photo where it is larger, or edit "
                             f"the whole image with --whole-image")
        if len(large) < len(faces):  # --all-faces: the small ones (in the background of a group) stay as they are
            logging.getLogger("editing").warning("%d face(s) under %d px wide are left as they are",
                                                 len(faces) - len(large), smallest)
        faces = large
        regions = [face_region(f, native) if framing == "face" else animal_region(f, native) for f in faces]
        weight = feather_mask((native, native), feather)
    timings["detect"] = time.perf_counter() - t0
    t = time.perf_counter()
    crops = [extract(photo.rgb, r) for r in regions]
    _warn_mask_outside(user_mask, regions, photo.size)
    report("detect", 1, 1, {"faces": len(faces)})
    timings["align"] = time.perf_counter() - t

    # 4. SDEdit each crop through the core pipeline's start-image path (encode -> noise -> denoise -> decode).
    edited, weights, applied_rule = [], [], None
    if strength == 0:  # nothing may change: the photo itself, not its round trip through the VAE
        timings["paste"] = 0.0
        return EditResult(images=[photo.output(photo.rgb, np.zeros(photo.rgb.shape[:2], bool))
                                  for _ in range(num_images)],
                          face_boxes=[f.box for f in faces], timings=timings, faces=faces, regions=regions)
    for k, crop in enumerate(crops):
        def on_step(i, n, k=k):
            report("denoise", i, n, {"crop": k, "crops": len(crops)})

        crop_mask = extract(user_mask, regions[k]) if user_mask is not None and mask_blend else None

        t = time.perf_counter()
        with _VaeTimer(pipe.vae) as vae_time, quiet(pipe):
            out = pipe(prompt or None, negative_prompt=negative_prompt or None, image=Image.fromarray(crop),
                       strength=strength, domain_weight=domain_weight, control_weight=control_weight,
                       num_images_per_prompt=num_images, num_inference_steps=steps, seed=seed + k, w0=w0,
                       auto_norm=auto_norm, guidance_rule=guidance_rule, output_type="np", mask_image=crop_mask,
                       callback_on_step_end=report_steps(on_step))
        timings["encode"] += vae_time.encode
        timings["decode"] += vae_time.decode
        timings["denoise"] += time.perf_counter() - t - vae_time.encode - vae_time.decode
        edited.append(np.clip(np.rint(out.images * 255.0), 0, 255).astype(np.uint8))
        weights.append(out.weights)
        applied_rule = out.guidance_rule

    # 5. Paste every edited crop back into a copy of the photo; untouched pixels are never written.
    t = time.perf_counter()
    images = []
    for i in range(num_images):
        canvas, changed = photo.rgb.copy(), np.zeros(photo.rgb.shape[:2], bool)
        for region, crop in zip(regions, edited):
            paste(canvas, crop[i], weight, region, user_mask, changed)
        images.append(photo.output(canvas, changed))
        report("paste", i + 1, num_images, {})
    timings["paste"] = time.perf_counter() - t
    return EditResult(images=images, face_boxes=[f.box for f in faces], timings=timings, faces=faces,
                      regions=regions, weights=weights, guidance_rule=applied_rule)


class _VaeTimer:
    """Seconds spent in the VAE's encoder and decoder during a pipeline call (forward hooks, removed after)."""

    def __init__(self, vae):
        self.vae, self.encode, self.decode, self._handles, self._start = vae, 0.0, 0.0, [], {}

    def __enter__(self):
        for name in ("encode", "decode"):
            module = getattr(self.vae, name + "r", None)  # vae.encoder / vae.decoder
            if module is None:
                continue
            self._handles.append(module.register_forward_pre_hook(lambda *a, n=name: self._begin(n)))
            self._handles.append(module.register_forward_hook(lambda *a, n=name: self._end(n)))
        return self

    def _begin(self, name):
        self._start[name] = time.perf_counter()

    def _end(self, name):
        setattr(self, name, getattr(self, name) + time.perf_counter() - self._start.pop(name))

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def _warn_mask_outside(user_mask, regions, size) -> None:
    if user_mask is None:
        return
    inside = np.zeros(user_mask.shape, bool)
    for r in regions:
        box = r.bbox(size, margin=0)
        if box:
            inside[box[1]:box[3], box[0]:box[2]] = True
    if (user_mask[~inside] > 0).any():
        import logging

        logging.getLogger("editing").warning(
            "part of the mask lies outside the face crop and is not edited: use --whole-image to edit it too")


