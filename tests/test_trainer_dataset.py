"""The training-dataset wrapper and the trainer's map handling, on a small preprocessed dataset."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from support.nnunet import TOY_ID as DATASET_ID, copy_toy, environ_from, load_json, nnunet_env


@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_template):
    root = tmp_path_factory.mktemp("trainer_ds")
    folder = copy_toy(toy_template, root)  # 5 cases, 2d and 3d_fullres preprocessed
    env = nnunet_env(root)
    with environ_from(env):
        yield env, folder


def _trainer(env, folder, cls_name="nnUNetTrainerPhysAug", configuration="2d"):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    pp = Path(env["nnUNet_preprocessed"]) / folder.name
    plans = load_json(pp / "nnUNetPlans.json")
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(cls_name)
    return cls(plans, configuration, 0, load_json(pp / "dataset.json"), torch.device("cpu"))


def _wrapped(env, folder, p_render=1.0, stats="case", protocol="paper"):
    from nnunetv2_physaug.nnunet.dataset import PhysAugTrainingDataset

    tr = _trainer(env, folder)
    tr.physaug_p_render = p_render
    tr.physaug_stats = stats
    tr.physaug_protocol = protocol
    base_tr, _ = super(type(tr), tr).get_tr_and_val_datasets()
    wrapped, val = tr.get_tr_and_val_datasets()
    assert isinstance(wrapped, PhysAugTrainingDataset)
    assert type(val) is type(base_tr), "validation must see nnU-Net's own dataset (real images)"
    assert list(wrapped.identifiers) == list(base_tr.identifiers)
    return tr, wrapped, base_tr


def test_stock_lookup_finds_every_variant_through_the_shim(toy):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs as stock

    for name in ("nnUNetTrainerPhysAug", "nnUNetTrainerPhysAug_paper", "nnUNetTrainerPhysAug_GRE",
                 "nnUNetTrainerPhysAug_IR", "nnUNetTrainerPhysAug_5epochs"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__module__ == "nnunetv2_physaug.nnunet.trainers"  # real module, picklable
    # every stock training-length variant has its PhysAug twin with the same epoch count
    for stock_name in [n for n in dir(stock) if n.startswith("nnUNetTrainer_") and n.endswith(("epoch", "epochs"))]:
        twin = recursive_find_trainer_class_by_name(stock_name.replace("nnUNetTrainer_", "nnUNetTrainerPhysAug_"))
        assert issubclass(twin, getattr(stock, stock_name))


def test_training_loads_render_normalised_crops_and_validation_stays_real(toy):
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    env, folder = toy
    tr, wrapped, base = _wrapped(env, folder, p_render=1.0, stats="patch")
    key = wrapped.identifiers[0]
    view, seg, _, props = wrapped.load_case(key)
    data, seg_b, _, _ = base.load_case(key)
    assert view.shape == data.shape
    bbox = [[0, 1], [2, 2 + 20], [-3, 25]]  # one slice, partly outside the image (padding path)
    crop = crop_and_pad_nd(view, bbox, 0)
    assert isinstance(crop, np.ndarray) and crop.dtype == np.float32
    assert crop.shape == (1, 1, 20, 28)
    seg_crop = crop_and_pad_nd(seg, bbox, -1)
    inside = seg_crop >= 0
    if tr.configuration_manager.use_mask_for_norm[0]:
        assert np.all(crop[~inside] == 0)
    vals = crop[inside]
    assert abs(vals.mean()) < 1e-3 and abs(vals.std() - 1) < 1e-2  # patch statistics: exact z-score
    assert view.params["family"] in ("look_locker", "spoiled_gre")
    # the rendering is not the real image
    real = crop_and_pad_nd(data, bbox, 0)
    assert not np.allclose(real[inside], crop[inside], atol=0.1)


def test_rendered_load_returns_the_base_seg_and_properties_and_shares_the_seg_crop(toy):
    """A rendered load opens only the seg (kept per process) and the properties: both equal nnU-Net's
    own load; the seg crop nnU-Net takes after the render is the array the render read (handed on
    once), and any other read of the seg goes to the file."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from nnunetv2_physaug.nnunet.dataset import SharedSegCrop

    env, folder = toy
    _, wrapped, base = _wrapped(env, folder, p_render=1.0)
    key = wrapped.identifiers[0]
    view, seg, seg_prev, props = wrapped.load_case(key)
    _, seg_b, seg_prev_b, props_b = base.load_case(key)
    assert isinstance(seg, SharedSegCrop) and seg_prev is None and seg_prev_b is None
    assert seg.shape == tuple(seg_b.shape) and seg.dtype == seg_b.dtype
    np.testing.assert_array_equal(np.asarray(seg), np.asarray(seg_b[:]))
    assert props.keys() == props_b.keys()
    for cls, locs in props_b["class_locations"].items():
        np.testing.assert_array_equal(props["class_locations"][cls], locs)
    bbox = [[0, 1], [2, 22], [-3, 25]]
    crop_and_pad_nd(view, bbox, 0)
    shared = seg._shared[1]
    seg_crop = crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)
    assert seg._shared is None  # handed on once
    np.testing.assert_array_equal(seg_crop, crop_and_pad_nd(seg_b, bbox, -1, cast_cropped_to=np.int16))
    np.testing.assert_array_equal(seg_crop[..., 3:], shared)
    again = crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)  # read from the file
    np.testing.assert_array_equal(again, seg_crop)
    assert wrapped.load_case(key)[1]._seg is seg._seg  # the open seg is reused by the next load


