"""physaug-preview end to end on a small synthetic short-axis case."""
from __future__ import annotations

import json

import math
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.cli.preview import main
from nnunetv2_physaug.maps import write_case_maps
from nnunetv2_physaug.physics import bssfp, tissue


def synthetic_case(folder, case="heart_001", shape=(96, 80, 5), k_samples=1, seed=0):
    """Concentric LV blood pool / myocardium ring, RV crescent, fat rim, muscle body, lung and air.

    Maps use the 1.5 T reference table with a little per-pixel spread; the image is a bSSFP
    (60 deg, TR 3.5 ms) rendering of them. Writes ``imagesTr/CASE_0000.nii.gz``,
    ``labelsTr/CASE.nii.gz`` (ACDC labels) and the maps; returns the paths.
    """
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    cx, cy = shape[0] * 0.5, shape[1] * 0.5
    r = np.hypot(x - cx, y - cy)
    r_rv = np.hypot(x - (cx - 16), y - cy)
    body = ((x - cx) / (shape[0] * 0.47)) ** 2 + ((y - cy) / (shape[1] * 0.45)) ** 2 < 1
    tissue_map = np.full(shape[:2], "air", dtype=object)
    tissue_map[body] = "skeletal_muscle"
    for side in (-1, 1):  # lungs left and right of the heart
        tissue_map[body & (((x - cx - side * shape[0] * 0.22) / (shape[0] * 0.16)) ** 2
                           + ((y - cy) / (shape[1] * 0.3)) ** 2 < 1)] = "lung"
    tissue_map[body & ~(((x - cx) / (shape[0] * 0.43)) ** 2 + ((y - cy) / (shape[1] * 0.41)) ** 2 < 1)] = "fat"
    labels2d = np.zeros(shape[:2], np.int16)
    heart = r < 20
    tissue_map[heart] = "fat"  # epicardial fat around the ventricles
    ring, pool = r < 17, r < 11
    rv = (r_rv < 14) & ~ring
    tissue_map[ring], labels2d[ring] = "myocardium", 2
    tissue_map[pool], labels2d[pool] = "blood", 3
    tissue_map[rv], labels2d[rv] = "blood", 1
    m0, t1, t2 = (np.zeros(shape, np.float32) for _ in range(3))
    for name in np.unique(tissue_map):
        props = tissue(name, "1.5T")
        sel = tissue_map == name
        for z in range(shape[2]):
            a, b, c = props.sample(rng, size=int(sel.sum()))
            m0[sel, z], t1[sel, z], t2[sel, z] = a, b, c
    image = bssfp(*(torch.from_numpy(a) for a in (m0 * 1000, t1, t2)), 60.0, 3.5).numpy()
    labels = np.repeat(labels2d[..., None], shape[2], axis=2)
    affine = np.diag([1.4, 1.4, 8.0, 1.0])
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image_path = folder / "imagesTr" / f"{case}_0000.nii.gz"
    label_path = folder / "labelsTr" / f"{case}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(image_path))
    nib.save(nib.Nifti1Image(labels, affine), str(label_path))
    if k_samples > 1:
        m0, t1, t2 = (np.stack([a] * k_samples, axis=-1) for a in (m0, t1, t2))
    write_case_maps(folder / "maps", case, m0, t1, t2, affine)
    return image_path, folder / "maps", label_path


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_preview_cli_writes_png_and_refuses_overwrite(tmp_path, capsys):
    image, maps, labels = synthetic_case(tmp_path, k_samples=2)
    out = tmp_path / "preview.png"
    main(["--image", str(image), "--maps", str(maps), "--labels", str(labels), "-n", "6", "-o", str(out)])
    assert out.is_file()
    # 4 panels of 3.2 in x 100 dpi per row; one map row + ceil(6 / 4) rendering rows of 3.6 in.
    assert png_size(out) == (4 * 320, (1 + math.ceil(6 / 4)) * 360)
    assert "wrote" in capsys.readouterr().out
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["--image", str(image), "--maps", str(maps), "-n", "2", "-o", str(out)])
    assert e.value.code != 0
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    main(["--image", str(image), "--maps", str(maps), "-n", "2", "--preset", "paper", "--slice", "0",
          "--overwrite", "-o", str(out)])
    assert png_size(out) == (1280, 720)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("change,message", [
    (lambda a: a.__setitem__(1, "missing_0000.nii.gz"), "not found"),
    (lambda a: a.__setitem__(3, "no_maps_dir"), "tissue-map folder"),
    (lambda a: a.extend(["--case", "other_case"]), "no tissue maps for case 'other_case'"),
    (lambda a: a.extend(["--slice", "9"]), "slice 9 is out of range"),
    (lambda a: a.extend(["--preset", "bogus"]), "not a preset"),
    (lambda a: a.extend(["--labels", "nolabels.nii.gz"]), "label map"),
    (lambda a: a.extend(["--set", "tse.flip_deg=3"]), "no parameter"),
    (lambda a: a.extend(["--family", "nosuch"]), "family 'nosuch' is not in protocol"),
])
def test_preview_errors(tmp_path, capsys, change, message):
    image, maps, _ = synthetic_case(tmp_path, shape=(40, 40, 3))
    args = ["--image", str(image), "--maps", str(maps), "-n", "1", "-o", str(tmp_path / "p.png")]
    change(args)
    args = [str(tmp_path / a) if a in ("missing_0000.nii.gz", "no_maps_dir", "nolabels.nii.gz") else a for a in args]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_preview_settings_and_family_reach_the_renderings(tmp_path):
    """``--set`` changes the protocol the renderings are drawn from and ``--family`` fixes their family: the JSON
    beside the sheet (every drawn parameter) shows the set value and the family, and the captions say it."""
    image, maps, labels = synthetic_case(tmp_path)
    out = tmp_path / "p.png"
    main(["--image", str(image), "--maps", str(maps), "--labels", str(labels), "-n", "3", "--family", "tse",
          "--set", "tse.te_ms=77", "--set", "tse.blood_factor=[0.1,0.2]", "-o", str(out)])
    record = json.loads(out.with_suffix(".json").read_text())
    assert out.is_file() and len(record["renderings"]) == 3 and record["case"] == "heart_001"
    for params in record["renderings"]:
        assert params["family"] == "tse" and params["te_ms"] == 77.0 and 0.1 <= params["blood_factor"] <= 0.2
        assert params["caption"] == f"black-blood TSE · TE 77 ms · TR {params['tr_ms']:.3g} ms"


