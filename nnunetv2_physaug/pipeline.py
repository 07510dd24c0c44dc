"""Running a chain of stock nnU-Net commands and ours (the phantom demo, the real-data benchmark):
one work folder with nnU-Net's three folders, one log file per step, a clear error naming the step."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .nnunet.env import nnunet_paths, register_ext_trainers


class StepError(RuntimeError):
    """A step failed; the message holds the step's command, the tail of its output and its log file."""


def pipeline_env(work: Path) -> dict:
    """Environment of the steps: nnU-Net's paths inside ``work`` (created), our trainers registered (the
    ablation trainers of the experiments folder too: benchmarks compare them), CPU-friendly defaults for nnU-Net's worker counts (kept when already set) and a headless matplotlib."""
    env = dict(os.environ)
    env.update(nnunet_paths(work))
    register_ext_trainers(env, experiments=True)
    env.setdefault("nnUNet_def_n_proc", "1")
    env.setdefault("nnUNet_n_proc_DA", "1")
    env.setdefault("nnUNet_compile", "f")
    env["MPLBACKEND"] = "Agg"
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    return env


def run_step(tag: str, step: str, cmd: list[str], env: dict, log_dir: Path) -> str:
    """Run ``cmd`` (a console script of this environment or on PATH), keep its output in
    ``log_dir/<step>.log``, print progress lines prefixed ``[tag]``; raise :class:`StepError` on failure."""
    exe = Path(sys.executable).parent / cmd[0]
    full = [str(exe) if exe.exists() else cmd[0], *cmd[1:]]
    print(f"[{tag}] {step}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(full, env=env, capture_output=True, text=True)
    log = log_dir / f"{step.replace(' ', '_').replace('/', '_')}.log"
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise StepError(f"step '{step}' failed (exit {proc.returncode}): {' '.join(cmd)}\n--- last output ---\n"
                        f"{(proc.stdout + proc.stderr)[-4000:]}\nfull log: {log}")
    print(f"[{tag}] {step}: done in {time.time() - t0:.0f} s", flush=True)
    return proc.stdout
