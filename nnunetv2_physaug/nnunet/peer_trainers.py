"""The augmentations users can already switch on, as nnU-Net v2 trainers beside PhysAug's.

- :class:`nnUNetTrainerGINIPA`: GIN-IPA as Ouyang et al. (TMI 2022) train it
  (:mod:`nnunetv2_physaug.peers.gin_ipa`): after nnU-Net's own augmentation, on the training device, each
  training image gives three views (two complementary IPA blends of two GIN outputs and a plain GIN output);
  nnU-Net's segmentation loss on the first view plus 10 x the KL consistency of the three views' predictions;
  the IPA mask spaced to hold Ouyang's 4 control cells across the patch. One forward/backward pass over three
  times the batch per step.
- :class:`nnUNetTrainerGINIPAFork`: the reverse-imaging authors' fork's simplification: one IPA blend per
  image, segmentation loss only, control points every 24 pixels whatever the patch. ``peer_gin_layers = 1``
  with ``peer_ipa = False`` is RandConv.
- :class:`nnUNetTrainerLocationScale`: SLAug as Su et al. (AAAI 2023) train it
  (:mod:`nnunetv2_physaug.peers.location_scale`): the loader makes each crop's GLA and LLA images before
  nnU-Net's spatial and intensity transforms (which then act on both); the training step takes the loss on
  the GLA image and on its saliency-balanced fusion with the LLA image (cardiac grid 18): two
  forward/backward passes per step, one optimiser step.
- The combinations: PhysAug's rendering in the loader, then the peer. ``peer_probability`` is the share of
  training images the peer changes (1: every image; the ``Half`` variants 0.5, so half the images keep
  PhysAug's physics contrast or the real cine untouched). :class:`nnUNetTrainerPhysAugGINIPAFork` is the
  fork's ``InvGreRC``.
- ``nnUNetTrainerDA5_<X>``: nnU-Net's own heavy augmentation (``nnUNetTrainerDA5``) at every stock length
  that nnU-Net does not ship itself.

Only training changes: labels, validation batches, validation and inference are nnU-Net's. Every trainer
exists at every stock length (``_5epochs``, ``_10epochs``, ...; :mod:`.lengths`). :data:`BENCHMARK_PEERS`
is the one list of peers the benchmarks and the demo compare.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from ..peers import gin_ipa, location_scale
from .lengths import add_length_variants
from .setup_checks import check_peer_attributes
from .trainers import nnUNetTrainerPhysAug


class nnUNetTrainerPeerStep(nnUNetTrainer):
    """The pieces of nnU-Net's training step that the peers' own steps reuse (mixed precision on CUDA, the
    scaled backward pass, gradient clipping and the optimiser step). Not a method by itself."""

    #: share of training images the peer changes (drawn per image)
    peer_probability: float = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's signature, parameter for parameter: it records them by name (my_init_kwargs)
        super().__init__(plans, configuration, fold, dataset_json, device)
        check_peer_attributes(self)  # before nnU-Net reads any data

    def _autocast(self):
        """nnU-Net's train_step context: mixed precision on CUDA only (a fresh one per forward pass)."""
        # Copied from nnU-Net 2.8.1: nnUNetTrainer.train_step (the autocast line)
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, object]:
        # Copied from nnU-Net 2.8.1: nnUNetTrainer.train_step (moving data and target)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return batch["data"].to(self.device, non_blocking=True), target

    def _backward(self, loss: torch.Tensor) -> None:
        # Copied from nnU-Net 2.8.1: nnUNetTrainer.train_step (the scaled backward pass)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def _clip_and_step(self) -> None:
        # Copied from nnU-Net 2.8.1: nnUNetTrainer.train_step (unscale, clip at 12, step)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()


class nnUNetTrainerBatchPeer(nnUNetTrainerPeerStep):
    """A stock trainer whose training batches pass through a per-image augmentation on the training device
    (:meth:`peer_augment_image`) before the forward pass. Not a method by itself (no augmentation)."""

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


class nnUNetTrainerGINIPAFork(nnUNetTrainerBatchPeer):
    """GIN-IPA as the reverse-imaging fork applied it: one IPA blend of two GIN outputs per training image
    (4-layer GIN, 2 intermediate channels, kernels 1 or 3, control points every 24 pixels at half
    resolution), segmentation loss only."""

    peer_gin_layers: int = 4
    peer_gin_interm: int = 2
    peer_gin_kernel_sizes: tuple[int, ...] = gin_ipa.GIN_KERNEL_SIZES
    peer_ipa: bool = True

    def peer_gin_settings(self, spatial: Optional[tuple[int, ...]] = None) -> gin_ipa.GINIPASettings:
        return gin_ipa.GINIPASettings(n_layers=self.peer_gin_layers, interm=self.peer_gin_interm,
                                      kernel_sizes=tuple(self.peer_gin_kernel_sizes), ipa=self.peer_ipa)

    def peer_augment_image(self, image, labels, generator):
        return gin_ipa.gin_ipa_image(image, generator, self.peer_gin_settings())


