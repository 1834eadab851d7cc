"""Tiny random Stable-Diffusion components, built offline with a fixed seed.

They have SD1.5's *architecture* (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIP text
model and tokenizer, ControlNet) at toy size, so every code path runs on a CPU in seconds. Their outputs
show that the pipeline works, not image quality: the weights are random.

:func:`tiny_model_dir` writes them once as diffusers-format folders (``sd/``, ``domain-face/``,
``controlnet/``, ``community/``...) and everything then loads them through the real loading code in
:mod:`suite.models`, exactly as it would load real weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .domains import PRESETS
from .nulltext import make_domain_model
from .zero123 import save_zero123

TINY_RESOLUTION = 64
TINY_TEXT_DIM = 32

_UNET = dict(
    sample_size=TINY_RESOLUTION // 2,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    # attention at the lower resolution (16x16 latents, 256 tokens) only: at 32x32 (1,024 tokens) self-attention
    # took 3/4 of a tiny sampling step on a CPU; every code path (cross-attention, LoRA, IP-Adapter) is still there
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TINY_TEXT_DIM,
    attention_head_dim=8,
    norm_num_groups=8,
)
_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=TINY_RESOLUTION,
)
_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
)


def tiny_unet_config(**overrides) -> dict:
    return {**_UNET, **overrides}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_tokenizer_files(folder: Path) -> None:
    """Write a byte-level CLIP vocabulary (every byte as a token, plus its end-of-word form) and a few
    merges for common words, so ``CLIPTokenizer.from_pretrained(folder)`` works with no download."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for word in ["a", "photo", "of", "the", "face", "animal", "porcelain", "vase", "with", "wearing", "glasses"]:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in vocab_list:
                vocab_list.append(merged)
            pieces = [merged] + pieces[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"})
    )


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair of lowest rank (all its occurrences)."""
    while len(pieces) > 1:
        pairs = [(ranks[p], p) for p in zip(pieces, pieces[1:]) if p in ranks]
        if not pairs:
            break
        first, second = min(pairs)[1]
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                out.append(first + second)
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


def write_word_tokenizer(folder: Path, words: list[str], max_length: int) -> None:
    """A CLIP BPE vocabulary in which each of ``words`` is ONE token (merges build it from its letters), every
    other text falls back to bytes. ``model_max_length`` is short: captions have at most ~20 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # What BPE makes of the word with the merges so far, then merges joining what is left (lower priority,
        # so they never change how earlier words are split).
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1]] + pieces[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


def build_tiny_sd(seed: int = 0) -> dict:
    """Tiny SD1.5-architecture components (random weights, fixed seed): unet, vae, text_encoder, tokenizer,
    scheduler. The tokenizer is written to a temporary folder and loaded from it."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_VAE)
    torch.manual_seed(seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        make_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_DIM,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(**_SCHEDULER)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler)


def build_tiny_unet(seed: int) -> torch.nn.Module:
    """Another tiny SD-architecture UNet with different random weights (a stand-in community fine-tune)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**_UNET).eval()


