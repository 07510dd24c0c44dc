"""physaug-env: the shell lines that let stock nnU-Net commands find our trainers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nnunetv2_physaug.nnunet.env import ext_trainer_dir, ext_trainer_value, require_nnunet_paths


def _physaug_env(*args, extra_env=None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(extra_env or {})
    exe = Path(sys.executable).parent / "physaug-env"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, check=True).stdout


def test_shim_folder_holds_only_the_shim_module():
    folder = Path(ext_trainer_dir())
    modules = sorted(p.name for p in folder.glob("*.py"))
    # nnU-Net imports every module in this folder as a top-level module
    assert modules == ["__init__.py", "nnunetv2_physaug_trainers.py"]


def test_prints_export_and_appends_to_an_existing_value_once():
    out = _physaug_env()
    assert out.strip() == f"export nnUNet_extTrainer={ext_trainer_dir()}"
    out = _physaug_env(extra_env={"nnUNet_extTrainer": "/opt/other_trainers"})
    assert out.strip() == f"export nnUNet_extTrainer=/opt/other_trainers{os.pathsep}{ext_trainer_dir()}"
    twice = ext_trainer_value(ext_trainer_value("/a"))
    assert twice.split(os.pathsep) == ["/a", ext_trainer_dir()]


def test_paths_option_and_eval_in_a_shell(tmp_path):
    out = _physaug_env("--paths", str(tmp_path / "my project"))
    lines = out.strip().splitlines()
    assert [ln.split("=")[0] for ln in lines] == ["export nnUNet_extTrainer", "export nnUNet_raw",
                                                  "export nnUNet_preprocessed", "export nnUNet_results"]
    # the lines are valid shell, quoting included (a path with a space)
    shell = subprocess.run(["bash", "-c", f'eval "$({Path(sys.executable).parent / "physaug-env"} --paths '
                                          f'\'{tmp_path / "my project"}\')"; echo "$nnUNet_raw"'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == str((tmp_path / "my project" / "nnUNet_raw").resolve())


def test_unset_nnunet_paths_error_says_how_to_set_them():
    try:
        require_nnunet_paths({})
    except RuntimeError as e:
        assert "nnUNet_raw" in str(e) and "physaug-env --paths" in str(e)
    else:
        raise AssertionError("expected a RuntimeError")
