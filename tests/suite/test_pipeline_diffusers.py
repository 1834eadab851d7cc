"""InDomainPipeline as a diffusers DiffusionPipeline: save/load (model_index.json), old bundles, offload hooks,
callback_on_step_end (edit latents, stop), prompt_embeds/latents, return_dict, LoRA and textual inversion."""

import json
import shutil

import numpy as np
import pytest
import torch

from suite.pipeline import InDomainPipeline, report_steps
from tests.common import diffusers_sd

KW = dict(num_inference_steps=3, seed=2, output_type="np")


@pytest.fixture(scope="module")
def full_pipe(tiny_dir):
    """Every component: SD, the face domain UNet, a ControlNet and one community UNet."""
    from suite.domains import FACE

    pipe = InDomainPipeline.load(str(tiny_dir / "sd"), domain_model=str(tiny_dir / "domain-face"),
                                 controlnet=str(tiny_dir / "controlnet"), domain=FACE,
                                 community={"toon": str(tiny_dir / "community")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, **kw):
    from suite.pipeline import Control

    toon = Control(prompt="a cartoon", weight=1.5, unet=pipe.community["toon"], name="toon")
    return pipe("wearing glasses", controls=[toon], **{**KW, **kw})


def test_is_a_diffusion_pipeline_and_round_trips_through_model_index(full_pipe, tmp_path):
    from diffusers import DiffusionPipeline

    assert isinstance(full_pipe, DiffusionPipeline)
    folder = full_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["domain_unet"] == ["suite.nulltext", "NullTextUNet"]
    assert index["community_unets"] == ["suite.components", "UNetCollection"]
    assert index["controlnet"] == ["diffusers", "ControlNetModel"]
    assert index["domain"]["name"] == "face"
    assert not list(folder.rglob("*.bin")) and not list(tmp_path.glob(".*"))  # safetensors only, no leftovers

    loaded = InDomainPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.domain == full_pipe.domain and loaded.domain_unet.metadata.prompt == "a photo of a face"
    assert np.array_equal(_sample(full_pipe).images, _sample(loaded).images)


def test_plain_diffusion_pipeline_loads_it_only_when_trusted(full_pipe, tmp_path):
    from diffusers import DiffusionPipeline

    folder = full_pipe.save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)  # diffusers refuses to run the folder's pipeline.py unasked
    loaded = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "InDomainPipeline" and sorted(loaded.community) == ["toon"]
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(_sample(full_pipe).images, _sample(loaded).images)


