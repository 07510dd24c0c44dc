"""The tissue-map diffusion prior: folder layout, loading errors, mapping, training, resume, torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from nnunetv2_physaug.maps.store import write_case_maps
from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse.prior import LatentMapping, PhysicsPrior, PriorError, tiny_prior_config
from nnunetv2_physaug.reverse.train_prior import PriorTrainingError, load_training_latents, train_prior

torch.set_num_threads(1)


def _toy_maps(rng: np.random.Generator, shape=(13, 11, 2)):
    """(X, Y, Z) maps: zero background, a 'tissue' disc and a 'blood' disc (T1/T2 in ms)."""
    x, y = np.mgrid[0:shape[0], 0:shape[1]]
    m0 = np.zeros(shape, np.float32)
    t1 = np.ones(shape, np.float32)
    t2 = np.ones(shape, np.float32)
    for z in range(shape[2]):
        cx, cy = shape[0] / 2 + rng.normal(), shape[1] / 2 + rng.normal()
        body = (x - cx) ** 2 + (y - cy) ** 2 < (0.45 * min(shape[:2])) ** 2
        blood = (x - cx) ** 2 + (y - cy) ** 2 < (0.2 * min(shape[:2])) ** 2
        m0[..., z][body], t1[..., z][body], t2[..., z][body] = 0.8, 1000 + 30 * rng.normal(), 50
        m0[..., z][blood], t1[..., z][blood], t2[..., z][blood] = 0.95, 1550, 270
    return m0, t1, t2


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    for i in range(2):
        m0, t1, t2 = _toy_maps(rng)
        write_case_maps(d, f"case{i}", m0 * 7.0, t1, t2, np.eye(4))   # M0 in an arbitrary unit
    return d


def _unet_out(prior: PhysicsPrior, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = prior.sample_size
    x = torch.randn(2, 3, s, s, generator=g)
    with torch.no_grad():
        return prior.unet(x, torch.tensor([10, 900])).sample


# ------------------------------------------------------------------ mapping
def test_latent_mapping_uses_the_right_channels_and_clips():
    m = LatentMapping()
    z = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0])
    lat = torch.stack([z, z.flip(0), torch.full_like(z, 0.2)]).view(3, 1, 5)
    m0, t1, t2 = m.to_physical(lat)
    u = ((z + 1) / 2).clamp(0, 1)
    assert torch.allclose(m0[0], u / 0.6)
    assert torch.allclose(t1[0], 3200 * u.flip(0))
    assert torch.allclose(t2[0], torch.full_like(z, 300 * 0.6))     # T2 from channel 2 (the authors' bug fixed)
    back = m.to_latent(m0, t1, t2)
    assert torch.allclose(back, lat.clamp(-1, 1), atol=1e-6)


# ------------------------------------------------------------------ folder layout and loading
def test_save_load_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    prior = PhysicsPrior.create(tiny_prior_config(16), LatentMapping(m0_divisor=0.5, t1_scale_ms=3000, t2_scale_ms=250))
    prior.save_pretrained(tmp_path / "p")
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "physaug_prior.json"):
        assert (tmp_path / "p" / f).is_file(), f
    assert json.loads((tmp_path / "p/model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    loaded = PhysicsPrior.from_pretrained(tmp_path / "p")
    assert torch.equal(_unet_out(prior), _unet_out(loaded))
    assert loaded.hash == prior.hash and len(prior.hash) == 16
    # the folder is a plain diffusers pipeline too
    from diffusers import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained(tmp_path / "p")
    z, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(pipe.unet(z, t).sample, prior.unet(z, t).sample)
    assert pipe.scheduler.config.num_train_timesteps == prior.scheduler.config.num_train_timesteps
    assert loaded.mapping == LatentMapping(0.5, 3000.0, 250.0)
    assert loaded.num_train_timesteps == 1000 and loaded.sample_size == 16
    with pytest.raises(FileExistsError):
        prior.save_pretrained(tmp_path / "p")
    prior.save_pretrained(tmp_path / "p", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        ["model_index.json", "unet", "scheduler", "physaug_prior.json"])


def test_loads_a_plain_diffusers_ddpm_pipeline_folder(tmp_path):
    """The authors' published layout: a DDPMPipeline folder, no physaug config -> paper mapping."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(1)
    unet = UNet2DModel(**tiny_prior_config(16))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        tmp_path / "phys-acdc-128", safe_serialization=False)                 # legacy .bin weights
    prior = PhysicsPrior.from_pretrained(tmp_path / "phys-acdc-128")
    assert prior.mapping == LatentMapping(0.6, 3200.0, 300.0)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(prior.unet(x, 5).sample, unet(x, 5).sample)


