"""The tissue-map diffusion prior: a diffusers ``UNet2DModel`` + ``DDPMScheduler`` over [M0, T1, T2].

A prior is a diffusers pipeline folder (DESIGN §5)::

    PRIOR_DIR/
        model_index.json          # DDPMPipeline index (the authors' published layout has it too)
        unet/config.json          # UNet2DModel, in_channels = 3
        unet/diffusion_pytorch_model.safetensors
        scheduler/scheduler_config.json   # DDPMScheduler, 1000 training steps
        physaug_prior.json        # latent -> physical mapping (optional; paper defaults if absent)

The network works on latents ``z`` of shape (N, 3, S, S) in [-1, 1], channels [M0, T1, T2].
With ``u = clip((z + 1) / 2, 0, 1)`` the physical maps are::

    M0 = u0 / m0_divisor        (relative, m0_divisor = 0.6 -> M0 in [0, 1.667])
    T1 = t1_scale_ms * u1       (ms, 3200)
    T2 = t2_scale_ms * u2       (ms, 300; the authors' release script scaled the wrong channel)

Weights are read from safetensors (or, for legacy ``.bin`` folders, by diffusers with
``torch.load(weights_only=True)``) and always written as safetensors.
"""
from __future__ import annotations

import hashlib
import math
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ..fileio import atomic_write_bytes, make_temp_dir

import torch

PRIOR_CONFIG_NAME = "physaug_prior.json"
MODEL_INDEX_NAME = "model_index.json"
PRIOR_FORMAT_VERSION = 1
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class PriorError(ValueError):
    """A prior folder that cannot be used; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class LatentMapping:
    """Latent [-1, 1] -> physical units (see the module docstring). Times in ms."""

    m0_divisor: float = 0.6
    t1_scale_ms: float = 3200.0
    t2_scale_ms: float = 300.0

    def __post_init__(self) -> None:
        for name in ("m0_divisor", "t1_scale_ms", "t2_scale_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"latent mapping {name} must be a finite number > 0, got {value!r}")

    def to_physical(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., 3, H, W) latent -> (M0, T1 ms, T2 ms), each (..., H, W); u is clipped to [0, 1]."""
        u = ((z + 1.0) * 0.5).clamp(0.0, 1.0)
        return u[..., 0, :, :] / self.m0_divisor, u[..., 1, :, :] * self.t1_scale_ms, u[..., 2, :, :] * self.t2_scale_ms

    def to_latent(self, m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """(M0, T1 ms, T2 ms), each (..., H, W) -> latent (..., 3, H, W) clipped to [-1, 1]."""
        u = torch.stack([m0 * self.m0_divisor, t1 / self.t1_scale_ms, t2 / self.t2_scale_ms], dim=-3)
        return (u.clamp(0.0, 1.0) * 2.0 - 1.0).to(torch.float32)


def tiny_prior_config(sample_size: int = 32) -> dict[str, Any]:
    """UNet2DModel kwargs of a very small network (~0.1 M parameters) for tests on CPU."""
    return dict(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, add_attention=False)


def small_prior_config(sample_size: int = 64) -> dict[str, Any]:
    """UNet2DModel kwargs of a small network (~2 M parameters) that learns phantom maps in minutes on CPU."""
    return dict(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                block_out_channels=(32, 64, 128), down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=16,
                attention_head_dim=32)


def paper_prior_config(sample_size: int = 128) -> dict[str, Any]:
    """UNet2DModel kwargs of a full-size 128² prior (the diffusers unconditional-training layout, ~114 M
    parameters). The authors' exact configuration is not public; their folder carries its own config."""
    return dict(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(128, 128, 256, 256, 512, 512),
                down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))


UNET_PRESETS = {"tiny": tiny_prior_config, "small": small_prior_config, "paper": paper_prior_config}


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text), "")