def test_case_files_stay_open_within_a_bound_and_loads_equal_nnunets(toy):
    """Unrendered loads return what nnU-Net's own load returns (image, seg, properties) from files kept
    open per process; at most ``open_cases`` cases stay open (least recently loaded closed first), the
    aligned maps of rendered loads included, so a large dataset cannot run a process out of file
    descriptors; a rendered load never opens the image."""
    import gc
    import os

    def open_fds() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    env, folder = toy
    _, wrapped, base = _wrapped(env, folder, p_render=0.0)
    wrapped.open_cases = 2
    keys = list(wrapped.identifiers)
    assert len(keys) >= 3
    fds_before = open_fds()
    for key in keys + keys[::-1]:
        data, seg, seg_prev, props = wrapped.load_case(key)
        data_b, seg_b, seg_prev_b, props_b = base.load_case(key)
        np.testing.assert_array_equal(np.asarray(data[:]), np.asarray(data_b[:]))
        np.testing.assert_array_equal(np.asarray(seg[:]), np.asarray(seg_b[:]))
        assert seg_prev is None and seg_prev_b is None and props.keys() == props_b.keys()
        for cls, locs in props_b["class_locations"].items():
            np.testing.assert_array_equal(props["class_locations"][cls], locs)
    del data, seg, data_b, seg_b
    files = wrapped.files
    assert len(files) == 2
    assert open_fds() - fds_before <= 2 * 2  # image + seg of two cases
    last = keys[0]
    assert wrapped.load_case(last)[0] is files.get(last, "image")  # kept open: no reopening
    # a rendered load opens the seg and the maps, never the image; an unrendered load then adds the image
    wrapped.p_render = 1.0
    for key in keys + keys[::-1]:
        view = wrapped.load_case(key)[0]
        view[(slice(0, 1),)]  # renders the slice: reads maps and seg
    del view
    assert files.kinds_open(keys[0]) == {"maps", "seg", "properties"}
    assert len(files) == 2 and open_fds() - fds_before <= 2 * 2  # maps + seg of two cases
    wrapped.p_render = 0.0
    wrapped.load_case(keys[0])
    assert files.kinds_open(keys[0]) == {"maps", "seg", "properties", "image"}


def test_without_the_file_cache_loads_open_their_files_each_time_and_return_the_same(toy):
    """``keep_files_open=False`` (the trainer's ``physaug_keep_files_open``): no case stays open, unrendered
    loads are nnU-Net's own ``load_case``, and a render from the same random stream is the same render."""
    env, folder = toy
    tr, wrapped, base = _wrapped(env, folder, p_render=0.0)
    wrapped.keep_files_open = False
    key = list(wrapped.identifiers)[0]
    calls = []
    real = wrapped.base.load_case
    wrapped.base.load_case = lambda k: (calls.append(k), real(k))[1]
    data, seg, _, props = wrapped.load_case(key)
    data_b, seg_b, _, props_b = real(key)
    np.testing.assert_array_equal(np.asarray(data[:]), np.asarray(data_b[:]))
    assert calls == [key] and len(wrapped.files) == 0
    renders = {}
    for keep in (True, False):
        wrapped.keep_files_open, wrapped.p_render = keep, 1.0
        wrapped._rng, wrapped._rng_pid = np.random.default_rng(5), __import__("os").getpid()
        wrapped._arrays = {}
        view = wrapped.load_case(key)[0]
        renders[keep] = np.asarray(view[(slice(None),) * 4]).copy()
    np.testing.assert_array_equal(renders[True], renders[False])
    assert len(wrapped.files) == 1  # only the cached run opened a case
    assert tr.physaug_keep_files_open is True


