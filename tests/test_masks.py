"""The shared 3 x 3 dilation (contrast/masks.py) against scipy's binary dilation, slice by slice."""
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from nnunetv2_physaug.contrast.masks import dilate_3x3


def _scipy_truth(mask: np.ndarray) -> np.ndarray:
    """Independent truth: scipy's 8-neighbour dilation of each (Y, X) slice, outside the grid unset."""
    flat = mask.reshape(-1, *mask.shape[-2:])
    out = np.stack([binary_dilation(s, structure=np.ones((3, 3), bool), border_value=0) for s in flat])
    return out.reshape(mask.shape)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 17, 9), (2, 3, 12, 12)])
def test_dilation_equals_scipy_per_slice(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.02, 0.2, 0.7):
        mask = rng.random(shape) < density
        mask[..., 0, :] |= rng.random(shape[-1]) < 0.5  # pixels on the border rows and columns
        mask[..., :, -1] |= rng.random(shape[:-1]) < 0.5
        truth = _scipy_truth(mask)
        before = mask.copy()
        got_np = dilate_3x3(mask)
        got_t = dilate_3x3(torch.from_numpy(mask))
        assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
        np.testing.assert_array_equal(got_np, truth)
        np.testing.assert_array_equal(got_t.numpy(), truth)
        np.testing.assert_array_equal(mask, before)  # the input is left alone


def test_dilation_of_a_strided_view_and_errors():
    rng = np.random.default_rng(0)
    big = torch.from_numpy(rng.random((4, 20, 30)) < 0.1)
    view = big[1:3, ::2, 5:25]  # not contiguous
    np.testing.assert_array_equal(dilate_3x3(view).numpy(), _scipy_truth(view.numpy()))
    with pytest.raises(TypeError, match="bool"):
        dilate_3x3(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="bool"):
        dilate_3x3(np.zeros((3, 3), dtype=np.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dilation_on_cuda_matches_cpu():
    mask = torch.from_numpy(np.random.default_rng(1).random((2, 16, 16)) < 0.2)
    np.testing.assert_array_equal(dilate_3x3(mask.cuda()).cpu().numpy(), _scipy_truth(mask.numpy()))


@pytest.mark.parametrize("max_steps", [1, 3, 12])
def test_chessboard_distance_equals_scipy(max_steps):
    """Distance from a source mask to each pixel of ``within`` against scipy's chessboard distance transform
    (independent truth: the distance of each pixel to the nearest source pixel), capped at ``max_steps``;
    pixels outside ``within`` hold ``max_steps``."""
    from scipy.ndimage import distance_transform_cdt

    from nnunetv2_physaug.contrast.masks import _distance_loop, chessboard_distance
    rng = np.random.default_rng(max_steps)
    for _ in range(4):
        source = rng.random((2, 23, 31)) < 0.03
        source[0, 11, 15] = True
        source[1, 0, 0] = True
        within = rng.random(source.shape) < 0.8
        truth = np.stack([distance_transform_cdt(~s, metric="chessboard") for s in source]).astype(np.float32)
        truth = np.where(within & ~source, np.minimum(truth, max_steps), max_steps)
        got = chessboard_distance(torch.from_numpy(source), torch.from_numpy(within), max_steps)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), truth)
        # the torch loop that runs on GPU tensors, here on CPU ones
        dist = torch.full(source.shape, float(max_steps), dtype=torch.float32)
        got_t = _distance_loop(torch.from_numpy(source), torch.from_numpy(within), dist, max_steps, torch.clone)
        np.testing.assert_array_equal(got_t.numpy(), truth)
