from pathlib import Path

import pytest

#: the modules that take longest (``scripts/test`` prints the slowest tests), longest first: collected
#: first, so that ``scripts/test``'s two pytest-xdist workers (``--dist loadfile --no-loadscope-reorder``)
#: start them at once on different workers instead of one of them ending the run alone
LONGEST_FIRST = ("test_e2e.py", "test_bench_real.py", "test_peers.py", "test_phantom.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order inside each module is kept


@pytest.fixture(scope="session")
def toy_template(tmp_path_factory):
    """nnU-Net's three folders holding one toy dataset (5 cases, ``Dataset963_TrainerToy``) planned and
    preprocessed by nnU-Net's own command (2d and 3d_fullres), once per session; a module takes its own copy
    (``support.nnunet.copy_toy``) so that what it writes there stays its own."""
    from support.nnunet import TOY_ID, nnunet_env, plan_and_preprocess, write_toy_dataset

    root = tmp_path_factory.mktemp("toy_template")
    env = nnunet_env(root)
    write_toy_dataset(Path(env["nnUNet_raw"]), TOY_ID, "TrainerToy", n_cases=5)
    plan_and_preprocess(env, TOY_ID, configs=("2d", "3d_fullres"))
    return root


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """nnU-Net folders in tmp_path (nnunetv2.paths resolves the env vars lazily)."""
    dirs = {v: tmp_path / v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, d in dirs.items():
        d.mkdir()
        monkeypatch.setenv(k, str(d))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return dirs
