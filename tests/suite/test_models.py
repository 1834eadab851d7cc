"""Loading: round trips through the real loading code, and one-sentence errors for missing/corrupt models."""

import shutil

import pytest
import torch

from suite import models
from suite.models import ModelLoadError


def test_tiny_folders_roundtrip_every_component(tiny_dir, tiny_parts):
    """The folders written by tiny_model_dir load back to the same weights as the in-memory build."""
    parts = models.load_sd(str(tiny_dir / "sd"))
    for name in ("unet", "vae", "text_encoder"):
        a, b = parts[name].state_dict(), tiny_parts[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert parts["tokenizer"]("a photo of a face").input_ids == tiny_parts["tokenizer"]("a photo of a face").input_ids
    assert type(parts["scheduler"]).__name__ == "DPMSolverMultistepScheduler"
    assert parts["scheduler"].config.algorithm_type == "dpmsolver++"
    cn = models.load_controlnet(str(tiny_dir / "controlnet"))
    assert cn.config.cross_attention_dim == parts["unet"].config.cross_attention_dim
    community = models.load_unet(str(tiny_dir / "community"))
    assert not torch.equal(next(community.parameters()), next(parts["unet"].parameters()))
    dm = models.load_domain_model(str(tiny_dir / "domain-face"))
    assert dm.metadata.domain == "face" and dm.metadata.prompt == "a photo of a face"


def test_under_torch_distributed_only_rank_zero_writes_the_tiny_models(tmp_path, monkeypatch, tiny_dir):
    """transformers writes a model's weights only on rank 0 of an initialised torch.distributed group, so the tiny
    models written on rank 1 had an empty text_encoder/ and went into place marked complete (two fresh
    `accelerate launch` runs of the generate batch test out of three failed so). Rank 1 now waits for rank 0's."""
    import torch.distributed as dist

    from suite import testing
    from suite.checks import UserError

    root = tmp_path / "tiny"
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(testing, "TINY_WAIT_S", 0.3)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    with pytest.raises(UserError, match="waited 0.3 s for process 0 to write the tiny models in .*INDOMAIN_TINY_DIR"):
        testing.tiny_model_dir(root)
    assert not root.exists() and not list(tmp_path.iterdir())  # nothing written on rank 1
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    assert testing.tiny_model_dir(root) == root
    assert (root / "sd" / "text_encoder" / "model.safetensors").read_bytes() == \
        (tiny_dir / "sd" / "text_encoder" / "model.safetensors").read_bytes()
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    assert testing.tiny_model_dir(root) == root  # rank 0's folder is there: taken at once


def test_domain_model_roundtrip_gives_identical_outputs(tiny_dir, tmp_path):
    dm = models.load_domain_model(str(tiny_dir / "domain-porcelain"))
    dm.save_pretrained(tmp_path / "copy")
    again = models.load_domain_model(str(tmp_path / "copy"))
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(dm.unet(z, 10, encoder_hidden_states=None).sample,
                           again.unet(z, 10, encoder_hidden_states=None).sample)


def test_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist: pass --sd-model"):
        models.load_sd(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"--domain-model"):
        models.load_domain_model(str(tmp_path / "nope" / "x"))


def test_incomplete_and_corrupt_folders(tiny_dir, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_dir / "sd", broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match=r"has no vae"):
        models.load_sd(str(broken))
    shutil.copytree(tiny_dir / "sd" / "vae", broken / "vae")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"incomplete or corrupt"):
        models.load_sd(str(broken))
    not_domain = tmp_path / "plain"
    not_domain.mkdir()
    with pytest.raises(ModelLoadError, match=r"not a null-text domain model"):
        models.load_domain_model(str(not_domain))


def test_an_unfinished_training_folder_says_how_to_finish_or_use_it(tiny_dir, tmp_path):
    """The folder of a training that was interrupted (or still runs) was "not a null-text domain model; train one
    with ...": start over. It says to resume, and names its last checkpoint, which loads."""
    run = tmp_path / "my run"
    (run / "training" / "latents").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"has not finished.*train --resume --output '.*my run'") as err:
        models.load_domain_model(str(run))
    assert "checkpoint" not in str(err.value)  # none written yet
    for step in ("step-000010", "step-000020"):
        shutil.copytree(tiny_dir / "domain-face", run / "training" / "checkpoints" / step)
    with pytest.raises(ModelLoadError, match=r"last checkpoint") as err:
        models.load_domain_model(str(run))
    last = str(err.value).split("pass --domain-model ")[1].split(", its last checkpoint")[0].strip("'")
    assert last.endswith("step-000020")
    assert models.load_domain_model(last).metadata.domain == "face"


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"offline.*--controlnet"):
        models.load_controlnet("nobody-here/no-such-controlnet")


