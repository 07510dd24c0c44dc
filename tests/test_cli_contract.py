"""The command-line contract (nnunetv2_physaug/cli/contract.py) on every entry point: console scripts,
scripts/, the converters and the demo. ``--help`` exits 0; an unknown option is a usage error (exit 2, the last
line ``<prog>: error: ...``); a missing input is a runtime error (exit 1, one line ``<prog>: error: ...`` that
names it, no traceback)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MISSING = "/nonexistent/physaug_contract_input"

#: (prog in messages, command, arguments that name a missing input, or None where a command reads none)
ENTRY_POINTS = [
    ("physaug-phantom", [str(BIN / "physaug-phantom")], ["-o", "/proc/physaug_contract/out", "--quiet"]),
    ("physaug-preview", [str(BIN / "physaug-preview")], ["--image", MISSING + "/x_0000.nii.gz", "--maps", MISSING,
                                                         "-o", "/tmp/physaug_contract.png"]),
    ("physaug-env", [str(BIN / "physaug-env")], None),
    ("physaug-reverse", [str(BIN / "physaug-reverse")], ["-i", MISSING]),
    ("physaug-train-prior", [str(BIN / "physaug-train-prior")], ["--maps", MISSING, "-o", MISSING + "_prior"]),
    ("physaug-evaluate", [str(BIN / "physaug-evaluate")], ["-m", MISSING, "-t", f"a={MISSING}:{MISSING}", "-o",
                                                           MISSING + "_eval"]),
    ("physaug-narrow-plans", [str(BIN / "physaug-narrow-plans")], ["-d", "Dataset997_Missing"]),
    *[(f"scripts/{name}", [sys.executable, str(REPO / "scripts" / name)], args) for name, args in (
        ("bench_loader.py", ["--dataset", "Dataset997_Missing"]), ("bench_peers.py", None),
        ("bench_prior_padding.py", None), ("bench_real.py", ["--myops", MISSING, "--cv", "--work", None]),
        ("bench_render.py", None), ("bench_reverse.py", None), ("check_physics.py", None),
        ("check_prior.py", ["--prior", MISSING]), ("check_realism.py", ["-d", MISSING]),
        ("kill_loop_phantom.py", None), ("kill_loop_overwrite.py", None))],
    *[(name, [sys.executable, str(REPO / "dataset_conversion" / name)], ["-i", MISSING]) for name in (
        "Dataset910_ACDC.py", "Dataset911_MNMs.py", "Dataset912_MNMs2.py", "Dataset913_MyoPS.py")],
    ("scripts/demo", [sys.executable, "-m", "nnunetv2_physaug.demo"], None),
]
IDS = [e[0] for e in ENTRY_POINTS]


def _run(cmd, tmp_path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "nnUNet_raw": str(tmp_path / "raw"),
           "nnUNet_preprocessed": str(tmp_path / "pre"), "nnUNet_results": str(tmp_path / "res")}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_every_entry_point_is_listed():
    listed = {c[-1] for _, c, _ in ENTRY_POINTS} | {c[0] for _, c, _ in ENTRY_POINTS}
    scripts = {str(p) for p in (REPO / "scripts").glob("*.py")} | {str(p) for p in
                                                                   (REPO / "dataset_conversion").glob("*.py")}
    assert scripts <= listed
    pyproject = (REPO / "pyproject.toml").read_text()
    consoles = {line.split("=")[0].strip() for line in pyproject.split("[project.scripts]")[1].split("[")[0]
                .strip().splitlines()}
    assert {str(BIN / c) for c in consoles} <= listed


@pytest.mark.parametrize("prog,cmd,missing", ENTRY_POINTS, ids=IDS)
def test_help_and_a_bad_option(prog, cmd, missing, tmp_path):
    r = _run([*cmd, "--help"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-1000:]
    r = _run([*cmd, "--no-such-option-anywhere"], tmp_path)
    assert r.returncode == 2, r.stdout[-500:] + r.stderr[-1000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"{prog}: error: "), r.stderr[-1000:]


@pytest.mark.parametrize("prog,cmd,missing", [e for e in ENTRY_POINTS if e[2] is not None],
                         ids=[e[0] for e in ENTRY_POINTS if e[2] is not None])
def test_a_missing_input_is_one_line_naming_it(prog, cmd, missing, tmp_path):
    args = [str(tmp_path / "work") if a is None else a for a in missing]
    r = _run([*cmd, *args], tmp_path)
    assert r.returncode == 1, r.stdout[-500:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), r.stderr[-2000:]
    named = [a for a in args if "nonexistent" in a or "Missing" in a or "/proc/" in a]
    assert any(n in last or n.split("/")[-1] in last for n in named), last