def test_properties_are_read_once_per_open_case_and_nnunets_loader_leaves_them_as_on_disk(toy, monkeypatch):
    """A case's properties are unpickled once while the case is open (nnU-Net unpickles them at every load),
    read again after the case was dropped; batches of nnU-Net's own loader (foreground oversampling reads
    the class locations) leave the kept dict equal to the file."""
    import batchgenerators.utilities.file_and_folder_operations as bg_io
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    env, folder = toy
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    reads = []
    real_load_pickle = bg_io.load_pickle
    monkeypatch.setattr(bg_io, "load_pickle",
                        lambda f, *a, **k: reads.append(Path(f).name) or real_load_pickle(f, *a, **k))
    tr = _trainer(env, folder)
    tr.physaug_p_render = 0.5
    tr.initialize()
    dl_train, dl_val = tr.get_dataloaders()
    wrapped = dl_train.data_loader._data
    reads.clear()
    for _ in range(20):
        next(dl_train)
    keys = list(wrapped.identifiers)
    assert len(keys) <= wrapped.open_cases
    pkl_reads = [r for r in reads if r.endswith(".pkl")]
    assert sorted(pkl_reads) == sorted(set(pkl_reads)) and set(pkl_reads) <= {k + ".pkl" for k in keys}
    assert len(pkl_reads) >= 2  # 20 batches loaded several cases
    source = Path(wrapped.base.source_folder)
    for key in keys:
        if "properties" not in wrapped.files.kinds_open(key):
            continue
        kept = wrapped.files.get(key, "properties")
        on_disk = load_pickle(str(source / f"{key}.pkl"))
        assert kept.keys() == on_disk.keys()
        for cls, locs in on_disk["class_locations"].items():
            np.testing.assert_array_equal(kept["class_locations"][cls], locs)
        assert wrapped.load_case(key)[3] is kept  # no second read while open
    # dropped cases are read again
    wrapped.open_cases = 1
    wrapped._files = None
    first = wrapped.load_case(keys[0])[3]
    wrapped.load_case(keys[1])
    again = wrapped.load_case(keys[0])[3]
    assert again is not first and again.keys() == first.keys()


def test_case_statistics_match_a_full_case_render(toy):
    env, folder = toy
    _, wrapped, _ = _wrapped(env, folder, p_render=1.0, stats="case")
    key = wrapped.identifiers[1]
    view, seg, _, _ = wrapped.load_case(key)
    full = np.asarray(view)
    mask = np.asarray(seg[:]) >= 0 if wrapped.use_mask_for_norm else np.ones(full.shape, bool)
    vals = full[mask]
    # case statistics come from a voxel subsample (and exclude smooth fields/noise): close, not exact
    assert abs(vals.mean()) < 0.15 and abs(vals.std() - 1) < 0.15


def test_p_render_zero_returns_real_data_and_wrapper_pickles(toy):
    env, folder = toy
    _, wrapped, base = _wrapped(env, folder, p_render=0.0)
    clone = pickle.loads(pickle.dumps(wrapped))
    key = wrapped.identifiers[0]
    data, _, _, _ = clone.load_case(key)
    np.testing.assert_array_equal(np.asarray(data[:]), np.asarray(base.load_case(key)[0][:]))


def test_rng_differs_between_processes(toy):
    import multiprocessing as mp

    env, folder = toy
    _, wrapped, _ = _wrapped(env, folder, p_render=1.0)
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        draws = pool.map(_draw_in_worker, [pickle.dumps(wrapped)] * 2)
    assert draws[0] != draws[1]


def _case_level_draw(wrapped) -> float:
    view = wrapped.load_case(wrapped.identifiers[0])[0]
    view[(slice(None),) * 4]
    return view.params["reference_mean"]  # a statistic of the case-level draw alone


_INHERITED = {}  # set before a fork: the workers use the parent's object itself, not a pickled copy


def _case_level_draw_of_inherited(_) -> float:
    return _case_level_draw(_INHERITED["wrapped"])


