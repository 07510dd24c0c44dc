"""Cost of the diffusion samplers' fixed-size network evaluations (nnunetv2_physaug.reverse.diffusion.at_fixed_rows).

Every network evaluation of the `fast` and `paper` samplers has a multiple of 8 rows (micro-batches padded),
which makes a slice's maps bitwise independent of the batch and shard that carry it. This times
`run_reverse` with the `fast` sampler (an untrained tiny prior, CPU, one thread) on 3 cases x 7 slices of
20 x 18 pixels at engine batch sizes 16 (the default: batches of 16 and 5 slices) and 5, with padded and
with unpadded evaluations, one after the other, best of 3 rounds. Last line: `padding_ratio_b16= padding_ratio_b5=`
(padded / unpadded seconds).
"""
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse import diffusion, make_estimator, run_reverse
from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config


def ring_images(root: Path, n_cases: int = 3, shape=(20, 18, 7)) -> Path:
    """bSSFP renderings (45 deg, short TR) of an LV blood disk in a myocardial ring, with labels."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(xx - shape[0] / 2, yy - shape[1] / 2)
    lab = np.where(r < 4, 3, np.where(r < 6, 2, 0)).astype(np.int16)
    m0 = np.select([lab == 3, lab == 2], [0.95, 0.8], 0.75)
    t1 = np.select([lab == 3, lab == 2], [1550.0, 1000.0], 860.0)
    t2 = np.select([lab == 3, lab == 2], [270.0, 50.0], 30.0)
    img = bssfp(torch.tensor(m0), torch.tensor(t1), torch.tensor(t2), 45.0, 0.0, short_tr=True).numpy()
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        vol = np.stack([img * 500 * (1 + 0.1 * k) + rng.normal(0, 0.5, img.shape) for k in range(shape[2])], -1)
        nib.save(nib.Nifti1Image(np.abs(vol).astype(np.float32), np.eye(4)), root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.repeat(lab[:, :, None], shape[2], 2), np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    return root / "imagesTr"


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="scripts/bench_prior_padding.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)  # --help
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    images = ring_images(root)
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(root / "prior")
    padded = diffusion.at_fixed_rows

    def unpadded(fn, rows, *tensors):
        return fn(*tensors)
    times: dict = {}
    for rnd in range(3):
        for batch in (16, 5):
            for name, f in (("padded", padded), ("unpadded", unpadded)):
                diffusion.at_fixed_rows = f
                est = make_estimator("diffusion", prior=root / "prior", preset="fast", sampler_options={"steps": 10})
                t = time.perf_counter()
                run_reverse(images, root / f"maps_{rnd}_{batch}_{name}", estimator=est, batch_size=batch,
                            progress=False, max_nrmse_pct=1000.0, accept_implausible=True)
                times.setdefault((batch, name), []).append(time.perf_counter() - t)
    diffusion.at_fixed_rows = padded
    ratios = {}
    for batch in (16, 5):
        p, u = min(times[(batch, "padded")]), min(times[(batch, "unpadded")])
        ratios[batch] = p / u
        print(f"engine batch {batch}: padded {p:.2f} s, unpadded {u:.2f} s (best of 3)")
    print(f"padding_ratio_b16={ratios[16]:.2f} padding_ratio_b5={ratios[5]:.2f}")


if __name__ == "__main__":
    main()
