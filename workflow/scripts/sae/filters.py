"""The learned features as a picture (filters.png): one tile per hidden unit."""

from __future__ import annotations

import math

import numpy as np

from .h5io import atomic_path

MIN_WIDTH = 400


def grid_shape(count: int):
    """(rows, cols) of a near-square grid for ``count`` tiles."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def tile_image(w1: np.ndarray, side: int, border: int = 1) -> np.ndarray:
    """Rows of W1 as side x side tiles in [0, 1], each scaled by its own max |w|.

    Zero weight is mid-gray; tiles sit in a near-square grid on a black
    background with ``border`` pixels between them. Unused cells stay black.
    """
    rows, cols = grid_shape(len(w1))
    step = side + border
    canvas = np.zeros((rows * step + border, cols * step + border))
    for i, w in enumerate(w1):
        scale = np.abs(w).max() or 1.0
        r, c = divmod(i, cols)
        top, left = border + r * step, border + c * step
        canvas[top : top + side, left : left + side] = 0.5 + 0.5 * w.reshape(side, side) / scale
    return canvas


def upscale(img: np.ndarray, min_width: int = MIN_WIDTH) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor to at least ``min_width`` pixels."""
    factor = max(1, math.ceil(min_width / img.shape[1]))
    return np.kron(img, np.ones((factor, factor)))


def save(w1: np.ndarray, side: int, path) -> np.ndarray:
    """Write the filter picture of W1 as a grayscale PNG; returns the pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = upscale(tile_image(w1, side))
    with atomic_path(path) as tmp:
        plt.imsave(tmp, pixels, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return pixels