def test_forked_workers_do_not_hand_out_the_parents_pending_draws(toy):
    """The parent has drawn a bank of a case's draws before nnU-Net forks its loader workers: each worker
    makes its own draws (its own generator and banks), so no two processes hand out the same draw."""
    import multiprocessing as mp

    env, folder = toy
    _, wrapped, _ = _wrapped(env, folder, p_render=1.0, protocol="wide")
    first = _case_level_draw(wrapped)  # fills the parent's bank of this case; 15 draws stay pending
    _INHERITED["wrapped"] = wrapped
    try:
        with mp.get_context("fork").Pool(2) as pool:
            in_workers = pool.map(_case_level_draw_of_inherited, [0, 1], chunksize=1)
    finally:
        _INHERITED.clear()
    assert len({first, _case_level_draw(wrapped), *in_workers}) == 4


def test_consecutive_loads_and_batch_members_get_different_contrasts_at_rate_p(toy):
    """In one process: consecutive loads of one case draw new parameters, the members of one nnU-Net
    batch (its data loader's loads) differ, and p_render = 0.7 renders ~70 % of loads."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    env, folder = toy
    tr, wrapped, _ = _wrapped(env, folder, p_render=1.0, protocol="wide")
    key = wrapped.identifiers[0]
    drawn, case_level = [], []
    for _ in range(6):
        view = wrapped.load_case(key)[0]
        view[(slice(None),) * 4]
        drawn.append(repr(sorted(view.params.items())))
        case_level.append(view.params["reference_mean"])  # a statistic of the case-level draw alone
    assert len(set(drawn)) == 6 and len(set(case_level)) == 6
    # one batch from nnU-Net's own 2D loader over the wrapped dataset: every member rendered with its own draw
    seen = []
    render = wrapped.renderer.render

    def recording(*a, **k):
        img, params = render(*a, **k)
        seen.append(repr(sorted((q, v) for q, v in params.items() if not q.startswith("reference"))))
        return img, params
    wrapped.renderer.render = recording
    loader = nnUNetDataLoader(wrapped, 4, tr.configuration_manager.patch_size, tr.configuration_manager.patch_size,
                              tr.label_manager, oversample_foreground_percent=0.0)
    loader.generate_train_batch()
    wrapped.renderer.render = render
    assert len(seen) == 4 and len(set(seen)) == 4
    # the rate: 400 loads at p = 0.7; a binomial 99.99 % band is about +- 0.09
    _, wrapped07, _ = _wrapped(env, folder, p_render=0.7, protocol="wide")
    from nnunetv2_physaug.nnunet.dataset import RenderOnCrop
    n = 400
    rendered = sum(isinstance(wrapped07.load_case(key)[0], RenderOnCrop) for _ in range(n))
    assert abs(rendered / n - 0.7) < 0.09, rendered / n


def _draw_in_worker(blob):
    wrapped = pickle.loads(blob)
    view = wrapped.load_case(wrapped.identifiers[0])[0]
    view[(slice(None),) * 4]
    return repr(sorted(view.params.items()))


def test_missing_maps_error_names_cases_and_command(toy, monkeypatch, tmp_path):
    from nnunetv2_physaug.nnunet.trainers import MissingTissueMapsError

    env, folder = toy
    tr = _trainer(env, folder)
    monkeypatch.setattr(tr, "physaug_maps_dir", lambda: tmp_path / "empty")
    tr.physaug_compute_missing = False
    with pytest.raises(MissingTissueMapsError) as e:
        tr.get_tr_and_val_datasets()
    msg = str(e.value)
    assert "toy_00" in msg and "physaug-reverse -i" in msg and str(tmp_path / "empty") in msg


def test_protocol_attribute_selects_a_custom_protocol_file(toy, monkeypatch, tmp_path):
    from nnunetv2_physaug.contrast import load_protocol

    env, folder = toy
    custom = tmp_path / "only_gre.yaml"
    data = load_protocol("paper").to_dict()
    data["families"] = [f for f in data["families"] if f["family"] == "spoiled_gre"]
    data["families"][0]["probability"] = 1.0
    data["families"][0]["params"]["flip_deg"] = [7.25, 7.25]  # a value no shipped preset draws as the only one
    data["name"] = "only_gre"
    import yaml
    custom.write_text(yaml.safe_dump(data))
    tr = _trainer(env, folder)
    tr.physaug_protocol = str(custom)
    tr.physaug_p_render = 1.0
    wrapped, _ = tr.get_tr_and_val_datasets()
    assert wrapped.renderer.protocol.name == "only_gre"
    # every load, not one by chance: the file's only family at the file's own flip angle
    for key in list(wrapped.identifiers) * 4:
        view = wrapped.load_case(key)[0]
        view[(slice(None),) * 4]
        assert view.params["family"] == "spoiled_gre" and view.params["flip_deg"] == 7.25


def test_missing_maps_are_computed_on_the_fly_by_default(toy, monkeypatch, tmp_path):
    from nnunetv2_physaug.maps import TissueMapFolder, read_manifest

    env, folder = toy
    maps_dir = tmp_path / "fresh_maps"
    tr = _trainer(env, folder)
    monkeypatch.setattr(tr, "physaug_maps_dir", lambda: maps_dir)
    wrapped, _ = tr.get_tr_and_val_datasets()
    assert TissueMapFolder(maps_dir).complete_cases() == sorted(wrapped.identifiers)  # training cases only
    assert read_manifest(maps_dir)["estimator"]
    view = wrapped.load_case(wrapped.identifiers[0])[0]
    assert np.isfinite(np.asarray(view)).all()


def test_multiprocess_loader_yields_batches(toy, monkeypatch):
    """nnU-Net's multi-process augmenter (worker processes) runs the wrapper and its renders."""
    env, folder = toy
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    tr = _trainer(env, folder)
    tr.physaug_p_render = 1.0
    tr.initialize()
    dl_train, dl_val = tr.get_dataloaders()
    try:
        batch = next(dl_train)
        data = batch["data"]
        assert data.shape[0] == tr.batch_size and data.shape[1] == 1
        assert torch.isfinite(data).all()
    finally:
        for dl in (dl_train, dl_val):
            if hasattr(dl, "_finish"):
                dl._finish()


