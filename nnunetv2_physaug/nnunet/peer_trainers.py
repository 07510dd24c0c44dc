"""The augmentations users can already switch on, as nnU-Net v2 trainers beside PhysAug's.

- :class:`nnUNetTrainerGINIPA`: GIN-IPA (Ouyang et al., TMI 2022; :mod:`nnunetv2_physaug.peers.gin_ipa`)
  as the reverse-imaging authors' fork applied it: after nnU-Net's own augmentation, on the training batch,
  on the training device. ``peer_gin_layers = 1`` with ``peer_ipa = False`` is RandConv.
- :class:`nnUNetTrainerLocationScale`: SLAug's global / local location-scale augmentation (Su et al., AAAI
  2023; :mod:`nnunetv2_physaug.peers.location_scale`): each training image takes GLA or LLA (p 0.5);
  ``peer_saliency_fusion = True`` trains as SLAug does, on the GLA image and on its saliency-balanced fusion
  with the LLA image (two forward/backward passes per step).
- :class:`nnUNetTrainerPhysAugGINIPA` (the fork's ``InvGreRC``) and :class:`nnUNetTrainerPhysAugLocationScale`:
  PhysAug's rendering in the loader, the peer on the batch. ``peer_probability`` is the share of training
  images the peer changes (1: every image, the fork's way; the ``Half`` variants: 0.5, so half the images
  keep PhysAug's physics contrast or the real cine untouched).
- ``nnUNetTrainerDA5_<X>``: nnU-Net's own heavy augmentation (``nnUNetTrainerDA5``) at every stock length
  that nnU-Net does not ship itself.

Only the training step changes: labels, validation batches, validation and inference are nnU-Net's. Every
trainer exists at every stock length (``_5epochs``, ``_10epochs``, ...; :mod:`.lengths`).
"""
from __future__ import annotations

from typing import Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from ..peers import gin_ipa, location_scale
from .lengths import add_length_variants
from .trainers import nnUNetTrainerPhysAug