class nnUNetTrainerGINIPA(nnUNetTrainerGINIPAFork):
    """GIN-IPA as published: three views per image, segmentation loss on the first, consistency weight 10,
    the IPA mask with :attr:`peer_ipa_cells` control cells across the patch."""

    #: control cells across the patch at the mask's resolution (Ouyang et al.: 4)
    peer_ipa_cells: float = gin_ipa.PUBLISHED_IPA_CELLS
    #: weight of the KL consistency term (Ouyang et al.: 10)
    peer_consistency_weight: float = gin_ipa.PUBLISHED_CONSISTENCY_WEIGHT

    def peer_gin_settings(self, spatial: Optional[tuple[int, ...]] = None) -> gin_ipa.GINIPASettings:
        base = super().peer_gin_settings()
        if spatial is None:
            return base
        return dataclasses.replace(base, spacing=gin_ipa.spacing_for_cells(spatial, self.peer_ipa_cells,
                                                                           base.downscale))

    @torch.no_grad()
    def peer_views(self, data: torch.Tensor) -> torch.Tensor:
        """The three views of a batch ``(B, C, *spatial)``, view-major ``(3B, C, *spatial)``; an image the
        peer leaves (probability ``1 - peer_probability``) is its own three views."""
        generator = self.peer_generator()
        settings = self.peer_gin_settings(tuple(data.shape[2:]))
        views = []
        for x in data:
            if float(torch.rand((), generator=generator)) < self.peer_probability:
                views.append(gin_ipa.three_views(x, generator, settings))
            else:
                views.append(torch.stack([x, x, x]))
        return torch.stack(views, 1).reshape(-1, *data.shape[1:])

    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        b = data.shape[0]
        views = self.peer_views(data)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(views)
            deep = isinstance(output, (list, tuple))
            first = [o[:b] for o in output] if deep else output[:b]
            full_resolution = output[0] if deep else output
            loss = self.loss(first, target) + self.peer_consistency_weight * gin_ipa.consistency_loss(full_resolution)
        self._backward(loss)
        self._clip_and_step()
        return {"loss": loss.detach().cpu().numpy()}


class nnUNetTrainerLocationScale(nnUNetTrainerPeerStep):
    """SLAug as published: GLA and LLA made in the loader before nnU-Net's transforms, the loss on GLA and on
    its saliency-balanced fusion with LLA (:attr:`peer_saliency_grid` cells per axis)."""

    #: cells per axis of the saliency grid (SLAug's cardiac setting: 18)
    peer_saliency_grid: int = location_scale.CARDIAC_SALIENCY_GRID

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training pipeline with :class:`~nnunetv2_physaug.peers.location_scale.SLAugViewsTransform`
        first (on the crop, before the spatial transform)."""
        stock = super().get_training_transforms(*args, **kwargs)
        views = location_scale.SLAugViewsTransform(len(self.label_manager.all_labels), self.peer_probability)
        return ComposeTransforms([views, *stock.transforms])

    def train_step(self, batch: dict) -> dict:
        """SLAug's step: loss on the GLA batch, its input gradient's saliency s, loss on s GLA + (1 - s) LLA;
        the network learns from the sum (the logged loss is their mean)."""
        data, target = self._to_device(batch)
        gla, lla = location_scale.split_pair(data)
        self.optimizer.zero_grad(set_to_none=True)
        gla = gla.detach().clone().requires_grad_(True)
        with self._autocast():
            loss_gla = self.loss(self.network(gla), target)
        self._backward(loss_gla)
        saliency = location_scale.saliency_map(gla.grad.detach(), self.peer_saliency_grid)
        fused = location_scale.fuse(gla.detach(), lla, saliency.to(gla.dtype))
        with self._autocast():
            loss_fused = self.loss(self.network(fused), target)
        self._backward(loss_fused)
        self._clip_and_step()
        return {"loss": (0.5 * (loss_gla + loss_fused)).detach().cpu().numpy()}


class nnUNetTrainerPhysAugGINIPA(nnUNetTrainerGINIPA, nnUNetTrainerPhysAug):
    """PhysAug's rendering, then GIN-IPA as published on every training image."""


class nnUNetTrainerPhysAugGINIPAHalf(nnUNetTrainerPhysAugGINIPA):
    """PhysAug's rendering, then GIN-IPA as published on half the training images (drawn per image)."""

    peer_probability = 0.5


class nnUNetTrainerPhysAugGINIPAFork(nnUNetTrainerGINIPAFork, nnUNetTrainerPhysAug):
    """PhysAug's rendering, then the fork's GIN-IPA on every training image (the fork's ``InvGreRC``)."""


class nnUNetTrainerPhysAugLocationScale(nnUNetTrainerLocationScale, nnUNetTrainerPhysAug):
    """PhysAug's rendering, then SLAug as published on every training image."""


class nnUNetTrainerPhysAugLocationScaleHalf(nnUNetTrainerPhysAugLocationScale):
    """PhysAug's rendering, then SLAug on half the training images (drawn per image; the others train on
    their render in both of SLAug's passes)."""

    peer_probability = 0.5


PEER_TRAINERS = (nnUNetTrainerGINIPA, nnUNetTrainerGINIPAFork, nnUNetTrainerLocationScale,
                 nnUNetTrainerPhysAugGINIPA, nnUNetTrainerPhysAugGINIPAHalf, nnUNetTrainerPhysAugGINIPAFork,
                 nnUNetTrainerPhysAugLocationScale, nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainerDA5)

#: the peers the benchmarks (``bench_real --peers``) and the demo (``--peers``) compare, without a length suffix:
#: each published single peer, nnU-Net's DA5, and PhysAug with each published peer (both shares)
BENCHMARK_PEERS = ("nnUNetTrainerGINIPA", "nnUNetTrainerLocationScale", "nnUNetTrainerDA5",
                   "nnUNetTrainerPhysAugGINIPA", "nnUNetTrainerPhysAugGINIPAHalf",
                   "nnUNetTrainerPhysAugLocationScale", "nnUNetTrainerPhysAugLocationScaleHalf")

__all__ = [t.__name__ for t in PEER_TRAINERS if t is not nnUNetTrainerDA5] + ["BENCHMARK_PEERS"]
for _t in PEER_TRAINERS:
    __all__ += add_length_variants(_t, globals())
