"""Write the phantom as nnU-Net v2 raw datasets (training set with ground-truth maps + test sets).

Layout under ``out_dir`` (an nnU-Net raw folder)::

    Dataset{first_id}_PhantomCine/        imagesTr/ labelsTr/ groundTruthMapsTr/ dataset.json   (bSSFP training set)
    Dataset{first_id+1}_PhantomCineTest/  imagesTr/ labelsTr/ dataset.json                 (new anatomies, bSSFP)
    Dataset{first_id+2}_PhantomLGE/ ...   one labelled dataset per unseen domain, same test anatomies
    phantom_summary.json

Each dataset is built in a hidden temporary folder beside its target and renamed into place when
complete, so an interrupted run leaves no half-written dataset.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Optional, Union

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..fileio import (atomic_write_bytes, atomic_write_json, commit_together, make_temp_dir, recover_staged,
                      recover_together)
from ..maps.folder import TissueMapFolder
from .anatomy import ACDC_LABELS, PhantomCase, make_case
from .domains import Domain, load_domains, render_domain

__all__ = ["write_phantom_datasets", "format_summary", "case_affine", "SUMMARY_NAME"]

SUMMARY_NAME = "phantom_summary.json"
#: largest in-plane matrix (pixels): finer than any cardiac MR, and a case's supersampled grid stays in memory
MAX_SIZE = 1024
#: the journal of a phantom being put in place (fileio.commit_together)
COMMIT_JOURNAL = ".phantom-commit.json"
FILE_ENDING = ".nii.gz"
# Random streams (numpy SeedSequence keys) so that each stream is independent of the others and of
# the case counts: training anatomies, training renderings, test anatomies, test renderings.
# Ground truth sits beside the dataset, *not* in tissueMapsTr: that is the folder physaug-reverse
# fills and the trainer reads, so the workflow on the phantom is the one a user runs on real data
# (and benchmarks can compare estimated maps with this folder).
GROUND_TRUTH_MAPS = "groundTruthMapsTr"
_TRAIN_ANATOMY, _TRAIN_RENDER, _TEST_ANATOMY, _TEST_RENDER = 0, 1, 2, 3


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]))


def case_affine(case: PhantomCase) -> np.ndarray:
    """4x4 voxel-to-world matrix of a case written as (X, Y, Z): diag(dx, dy, dz) in mm."""
    dz, dy, dx = case.spacing_zyx_mm
    return np.diag([dx, dy, dz, 1.0])


def write_ground_truth_maps(maps_dir: Union[str, os.PathLike], case_id: str, case: PhantomCase,
                            parameters: Optional[dict] = None) -> None:
    """Write and commit a case's true M0/T1/T2 as ``maps_dir/CASE_{M0,T1,T2}.nii.gz``.

    The folder's identity is estimator ``ground_truth`` with ``parameters`` (default: just the source), so
    it is a complete tissue-map folder for the trainer and ``physaug-train-prior`` (:mod:`..maps.folder`).
    """
    folder = TissueMapFolder(maps_dir)
    ident = folder.establish({"estimator": "ground_truth", "prior_hash": None,
                              "parameters": parameters or {"source": "nnunetv2_physaug.phantom"}}, overwrite=False)
    folder.write_case(case_id, case.m0.T, case.t1.T, case.t2.T, case_affine(case), ident,
                      qc={"phase": case.meta["phase"], "n_slices": case.meta["n_slices"]})


def _save_nifti(array_zyx: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    atomic_write_bytes(path, lambda tmp: nib.save(img, tmp), FILE_ENDING)


def _plan(out_dir: Path, domains: dict[str, Domain], first_id: int) -> list[dict]:
    train = next(d for d in domains.values() if d.role == "training")
    plan = [{"domain": train.name, "dataset": train.dataset, "role": "train", "channel_name": train.channel_name},
            {"domain": train.name, "dataset": train.dataset + "Test", "role": "test", "channel_name": train.channel_name}]
    plan += [{"domain": d.name, "dataset": d.dataset, "role": "test", "channel_name": d.channel_name}
             for d in domains.values() if d.role == "test"]
    if first_id < 1 or first_id + len(plan) - 1 > 999:
        raise ValueError(f"first_id {first_id} leaves no room for {len(plan)} dataset ids in 1..999 "
                         f"(nnU-Net ids have 3 digits); choose --first-id <= {1000 - len(plan)}")
    for i, p in enumerate(plan):
        p["id"] = first_id + i
        p["name"] = f"Dataset{p['id']:03d}_{p['dataset']}"
        p["imitates"] = domains[p["domain"]].imitates
    return plan


def _check_targets(out_dir: Path, plan: list[dict], overwrite: bool) -> None:
    """Refuse to clobber existing data, and refuse dataset-id clashes nnU-Net would reject."""
    existing = [p for p in out_dir.iterdir() if p.is_dir()] if out_dir.is_dir() else []
    for p in plan:
        target = out_dir / p["name"]
        clash = [e.name for e in existing if e.name.startswith(f"Dataset{p['id']:03d}_") and e.name != p["name"]]
        if clash:
            raise FileExistsError(f"{out_dir / clash[0]} already uses dataset id {p['id']}; nnU-Net needs unique "
                                  f"ids. Choose another --first-id or move that folder")
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; remove it or choose another -o")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"dataset folder {target} already exists and is not empty; pass --overwrite "
                                  "(overwrite=True) to replace it, or choose another -o / --first-id")
    summary = out_dir / SUMMARY_NAME
    if summary.exists() and not overwrite:
        raise FileExistsError(f"{summary} already exists; pass --overwrite (overwrite=True) to replace the phantom")


def _stale_datasets(out_dir: Path, plan: list[dict]) -> list[str]:
    """Dataset folders of the phantom being replaced (its summary's list) that the new one does not have: they
    go in the same unit as the new datasets are put in place, so no dataset of the old seed stays beside them."""
    summary = out_dir / SUMMARY_NAME
    if not summary.is_file():
        return []
    try:
        old = [d["name"] for d in json.loads(summary.read_text())["datasets"]]
    except (ValueError, KeyError, TypeError):
        raise FileExistsError(f"{summary} is not a phantom summary this tool wrote; move it away (and the "
                              f"datasets it lists) or choose another -o") from None
    new = {p["name"] for p in plan}
    return [n for n in old if isinstance(n, str) and n not in new and _DATASET_NAME.fullmatch(n)
            and (out_dir / n).is_dir()]


#: a dataset folder name a phantom summary may list (a plain name in the output folder)
_DATASET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9_]+")


def _write_case(folder: Path, case_id: str, image: np.ndarray, case: PhantomCase) -> None:
    affine = case_affine(case)
    _save_nifti(image, affine, folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}", np.float32)
    _save_nifti(case.labels, affine, folder / "labelsTr" / f"{case_id}{FILE_ENDING}", np.uint8)


def _dataset_json(folder: Path, p: dict, cases: dict, seed: int, size: int, field: str) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(folder), channel_names={0: p["channel_name"]}, labels=dict(ACDC_LABELS),
        num_training_cases=len(cases), file_ending=FILE_ENDING, dataset_name=p["name"],
        description=f"nnunetv2-physaug synthetic short-axis cardiac phantom, domain {p['domain']!r}: {p['imitates']}",
        reference="nnunetv2_physaug.phantom", license="CC0 (synthetic data)", converted_by="physaug-phantom",
        physaug_phantom={"domain": p["domain"], "role": p["role"], "imitates": p["imitates"], "seed": seed,
                         "size": size, "field": field, "cases": cases})


def write_phantom_datasets(out_dir: Union[str, os.PathLike], n_train: int = 20, n_test: int = 10, seed: int = 0,
                           size: int = 128, first_id: int = 900, field: str = "1.5T", overwrite: bool = False,
                           domains_file: Optional[Union[str, os.PathLike]] = None, progress: bool = True) -> dict:
    """Generate the phantom datasets (see module docstring) under ``out_dir``.

    Args:
        out_dir: nnU-Net raw folder to write into (created if missing).
        n_train: training cases (new anatomies, bSSFP cine, with ground-truth maps).
        n_test: test anatomies; each test dataset holds these n_test cases rendered in its domain.
        seed: master seed; every case and rendering is a deterministic function of it.
        size: in-plane matrix in pixels (field of view fixed, so spacing = fov / size).
        first_id: dataset id of the training set; the test sets take the following ids.
        field: tissue-table field strength ("1.5T" or "3T").
        overwrite: replace existing phantom dataset folders and summary.
        domains_file: alternative ``domains.yaml``.
        progress: show a tqdm progress bar.
    Returns:
        the summary also written to ``out_dir/phantom_summary.json``: seed, size, field, counts,
        ``datasets`` (list of {id, name, domain, role, n_cases, channel_name, imitates}) in id order,
        training set first, in-domain test set second.
    """
    for name, v, lo in (("n_train", n_train, 1), ("n_test", n_test, 1), ("size", size, 16)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if size > MAX_SIZE:
        raise ValueError(f"size {size} is larger than {MAX_SIZE} pixels ({240 / MAX_SIZE:.2f} mm pixels over the "
                         f"240 mm field of view; a case of {size}^2 would need tens of GiB); choose --size <= {MAX_SIZE}")
    t_start = time.time()
    out_dir = Path(out_dir)
    domains = load_domains(domains_file)
    plan = _plan(out_dir, domains, first_id)
    # undo what a killed earlier run left: the phantom is one unit (a run killed while putting its datasets in
    # place is rolled back whole, one killed after the last is completed), then drop staging folders
    recover_together(out_dir / COMMIT_JOURNAL)
    for staged in out_dir.glob(glob.escape(f".{SUMMARY_NAME}.partial-") + "*"):
        staged.unlink()
    recover_staged(out_dir / SUMMARY_NAME)  # empty backup folders of a run killed before its journal
    for p in plan:
        recover_staged(out_dir / p["name"])
        for legacy in out_dir.glob(glob.escape(f".tmp-{p['name']}-") + "*"):  # staging folders of earlier versions
            shutil.rmtree(legacy, ignore_errors=True)
    _check_targets(out_dir, plan, overwrite)
    stale = _stale_datasets(out_dir, plan)
    out_dir.mkdir(parents=True, exist_ok=True)

    # each dataset is written into its own staging folder; when all are complete they are put in place
    # together with the summary (commit_together: an existing phantom is replaced only by a finished one)
    tmp = {p["name"]: make_temp_dir(out_dir / p["name"], f".{p['name']}.partial-") for p in plan}
    try:
        _write_all(tmp, plan, domains, n_train, n_test, seed, size, field, progress)
        summary = {
            "seed": seed, "size": size, "field": field, "first_id": first_id, "n_train": n_train, "n_test": n_test,
            "out_dir": str(out_dir.resolve()),
            "datasets": [{k: p[k] for k in ("id", "name", "domain", "role", "n_cases", "channel_name", "imitates")}
                         for p in plan],
            "seconds": round(time.time() - t_start, 2),
        }
        staged_summary = tmp[plan[0]["name"]].parent / f".{SUMMARY_NAME}.partial-{tmp[plan[0]['name']].name}"
        atomic_write_json(staged_summary, summary)
        commit_together({**{out_dir / p["name"]: tmp[p["name"]] for p in plan}, out_dir / SUMMARY_NAME: staged_summary,
                         **{out_dir / name: None for name in stale}}, out_dir / COMMIT_JOURNAL)
    except BaseException:  # an error (not a kill) while writing or swapping: back to the previous phantom
        recover_together(out_dir / COMMIT_JOURNAL)
        for folder in tmp.values():
            shutil.rmtree(folder, ignore_errors=True)
        for staged in out_dir.glob(glob.escape(f".{SUMMARY_NAME}.partial-") + "*"):
            staged.unlink()
        raise
    return summary


def _write_all(tmp: dict[str, Path], plan: list[dict], domains: dict, n_train: int, n_test: int, seed: int,
               size: int, field: str, progress: bool) -> None:
    """Every case of every dataset into its staging folder ``tmp[name]``, then each dataset.json."""
    cases_meta: dict[str, dict] = {p["name"]: {} for p in plan}
    bar = tqdm(total=n_train + n_test, desc="phantom cases", unit="case", disable=not progress)
    train_p, train_domain = plan[0], domains[plan[0]["domain"]]
    folder = tmp[train_p["name"]]
    gt_parameters = {"source": "nnunetv2_physaug.phantom", "seed": seed, "size": size, "field": field}
    for i in range(n_train):
        case_id = f"phantom_{i:03d}"
        case = make_case(_rng(seed, _TRAIN_ANATOMY, i), size=size, field=field)
        image, info = render_domain(case, train_domain, _rng(seed, _TRAIN_RENDER, i))
        _write_case(folder, case_id, image, case)
        write_ground_truth_maps(folder / GROUND_TRUTH_MAPS, case_id, case, gt_parameters)
        cases_meta[train_p["name"]][case_id] = {"phase": case.meta["phase"], "n_slices": case.meta["n_slices"],
                                                **info}
        bar.update(1)

    for j in range(n_test):
        case_id = f"phantomtest_{j:03d}"
        case = make_case(_rng(seed, _TEST_ANATOMY, j), size=size, field=field)
        for p in plan[1:]:
            key = zlib.crc32(p["name"].split("_", 1)[1].encode())  # stable per domain dataset, not per id
            image, info = render_domain(case, domains[p["domain"]], _rng(seed, _TEST_RENDER, key, j))
            _write_case(tmp[p["name"]], case_id, image, case)
            cases_meta[p["name"]][case_id] = {"phase": case.meta["phase"], "n_slices": case.meta["n_slices"],
                                              **info}
        bar.update(1)
    bar.close()
    for p in plan:
        p["n_cases"] = len(cases_meta[p["name"]])
        _dataset_json(tmp[p["name"]], p, cases_meta[p["name"]], seed, size, field)




def format_summary(summary: dict) -> str:
    """Human-readable lines: the folders written and their case counts."""
    lines = [f"phantom written to {summary['out_dir']} (seed {summary['seed']}, {summary['size']} px, "
             f"{summary['field']}, {summary['seconds']:.1f} s):"]
    for d in summary["datasets"]:
        extra = f" + {GROUND_TRUTH_MAPS} (ground truth)" if d["role"] == "train" else ""
        lines.append(f"  {d['name']:<32} {d['role']:<5} {d['n_cases']:>4} cases  {d['imitates']}{extra}")
    lines.append(f"  {SUMMARY_NAME}")
    return "\n".join(lines)