class PhysicsPrior:
    """A diffusion prior over latent tissue maps plus its latent -> physical mapping.

    Attributes:
        unet: the denoiser, ``unet(z_t, t).sample`` -> (N, out_channels, S, S).
        scheduler: the training noise schedule (``num_train_timesteps`` usually 1000).
        mapping: :class:`LatentMapping`.
    """

    def __init__(self, unet, scheduler, mapping: Optional[LatentMapping] = None, source: Optional[str] = None):
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.mapping = mapping or LatentMapping()
        self.source = source
        self._hash: Optional[str] = None
        self._check(source or "<in memory>")

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, unet_config: Optional[dict[str, Any]] = None, mapping: Optional[LatentMapping] = None,
               **scheduler_kwargs) -> "PhysicsPrior":
        """A freshly initialised (untrained) prior; ``unet_config`` defaults to :func:`paper_prior_config`."""
        from diffusers import DDPMScheduler, UNet2DModel
        unet = UNet2DModel(**(unet_config or paper_prior_config()))
        kwargs = dict(num_train_timesteps=1000)
        kwargs.update(scheduler_kwargs)
        return cls(unet, DDPMScheduler(**kwargs), mapping)

    @classmethod
    def from_pretrained(cls, folder: os.PathLike | str, device: torch.device | str = "cpu") -> "PhysicsPrior":
        """Load a diffusers pipeline folder (ours or the authors' ``phys-acdc-128``).

        Raises:
            PriorError: the folder is missing, lacks ``unet/`` or ``scheduler/``, has no weights, or
                its network does not take 3 channels [M0, T1, T2].
        """
        from diffusers import DDPMScheduler, UNet2DModel
        folder = Path(folder)
        hint = ("expected a diffusers pipeline folder with unet/ (config.json + weights) and scheduler/ "
                "(scheduler_config.json), e.g. the authors' phys-acdc-128 or one written by physaug-train-prior")
        if not folder.is_dir():
            raise PriorError(f"prior folder {folder} does not exist; {hint}")
        unet_dir, sched_dir = folder / "unet", folder / "scheduler"
        if not (unet_dir / "config.json").is_file():
            extra = " (it looks like a unet/ folder itself: pass its parent)" if (folder / "config.json").is_file() else ""
            raise PriorError(f"prior folder {folder} has no unet/config.json{extra}; {hint}")
        if not any((unet_dir / n).is_file() for n in _WEIGHT_NAMES):
            raise PriorError(f"prior folder {folder}: unet/ holds no weights ({' or '.join(_WEIGHT_NAMES)}); {hint}")
        if not (sched_dir / "scheduler_config.json").is_file():
            raise PriorError(f"prior folder {folder} has no scheduler/scheduler_config.json; {hint}")
        try:
            unet_cfg = json.loads((unet_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PriorError(f"prior folder {folder}: unet/config.json is not valid JSON ({e})") from e
        cls_name = unet_cfg.get("_class_name", "UNet2DModel")
        if cls_name != "UNet2DModel":
            raise PriorError(f"prior folder {folder}: unet/config.json describes a {cls_name}, "
                             "expected a diffusers UNet2DModel")
        if unet_cfg.get("in_channels", 3) != 3:
            raise PriorError(f"prior folder {folder}: the network takes {unet_cfg.get('in_channels')} channels, "
                             "a tissue-map prior needs 3 ([M0, T1, T2])")
        mapping = LatentMapping()
        cfg_path = folder / PRIOR_CONFIG_NAME
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text())
                mapping = LatentMapping(**{k: float(cfg[k]) for k in ("m0_divisor", "t1_scale_ms", "t2_scale_ms")})
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise PriorError(f"prior folder {folder}: {PRIOR_CONFIG_NAME} is invalid ({e!r}); it needs "
                                 "m0_divisor, t1_scale_ms and t2_scale_ms") from e
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
            scheduler = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise PriorError(f"prior folder {folder}: cannot load the diffusers model ({e})") from e
        return cls(unet.to(device), scheduler, mapping, source=str(folder))

    def _check(self, where: str) -> None:
        cfg = self.unet.config
        if cfg.in_channels != 3:
            raise PriorError(f"prior {where}: the network takes {cfg.in_channels} channels, "
                             "a tissue-map prior needs 3 ([M0, T1, T2])")
        learned = self.scheduler.config.variance_type in ("learned", "learned_range")
        if cfg.out_channels != (6 if learned else 3):
            raise PriorError(f"prior {where}: the network outputs {cfg.out_channels} channels; with variance_type "
                             f"{self.scheduler.config.variance_type!r} it must output {6 if learned else 3}")
        size = cfg.sample_size
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise PriorError(f"prior {where}: sample_size {size} is not square")
        elif not isinstance(size, int):
            raise PriorError(f"prior {where}: the unet config has no integer sample_size")

    # ---------------------------------------------------------------- saving
    def save_pretrained(self, folder: os.PathLike | str, overwrite: bool = False,
                        extra_config: Optional[dict[str, Any]] = None) -> Path:
        """Write the prior as a diffusers DDPMPipeline folder with safetensors weights.

        Every part is written to a temporary folder first and moved into place, so a killed save
        never leaves a half-written prior. Other files in ``folder`` (e.g. training checkpoints) are kept.

        Raises:
            FileExistsError: ``folder`` already holds a prior and ``overwrite`` is False.
        """
        import diffusers
        folder = Path(folder)
        if (folder / "unet").exists() and not overwrite:
            raise FileExistsError(f"{folder} already holds a prior (unet/); pass overwrite=True (--overwrite)")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(folder / "unet", ".tmp-prior-")
        try:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                     "scheduler": ["diffusers", type(self.scheduler).__name__],
                     "unet": ["diffusers", type(self.unet).__name__]}
            (tmp / MODEL_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            cfg = {"format_version": PRIOR_FORMAT_VERSION, "channels": ["M0", "T1", "T2"],
                   "sample_size": self.sample_size, "in_channels": 3, **asdict(self.mapping),
                   "weights_sha256": self.hash}
            cfg.update(extra_config or {})
            (tmp / PRIOR_CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            # Directories cannot be replaced atomically when they exist: move the old one aside first.
            for name in ("unet", "scheduler", MODEL_INDEX_NAME, PRIOR_CONFIG_NAME):
                dst = folder / name
                if dst.is_dir():
                    old = tmp / f".old-{name}"
                    os.replace(dst, old)
                os.replace(tmp / name, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.source = str(folder)
        return folder

    # ---------------------------------------------------------------- properties and helpers
    @property
    def sample_size(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def to(self, device: torch.device | str) -> "PhysicsPrior":
        self.unet.to(device)
        return self

    @property
    def hash(self) -> str:
        """Short sha256 (16 hex digits) of everything that changes the maps: the network weights (key
        names and values, float32), the network and scheduler configurations (prediction type, noise
        schedule, ...) and the latent-to-physical mapping."""
        if self._hash is None:
            h = hashlib.sha256()
            for k, v in sorted(self.unet.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            def settings(cfg) -> dict:  # diffusers' bookkeeping keys (_class_name, _diffusers_version) aside
                return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
            configs = {"unet": settings(self.unet.config), "scheduler": settings(self.scheduler.config),
                       "mapping": {k: float(v) for k, v in asdict(self.mapping).items()}}
            h.update(json.dumps(configs, sort_keys=True, default=str).encode())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def to_physical(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., 3, H, W) latent -> (M0, T1 ms, T2 ms); see :class:`LatentMapping`."""
        return self.mapping.to_physical(z)

    def to_latent(self, m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """(M0, T1 ms, T2 ms) -> (..., 3, H, W) latent in [-1, 1]."""
        return self.mapping.to_latent(m0, t1, t2)

    def alphas_cumprod(self, device: torch.device | str) -> torch.Tensor:
        """(num_train_timesteps,) float32 cumulative products of the schedule's alphas."""
        return self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """One network evaluation -> (x0_hat, eps_hat), both (N, 3, S, S), whatever the prediction type.

        ``x0_hat`` is the Tweedie estimate, not clipped. Gradients flow if enabled by the caller.
        """
        n = z_t.shape[0]
        t_vec = torch.as_tensor(t, device=z_t.device).long().reshape(-1).expand(n)
        out = self.unet(z_t, t_vec).sample[:, :3]
        a = self.alphas_cumprod(z_t.device)[t_vec].view(n, 1, 1, 1)
        sa, s1a = a.sqrt(), (1.0 - a).sqrt()
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            eps = out
            x0 = (z_t - s1a * eps) / sa
        elif kind == "sample":
            x0 = out
            eps = (z_t - sa * x0) / s1a
        elif kind == "v_prediction":
            x0 = sa * z_t - s1a * out
            eps = sa * out + s1a * z_t
        else:
            raise PriorError(f"prior {self.source}: unsupported prediction_type {kind!r}")
        return x0, eps
