"""Finishing one case: its slices' maps harmonised, checked and committed to the tissue-map folder.

* **Per-case M0 harmonisation.** Estimators explain each slice up to its own global scale (the
  diffusion samplers normalise every slice by its percentiles). M0 of each slice and sample is
  rescaled so that the bSSFP rendering of the whole volume is proportional to the image with one
  factor (the median of the slice factors), keeping the relative intensity of slices of one case.
* T1/T2 are clamped to >= 1 ms and M0 to >= 0 (the clamp of DESIGN §6; estimators may return 0).
* QC: ``nrmse_pct`` = data-consistency NRMSE of the whole volume with one scale (mean over samples),
  ``nrmse_pct_slice_max`` = worst per-slice NRMSE, the means of the estimator's numeric per-slice figures
  (``slice_mean_<name>``) and, with labels, the median T1/T2 of the labelled blood and myocardium, which must
  be physiological.
* Written in the image's geometry (3D, or 4D with K samples on the last axis) and committed, with the
  digest of the inputs it was made from, by :class:`nnunetv2_physaug.maps.folder.TissueMapFolder`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..maps.folder import TissueMapFolder
from ..maps.store import TissueMapError
from .forward import BSSFPForwardModel
from .qc import fit_scale, implausible_medians, labelled_tissue_medians, nrmse_pct


@dataclass
class CaseWork:
    case: str
    image: np.ndarray          # (X, Y, Z) float32
    affine: np.ndarray
    labels: Optional[np.ndarray]
    t0: float
    maps: Optional[np.ndarray] = None   # (Z, K, 3, X, Y)
    slice_qc: list = field(default_factory=list)
    remaining: int = 0


def finish_maps(image: np.ndarray, maps: np.ndarray, model: BSSFPForwardModel) -> tuple[np.ndarray, dict]:
    """Clamp, harmonise M0 across slices, and compute the case QC with the estimator's forward model.
    image (X,Y,Z), maps (Z,K,3,X,Y)."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0))).double()  # (Z, X, Y)
    m = torch.from_numpy(maps).double()
    m[:, :, 0].clamp_(min=0.0)
    m[:, :, 1:].clamp_(min=1.0)
    r = model.render_maps(m)                                 # (Z, K, X, Y)
    c = fit_scale(x[:, None], r)                             # (Z, K) slice factors
    valid = c > 0
    ref = c[valid].median() if bool(valid.any()) else torch.tensor(1.0, dtype=c.dtype)
    factor = torch.where(valid, c / ref, torch.ones_like(c))
    m[:, :, 0] *= factor[:, :, None, None]
    r = r * factor[:, :, None, None]
    per_sample = nrmse_pct(x[:, None].permute(1, 0, 2, 3), r.permute(1, 0, 2, 3), dims=(-3, -2, -1))  # (K,)
    per_slice = nrmse_pct(x[:, None], r).mean(dim=1)        # (Z,)
    qc = {"nrmse_pct": float(per_sample.mean()), "nrmse_pct_slice_max": float(per_slice.max()),
          "n_slices": int(x.shape[0]), "n_samples": int(m.shape[1])}
    return m.float().numpy(), qc


#: default largest bSSFP re-render NRMSE (percent) of a case's maps; above it the case fails. The weight-free
#: estimator re-renders exactly, the fast sampler to ~0.2-0.6 %, the paper sampler to ~10-15 % on phantoms;
#: maps of a broken prior or a wrong latent mapping miss by far more.
MAX_NRMSE_PCT = 30.0


def write_case(folder: TissueMapFolder, work: CaseWork, ident_hash: str, model: BSSFPForwardModel,
                max_nrmse_pct: float = MAX_NRMSE_PCT, tissue_values: Optional[dict] = None,
                accept_implausible: bool = False, inputs: Optional[dict] = None) -> dict:
    maps, qc = finish_maps(work.image, work.maps, model)
    if not qc["nrmse_pct"] <= max_nrmse_pct:  # also catches NaN
        raise TissueMapError(f"case {work.case}: its maps re-render the bSSFP image with NRMSE "
                             f"{qc['nrmse_pct']:.1f} % > {max_nrmse_pct:g} % (max_nrmse); not written. A prior that "
                             f"does not fit these images, or images that are not bSSFP?")
    if work.labels is not None and tissue_values:
        # a fit to the image alone passes for maps of any scale (M0 absorbs it): the labelled tissues' T1/T2
        # must also be a heart's
        medians = labelled_tissue_medians(maps, work.labels, tissue_values)
        qc["tissue_medians_ms"] = medians
        bad = implausible_medians(medians)
        if bad and not accept_implausible:
            raise TissueMapError(f"case {work.case}: the median T1/T2 of its labelled tissues are outside the "
                                 f"physiological range: {'; '.join(bad)}; not written. An untrained or wrong prior, "
                                 f"or a wrong label-tissue mapping? --accept-implausible writes such maps anyway")
    for key in sorted({k for q in work.slice_qc for k, v in q.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}):
        vals = [q[key] for q in work.slice_qc if key in q]
        qc[f"slice_mean_{key}"] = float(np.mean(vals))
    qc["labels"] = work.labels is not None
    arrays = []
    for ch in range(3):
        a = np.transpose(maps[:, :, ch], (2, 3, 0, 1))     # (Z, K, X, Y) -> (X, Y, Z, K)
        arrays.append(a[..., 0] if a.shape[-1] == 1 else a)
    qc["seconds"] = round(time.perf_counter() - work.t0, 3)
    folder.write_case(work.case, *arrays, affine=work.affine, ident_hash=ident_hash, qc=qc, inputs=inputs)
    return qc