def test_prior_errors_name_the_folder(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel
    with pytest.raises(PriorError, match="does not exist"):
        PhysicsPrior.from_pretrained(tmp_path / "nope")
    good = tmp_path / "good"
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(good)

    no_unet = tmp_path / "no_unet"
    no_unet.mkdir()
    (no_unet / "scheduler").mkdir()
    with pytest.raises(PriorError, match=r"no_unet has no unet/config.json"):
        PhysicsPrior.from_pretrained(no_unet)
    with pytest.raises(PriorError, match="pass its parent"):
        PhysicsPrior.from_pretrained(good / "unet")

    no_sched = tmp_path / "no_sched"
    UNet2DModel(**tiny_prior_config(16)).save_pretrained(no_sched / "unet")
    with pytest.raises(PriorError, match=r"no_sched has no scheduler/scheduler_config.json"):
        PhysicsPrior.from_pretrained(no_sched)

    wrong = tmp_path / "wrong_channels"
    cfg = tiny_prior_config(16)
    cfg["in_channels"] = 1
    UNet2DModel(**cfg).save_pretrained(wrong / "unet")
    DDPMScheduler().save_pretrained(wrong / "scheduler")
    with pytest.raises(PriorError, match=r"wrong_channels: the network takes 1 channels.*needs 3"):
        PhysicsPrior.from_pretrained(wrong)

    no_weights = tmp_path / "no_weights"
    (no_weights / "unet").mkdir(parents=True)
    (no_weights / "unet/config.json").write_text((good / "unet/config.json").read_text())
    DDPMScheduler().save_pretrained(no_weights / "scheduler")
    with pytest.raises(PriorError, match="holds no weights"):
        PhysicsPrior.from_pretrained(no_weights)

    bad_cfg = tmp_path / "bad_cfg"
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(bad_cfg)
    (bad_cfg / "physaug_prior.json").write_text('{"m0_divisor": 0.6}')
    with pytest.raises(PriorError, match="physaug_prior.json is invalid"):
        PhysicsPrior.from_pretrained(bad_cfg)


# ------------------------------------------------------------------ training data and training
def test_training_latents_geometry_and_m0_scale(maps_dir):
    z = load_training_latents(maps_dir, size=16)
    assert z.shape == (4, 3, 16, 16) and z.min() >= -1 and z.max() <= 1
    # slices are 13 x 11: transposed-free, padded by one column on each side with the latent floor
    assert torch.all(z[:, 0, :, 0] == -1) and torch.all(z[:, 0, :, -1] == -1)
    assert torch.all(z[:, :, :, 0] < -0.999) and torch.all(z[:, :, :, -1] < -0.999)
    # M0 rescaled so that the bSSFP p98 is the samplers' 0.3, whatever the stored M0 unit (x7 here)
    nat = load_training_latents(maps_dir, size=13)[:, :, :, 1:12]
    m0, t1, t2 = LatentMapping().to_physical(nat)
    sig = bssfp(m0, t1.clamp_min(1e-3), t2.clamp_min(1e-3), 45.0, 0.0, short_tr=True) / np.sin(np.pi / 4)
    p98 = torch.quantile(sig.flatten(1), 0.98, dim=1)
    assert torch.allclose(p98, torch.full_like(p98, 0.3), rtol=1e-3)


def test_training_rejects_an_empty_folder(tmp_path):
    with pytest.raises(PriorTrainingError, match="no complete tissue maps"):
        load_training_latents(tmp_path, 16)


def test_train_resume_equals_uninterrupted_run(maps_dir, tmp_path):
    kw = dict(size=16, batch_size=3, unet_config="tiny", device="cpu", lr=1e-3, progress=False)
    train_prior(maps_dir, tmp_path / "full", steps=4, checkpoint_every=100, **kw)
    train_prior(maps_dir, tmp_path / "part", steps=2, checkpoint_every=1, **kw)
    assert (tmp_path / "part/checkpoint/state.pt").is_file()
    train_prior(maps_dir, tmp_path / "part", steps=4, checkpoint_every=100, **kw)   # resumes from step 2
    full = PhysicsPrior.from_pretrained(tmp_path / "full")
    part = PhysicsPrior.from_pretrained(tmp_path / "part")
    assert full.hash == part.hash
    assert torch.equal(_unet_out(full), _unet_out(part))
    fresh = PhysicsPrior.create(tiny_prior_config(16))
    assert fresh.hash != full.hash
    sched = json.loads((tmp_path / "full/scheduler/scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "squaredcos_cap_v2"
    assert full.scheduler.config.prediction_type == "v_prediction"
    cfg = json.loads((tmp_path / "full/physaug_prior.json").read_text())
    assert cfg["training"]["steps"] == 4 and cfg["weights_sha256"] == full.hash
    with pytest.raises(PriorTrainingError, match="other settings.*lr"):
        train_prior(maps_dir, tmp_path / "part", steps=6, checkpoint_every=100, **{**kw, "lr": 5e-4})
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_prior(maps_dir, tmp_path / "part", steps=6, resume=False, **kw)
    # resumed on other maps: another run, refused (the checkpoint records the latents it trained on)
    other = tmp_path / "other_maps"
    rng = np.random.default_rng(1)
    for i in range(2):
        m0, t1, t2 = _toy_maps(rng)
        write_case_maps(other, f"case{i}", m0 * 7.0, t1, t2, np.eye(4))
    with pytest.raises(PriorTrainingError, match="other settings.*training_latents_sha256"):
        train_prior(other, tmp_path / "part", steps=6, checkpoint_every=100, **kw)
    for decay in (float("nan"), 2.0, 1.0, -0.1):
        with pytest.raises(PriorTrainingError, match=r"--ema-decay .*must be in \[0, 1\)"):
            train_prior(maps_dir, tmp_path / f"decay{decay}", steps=1, **{**kw, "ema_decay": decay})


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "sample"])
def test_training_target_matches_diffusers_and_denoise_inverts_it(kind):
    """The target of each prediction type is what diffusers' scheduler and our denoise() expect."""
    from diffusers import DDPMScheduler
    from nnunetv2_physaug.reverse.train_prior import training_target
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=kind)
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 250, 600, 999])
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    target = training_target(kind, x0, noise, a)
    if kind == "v_prediction":
        assert torch.allclose(target, sched.get_velocity(x0, noise, t), atol=1e-6)
    x_t = sched.add_noise(x0, noise, t)

    class Perfect(torch.nn.Module):          # outputs the training target exactly
        config = types.SimpleNamespace(in_channels=3, out_channels=3, sample_size=8)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, z, tt):
            return types.SimpleNamespace(sample=target)

    prior = PhysicsPrior(Perfect(), sched)
    got, _ = prior.denoise(x_t, t)
    keep = t < 999 if kind == "epsilon" else slice(None)     # epsilon cannot recover x0 at abar ~ 0
    assert torch.allclose(got[keep], x0[keep], atol=2e-3)


