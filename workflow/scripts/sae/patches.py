"""Sampling patches from images and normalizing them as in Ng's exercise."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import SaeError


def sample(images, count: int, side: int, seed: int) -> np.ndarray:
    """``count`` patches (count, side*side): image uniformly, then position uniformly.

    All draws come from one Generator seeded with ``seed``, so the training set
    is fixed by the config alone.
    """
    smallest = min(min(img.shape) for img in images)
    if side > smallest:
        raise SaeError(f"patches.side = {side} is larger than the smallest image side ({smallest})")
    rng = np.random.default_rng(seed)
    which = rng.integers(len(images), size=count)
    heights = np.array([img.shape[0] for img in images])
    widths = np.array([img.shape[1] for img in images])
    rows = rng.integers(0, heights[which] - side + 1)
    cols = rng.integers(0, widths[which] - side + 1)
    out = np.empty((count, side * side))
    for k, img in enumerate(images):
        mine = np.flatnonzero(which == k)
        windows = sliding_window_view(img, (side, side))
        out[mine] = windows[rows[mine], cols[mine]].reshape(len(mine), side * side)
    return out


def normalize(patches: np.ndarray) -> float:
    """In place: remove each patch's mean, truncate at +-3 sigma, map [-1, 1] to [0.1, 0.9].

    sigma is the standard deviation of all values after mean removal; returns it.
    """
    patches -= patches.mean(axis=1, keepdims=True)
    sigma = float(patches.std())
    if sigma == 0:
        raise SaeError("all sampled patches are constant: nothing to learn")
    limit = 3 * sigma
    np.clip(patches, -limit, limit, out=patches)
    patches *= 0.4 / limit
    patches += 0.5
    return sigma
