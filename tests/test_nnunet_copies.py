"""The pieces of nnU-Net's code this package repeats (nnunetv2_physaug/nnunet/copies.py): each marked where it
is, and each original unchanged in the installed nnU-Net (an upgrade that changes one fails here, naming it)."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from pathlib import Path

import pytest

from nnunetv2_physaug.nnunet.copies import COPIES, NNUNET_VERSION

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"Copied from nnU-Net ([0-9.]+): ([A-Za-z_][\w.]*)")


def source_digest(origin: str) -> str:
    """First 16 hex digits of the SHA-256 of the source of ``module:qualified.name``."""
    module, qualname = origin.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize("where,origin,digest", COPIES, ids=[o.split(":")[1] for _, o, _ in COPIES])
def test_each_original_is_the_one_the_copy_was_read_from(where, origin, digest):
    assert source_digest(origin) == digest, (
        f"nnU-Net's {origin} changed since nnU-Net {NNUNET_VERSION}: read the copy in {where} against the new "
        f"code, then update its digest in nnunetv2_physaug/nnunet/copies.py")


def test_the_markers_in_the_code_and_the_table_agree():
    marked = set()
    for f in sorted((REPO / "nnunetv2_physaug").rglob("*.py")):
        if f.name == "copies.py":
            continue
        for version, qualname in MARKER.findall(f.read_text()):
            assert version == NNUNET_VERSION, (f, version)
            marked.add((str(f.relative_to(REPO)), qualname))
    listed = {(where, origin.split(":")[1]) for where, origin, _ in COPIES}
    assert marked == listed


def test_a_changed_original_fails_the_digest(monkeypatch):
    """The drift test catches a change: a patched copy of nnU-Net's train_step has another digest."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    where, origin, digest = COPIES[0]
    original = inspect.getsource(nnUNetTrainer.train_step)
    monkeypatch.setattr(inspect, "getsource", lambda obj: original.replace("clip_grad_norm_(self.network."
                                                                            "parameters(), 12)", "clip_grad_norm_("
                                                                            "self.network.parameters(), 1)"))
    assert source_digest(origin) != digest