def test_old_bundle_still_loads_with_a_conversion_hint(tiny_dir, tiny_pipe, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(tiny_dir / "sd", old / "sd")
    shutil.copytree(tiny_dir / "domain-face", old / "domain")
    shutil.copytree(tiny_dir / "controlnet", old / "controlnet")
    (old / "bundle.json").write_text(json.dumps({"has_domain_model": True, "has_controlnet": True, "community": [],
                                                 "domain": {"name": "face", "prompt": "a photo of a face",
                                                            "framing": "face"}}))
    loaded = InDomainPipeline.from_pretrained(old)
    loaded.set_progress_bar_config(disable=True)
    assert "save_pretrained(NEW_FOLDER)" in caplog.text
    assert np.array_equal(loaded("wearing glasses", **KW).images, tiny_pipe("wearing glasses", **KW).images)
    for key in ("dtype", "torch_dtype"):  # diffusers 0.42's name, and the one it deprecates (dtype was ignored)
        assert InDomainPipeline.from_pretrained(old, **{key: torch.bfloat16}).unet.dtype == torch.bfloat16


def test_a_domain_saved_before_framing_existed_keeps_its_presets_framing():
    from suite.domains import domain_from_dict

    assert domain_from_dict({"name": "face", "prompt": "a photo of a face"}).framing == "face"
    assert domain_from_dict({"name": "animal", "prompt": "a photo of an animal"}).framing == "animal"
    assert domain_from_dict({"name": "mine", "prompt": "a photo of mine"}).framing == "whole"
    assert domain_from_dict({"name": "face", "prompt": "p", "framing": "whole"}).framing == "whole"  # as saved


def test_model_offload_hooks_every_model_and_changes_nothing(full_pipe):
    import copy

    pipe = copy.deepcopy(full_pipe)
    before = _sample(pipe).images
    pipe.enable_model_cpu_offload(device="cpu")
    hooked = {name for name, m in pipe.components.items() if hasattr(m, "_hf_hook")}
    assert {"text_encoder", "unet", "vae", "domain_unet", "controlnet"} <= hooked
    assert all(hasattr(u, "_hf_hook") for u in pipe.community.values())  # each community UNet, not the container
    assert pipe._execution_device.type == "cpu"
    assert np.array_equal(before, _sample(pipe).images)
    assert len(pipe._all_hooks) == 6  # re-installed after the call (maybe_free_model_hooks)


def test_callback_on_step_end_edits_latents_and_stops(tiny_pipe):
    seen = []

    def record(pipe, i, t, tensors):
        seen.append(tensors["latents"].clone())
        return {}

    full = tiny_pipe("wearing glasses", num_inference_steps=4, seed=1, output_type="latent", callback_on_step_end=record)
    assert len(seen) == 4 and torch.equal(full.latents, seen[-1])

    def stop_after_two(pipe, i, t, tensors):
        if i == 1:
            pipe._interrupt = True
        return {}

    stopped = tiny_pipe("wearing glasses", num_inference_steps=4, seed=1, output_type="latent",
                        callback_on_step_end=stop_after_two)
    assert torch.equal(stopped.latents, seen[1])  # the latents after 2 of 4 steps

    def zero(pipe, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 3 else {}

    assert tiny_pipe("wearing glasses", num_inference_steps=4, seed=1, output_type="latent",
                     callback_on_step_end=zero).latents.abs().max() == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        tiny_pipe("x", num_inference_steps=1, callback_on_step_end=record,
                  callback_on_step_end_tensor_inputs=["prompt_embeds"])
    totals = []
    tiny_pipe("x", num_inference_steps=3, output_type="latent", callback_on_step_end=report_steps(
        lambda i, n: totals.append((i, n))))
    assert totals == [(1, 3), (2, 3), (3, 3)]


def test_prompt_embeds_and_latents_replace_what_they_stand_for(tiny_pipe):
    kw = dict(num_inference_steps=3, output_type="np", control_weight=5.0, domain_weight=1.0)
    a = tiny_pipe("wearing glasses", negative_prompt="blurry", seed=3, **kw).images
    embeds = torch.cat([tiny_pipe.encode_prompt("wearing glasses")])
    negative = tiny_pipe.encode_prompt("blurry")
    b = tiny_pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, seed=3, **kw).images
    assert np.array_equal(a, b)

    from diffusers.utils.torch_utils import randn_tensor

    size = tiny_pipe.unet.config.sample_size
    shape = (2, tiny_pipe.unet.config.in_channels, size, size)
    noise = randn_tensor(shape, generator=torch.Generator().manual_seed(9))
    c = tiny_pipe("wearing glasses", latents=noise, num_images_per_prompt=2, **kw).images
    d = tiny_pipe("wearing glasses", seed=9, num_images_per_prompt=2, **kw).images
    assert np.array_equal(c, d)
    with pytest.raises(ValueError, match="latents must have shape"):
        tiny_pipe("x", latents=noise[:1], num_images_per_prompt=2, **kw)
    with pytest.raises(ValueError, match="not both"):
        tiny_pipe("x", prompt_embeds=embeds, **kw)


def test_return_dict_false_gives_a_tuple(tiny_pipe):
    images, latents, weights = tiny_pipe("x", num_inference_steps=2, seed=0, output_type="np", return_dict=False)
    assert images.shape[0] == 1 and latents.ndim == 4 and set(weights) == {"domain", "control"}


@pytest.fixture
def fresh_pipe(tiny_dir):
    """A pipeline of its own (LoRA and textual inversion change its models)."""
    pipe = InDomainPipeline.load(str(tiny_dir / "sd"), domain_model=str(tiny_dir / "domain-face"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_textual_inversion_loads_as_in_diffusers(fresh_pipe, tmp_path):
    from safetensors.torch import save_file

    dim = fresh_pipe.text_encoder.config.hidden_size
    save_file({"<glasses>": torch.randn(2, dim, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "ti.safetensors"))
    before = fresh_pipe.encode_prompt("a <glasses> face")
    fresh_pipe.load_textual_inversion(str(tmp_path / "ti.safetensors"), token="<glasses>")
    after = fresh_pipe.encode_prompt("a <glasses> face")
    assert (after - before).abs().max() > 1e-3
    ours = fresh_pipe("a <glasses> face", domain_weight=0.0, control_weight=4.0, **KW).images
    theirs = diffusers_sd(fresh_pipe)("a <glasses> face", guidance_scale=4.0, num_inference_steps=3,
                                       generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5


def test_lora_loads_as_in_diffusers(fresh_pipe, tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from suite.testing import build_tiny_unet

    donor = build_tiny_unet(seed=0)  # same architecture: train-free LoRA weights made random
    donor.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    InDomainPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(donor),
                                       safe_serialization=True)
    kw = dict(domain_weight=0.0, control_weight=4.0, **KW)
    plain = fresh_pipe("wearing glasses", **kw).images
    fresh_pipe.load_lora_weights(str(tmp_path / "lora"))
    with_lora = fresh_pipe("wearing glasses", **kw).images
    theirs = diffusers_sd(fresh_pipe)("wearing glasses", guidance_scale=4.0, num_inference_steps=3,
                                       generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.abs(with_lora - plain).max() > 1e-3 and np.abs(with_lora - theirs).max() <= 1e-5


def test_hub_id_fetches_only_the_components_safetensors(full_pipe, tmp_path, monkeypatch):
    """A hub id: model_index.json first, then only the named components' configs, tokenizer files and plain
    safetensors (no fp16 variants, no single-file checkpoints, no code). The hub is played by a saved folder."""
    import fnmatch

    import huggingface_hub

    folder = full_pipe.save_pretrained(tmp_path / "pipe")
    (folder / "v1-5-pruned.safetensors").write_bytes(b"not fetched")  # a root single-file checkpoint
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"not fetched")
    asked = {}

    def hf_hub_download(repo_id, filename, **kw):
        return str(folder / filename)

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, **kw):
        asked.update(allow=allow_patterns, ignore=ignore_patterns or [])
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = InDomainPipeline.from_pretrained("someone/in-domain-face")
    files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    fetched = {f for f in files if any(fnmatch.fnmatch(f, a) for a in asked["allow"])
               and not any(fnmatch.fnmatch(f, i) for i in asked["ignore"])}
    assert "unet/diffusion_pytorch_model.safetensors" in fetched and "domain_unet/nulltext.json" in fetched
    assert not fetched & {"v1-5-pruned.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors", "pipeline.py"}
    assert loaded.domain.name == "face"


def test_unsafe_or_unsupported_save_options_are_refused(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        tiny_pipe.save_pretrained(tmp_path / "p", safe_serialization=False)
    assert not (tmp_path / "p").exists()


def test_a_save_into_a_folder_of_the_users_is_refused_and_deletes_nothing(tiny_pipe, tmp_path):
    """A save replaces its folder whole: ``save_pretrained("my-models/")`` deleted the user's files there (diffusers'
    own save keeps them). A folder of other files is refused; a saved pipeline is replaced, unless it holds more."""
    from suite.checks import UserError

    mine = tmp_path / "my-models"
    (mine / "other-model").mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years")
    with pytest.raises(UserError, match="'other-model', 'thesis.txt'.*new or empty folder"):
        tiny_pipe.save_pretrained(mine)
    assert (mine / "thesis.txt").read_text() == "four years" and sorted(p.name for p in mine.iterdir()) == [
        "other-model", "thesis.txt"]
    folder = tiny_pipe.save_pretrained(tmp_path / "p")
    (folder / ".DS_Store").write_bytes(b"x")  # opened in Finder
    assert tiny_pipe.save_pretrained(folder) == folder  # a saved pipeline is saved over
    (folder / "notes.md").write_text("mine")
    with pytest.raises(UserError, match="'notes.md'"):
        tiny_pipe.save_pretrained(folder)
    assert (folder / "notes.md").is_file() and (folder / "model_index.json").is_file()
    (tmp_path / "empty").mkdir()
    tiny_pipe.save_pretrained(tmp_path / "empty")


def test_a_rank_other_than_zero_is_refused_before_it_writes_a_folder_without_the_text_encoder(tiny_pipe, tmp_path,
                                                                                              monkeypatch):
    """Under torch.distributed transformers writes weights on rank 0 only; rank 1's save would put a folder without
    the text encoder's weights in place (replacing a complete one)."""
    import torch.distributed as dist

    from suite.checks import UserError

    tiny_pipe.save_pretrained(tmp_path / "p")  # rank 0's complete folder
    before = {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()}
    assert (tmp_path / "p" / "text_encoder" / "model.safetensors") in before
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    with pytest.raises(UserError, match="process 1 of a distributed run .*accelerator.is_main_process"):
        tiny_pipe.save_pretrained(tmp_path / "p")
    assert {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folder either


def _tiny_ip_adapter(unet, folder):
    """Random IP-Adapter weights for ``unet`` in the file format of the released ones (``image_proj.*``,
    ``ip_adapter.*``), as diffusers' own tests build them."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state, key, channels = {}, 1, unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        proc = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=unet.config.cross_attention_dim)
        sd = proc.state_dict()
        state[f"ip_adapter.{key}.to_k_ip.weight"] = sd["to_k_ip.0.weight"] * 20
        state[f"ip_adapter.{key}.to_v_ip.weight"] = sd["to_v_ip.0.weight"] * 20
        key += 2
    dim = unet.config.cross_attention_dim
    proj = ImageProjection(cross_attention_dim=dim, image_embed_dim=dim, num_image_text_embeds=4).state_dict()
    state.update({"image_proj.proj.weight": proj["image_embeds.weight"], "image_proj.proj.bias": proj["image_embeds.bias"],
                  "image_proj.norm.weight": proj["norm.weight"], "image_proj.norm.bias": proj["norm.bias"]})
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "ip.safetensors"))
    return dim


def test_ip_adapter_loads_and_samples_as_in_diffusers(fresh_pipe, tmp_path):
    dim = _tiny_ip_adapter(fresh_pipe.unet, tmp_path / "ip")
    fresh_pipe.load_ip_adapter(str(tmp_path / "ip"), subfolder="", weight_name="ip.safetensors",
                               image_encoder_folder=None)
    gen = torch.Generator().manual_seed(1)
    embeds = [torch.cat([torch.zeros(1, 1, dim), torch.randn(1, 1, dim, generator=gen) * 3])]  # [negative, image]
    other = [torch.cat([torch.zeros(1, 1, dim), torch.randn(1, 1, dim, generator=gen) * 3])]
    kw = dict(domain_weight=0.0, control_weight=4.0, num_images_per_prompt=2, **KW)
    ours = fresh_pipe("wearing glasses", ip_adapter_image_embeds=embeds, **kw).images
    theirs = diffusers_sd(fresh_pipe)("wearing glasses", ip_adapter_image_embeds=embeds, guidance_scale=4.0,
                                       num_images_per_prompt=2, num_inference_steps=3,
                                       generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - fresh_pipe("wearing glasses", ip_adapter_image_embeds=other, **kw).images).max() > 1e-3
    with_domain = fresh_pipe("wearing glasses", ip_adapter_image_embeds=embeds, **{**kw, "domain_weight": 1.0})
    assert np.isfinite(with_domain.images).all()  # the domain UNet (no adapter) runs beside the adapted UNet


def test_ip_adapter_input_without_an_adapter_is_one_sentence(tiny_pipe):
    with pytest.raises(ValueError, match="load_ip_adapter"):
        tiny_pipe("x", ip_adapter_image_embeds=[torch.zeros(2, 1, 32)], num_inference_steps=1)


def test_ip_adapter_image_through_its_image_encoder_as_in_diffusers(fresh_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dim = _tiny_ip_adapter(fresh_pipe.unet, tmp_path / "ip")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=dim, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8)).save_pretrained(tmp_path / "ip" / "image_encoder")
    fresh_pipe.load_ip_adapter(str(tmp_path / "ip"), subfolder="", weight_name="ip.safetensors",
                               image_encoder_folder="image_encoder")
    assert fresh_pipe.image_encoder is not None and fresh_pipe.feature_extractor is not None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    ours = fresh_pipe("wearing glasses", ip_adapter_image=image, domain_weight=0.0, control_weight=4.0, **KW).images
    ref = StableDiffusionPipeline(vae=fresh_pipe.vae, text_encoder=fresh_pipe.text_encoder,
                                  tokenizer=fresh_pipe.tokenizer, unet=fresh_pipe.unet, scheduler=fresh_pipe.scheduler,
                                  safety_checker=None, feature_extractor=fresh_pipe.feature_extractor,
                                  image_encoder=fresh_pipe.image_encoder, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    theirs = ref("wearing glasses", ip_adapter_image=image, guidance_scale=4.0, num_inference_steps=3,
                 generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5
    folder = fresh_pipe.save_pretrained(tmp_path / "with-ip")  # the encoder and processor are components
    assert json.loads((folder / "model_index.json").read_text())["image_encoder"] == [
        "transformers", "CLIPVisionModelWithProjection"]


def test_clip_skip_takes_an_earlier_layer_for_the_prompt_not_the_negative(tiny_pipe):
    """diffusers' meaning of clip_skip (its StableDiffusionPipeline reads text_encoder.text_model, which
    transformers 5 no longer has, so the comparison is with the layer computed by hand)."""
    enc, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    ids = tok(["wearing glasses"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        by_hand = enc.final_layer_norm(enc(ids, output_hidden_states=True).hidden_states[-2])
    assert torch.allclose(tiny_pipe.encode_prompt("wearing glasses", clip_skip=1), by_hand)
    kw = dict(domain_weight=0.0, control_weight=4.0, negative_prompt_embeds=tiny_pipe.encode_prompt(""), **KW)
    skipped = tiny_pipe("wearing glasses", clip_skip=1, **kw).images
    assert np.array_equal(skipped, tiny_pipe(prompt_embeds=by_hand, **kw).images)
    assert np.abs(skipped - tiny_pipe("wearing glasses", **kw).images).max() > 1e-3
    with pytest.raises(ValueError, match="clip_skip"):
        tiny_pipe("x", clip_skip=99, num_inference_steps=1)


def test_load_checks_its_device_dtype_domain_and_community_as_build_pipeline(tiny_dir):
    """``load(..., domain="face")`` was asdict's TypeError, a dtype by name torch's, ``device="cuda"`` without a GPU
    torch's AssertionError, and a list of community models an AttributeError."""
    from suite.domains import FACE

    sd = str(tiny_dir / "sd")
    pipe = InDomainPipeline.load(sd, domain="face", dtype="float32", community=[str(tiny_dir / "community")])
    assert pipe.domain == FACE and list(pipe.community_unets.as_dict()) == ["community0"]
    with pytest.raises(ValueError, match="unknown domain .no-such-domain.: use one of face"):
        InDomainPipeline.load(sd, domain="no-such-domain")
    with pytest.raises(ValueError, match="dtype 'int8' is not one the models run in"):
        InDomainPipeline.load(sd, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this machine cannot run on it"):
            InDomainPipeline.load(sd, device="cuda")
    with pytest.raises(ValueError, match="community must be"):
        InDomainPipeline.load(sd, community=str(tiny_dir / "community"))


def test_half_precision_samples_as_float32_does_on_a_v_prediction_base():
    """The mini world's base predicts v and its schedule ends at zero SNR: an epsilon scheduler's update divides by
    sqrt(alpha_bar) = 5e-5 at the first step, so a half-precision sampler state was amplified 20,000 times (mean
    0.027 from float32, diffusers' own pipeline 0.0002). The state stays in float32 now, the networks in half."""
    from suite.presets import build_pipeline

    runs = {}
    for dtype in (torch.float32, torch.float16):
        pipe = build_pipeline("mini", "porcelain").to(dtype)
        pipe.set_progress_bar_config(disable=True)
        kw = dict(num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
        text = pipe("a cup", **kw).images
        start = pipe("a cup", **{**kw, "output_type": "pil", "generator": torch.Generator().manual_seed(1)}).images[0]
        edit = pipe("a vase", image=start, strength=0.6, **kw)
        assert edit.latents.dtype == dtype  # returned in the networks' dtype, as diffusers does
        runs[dtype] = text, edit.images
    for full, half in zip(runs[torch.float32], runs[torch.float16], strict=True):
        assert np.abs(full - half).mean() < 0.003


def test_a_zero_terminal_snr_ddim_keeps_the_models_prediction_at_its_first_step(tiny_pipe):
    """A v-prediction model on a DDIM schedule rescaled to zero terminal SNR (``alpha_bar = 0`` at t = 999, where
    trailing DDIM starts): the epsilon the pipeline's denoiser returns, read back by its sampler, gives the model's
    own x0 (``-v`` there). With the unclamped 0 the conversion returned the noise itself (x0 about 0), and the
    sampler divided by zero (NaN)."""
    import copy

    from diffusers import DDIMScheduler

    from suite.denoisers import epsilon_scheduler

    pipe = copy.deepcopy(tiny_pipe)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction",
                                               rescale_betas_zero_snr=True, timestep_spacing="trailing")
    embeds = pipe.encode_prompt("x")
    den = pipe._sd(embeds)
    sampler = epsilon_scheduler(pipe.scheduler)
    sampler.set_timesteps(4)
    t = sampler.timesteps[0]
    assert int(t) == 999
    z = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = pipe.unet(z, t, encoder_hidden_states=embeds).sample
        eps = den(z, t)
    a = sampler.alphas_cumprod[999]
    x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    assert torch.isfinite(x0).all()
    assert (x0 + v).abs().max() < 2e-3 * v.abs().max()
    assert float(pipe.scheduler.alphas_cumprod[-1]) == 0.0  # the user's scheduler is left as it was


def test_a_callback_gets_the_latents_in_the_networks_dtype_and_its_changes_count(tiny_pipe):
    """A preview callback decoding the latents with a half-precision VAE failed once the sampler's state stayed in
    float32 ("Input type (float) and bias type (c10::BFloat16)"): it gets them in the networks' dtype, as in diffusers,
    and what it changes (a new tensor, or the given one in place) still steers the sampling."""
    import copy

    pipe = copy.deepcopy(tiny_pipe).to(torch.bfloat16)
    seen = []

    def preview(p, i, t, kw):
        seen.append(kw["latents"].dtype)
        p.vae.decode(kw["latents"] / p.vae.config.scaling_factor)  # as a preview does
        return kw

    kw = dict(num_inference_steps=3, seed=1, output_type="np")
    plain = pipe("x", **kw).images
    assert np.array_equal(pipe("x", callback_on_step_end=preview, **kw).images, plain)  # reading changes nothing
    assert seen == [torch.bfloat16] * 3

    def in_place(p, i, t, kw):
        kw["latents"].mul_(0.5)
        return kw

    def new_tensor(p, i, t, kw):
        return {"latents": kw["latents"] * 0.5}

    a, b = (pipe("x", callback_on_step_end=f, **kw).images for f in (in_place, new_tensor))
    assert np.abs(a - plain).mean() > 0.01 and np.abs(a - b).max() < 1e-6


def test_sdedit_with_a_list_of_generators_gives_each_output_its_single_call(tiny_pipe):
    """Output i of a batch with generators [g0, g1] is the single call with g_i (diffusers' img2img): the start
    image's latent is drawn with each output's own generator (one draw with g0 changed output 1)."""
    from PIL import Image

    start = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    kw = dict(image=start, strength=0.7, num_inference_steps=4, output_type="np")

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    both = tiny_pipe("wearing glasses", num_images_per_prompt=2, generator=[gen(3), gen(4)], **kw).images
    for i, seed in enumerate((3, 4)):
        one = tiny_pipe("wearing glasses", generator=gen(seed), **kw).images[0]
        assert np.abs(both[i] - one).max() < 1e-4, np.abs(both[i] - one).max()  # batched forwards round differently


def test_from_pipe_and_components_with_parameters_keep_the_models_and_the_domain(full_pipe):
    """diffusers' two ways to reuse a pipeline's models: from_pipe (it refused every model while __init__ had no
    type annotations) and Pipeline(**pipe.components, **pipe.parameters), the domain preset being a parameter."""
    from diffusers import StableDiffusionPipeline

    a = _sample(full_pipe).images
    for copy in (InDomainPipeline.from_pipe(full_pipe), InDomainPipeline(**full_pipe.components, **full_pipe.parameters)):
        assert copy.unet is full_pipe.unet and copy.domain_unet is full_pipe.domain_unet
        assert copy.domain == full_pipe.domain and copy.controlnet is full_pipe.controlnet
        copy.set_progress_bar_config(disable=True)
        assert np.array_equal(_sample(copy).images, a)
    # the annotations resolved for every parameter (this module's are strings): diffusers 0.35-0.36 read them raw,
    # found no type and raised KeyError in from_pretrained and from_pipe
    import inspect

    types = InDomainPipeline._get_signature_types()
    assert list(types) == list(inspect.signature(InDomainPipeline.__init__).parameters)[1:]
    assert all(isinstance(t, type) for ts in types.values() for t in ts), types
    sd = StableDiffusionPipeline.from_pipe(full_pipe, safety_checker=None, requires_safety_checker=False)
    back = InDomainPipeline.from_pipe(sd, domain_unet=full_pipe.domain_unet)
    assert back.unet is full_pipe.unet and back.domain_unet is full_pipe.domain_unet


def test_a_start_image_of_any_size_is_rounded_down_as_diffusers_img2img_does(tiny_pipe):
    """A start image whose sides are not multiples of the VAE's factor was refused with CLI flags in the sentence;
    diffusers' img2img samples it at the size rounded down. A seed and a generator together are refused (the seed
    was ignored), and output_type="latent" gives the latents as the images, as in diffusers."""
    from PIL import Image

    m = tiny_pipe.vae_scale_factor
    start = Image.new("RGB", (10 * m + 1, 7 * m + 1), (200, 120, 40))
    out = tiny_pipe("x", image=start, strength=0.5, num_inference_steps=2, seed=0)
    assert out.images[0].size == (10 * m, 7 * m)
    array = np.asarray(start).astype(np.float32) / 255  # an array or a tensor: their own size too (was the square)
    for other in (array, torch.from_numpy(array).permute(2, 0, 1)):
        assert tiny_pipe("x", image=other, strength=0.5, num_inference_steps=2, seed=0).images[0].size == (10 * m, 7 * m)
    with pytest.raises(ValueError, match=f"width={6 * m}, height={6 * m}"):
        tiny_pipe("x", height=6 * m + 1, width=6 * m + 1, num_inference_steps=2)
    with pytest.raises(ValueError, match="not both"):
        tiny_pipe("x", num_inference_steps=2, seed=1, generator=torch.Generator().manual_seed(1))
    lat = tiny_pipe("x", num_inference_steps=2, seed=0, output_type="latent")
    assert torch.equal(lat.images, lat.latents) and lat.images is not lat.latents


def test_automatic_weights_with_a_controlnet_are_balanced_against_sds_guidance_for_the_prompt(full_pipe):
    """With a prompt and a ControlNet image the automatic weights were balanced against SD's guidance for the domain
    prompt ("a photo of a face"), not the prompt given, though the README says the domain prompt stands in only
    when there is no text. The reference is SD with the prompt and without the ControlNet's residuals."""
    g = full_pipe.build_guidance(prompt="a face, smiling", height=64, width=64, domain_weight=None,
                                 control_weight=None, control_image=torch.rand(1, 3, 64, 64))
    ref = g.auto.reference
    assert torch.equal(ref.encoder_hidden_states, full_pipe.encode_prompt("a face, smiling"))
    assert ref.control is None