def test_training_rejects_unknown_objectives(maps_dir, tmp_path):
    with pytest.raises(PriorTrainingError, match="prediction_type"):
        train_prior(maps_dir, tmp_path / "x", steps=1, size=16, unet_config="tiny", device="cpu",
                    prediction_type="score", progress=False)
    with pytest.raises(PriorTrainingError, match="beta_schedule"):
        train_prior(maps_dir, tmp_path / "x", steps=1, size=16, unet_config="tiny", device="cpu",
                    beta_schedule="sigmoid", progress=False)


_RANK_WEIGHTS = """
import os, sys, torch
import torch.nn.parallel as parallel
captured = {}
class Capturing(parallel.DistributedDataParallel):
    def __init__(self, module, *a, **k):
        super().__init__(module, *a, **k)
        captured["module"] = module
parallel.DistributedDataParallel = Capturing  # train_prior imports it from torch.nn.parallel at run time
from nnunetv2_physaug.cli.train_prior import main
main(sys.argv[1:])
torch.save(captured["module"].state_dict(), os.path.join(sys.argv[sys.argv.index("-o") + 1],
                                                         f"rank{os.environ['RANK']}_weights.pt"))
"""


def test_torchrun_two_process_ddp_on_cpu(maps_dir, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "rank_weights.py"
    script.write_text(_RANK_WEIGHTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "--maps", str(maps_dir), "-o", str(out), "--size", "16",
           "--steps", "2", "--batch-size", "2", "--unet", "tiny", "--device", "cpu", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("prior saved to") == 1            # rank 0 only
    prior = PhysicsPrior.from_pretrained(out)
    state = torch.load(out / "checkpoint/state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["generators"]) == 2
    # DDP keeps both ranks in sync: after training (each rank drew its own batches) the two ranks
    # hold the same weights, and they moved away from the (shared) initial weights
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert prior.sample_size == 16 and torch.isfinite(_unet_out(prior)).all()


def test_cli_help_explains_the_command():
    res = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.train_prior", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "--maps" in res.stdout and "torchrun" in res.stdout and "resumable" in res.stdout
