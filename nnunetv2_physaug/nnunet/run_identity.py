"""What a PhysAug training run used, written into its fold folder (``physaug_run.json``).

A trainer class names its experiment, but the tissue maps it reads (and a protocol file it names) can
change on disk without changing nnU-Net's results folder, so the fold folder records what was used: the
protocol (name and a hash of its full content), the tissue-map folder and its estimator identity, the prior,
p_render, the normalisation statistics and the package version. A continued run (``nnUNetv2_train ... --c``) whose
settings differ from the record stops with an error that lists the differences.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from .setup_checks import TrainerSetupError

RUN_FILE = "physaug_run.json"
#: keys whose change makes a continued run a different experiment
COMPARED = ("trainer", "protocol_sha256", "maps_identity", "p_render", "stats", "use_labels")


class RunIdentityError(TrainerSetupError):
    """A continued run with other settings than the run it continues (``nnUNetv2_train`` ends with its message)."""


def protocol_sha256(protocol) -> str:
    """Hash of a protocol's full content (families, ranges, imperfections, pathology, labels, ...)."""
    return hashlib.sha256(json.dumps(protocol.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def maps_identity(maps_dir: Path) -> Optional[str]:
    """Identity hash (estimator, prior, parameters) of a tissue-map folder, None without a manifest."""
    from ..maps.folder import TissueMapFolder

    return TissueMapFolder(maps_dir).identity_hash()


def record(output_folder: Path, identity: dict, continuing: bool) -> Path:
    """Write ``identity`` to the fold folder; when ``continuing``, first check it against the record."""
    from .. import __version__
    from ..fileio import atomic_write_json

    path = Path(output_folder) / RUN_FILE
    if continuing and path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), identity.get(k)) for k in COMPARED if old.get(k) != identity.get(k)}
        if diff:
            lines = "\n".join(f"  {k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise RunIdentityError(
                f"{path}: this run continues one made with other PhysAug settings:\n{lines}\nContinue with the "
                f"original protocol file and tissue maps, or train a new run "
                f"(without --c, or as another trainer variant: nnU-Net's convention is one class per experiment)")
    atomic_write_json(path, dict(identity, package_version=__version__))
    return path


def read(model_folder: Path) -> Optional[dict]:
    """The record of the first fold folder of a model folder that has one (None: not a PhysAug run)."""
    for f in sorted(Path(model_folder).glob(f"fold_*/{RUN_FILE}")):
        return json.loads(f.read_text())
    return None