def build_tiny_controlnet(unet, seed: int = 5) -> torch.nn.Module:
    """A tiny ControlNet matching :func:`build_tiny_sd`'s UNet (conditioning image at image size)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    # ControlNets start with zero convolutions (no effect); randomise them so tests can see the control.
    with torch.no_grad():
        for module in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            module.weight.normal_(0, 0.05)
        cn.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.05)
    return cn.eval()


TINY_WAIT_S = 600.0  # how long a process other than rank 0 waits for rank 0's tiny models


def _this_process_writes(ready, what: str) -> bool:
    """Whether this process writes a tiny model folder, or waits for another to. Under ``accelerate launch`` (an
    initialised torch.distributed group) transformers writes a model's weights only on rank 0: a folder written on
    another rank had an empty ``text_encoder/`` and still went into place, marked complete (2026-12-06). So there rank
    0 writes and the others wait until ``ready()``; False for a process that waited."""
    import time

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return True
    end = time.monotonic() + TINY_WAIT_S
    while not ready():
        if time.monotonic() > end:
            from .checks import UserError

            raise UserError(f"process {dist.get_rank()} waited {TINY_WAIT_S:g} s for process 0 to write {what}: on "
                            "several machines set INDOMAIN_TINY_DIR to a folder they all share, or write the tiny "
                            "models first (python -c 'from suite.testing import tiny_model_dir; tiny_model_dir()')")
        time.sleep(0.1)
    return False


def _write_once(folder: Path, marker: str, what: str, write) -> Path:
    """``folder``, written once: by ``write(tmp)`` into a temporary sibling renamed into place, so a crash never
    leaves half, unless another process put one there first (``folder / marker`` marks a finished one), which is
    then used, never replaced. Under torch.distributed only rank 0 writes (:func:`_this_process_writes`)."""
    import shutil

    ready = (folder / marker).exists
    if ready() or not _this_process_writes(ready, what):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        from .devices import RANDOM_STATE_LOCK
        from .threads import building_models

        # models built in a thread beside an app job's load (suite.threads), seeded from the global generator while
        # no other job seeds, saves or restores it (suite.devices.RANDOM_STATE_LOCK; the caller's state given back)
        with building_models(), RANDOM_STATE_LOCK, torch.random.fork_rng(devices=[]):
            write(tmp)
        tmp.rename(folder)
    except OSError:
        if not ready():  # not written by a concurrent process either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def default_tiny_dir() -> Path:
    root = os.environ.get("INDOMAIN_TINY_DIR")
    if root:
        return Path(root)
    # v3 (2026-12-06): a v2 folder first written under `accelerate launch` may lack the text encoder's weights
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "in-domain-suite" / "tiny-v3"


def tiny_model_dir(root: str | os.PathLike | None = None) -> Path:
    """Write (once) and return the folder of tiny models: ``sd/`` (a diffusers SD pipeline folder),
    ``controlnet/``, ``community/`` (a second UNet), and ``domain-<name>/`` null-text domain models for the
    preset domains. Written to a temporary folder and renamed into place, so a crash never leaves half."""
    root = Path(root) if root is not None else default_tiny_dir()
    return _write_once(root, "COMPLETE", f"the tiny models in {root}", _write_tiny_models)


def _write_tiny_models(tmp: Path) -> None:
    parts = build_tiny_sd()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp / "sd")
    build_tiny_controlnet(parts["unet"]).save_pretrained(tmp / "controlnet")
    build_tiny_unet(seed=11).save_pretrained(tmp / "community")

    for i, preset in enumerate(PRESETS.values()):
        # A tiny domain model: SD's tiny UNet with slightly perturbed weights, converted to null-text
        # with E captured from the domain prompt. Random: it is a stand-in, not a trained model.
        torch.manual_seed(100 + i)
        unet = build_tiny_unet(seed=100 + i)
        model = make_domain_model(unet, parts["text_encoder"], parts["tokenizer"], preset.prompt,
                                  domain=preset.name, base_model="tiny")
        model.save_pretrained(tmp / f"domain-{preset.name}")
    (tmp / "COMPLETE").write_text("tiny models v3\n")


# ----------------------------------------------------------------------------------------------------------
# tiny random Zero-1-to-3 (tests and --preset tiny)
def build_tiny_zero123(seed: int = 0) -> dict:
    """A tiny random Zero-1-to-3 with the real layout: 8-channel UNet (64x64 images, 32x32 latents), the tiny
    SD VAE architecture, a tiny CLIP vision encoder and a (D+4) -> D projection (``cc_projection``)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    parts = build_tiny_sd(seed)
    torch.manual_seed(seed + 20)
    unet = UNet2DConditionModel(**tiny_unet_config(in_channels=8))
    torch.manual_seed(seed + 21)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=TINY_TEXT_DIM))
    torch.manual_seed(seed + 22)
    projection = torch.nn.Linear(TINY_TEXT_DIM + 4, TINY_TEXT_DIM)
    scheduler = DDIMScheduler.from_config(parts["scheduler"].config)
    return dict(unet=unet.eval(), vae=parts["vae"], image_encoder=encoder.eval(), projection=projection,
                scheduler=scheduler)


def tiny_zero123_dir() -> Path:
    """The tiny Zero-1-to-3 folder (written once, beside the other tiny models in ``tiny_model_dir()``)."""
    folder = tiny_model_dir() / "zero123"
    return _write_once(folder, "model_index.json", f"the tiny Zero-1-to-3 in {folder}",
                       lambda tmp: save_zero123(build_tiny_zero123(), tmp))


def tiny_depth_dir() -> Path:
    """A tiny random transformers depth estimator (GLPN) beside the other tiny models (written once, to a temporary
    folder renamed into place): the plumbing of the 3D flow's ``--depth auto``, not depth."""
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor

    def write(tmp: Path) -> None:
        torch.manual_seed(0)
        config = GLPNConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                            patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                            decoder_hidden_size=8, max_depth=10, head_in_index=-1)
        GLPNForDepthEstimation(config).save_pretrained(tmp)
        GLPNImageProcessor(size_divisor=32).save_pretrained(tmp)

    folder = tiny_model_dir() / "depth"
    return _write_once(folder, "config.json", f"the tiny depth estimator in {folder}", write)