class nnUNetTrainerBatchPeer(nnUNetTrainer):
    """A stock trainer whose training batches pass through a per-image augmentation on the training device
    (:meth:`peer_augment_image`) before the forward pass. Not a method by itself (no augmentation)."""

    #: share of training images the peer changes (drawn per image)
    peer_probability: float = 1.0
    #: seed of the peer's random numbers (None: from torch's seed of this process and the DDP rank)
    peer_seed: Optional[int] = None

    def peer_generator(self) -> torch.Generator:
        """The peer's CPU generator: an image's draws come from it one image after another (the same on CPU
        and CUDA, whatever the batch size)."""
        if getattr(self, "_peer_generator", None) is None:
            seed = self.peer_seed if self.peer_seed is not None else torch.initial_seed() + 1009 * self.local_rank
            self._peer_generator = torch.Generator().manual_seed(int(seed) % (2 ** 63))
        return self._peer_generator

    def peer_augment_image(self, image: torch.Tensor, labels: torch.Tensor,
                           generator: torch.Generator) -> torch.Tensor:
        """One training image ``(C, *spatial)`` with its labels ``(1, *spatial)`` augmented."""
        return image

    @torch.no_grad()
    def peer_augment_batch(self, data: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A new batch: each image changed by the peer with probability :attr:`peer_probability`."""
        generator = self.peer_generator()
        out = data.clone()
        for i in range(data.shape[0]):
            if float(torch.rand((), generator=generator)) < self.peer_probability:
                out[i] = self.peer_augment_image(data[i], labels[i], generator)
        return out

    @staticmethod
    def _full_resolution(target) -> torch.Tensor:
        return target[0] if isinstance(target, (list, tuple)) else target

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        labels = self._full_resolution(batch["target"]).to(self.device, non_blocking=True)
        return super().train_step({**batch, "data": self.peer_augment_batch(data, labels)})


class nnUNetTrainerGINIPA(nnUNetTrainerBatchPeer):
    """GIN-IPA on every training image (4-layer GIN, 2 intermediate channels, kernels 1 or 3, IPA mask)."""

    peer_gin_layers: int = 4
    peer_gin_interm: int = 2
    peer_gin_kernel_sizes: tuple[int, ...] = gin_ipa.GIN_KERNEL_SIZES
    peer_ipa: bool = True

    def peer_gin_settings(self) -> gin_ipa.GINIPASettings:
        return gin_ipa.GINIPASettings(n_layers=self.peer_gin_layers, interm=self.peer_gin_interm,
                                      kernel_sizes=tuple(self.peer_gin_kernel_sizes), ipa=self.peer_ipa)

    def peer_augment_image(self, image, labels, generator):
        return gin_ipa.gin_ipa_image(image, generator, self.peer_gin_settings())


class nnUNetTrainerLocationScale(nnUNetTrainerBatchPeer):
    """SLAug's location-scale augmentation: each training image takes GLA or LLA (p 0.5 each)."""

    #: SLAug's saliency-balancing fusion: train on GLA and on its fusion with LLA (two passes per step)
    peer_saliency_fusion: bool = False
    #: cells per axis of the saliency grid
    peer_saliency_grid: int = 3

    def _n_labels(self) -> Optional[int]:
        return len(self.label_manager.all_labels) if getattr(self, "label_manager", None) else None

    def peer_augment_image(self, image, labels, generator):
        if float(torch.rand((), generator=generator)) < 0.5:
            return location_scale.global_location_scale(image, generator)
        return location_scale.local_location_scale(image, labels, generator, n_labels=self._n_labels())

    def train_step(self, batch: dict) -> dict:
        if not self.peer_saliency_fusion:
            return super().train_step(batch)
        return self._saliency_fusion_step(batch)

    def _autocast(self):
        """nnU-Net's train_step context: mixed precision on CUDA only (a fresh one per forward pass)."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _saliency_fusion_step(self, batch: dict) -> dict:
        """SLAug's step: loss on the GLA batch, its input gradient's saliency s, loss on s GLA + (1 - s) LLA;
        the network learns from the sum (the logged loss is their mean)."""
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        data = batch["data"].to(self.device, non_blocking=True)
        labels = self._full_resolution(target)
        generator = self.peer_generator()
        with torch.no_grad():
            gla = torch.stack([location_scale.global_location_scale(x, generator) for x in data])
            lla = torch.stack([location_scale.local_location_scale(x, y, generator, n_labels=self._n_labels())
                               for x, y in zip(data, labels)])
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.grad_scaler.scale if self.grad_scaler is not None else (lambda v: v)
        gla.requires_grad_(True)
        with self._autocast():
            loss_gla = self.loss(self.network(gla), target)
        scale(loss_gla).backward()
        s = location_scale.saliency_map(gla.grad.detach(), self.peer_saliency_grid)
        fused = s * gla.detach() + (1.0 - s) * lla
        with self._autocast():
            loss_fused = self.loss(self.network(fused), target)
        scale(loss_fused).backward()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": (0.5 * (loss_gla + loss_fused)).detach().cpu().numpy()}


class nnUNetTrainerLocationScaleSBF(nnUNetTrainerLocationScale):
    """SLAug as its paper trains: GLA and its saliency-balanced fusion with LLA, two passes per step."""

    peer_saliency_fusion = True


class nnUNetTrainerPhysAugGINIPA(nnUNetTrainerGINIPA, nnUNetTrainerPhysAug):
    """PhysAug's rendering, then GIN-IPA on every training image (the reverse-imaging fork's ``InvGreRC``)."""


class nnUNetTrainerPhysAugGINIPAHalf(nnUNetTrainerPhysAugGINIPA):
    """PhysAug's rendering, then GIN-IPA on half the training images (drawn per image)."""

    peer_probability = 0.5


class nnUNetTrainerPhysAugLocationScale(nnUNetTrainerLocationScale, nnUNetTrainerPhysAug):
    """PhysAug's rendering, then location-scale (GLA or LLA) on every training image."""


class nnUNetTrainerPhysAugLocationScaleHalf(nnUNetTrainerPhysAugLocationScale):
    """PhysAug's rendering, then location-scale on half the training images (drawn per image)."""

    peer_probability = 0.5


PEER_TRAINERS = (nnUNetTrainerGINIPA, nnUNetTrainerLocationScale, nnUNetTrainerLocationScaleSBF,
                 nnUNetTrainerPhysAugGINIPA, nnUNetTrainerPhysAugGINIPAHalf, nnUNetTrainerPhysAugLocationScale,
                 nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainerDA5)

__all__ = [t.__name__ for t in PEER_TRAINERS if t is not nnUNetTrainerDA5]
for _t in PEER_TRAINERS:
    __all__ += add_length_variants(_t, globals())
