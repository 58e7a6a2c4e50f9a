"""Patch sampling and normalization."""

import numpy as np
import pytest

from conftest import smooth_images
from sae import SaeError, patches


def test_sampling_is_seeded_and_takes_real_windows():
    imgs = smooth_images(3, 40)
    a = patches.sample(imgs, 500, 8, seed=7)
    assert a.shape == (500, 64)
    assert np.array_equal(a, patches.sample(imgs, 500, 8, seed=7))
    assert not np.array_equal(a, patches.sample(imgs, 500, 8, seed=8))
    # Every row is an 8x8 window of one of the images.
    for row in a[:20]:
        tile = row.reshape(8, 8)
        assert any(
            np.array_equal(img[r : r + 8, c : c + 8], tile)
            for img in imgs
            for r in range(33)
            for c in range(33)
        )


def test_sampling_covers_every_image_and_position():
    imgs = [np.arange(81.0).reshape(9, 9) + 100 * k for k in range(2)]
    sampled = patches.sample(imgs, 4000, 8, seed=0)
    # Top-left pixels of the 2 x 2 positions in each image.
    assert set(sampled[:, 0]) == {0, 1, 9, 10, 100, 101, 109, 110}


def test_normalization_as_in_ngs_exercise():
    x = patches.sample(smooth_images(), 2000, 8, seed=0)
    raw = x.copy()
    sigma = patches.normalize(x)
    centered = raw - raw.mean(axis=1, keepdims=True)
    assert sigma == pytest.approx(centered.std())
    assert x.min() >= 0.1 - 1e-12 and x.max() <= 0.9 + 1e-12
    expected = np.clip(centered, -3 * sigma, 3 * sigma) / (3 * sigma) * 0.4 + 0.5
    np.testing.assert_allclose(x, expected, atol=1e-12)
    assert np.isclose(x.min(), 0.1) or np.isclose(x.max(), 0.9)  # some values are truncated


def test_side_larger_than_the_smallest_image_is_refused():
    with pytest.raises(SaeError, match=r"patches.side = 33 is larger than the smallest image side \(32\)"):
        patches.sample([np.zeros((40, 40)), np.zeros((32, 50))], 10, 33, 0)
