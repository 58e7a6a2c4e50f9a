"""Patch sampling and normalization, in pieces."""

import re
import sys

import h5py
import numpy as np
import pytest

from conftest import SCRIPTS, run, smooth_images
from sae import SaeError, h5io, patches


def test_sampling_is_seeded_and_takes_real_windows():
    imgs = smooth_images(3, 40)
    a = patches.windows(imgs, 8, 7, 0, 500)
    assert a.shape == (500, 64)
    assert np.array_equal(a, patches.windows(imgs, 8, 7, 0, 500))
    assert not np.array_equal(a, patches.windows(imgs, 8, 8, 0, 500))
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
    sampled = patches.windows(imgs, 8, 0, 0, 4000)
    # Top-left pixels of the 2 x 2 positions in each image.
    assert set(sampled[:, 0]) == {0, 1, 9, 10, 100, 101, 109, 110}


def test_patches_are_the_same_bits_for_any_piece_size():
    """Pieces that cut the sampling blocks anywhere give the same rows and the same sigma."""
    imgs, count = smooth_images(), 2 * patches.BLOCK + 4321
    sigma = patches.sigma(imgs, count, 8, 3)
    runs = [
        np.concatenate([x.copy() for x in patches.pieces(imgs, count, 8, 3, sigma, piece)])
        for piece in (count, patches.BLOCK, 10000, 4099)
    ]
    assert all(run.dtype == np.float32 and run.shape == (count, 64) for run in runs)
    assert all(np.array_equal(runs[0], run) for run in runs[1:])
    # Any row range on its own is those rows of the whole sample (whatever the count: a
    # smaller count's sample is the first rows of a larger one).
    whole = patches.windows(imgs, 8, 3, 0, count)
    np.testing.assert_array_equal(patches.windows(imgs, 8, 3, 16000, 17000), whole[16000:17000])


class CountingImages(list):
    """Images that count how often each is read."""

    def __init__(self, images):
        super().__init__(images)
        self.reads = [0] * len(images)

    def __getitem__(self, k):
        self.reads[k] += 1
        return super().__getitem__(k)


def test_a_piece_reads_each_image_it_samples_from_once():
    """Many photographs: a piece of several sampling blocks reads each image once, not once per block."""
    imgs = CountingImages(smooth_images(5, 32))
    x = patches.windows(imgs, 8, 0, 100, 3 * patches.BLOCK - 100, shapes=patches.shapes_of(list(imgs)))
    assert imgs.reads == [1] * 5  # every image is sampled from, in all three blocks
    np.testing.assert_array_equal(x, patches.windows(list(imgs), 8, 0, 0, 3 * patches.BLOCK)[100:-100])


def test_normalization_as_in_ngs_exercise():
    imgs, count = smooth_images(), 2000
    x, sigma = patches.sample(imgs, count, 8, 0)
    raw = patches.windows(imgs, 8, 0, 0, count)
    centered = raw - raw.mean(axis=1, keepdims=True)
    assert sigma == pytest.approx(centered.std(), rel=1e-12)
    assert x.dtype == np.float32 and x.min() >= np.float32(0.1) and x.max() <= np.float32(0.9)
    expected = np.clip(centered, -3 * sigma, 3 * sigma) / (3 * sigma) * 0.4 + 0.5
    np.testing.assert_allclose(x, expected, atol=1e-7)
    assert np.isclose(x.min(), 0.1) or np.isclose(x.max(), 0.9)  # some values are truncated


def test_side_larger_than_the_smallest_image_is_refused():
    with pytest.raises(
        SaeError, match=r"patches.side = 33 is larger than the smallest image side \(32, image 1\)"
    ):
        patches.sample([np.zeros((40, 40)), np.zeros((32, 50))], 10, 33, 0)


def test_constant_images_are_refused():
    with pytest.raises(SaeError, match="all sampled patches are constant"):
        patches.sample([np.ones((20, 20))], 100, 8, 0)


def test_patch_stage_peak_memory_does_not_grow_with_the_count(tmp_path):
    """10x the patches (85 MB more to write): the stage's own peak RSS (getrusage) stays put."""
    images = tmp_path / "images.h5"
    named = ((img, f"i{k}", "0" * 64) for k, img in enumerate(smooth_images(3, 256)))
    h5io.write_images(images, named, False, 0.1)
    peaks = []
    for count in (2 * patches.PIECE, 20 * patches.PIECE):
        out = tmp_path / f"p{count}.h5"
        proc = run([sys.executable, SCRIPTS / "sample_patches.py", images, out,
                    "--count", count, "--side", 8, "--seed", 0])  # fmt: skip
        peaks.append(float(re.search(r"peak RSS (\d+) MB", proc.stdout).group(1)))
        with h5py.File(out) as f:
            assert f["patches"].shape == (count, 64)
        for stage in ("pass 1, sigma", "pass 2, written"):  # progress, and the last line at the end
            assert f"{stage}: {count:,} of {count:,} patches" in proc.stderr, proc.stderr
    assert abs(peaks[1] - peaks[0]) < 8, peaks
