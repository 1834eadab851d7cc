"""The bad-input catalogue, per subcommand, as a hostile user types it (issue 15): each case is an argv, the exit
code, a phrase of the one sentence expected, and nothing may be left behind (no output, no temporary file, no
empty folder). Everything here fails before a model loads, so the table runs in seconds."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

import launch

BAD_UTF8 = "\udcff\udcfe"  # what Python makes of the bytes of `--prompt $'\xff\xfe'` in argv
READ_ONLY = "/sys"  # not writable, not even by root (the tests may run as root)


def _setup(tmp: Path, tiny_dir: Path) -> dict:
    """The files the cases refer to, outside the folder that is checked for leftovers."""
    (tmp / "in").mkdir()
    photo = tmp / "in" / "photo.png"
    Image.new("RGB", (96, 64), "gray").save(photo)
    Image.new("L", (64, 64), 255).save(tmp / "in" / "square-mask.png")
    (tmp / "in" / "notes.png").write_text("a text file renamed .png")
    broken = tmp / "in" / "broken-domain"
    shutil.copytree(tiny_dir / "domain-face", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    import pickle

    from suite.testing import tiny_zero123_dir

    pickled = tmp / "in" / "pickled-zero123"  # a real (tiny) Zero-1-to-3 whose projection is a pickle
    shutil.copytree(tiny_zero123_dir(), pickled)
    for old in (pickled / "cc_projection").glob("*.safetensors"):
        old.unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/PWNED-by-test",))

    (pickled / "cc_projection" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    mixed = tmp / "in" / "mixed-zero123"  # a projection of another size than its encoder and UNet
    shutil.copytree(tiny_zero123_dir(), mixed)
    from safetensors.torch import save_file

    save_file({"proj.weight": torch.zeros(16, 20), "proj.bias": torch.zeros(16)},
              str(next((mixed / "cc_projection").glob("*.safetensors"))))
    (tmp / "in" / "bad-config.json").write_text("{not json")
    shutil.copy(tiny_dir / "sd" / "unet" / "diffusion_pytorch_model.safetensors", tmp / "in" / "finetune.safetensors")
    # issue 26's inputs
    os.mkfifo(tmp / "in" / "fifo.png")
    Image.new("RGB", (64, 64), "white").save(tmp / "in" / "white.png")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (2 ** 21), zip=True)  # a compressed text chunk larger than PIL decompresses
    Image.new("RGB", (8, 8)).save(tmp / "in" / "textchunk.png", pnginfo=info)
    from generators3d.config import ThreeDConfig

    typed = ThreeDConfig(prompt="a vase", preset="tiny").resolved().to_dict()
    typed["zero123"]["steps"] = "ten"
    (tmp / "in" / "typed-config.json").write_text(json.dumps(typed))
    huge = ThreeDConfig(prompt="a vase", preset="tiny").resolved().to_dict()
    huge["nerf"]["log2_hashmap_size"] = 40  # 70 TB
    (tmp / "in" / "huge-config.json").write_text(json.dumps(huge))
    views = ThreeDConfig(prompt="a vase", preset="tiny").resolved().to_dict()
    views["zero123"]["batch_sizes"] = [0, 0]  # torch's "cannot reshape tensor of 0 elements" after stage 1
    (tmp / "in" / "views-config.json").write_text(json.dumps(views))
    camera = ThreeDConfig(prompt="a vase", preset="tiny").resolved().to_dict()
    camera["camera"]["ref_fovy"] = 0  # trained to the end, then "the density never crosses the threshold"
    (tmp / "in" / "camera-config.json").write_text(json.dumps(camera))
    relabelled = tmp / "in" / "relabelled-domain"  # float32 tensors whose header says int32
    shutil.copytree(tiny_dir / "domain-face", relabelled)
    weights = relabelled / "diffusion_pytorch_model.safetensors"
    raw = weights.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    weights.write_bytes(raw[:8] + raw[8:8 + n].replace(b'"F32"', b'"I32"') + raw[8 + n:])
    Image.new("RGB", (4000, 10), "gray").save(tmp / "in" / "strip.png")
    Image.new("RGB", (1, 1), "gray").save(tmp / "in" / "dot.png")
    (tmp / "out").mkdir()
    (tmp / "out" / "x.png").mkdir()  # an existing folder with a file's name
    (tmp / "out" / "a-file").write_text("")
    return dict(photo=photo, mask=tmp / "in" / "square-mask.png", notes=tmp / "in" / "notes.png", broken=broken,
                pickled=pickled, config=tmp / "in" / "bad-config.json", onefile=tmp / "in" / "finetune.safetensors", fifo=tmp / "in" / "fifo.png",
                white=tmp / "in" / "white.png", textchunk=tmp / "in" / "textchunk.png",
                typed=tmp / "in" / "typed-config.json", huge=tmp / "in" / "huge-config.json",
                views=tmp / "in" / "views-config.json", camera=tmp / "in" / "camera-config.json", relabelled=relabelled, unet=tiny_dir / "sd" / "unet",
                controlnet=tiny_dir / "controlnet", zunet=tiny_dir / "zero123" / "unet", mixed=mixed,
                tinydomain=tiny_dir / "domain-face", strip=tmp / "in" / "strip.png", dot=tmp / "in" / "dot.png")


G = ["generate", "--preset", "tiny", "--steps", "1"]
E = ["edit", "--preset", "tiny", "--steps", "2", "--whole-image"]
T = ["3d", "--preset", "tiny", "--image-steps", "1", "--zero123-steps", "1", "--refine-steps", "1"]
R = ["train", "--preset", "tiny", "--max-steps", "1"]
CASES = [
    # generate
    ("generate: prompt with invalid bytes", G + ["--prompt", BAD_UTF8, "--output", "{out}/a.png"], "not valid UTF-8"),
    ("generate: negative prompt with invalid bytes", G + ["--negative-prompt", BAD_UTF8, "--output", "{out}/a.png"],
     "not valid UTF-8"),
    ("generate: read-only folder", G + ["--output", f"{READ_ONLY}/a.png"], "cannot be written to"),
    ("generate: output is a folder", G + ["--output", "{out}/x.png"], "is an existing folder"),
    ("generate: output folder missing", G + ["--output", "{out}/no/a.png"], "does not exist"),
    ("generate: unknown format", G + ["--output", "{out}/a.bmpx"], "unknown image format"),
    ("generate: negative width", G + ["--width", "-64", "--output", "{out}/a.png"], "must be at least 8"),
    ("generate: 64 times the model's size", ["generate", "--preset", "mini", "--steps", "1", "--width", "4096",
                                              "--output", "{out}/a.png"], "64 times this model's 64 px"),
    ("generate: a prompt of 100,000 characters", G + ["--prompt", "a" * 100_000, "--output", "{out}/a.jpg"],
     "100,000 characters long, over the 10,000 allowed"),
    ("generate: a batch of a million", G + ["--prompt", "x", "--seeds", "0-3", "--batch-size", "1000000", "--output",
                                            "{out}/batch"], "must be at most 64 (images in one sampling call)"),
    ("generate: a 4000x10 control image", G + ["--prompt", "x", "--control-image", "{strip}", "--output",
                                                "{out}/a.png"], "longer than 8:1"),
    ("generate: zero height", G + ["--height", "0", "--output", "{out}/a.png"], "must be at least 8"),
    ("generate: huge image", G + ["--width", "100000", "--height", "100000", "--output", "{out}/a.png"],
     "more than the limit of 4096"),
    ("generate: huge weight", G + ["--domain-weight", "1e308", "--output", "{out}/a.png"],
     "guidance weights must be between"),
    ("generate: infinite weight", G + ["--control-weight", "inf", "--output", "{out}/a.png"], "not a finite number"),
    ("generate: a billion images", G + ["--num-images", "1000000000", "--output", "{out}/a.png"],
     "more than the limit of 64"),
    ("generate: a hundred million steps", G + ["--steps", "100000000", "--output", "{out}/a.png"],
     "more than the limit of 999"),
    ("generate: zero steps", G + ["--steps", "0", "--output", "{out}/a.png"], "must be at least 1"),
    ("generate: truncated domain weights", G + ["--domain-model", "{broken}", "--output", "{out}/a.png"],
     "could not read domain model"),
    ("generate: control image is text", G + ["--control-image", "{notes}", "--output", "{out}/a.png"],
     "could not be read as an image"),
    ("generate: unknown domain", G + ["--domain", "dogs", "--output", "{out}/a.png"], "unknown domain"),
    ("generate: xbm output", G + ["--output", "{out}/a.xbm"], "cannot store a colour image"),
    ("generate: h5 output", G + ["--output", "{out}/a.h5"], "cannot store a colour image"),
    ("generate: a UNet as ControlNet", G + ["--control-image", "{photo}", "--controlnet", "{unet}", "--output",
                                           "{out}/a.png"], "holds a UNet2DConditionModel, not a ControlNet"),
    ("generate: control image is a FIFO", G + ["--control-image", "{fifo}", "--output", "{out}/a.png"],
     "not a regular file"),
    ("generate: control image is /dev/zero", G + ["--control-image", "/dev/zero", "--output", "{out}/a.png"],
     "not a regular file"),
    ("generate: huge PNG text chunk", G + ["--control-image", "{textchunk}", "--output", "{out}/a.png"],
     "textchunk.png' could not be read as an image"),
    ("generate: int32-relabelled domain weights", G + ["--domain-model", "{relabelled}", "--output", "{out}/a.png"],
     "not as floating-point weights"),
    ("generate: seed 2**70", G + ["--seed", str(2 ** 70), "--output", "{out}/a.png"], "a seed is a whole number"),
    ("generate: rule interval beyond 1", G + ["--prompt", "x", "--guidance-rule", "domain=0.5-1.5", "--output",
                                              "{out}/a.png"], "must lie within 0 (clean) and 1 (pure noise)"),
    ("generate: empty rule interval", G + ["--prompt", "x", "--guidance-rule", "domain=0.7-0.3", "--output",
                                           "{out}/a.png"], "is empty: write it low-high"),
    ("generate: unknown rule item", G + ["--prompt", "x", "--guidance-rule", "perpendicular", "--output",
                                         "{out}/a.png"], "unknown guidance-rule item 'perpendicular'"),
    ("generate: projection without a prompt", G + ["--guidance-rule", "project=domain:control", "--output",
                                                   "{out}/a.png"], "has no control term"),
    ("generate: rule for a term that is not there", G + ["--prompt", "x", "--guidance-rule", "style=0-0.5",
                                                         "--output", "{out}/a.png"], "a term named 'style'"),
    ("generate: prompts file missing", G + ["--prompts-file", "{out}/none.txt", "--output", "{out}/batch"],
     "does not exist: give a text file with one prompt a line"),
    ("generate: empty seed range", G + ["--prompt", "x", "--seeds", "9-1", "--output", "{out}/batch"],
     "is empty: write it low-high"),
    ("generate: batch into an image name", G + ["--prompt", "x", "--seeds", "0-3", "--output", "{out}/b.png"],
     "--output is a folder for the images"),
    ("generate: community model with 8 input channels (a Zero-1-to-3 UNet)",
     G + ["--prompt", "x", "--community-model", "{zunet}", "--output", "{out}/c.png"], "does not fit the base model"),
    ("generate: community model of another base (tiny beside mini)",
     ["generate", "--preset", "mini", "--steps", "1", "--prompt", "a vase", "--community-model", "{unet}", "--output",
      "{out}/c.png"], "its cross_attention_dim is 32, the base UNet's 128"),
    ("generate: ControlNet of another base (tiny beside mini)",
     ["generate", "--preset", "mini", "--steps", "1", "--prompt", "a vase", "--controlnet", "{controlnet}",
      "--control-image", "{photo}", "--output", "{out}/c.png"], "the ControlNet"),
    ("generate: empty --seeds", G + ["--prompt", "x", "--seeds", "", "--output", "{out}/c.png"],
     "--seeds is empty: give seeds such as 0-99"),
    ("generate: --canny without a control image", G + ["--prompt", "x", "--canny", "--output", "{out}/c.png"],
     "--canny acts on a control image: add --control-image FILE"),
    ("generate: community model as a one-file download", G + ["--prompt", "x", "--community-model", "{onefile}",
                                                              "--output", "{out}/c.png"],
     "is a single-file checkpoint, and the suite reads diffusers-format folders: convert it once"),
    ("generate: a domain model given as a community model",  # a bare "Cannot copy out of meta tensor"
     G + ["--prompt", "x", "--community-model", "{tinydomain}", "--output", "{out}/c.png"],
     "is a null-text domain model, not an SD1.5 fine-tune: pass it as --domain-model"),
    ("generate: --community-weight without a community model",
     G + ["--prompt", "x", "--community-weight", "2", "--output", "{out}/c.png"],
     "--community-weight applies to community models"),
    ("generate: domain model of another base (tiny beside mini)",
     ["generate", "--preset", "mini", "--steps", "1", "--prompt", "a vase", "--domain-model", "{tinydomain}",
      "--output", "{out}/c.png"], "the domain model"),
    ("generate: output is the control image", G + ["--prompt", "x", "--control-image", "{white}", "--output",
                                                   "{white}"], "is the --control-image file itself"),
    ("generate: rule that zeroes every term", G + ["--prompt", "x", "--guidance-rule",
                                                   "domain-ramp=0:0, control-ramp=0:0", "--output", "{out}/a.png"],
     "switch off every term"),
    # edit
    ("edit: prompt with invalid bytes", E + ["--image", "{photo}", "--prompt", BAD_UTF8, "--output", "{out}/e.png"],
     "not valid UTF-8"),
    ("edit: output is a folder", E + ["--image", "{photo}", "--output", "{out}/x.png"], "is an existing folder"),
    ("edit: read-only folder", E + ["--image", "{photo}", "--output", f"{READ_ONLY}/e.png"], "cannot be written to"),
    ("edit: strength 2", E + ["--image", "{photo}", "--strength", "2", "--output", "{out}/e.png"],
     "between 0 and 1"),
    ("edit: missing photo", E + ["--image", "{out}/none.png", "--output", "{out}/e.png"], "does not exist"),
    ("edit: mask of another shape", E + ["--image", "{photo}", "--mask", "{mask}", "--output", "{out}/e.png"],
     "give a mask with the image's size"),
    ("edit: projection without a prompt", E + ["--image", "{photo}", "--guidance-rule", "project=domain:control",
                                               "--output", "{out}/e.png"], "has no control term"),
    ("edit: prompt's interval above the strength", E + ["--image", "{photo}", "--prompt", "x", "--strength", "0.5",
                                                        "--steps", "10", "--guidance-rule", "control=0.7-1",
                                                        "--output", "{out}/e.png"],
     "control would never act"),
    ("edit: no step at this strength", E + ["--image", "{photo}", "--strength", "0.3", "--output", "{out}/e.png"],
     "runs no step, so the photo would come back unchanged: raise --steps to at least 4"),
    ("edit: output is the photo itself", E + ["--image", "{photo}", "--output", "{photo}"],
     "is the --image file itself: the edit would replace your original"),
    ("edit: --mask-blend without a mask", E + ["--image", "{photo}", "--mask-blend", "--output", "{out}/e.png"],
     "give the --mask too"),
    ("edit: a 1x1 photo", E + ["--image", "{dot}", "--output", "{out}/e.png"], "would be mostly invented"),
    ("edit: more megapixels than PIL decodes", E + ["--image", "{photo}", "--max-megapixels", "300", "--output",
                                                    "{out}/e.png"], "give at most 178.95"),
    ("edit: a billion images", E + ["--image", "{photo}", "--num-images", "1000000000", "--output", "{out}/e.png"],
     "more than the limit of 64"),
    # 3d
    ("3d: prompt with invalid bytes", T + ["--prompt", BAD_UTF8, "--output", "{out}/run"], "not valid UTF-8"),
    ("3d: empty prompt", T + ["--prompt", "   ", "--output", "{out}/run"], "the prompt is empty"),
    ("3d: a config asking for 70 TB", ["3d", "--config", "{huge}", "--output", "{out}/run"],
     "nerf.log2_hashmap_size is 40, over the limit of 24"),
    ("3d: no NeRF steps at all", ["3d", "--preset", "tiny", "--zero123-steps", "0", "--refine-steps", "0", "--prompt",
                                  "a vase", "--output", "{out}/run"], "train no NeRF"),
    ("3d: zero image steps", T + ["--prompt", "a vase", "--image-steps", "0", "--output", "{out}/run"],
     "must be at least 1"),
    ("3d: mesh resolution 0", T + ["--prompt", "a vase", "--mesh-resolution", "0", "--output", "{out}/run"],
     "must be at least 16"),
    ("3d: output is a file", T + ["--prompt", "a vase", "--output", "{out}/a-file"], "is a file"),
    ("3d: read-only folder", T + ["--prompt", "a vase", "--output", f"{READ_ONLY}/run"], "cannot be written to"),
    ("3d: a hundred million steps", T + ["--prompt", "a vase", "--zero123-steps", "100000000", "--output",
                                         "{out}/run"], "more than the limit of 10000"),
    ("3d: huge weight", T + ["--prompt", "a vase", "--domain-weight", "1e308", "--output", "{out}/run"],
     "guidance weights must be between"),
    ("3d: negative depth smoothness", T + ["--prompt", "a vase", "--depth-smooth", "-1", "--output", "{out}/run"],
     "--depth-smooth is -1: give a weight of 0 or more"),
    ("3d: unknown geometry", T + ["--prompt", "a vase", "--geometry", "mesh", "--output", "{out}/run"],
     "argument --geometry: invalid choice: 'mesh'"),
    ("3d: pickled Zero-1-to-3 weights", T + ["--prompt", "a vase", "--zero123-model", "{pickled}",
                                             "--refine-steps", "0", "--output", "{out}/run"],
     "could not load the Zero-1-to-3 model"),
    ("3d: broken config file", ["3d", "--config", "{config}", "--output", "{out}/run"],
     "could not read the 3D config file"),
    ("3d: wrongly typed config", ["3d", "--config", "{typed}", "--output", "{out}/run"],
     "zero123.steps in the 3D config file must be a whole number"),
    ("3d: image is a text file", T + ["--prompt", "a vase", "--image", "{notes}", "--output", "{out}/run"],
     "could not be read as an image"),
    ("3d: image is a FIFO", T + ["--prompt", "a vase", "--image", "{fifo}", "--output", "{out}/run"],
     "not a regular file"),
    ("3d: white image, automatic mask", T + ["--prompt", "a vase", "--image", "{white}", "--mask-method", "auto",
                                             "--output", "{out}/run"], "could not find a clear foreground object"),
    ("3d: bad guidance rule", T + ["--prompt", "a vase", "--guidance-rule", "clamp=0", "--output", "{out}/run"],
     "clamp=0 would remove all guidance"),
    ("3d: texture size 0", T + ["--prompt", "a vase", "--texture-size", "0", "--output", "{out}/run"],
     "give --texture-size a whole number of pixels from 16 to 8192"),
    ("3d: texture size 8192 without --allow-large", T + ["--prompt", "a vase", "--texture-size", "8192", "--output",
                                                         "{out}/run"], "export.texture_size is 8192, over the limit of 4096"),
    ("3d: texture size 100000", T + ["--prompt", "a vase", "--texture-size", "100000", "--output", "{out}/run"],
     "give --texture-size a whole number of pixels from 16 to 8192"),
    ("3d: height -1 m", T + ["--prompt", "a vase", "--height-m", "-1", "--output", "{out}/run"],
     "give --height-m in metres, from 0.0001"),
    ("3d: height 0 m", T + ["--prompt", "a vase", "--height-m", "0", "--output", "{out}/run"],
     "give --height-m in metres, from 0.0001"),
    ("3d: height 1e300 m", T + ["--prompt", "a vase", "--height-m", "1e300", "--output", "{out}/run"],
     "give --height-m in metres, from 0.0001 (0.1 mm) to 10000 (10 km)"),  # infinite vertices, exit 0
    ("3d: --export-only with a run's flag", ["3d", "--preset", "tiny", "--export-only", "{out}/no.safetensors", "--elevation",
                                             "60", "--output", "{out}/run"],
     "--export-only turns a checkpoint into meshes with its run's cameras and image, so --elevation would be"),
    ("3d: --export-only in a batch", ["3d", "--preset", "tiny", "--export-only", "{out}/no.safetensors",
                                      "--prompts-file", "{out}/none.txt", "--output", "{out}/run"], "--export-only for one run, not both"),
    ("3d: a config file's batch sizes of 0", ["3d", "--config", "{views}", "--output", "{out}/run"],
     "zero123.batch_sizes is [0, 0]: give whole numbers of at least 1"),
    ("3d: a config file's field of view of 0", ["3d", "--config", "{camera}", "--output", "{out}/run"],
     "camera.ref_fovy (the field of view, degrees) is 0"),
    ("3d: a rule for the text term on a run from an image (no prompt)",  # refused after stage 2 had trained
     T + ["--image", "{photo}", "--guidance-rule", "control=0.5-1", "--output", "{out}/run"],
     "schedules a term named 'control', which this request does not have"),
    ("3d: --texture-size with --no-texture", T + ["--prompt", "a vase", "--no-texture", "--texture-size", "512",
                                                  "--output", "{out}/run"], "that --no-texture turns off"),
    ("3d: stage 3's weight with --refine-steps 0", ["3d", "--preset", "tiny", "--prompt", "a vase", "--refine-steps",
                                                    "0", "--domain-weight", "3", "--output", "{out}/run"],
     "--domain-weight sets stage 3, which --refine-steps 0 skips"),
    ("3d: Zero-1-to-3 whose projection does not fit its other parts",
     T + ["--prompt", "a vase", "--zero123-model", "{mixed}", "--output", "{out}/run"],
     "its parts are from different models"),
    ("3d: seed 2**70", T + ["--prompt", "a vase", "--seed", str(2 ** 70), "--output", "{out}/run"],
     "argument --seed: a seed is a whole number"),
    # train
    ("train: output is a file", R + ["--data", "{out}", "--output", "{out}/a-file"], "is a file"),
    ("train: a thousand validation images", R + ["--data", "{out}", "--validation-images", "1000", "--output",
                                                 "{out}/m"], "must be at most 64 (images in one sampling call)"),
    ("train: prompt with invalid bytes", R + ["--data", "{out}", "--prompt", BAD_UTF8, "--output", "{out}/m"],
     "not valid UTF-8"),
    ("train: read-only folder", R + ["--data", "{out}", "--output", f"{READ_ONLY}/m"], "cannot be written to"),
    ("train: data folder missing", R + ["--data", "{out}/none", "--output", "{out}/m"], "does not exist"),
    ("train: seed -1", R + ["--data", "{out}", "--seed", "-1", "--output", "{out}/m"],
     "argument --seed: a seed is a whole number"),
    ("train: output inside the image folder", R + ["--data", "{out}", "--output", "{out}/m"],
     "is inside the image folder"),
    ("train: a finished domain model as output", R + ["--data", "{out}", "--output", "{relabelled}"],
     "already holds a domain model"),
    ("train: weight decay -5", R + ["--data", "{out}", "--weight-decay", "-5", "--output", "{out}/m"],
     "--weight-decay must be 0 or more"),
    ("train: max grad norm -1", R + ["--data", "{out}", "--max-grad-norm", "-1", "--output", "{out}/m"],
     "--max-grad-norm must be 0 (no clipping) or more"),
    ("train: fp16 on a CPU", R + ["--data", "{out}", "--mixed-precision", "fp16", "--output", "{out}/m"],
     "--mixed-precision fp16 needs a GPU"),
    # a device this machine lacks (was torch's traceback, after the models were found, hashed and read)
    ("generate: device bogus", G + ["--device", "bogus", "--output", "{out}/a.png"], "is not a torch device"),
    ("generate: device in capitals", G + ["--device", "CUDA", "--output", "{out}/a.png"], "is not a torch device"),
    ("edit: device mps", E + ["--image", "{photo}", "--device", "mps", "--output", "{out}/e.png"],
     "this machine cannot run on it"),
    ("3d: device xpu", T + ["--prompt", "a vase", "--device", "xpu", "--output", "{out}/run"],
     "this machine cannot run on it"),
    ("app: device cuda:7", ["app", "--preset", "tiny", "--device", "cuda:7", "--output-dir", "{out}"],
     "this machine cannot run on it"),
    # app
    ("app: port 99999", ["app", "--preset", "tiny", "--port", "99999", "--output-dir", "{out}"],
     "between 1 and 65535"),
    ("app: host 999.1.1.1", ["app", "--preset", "tiny", "--host", "999.1.1.1", "--output-dir", "{out}"],
     "cannot listen on --host '999.1.1.1'"),
    ("app: data root missing", ["app", "--preset", "tiny", "--data-root", "{out}/none", "--output-dir", "{out}"],
     "--data-root"),
]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("bad-input")
    return tmp, _setup(tmp, tiny_dir)


@pytest.mark.parametrize("name,argv,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_sentence_and_leaves_nothing(files, capsys, name, argv, phrase):
    tmp, f = files
    if READ_ONLY in " ".join(argv) and not Path(READ_ONLY).is_dir():
        pytest.skip(f"no {READ_ONLY} on this system")
    out = tmp / "out"
    subs = {"out": str(out), **{k: str(v) for k, v in f.items()}}
    argv = [a.format(**subs) if "{" in a else a for a in argv]
    before = _tree(out)
    code = launch.main(argv)
    err = capsys.readouterr().err
    assert code == 2, (name, code, err)
    assert phrase in err, (name, err)
    assert "Traceback" not in err, (name, err)
    assert _tree(out) == before, (name, _tree(out) ^ before)  # no output, no temporary file, no empty folder
    assert not Path("/tmp/PWNED-by-test").exists()  # the pickle's payload never ran


def test_whitespace_prompt_is_the_empty_prompt(tiny_pipe):
    """A prompt of only spaces used to become a control term that set every automatic weight to 0."""
    a = tiny_pipe("   ", num_inference_steps=2, seed=0, output_type="latent")
    b = tiny_pipe("", num_inference_steps=2, seed=0, output_type="latent")
    assert a.weights == b.weights and b.weights["domain"] != 0
    assert (a.latents == b.latents).all()


def test_port_in_use_is_one_sentence(files, capsys):
    tmp, _ = files
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = launch.main(["app", "--preset", "tiny", "--port", str(port), "--output-dir", str(tmp / "app")])
    err = capsys.readouterr().err
    assert code == 2 and "already in use" in err and "Traceback" not in err, err


def test_the_catalogue_counts():
    """Every case of the issue's list is in the table (a summary for the closing note)."""
    per = {}
    for name, *_ in CASES:
        per[name.split(":")[0]] = per.get(name.split(":")[0], 0) + 1
    assert per == {"generate": 50, "edit": 15, "3d": 35, "train": 11, "app": 4}, json.dumps(per)