def test_case_mode_crop_equals_the_full_case_rendering_cropped(toy):
    """Rendering only the crop gives the same pixels as rendering the whole case (paper preset:
    no random fields or noise), because parameters, clip level and statistics are the case's."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from nnunetv2_physaug.nnunet.dataset import RenderOnCrop

    env, folder = toy
    _, wrapped, _ = _wrapped(env, folder, p_render=1.0, stats="case", protocol="paper")
    key = wrapped.identifiers[2]
    _, seg, _, _ = wrapped.base.load_case(key)
    aligned = Path(wrapped.aligned_folder)
    maps = np.load(aligned / f"{key}.npy", mmap_mode="r")[0]
    sample = np.load(aligned / f"{key}_sample.npy")[0]

    def view(seed):
        return RenderOnCrop(maps, seg, sample, wrapped.renderer, np.random.default_rng(seed),
                            wrapped.use_mask_for_norm, True, "case")

    for seed in range(6):
        full = np.asarray(view(seed))
        bbox = [[1, 2], [3, 23], [4, 30]]
        crop = crop_and_pad_nd(view(seed), bbox, 0)
        np.testing.assert_allclose(crop, full[:, 1:2, 3:23, 4:30], rtol=1e-5, atol=1e-5)


def test_3d_fullres_training_loads_render_3d_patches(toy):
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from nnunetv2_physaug.nnunet.dataset import PhysAugTrainingDataset

    env, folder = toy
    tr = _trainer(env, folder, configuration="3d_fullres")
    tr.physaug_p_render = 1.0
    wrapped, _ = tr.get_tr_and_val_datasets()
    assert isinstance(wrapped, PhysAugTrainingDataset)
    assert wrapped.aligned_folder.endswith("nnUNetPlans_3d_fullres__physaug_maps")
    view, seg, _, _ = wrapped.load_case(wrapped.identifiers[0])
    bbox = [[0, 4], [2, 22], [-2, 20]]
    crop = crop_and_pad_nd(view, bbox, 0)
    assert crop.shape == (1, 4, 20, 22) and np.isfinite(crop).all()
    inside = crop_and_pad_nd(seg, bbox, -1) >= 0
    assert crop[inside].std() > 0.1  # a real rendering, normalised (not constant)


def test_each_load_draws_one_of_k_posterior_samples(toy, monkeypatch, tmp_path):
    import nibabel as nib
    from nnunetv2_physaug.maps import write_case_maps

    env, folder = toy
    maps_dir = tmp_path / "k2_maps"
    for img_path in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(img_path)
        a = np.asarray(img.dataobj, np.float32)
        k2 = np.stack([a, a * 3.0], axis=-1)  # two different "posterior samples"
        write_case_maps(maps_dir, img_path.name[:-len("_0000.nii.gz")], k2, k2 + 100.0, k2 + 5.0, img.affine)
    tr = _trainer(env, folder)
    monkeypatch.setattr(tr, "physaug_maps_dir", lambda: maps_dir)
    tr.physaug_p_render = 1.0
    wrapped, _ = tr.get_tr_and_val_datasets()
    key = wrapped.identifiers[0]
    aligned = np.load(Path(wrapped.aligned_folder) / f"{key}.npy")
    assert aligned.shape[:2] == (2, 3)
    np.testing.assert_allclose(aligned[1, 0], 3 * aligned[0, 0], rtol=1e-4, atol=1e-3)
    drawn = {wrapped.load_case(key)[0].posterior_sample for _ in range(40)}
    assert drawn == {0, 1}


def test_run_identity_recorded_and_a_continued_run_with_other_settings_stops(toy, monkeypatch, tmp_path):
    """The fold folder records protocol (content hash), maps identity and p_render; continuing (epoch > 0)
    with another protocol file is refused; a fresh start (epoch 0) rewrites the record."""
    import json

    import yaml
    from nnunetv2_physaug.contrast import load_protocol
    from nnunetv2_physaug.nnunet.run_identity import RUN_FILE, RunIdentityError

    env, folder = toy
    tr = _trainer(env, folder)
    tr.physaug_p_render = 1.0
    tr.get_tr_and_val_datasets()
    rec = json.loads((Path(tr.output_folder) / RUN_FILE).read_text())
    assert rec["trainer"] == "nnUNetTrainerPhysAug" and rec["protocol"] == "wide" and rec["p_render"] == 1.0
    assert "maps_identity" in rec and rec["maps_dir"] and len(rec["protocol_sha256"]) == 16 and rec["package_version"]
    # same settings, continued: fine
    tr2 = _trainer(env, folder)
    tr2.physaug_p_render = 1.0
    tr2.current_epoch = 3
    tr2.get_tr_and_val_datasets()
    # one range changed in a protocol file under the same name: another experiment
    data = load_protocol("wide").to_dict()
    data["families"][0]["params"]["flip_deg"] = [3, 31]
    custom = tmp_path / "wide.yaml"
    custom.write_text(yaml.safe_dump(data))
    tr3 = _trainer(env, folder)
    tr3.physaug_protocol = str(custom)
    tr3.physaug_p_render = 1.0
    tr3.current_epoch = 3
    with pytest.raises(RunIdentityError, match="protocol_sha256"):
        tr3.get_tr_and_val_datasets()
    tr3.current_epoch = 0  # a new run (no --c) starts a new record
    tr3.get_tr_and_val_datasets()
    assert json.loads((Path(tr3.output_folder) / RUN_FILE).read_text())["protocol"] == str(custom)


def test_ablation_variants_apply_their_settings_in_the_loader_and_its_workers(toy):
    """Each ablation trainer's loader (and a pickled copy, as a worker gets it) renders with the preset's
    option switched; the readout-train settings are the ones ``wide_pathology.yaml`` itself holds."""
    from nnunetv2_physaug.contrast import load_protocol, protocol_with_settings
    env, folder = toy

    def params(protocol, family):
        return [f.params for f in protocol.families if f.family == family][0]

    def params_share(protocol, family):
        return [f.probability for f in protocol.families if f.family == family][0]

    pathology = load_protocol("wide_pathology")
    wide = load_protocol("wide")
    # the ablations were measured against wide before cavity_tissue joined it, and keep that wide
    old_wide = load_protocol("wide_v1")
    assert old_wide.families != wide.families
    seen = {}
    for name in ("nnUNetTrainerPhysAug_5epochs", "nnUNetTrainerPhysAugReadout_5epochs",
                 "nnUNetTrainerPhysAugPathologyCentric_5epochs", "nnUNetTrainerPhysAugBloodPV_5epochs",
                 "nnUNetTrainerPhysAugBlackBlood_5epochs", "nnUNetTrainerPhysAugTissueScaling_5epochs",
                 "nnUNetTrainerPhysAugBlackBloodTissueScaling_5epochs"):
        tr = _trainer(env, folder, name)
        wrapped, _ = tr.get_tr_and_val_datasets()
        proto = pickle.loads(pickle.dumps(wrapped)).renderer.protocol
        seen[name] = proto
    base, readout, centric, bpv, black, scaling, both = seen.values()
    for fam in ("lge", "psir"):
        assert params(base, fam)["readout_pulses"] == params(wide, fam)["readout_pulses"]
        for key in ("readout_pulses", "readout_tr_ms"):
            assert params(readout, fam)[key] == params(pathology, fam)[key]
        assert params(readout, fam)["readout_pulses"] != params(wide, fam)["readout_pulses"]
        assert params(centric, fam)["readout_pulses"] == params(wide, fam)["readout_pulses"]
    assert centric.pathology == pathology.pathology and not readout.pathology
    assert params(bpv, "tse")["blood_partial_volume"] != params(wide, "tse")["blood_partial_volume"]
    # everything not set is the preset's: only the named family changed
    assert [f for f in bpv.families if f.family != "tse"] == [f for f in old_wide.families if f.family != "tse"]
    shares = {f.family: f.probability for f in black.families}
    assert shares["tse"] == pytest.approx(0.45)
    assert shares["lge"] / shares["psir"] == pytest.approx(params_share(wide, "lge") / params_share(wide, "psir"))
    assert [f.params for f in black.families] == [f.params for f in old_wide.families]
    assert base.imperfections["relaxation_scaling"].probability == 0.0
    assert scaling.imperfections["relaxation_scaling"].probability == 0.5
    assert scaling.families == old_wide.families
    assert both.families == black.families and both.imperfections == scaling.imperfections
    assert len({p.name for p in seen.values()}) == 7
    # SoftEdges: wide_pathology's pathology and uptake, centric readout, two-compartment TSE
    soft = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugSoftEdges_5epochs")
                                     .get_tr_and_val_datasets()[0])).renderer.protocol
    assert soft.pathology == pathology.pathology
    for fam in ("lge", "psir"):
        assert params(soft, fam)["readout_pulses"] == params(wide, fam)["readout_pulses"]
    assert params(soft, "tse")["blood_partial_volume"] != params(wide, "tse")["blood_partial_volume"]
    # P1: wide, every load rendered (in a worker's pickled copy too)
    p1 = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugP1_5epochs").get_tr_and_val_datasets()[0]))
    assert p1.p_render == 1.0 and p1.renderer.protocol.families == old_wide.families and wide.p_render == 0.7
    # CavityTissue: wide with cavity_tissue=1 in every label-aware family, nothing else changed
    cav = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugCavityTissue_5epochs")
                                    .get_tr_and_val_datasets()[0])).renderer.protocol
    label_aware = {"lge", "psir", "saturation_recovery", "tse"}
    gd_families = {"lge", "psir", "saturation_recovery"}
    for f, w in zip(cav.families, old_wide.families):
        if f.family in label_aware:
            assert f.params["cavity_tissue"] == (1.0, 1.0) and w.params["cavity_tissue"] == (0.0, 0.0)
            assert {k: v for k, v in f.params.items() if k != "cavity_tissue"} == \
                {k: v for k, v in w.params.items() if k != "cavity_tissue"}
        else:
            assert f == w
    assert label_aware <= {f.family for f in cav.families} and cav.imperfections == wide.imperfections
    # ... which was wide until 2026-12-02 (border Gd since): CavityTissue is wide now without it
    assert cav.families != wide.families and base.families == wide.families
    for f, w in zip(cav.families, wide.families):
        assert f.params == dict(w.params, blood_partial_volume=(0.0, 0.0)) if f.family in gd_families else f == w
    none = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugNoCavityTissue_5epochs")
                                     .get_tr_and_val_datasets()[0])).renderer.protocol
    assert none.families == old_wide.families and none.imperfections == wide.imperfections
    # the same option at 10 epochs, and together with TissueScaling
    cav10_trainer = _trainer(env, folder, "nnUNetTrainerPhysAugCavityTissue_10epochs")
    cav10 = pickle.loads(pickle.dumps(cav10_trainer.get_tr_and_val_datasets()[0])).renderer.protocol
    assert cav10_trainer.num_epochs == 10 and cav10 == cav
    cav_scaling = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugCavityTissueScaling_5epochs")
                                            .get_tr_and_val_datasets()[0])).renderer.protocol
    assert cav_scaling.families == cav.families and cav_scaling.imperfections == scaling.imperfections
    # CavityPathology: wide now (readout_tr_ms aside: unused with centric readout) plus wide_pathology's pathology
    cav_path = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugCavityPathology_5epochs")
                                         .get_tr_and_val_datasets()[0])).renderer.protocol
    assert cav_path.pathology == pathology.pathology and cav_path.pathology and not wide.pathology
    assert cav_path.imperfections == wide.imperfections
    for f, w in zip(cav_path.families, cav.families):
        assert f.family == w.family and f.probability == w.probability
        if f.family in ("lge", "psir"):
            assert f.params["readout_pulses"] == w.params["readout_pulses"] == (0.0, 0.0)
            f = dataclasses.replace(f, params={k: v for k, v in f.params.items() if k != "readout_tr_ms"})
            w = dataclasses.replace(w, params={k: v for k, v in w.params.items() if k != "readout_tr_ms"})
        assert f == w
    # CavityBloodPV: wide now with two-compartment black blood, nothing else changed
    cav_pv = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugCavityBloodPV_5epochs")
                                       .get_tr_and_val_datasets()[0])).renderer.protocol
    assert params(cav_pv, "tse")["blood_partial_volume"] == (1.0, 1.0) != params(wide, "tse")["blood_partial_volume"]
    assert params(cav_pv, "tse")["cavity_tissue"] == (1.0, 1.0)
    assert [f for f in cav_pv.families if f.family != "tse"] == [f for f in cav.families if f.family != "tse"]
    assert cav_pv.imperfections == wide.imperfections and not cav_pv.pathology
    # CavityReadoutMix: wide now with a readout train of 0-32 pulses in LGE and PSIR, nothing else changed
    mix = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugCavityReadoutMix_5epochs")
                                    .get_tr_and_val_datasets()[0])).renderer.protocol
    for fam in ("lge", "psir"):
        assert params(mix, fam)["readout_pulses"] == (0.0, 32.0) != params(cav, fam)["readout_pulses"]
        assert params(mix, fam)["readout_tr_ms"] == params(pathology, fam)["readout_tr_ms"]
        assert params(mix, fam)["cavity_tissue"] == (1.0, 1.0)
    assert [f for f in mix.families if f.family not in ("lge", "psir")] == \
        [f for f in cav.families if f.family not in ("lge", "psir")]
    assert mix.imperfections == wide.imperfections and not mix.pathology
    # wide_v3 (border Gd) is CavityTissue with the Gd families' border option
    v3 = load_protocol("wide_v3")
    assert v3.families == wide.families and v3.imperfections == wide.imperfections
    for f, w in zip(v3.families, cav.families):
        if f.family in gd_families:
            assert f.params["blood_partial_volume"] == (1.0, 1.0) != w.params["blood_partial_volume"]
            assert {k: v for k, v in f.params.items() if k != "blood_partial_volume"} == \
                {k: v for k, v in w.params.items() if k != "blood_partial_volume"}
        else:
            assert f == w
    # SlowFlow: wide now with two-compartment black blood whose wall blood keeps 0-100 % of its signal
    slow = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugSlowFlow_5epochs")
                                     .get_tr_and_val_datasets()[0])).renderer.protocol
    assert params(slow, "tse") == dict(params(wide, "tse"), blood_partial_volume=(1.0, 1.0),
                                       slow_flow_fraction=(0.0, 1.0))
    assert params(wide, "tse")["slow_flow_fraction"] == (0.0, 0.0)
    assert [f for f in slow.families if f.family != "tse"] == [f for f in wide.families if f.family != "tse"]
    assert slow.imperfections == wide.imperfections and not slow.pathology
    # WallLayer: wide now with the cavity's wall layer in LGE, PSIR and TSE, border Gd off in LGE and PSIR
    wall = pickle.loads(pickle.dumps(_trainer(env, folder, "nnUNetTrainerPhysAugWallLayer_5epochs")
                                     .get_tr_and_val_datasets()[0])).renderer.protocol
    for fam in ("lge", "psir"):
        assert params(wall, fam) == dict(params(wide, fam), wall_layer_share=(0.0, 0.5), wall_layer_px=(1.0, 2.0),
                                         blood_partial_volume=(0.0, 0.0))
    assert params(wall, "tse") == dict(params(wide, "tse"), wall_layer_share=(0.7, 1.0), wall_layer_px=(2.0, 6.0))
    assert [f for f in wall.families if f.family not in ("lge", "psir", "tse")] == \
        [f for f in wide.families if f.family not in ("lge", "psir", "tse")]
    assert wall.imperfections == wide.imperfections and not wall.pathology