def test_a_hub_download_happens_outside_the_loading_lock(monkeypatch, tiny_dir):
    """A first hub download (several GB for SD1.5) ran inside the loading lock (suite.threads.building_models), so
    every other job's load in the app (``--max-jobs 2``) waited until it ended. The files are fetched first, outside
    the lock: the ones the load reads, not the fp16, non-EMA, .bin or safety-checker copies beside them."""
    import threading

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from suite import depth, threads

    class Stop(BaseException):
        pass

    seen = []

    def lock_is_free(free):
        free.append(threads._BUILDING.acquire(blocking=False))
        if free[-1]:
            threads._BUILDING.release()

    def fake_download(ref, allow_patterns=None, **kw):
        free = []
        probe = threading.Thread(target=lock_is_free, args=(free,))  # another job's load, in its own thread
        probe.start()
        probe.join()
        seen.append((ref, allow_patterns, free[0]))
        raise Stop  # no network here: the load ends at its download

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loads = (models.load_sd, models.load_unet, models.load_controlnet, models.load_domain_model,
             depth.load_depth_estimator)
    for load in loads:
        with pytest.raises(Stop):
            load("someone/a-model")
    assert [(ref, free) for ref, _, free in seen] == [("someone/a-model", True)] * len(loads)
    sd = tiny_dir / "sd"  # a diffusers save_pretrained folder: every file of it is fetched
    files = sorted(str(p.relative_to(sd)) for p in sd.rglob("*") if p.is_file())
    extra = ["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
             "unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "safety_checker/model.safetensors",
             "v1-5-pruned.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert sorted(filter_repo_objects(files + extra, allow_patterns=seen[0][1])) == files
    sharded = ["unet/diffusion_pytorch_model.safetensors.index.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors"]
    assert sorted(filter_repo_objects(sharded, allow_patterns=seen[0][1])) == sorted(sharded)


def test_domain_model_strict_load_refuses_missing_E(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from suite.nulltext import WEIGHTS_FILE

    folder = tmp_path / "dm"
    shutil.copytree(tiny_dir / "domain-face", folder)
    state = load_file(str(folder / WEIGHTS_FILE))
    state = {k: v for k, v in state.items() if not k.endswith(".E")}
    save_file(state, str(folder / WEIGHTS_FILE))
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        models.load_domain_model(str(folder))


def test_each_process_of_a_run_of_several_gets_its_own_gpu_for_a_bare_cuda():
    """With ``--device cuda`` every process of a multi-process batch ran on GPU 0 (the per-process device was only
    chosen when no device was given); docs/scale-out.md promises ``cuda:<local rank>``."""
    from types import SimpleNamespace

    from suite.presets import process_device

    second = SimpleNamespace(num_processes=2, device="cuda:1")
    assert process_device("cuda", second) == "cuda:1" and process_device(None, second) == "cuda:1"
    assert process_device("cuda:0", second) == "cuda:0" and process_device("cpu", second) == "cpu"  # as given
    alone = SimpleNamespace(num_processes=1, device="cuda:0")
    assert process_device("cuda", alone) == "cuda" and process_device(None, alone) is None


def test_devices_and_dtypes_the_models_cannot_run_on_are_one_sentence():
    """The python API took any name: ``dtype="int8"`` or ``"Tensor"`` failed later inside torch, ``device="bogus"``
    with torch's own error."""
    import torch

    from suite.checks import UserError
    from suite.presets import resolve_device

    assert resolve_device("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device("cpu", "float16")[1] is torch.float16
    for dtype in ("int8", "Tensor", "fp16", torch.float64):
        with pytest.raises(UserError, match="not one the models run in"):
            resolve_device("cpu", dtype)
    with pytest.raises(UserError, match="is not a torch device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cannot run on it"):
            resolve_device("cuda")