def test_captions_name_the_sequence_and_what_makes_its_contrast():
    from nnunetv2_physaug.preview import CAPTIONS, caption
    from nnunetv2_physaug.contrast.families import FAMILIES

    assert caption({"family": "lge", "ti_ms": 357.2, "flip_deg": 29.03, "tr_inv_ms": 1502.5}) == "LGE · TI 357 ms · 29°"
    assert caption({"family": "spoiled_gre", "tr_ms": 83.4, "te_ms": 8.5, "flip_deg": 28.2}) == \
        "T1w spoiled GRE · TR 83.4 ms · TE 8.5 ms · 28.2°"
    assert caption({"family": "newfamily", "x": 1.0}) == "newfamily"
    assert set(CAPTIONS) == set(FAMILIES), "every family has a caption"


def test_preview_refuses_stale_or_unfinished_maps(tmp_path, capsys):
    """Maps made by physaug-reverse for one image are not previewed beside another image of the same name, and
    a case the folder marks unfinished is refused."""
    from nnunetv2_physaug.reverse import run_reverse

    image, _, _ = synthetic_case(tmp_path)
    maps_dir = tmp_path / "reversed"
    run_reverse(image.parent, maps_dir, progress=False)
    out = tmp_path / "p.png"
    main(["--image", str(image), "--maps", str(maps_dir), "-o", str(out)])  # fresh maps: fine
    data = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(data.dataobj) * 1.5 + 1.0, data.affine), image)  # another image, same name
    with pytest.raises(SystemExit):
        main(["--image", str(image), "--maps", str(maps_dir), "-o", str(out), "--overwrite"])
    assert "were made from another image or label file" in capsys.readouterr().err
    (maps_dir / "qc" / "heart_001.json").unlink()  # as a killed run leaves it
    with pytest.raises(SystemExit):
        main(["--image", str(image), "--maps", str(maps_dir), "-o", str(out), "--overwrite"])
    assert "unfinished" in capsys.readouterr().err
