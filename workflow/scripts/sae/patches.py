"""Sampling patches from images and normalizing them as in Ng's exercise, in bounded memory.

Patch i belongs to sampling block i // BLOCK, whose draws (image uniformly, then
position uniformly) come from its own generator, SeedSequence(seed, spawn_key=(block,)),
the block-th child of SeedSequence(seed).spawn. So any row range can be made on its
own, and the patches are the same bits however the work is cut into pieces; a smaller
count gives the first rows of a larger one. BLOCK is part of the sample's definition,
not a tuning knob.

sigma (the standard deviation of all values after each patch's mean is removed) needs
every patch before the first can be normalized: a first pass sums the squares per
sampling block (numpy's fixed-order sum of the same block, the same bits every time)
and adds the block sums exactly (math.fsum), so sigma does not depend on the pieces
either. The second pass normalizes and yields pieces for writing.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import SaeError

BLOCK = 16384  # patches per sampling generator (fixed: changing it changes the sample)
# Patches in memory at once (64 MB in float64, whole blocks; any value gives the same
# file): each piece reads every image it samples from once.
PIECE = 8 * BLOCK


def shapes_of(images) -> np.ndarray:
    """(height, width) of each image as rows of an int array, without reading pixels when
    ``images`` knows them."""
    shapes = getattr(images, "shapes", None)
    shapes = shapes if shapes is not None else [img.shape for img in images]
    return np.array(shapes, dtype=np.int64).reshape(-1, 2)


def check_side(images, shapes: np.ndarray, side: int) -> None:
    """One line naming the smallest image (by its name, when ``images`` knows the names)."""
    k = int(shapes.min(axis=1).argmin())
    smallest = int(shapes[k].min())
    if side > smallest:
        names = getattr(images, "names", None)
        which = names[k] if names is not None else f"image {k}"
        raise SaeError(f"patches.side = {side} is larger than the smallest image side ({smallest}, {which})")


def block_draws(shapes, side: int, seed: int, block: int):
    """(which image, top row, left column) of the BLOCK patches of sampling block ``block``.

    Always a whole block, whatever the count: the sample of N patches is the first N
    rows of any larger sample with the same seed.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    which = rng.integers(len(shapes), size=BLOCK)
    rows = rng.integers(0, shapes[which, 0] - side + 1)
    cols = rng.integers(0, shapes[which, 1] - side + 1)
    return which, rows, cols


def windows(images, side: int, seed: int, start: int, stop: int, shapes=None, out=None):
    """Raw patches [start, stop) of the sample (stop - start, side*side), float64.

    ``images[k]`` is read once per call that has a patch from image k: a folder of many
    photographs costs one read of each per piece, not per sampling block.
    out: an array of at least stop - start rows to fill (reused from piece to piece).
    """
    shapes = shapes_of(images) if shapes is None else shapes
    out = np.empty((stop - start, side * side)) if out is None else out[: stop - start]
    blocks = range(start // BLOCK, -(-stop // BLOCK))
    which, rows, cols = (
        np.concatenate(parts)[start - blocks[0] * BLOCK : stop - blocks[0] * BLOCK]
        for parts in zip(*(block_draws(shapes, side, seed, block) for block in blocks), strict=True)
    )
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(shapes) + 1))
    for k in np.flatnonzero(np.diff(bounds)):
        mine = order[bounds[k] : bounds[k + 1]]
        view = sliding_window_view(images[k], (side, side))
        out[mine] = view[rows[mine], cols[mine]].reshape(len(mine), side * side)
    return out


def centered(images, side, seed, start, stop, shapes=None, out=None) -> np.ndarray:
    """Patches [start, stop) with each patch's mean removed (float64); ``out`` as for windows."""
    x = windows(images, side, seed, start, stop, shapes, out)
    x -= x.mean(axis=1, keepdims=True)
    return x


def sigma(images, count: int, side: int, seed: int, progress=None) -> float:
    """Standard deviation of all values of the centered sample (first pass, a piece at a time).

    The values' mean is zero (every patch is centered), so sigma^2 is the mean square,
    summed per sampling block (whatever the pieces) and added exactly. ``progress``,
    if given, is called with the number of patches done after each piece.
    """
    shapes = shapes_of(images)
    check_side(images, shapes, side)
    squares, buffer = [], np.empty((min(count, PIECE), side * side))
    for a in range(0, count, PIECE):
        x = centered(images, side, seed, a, min(count, a + PIECE), shapes, buffer)
        for b in range(0, len(x), BLOCK):  # PIECE is whole blocks
            block = x[b : b + BLOCK]
            squares.append(float(np.multiply(block, block, out=block).sum()))
        if progress is not None:
            progress(a + len(x))
    value = math.sqrt(math.fsum(squares) / (count * side * side))
    if value == 0:
        raise SaeError("all sampled patches are constant: nothing to learn")
    return value


def normalize(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centered patches, in place: truncate at +-3 sigma, map [-1, 1] to [0.1, 0.9]."""
    limit = 3 * sigma
    np.clip(x, -limit, limit, out=x)
    x *= 0.4 / limit
    x += 0.5
    return x


def pieces(images, count: int, side: int, seed: int, sigma: float, piece: int = PIECE, progress=None):
    """The normalized sample as float32 arrays of ``piece`` rows (the last may be shorter).

    Each array is one reused buffer, valid until the next is yielded. ``progress``, if
    given, is called with the number of patches done once each piece has been taken.
    """
    shapes = shapes_of(images)
    check_side(images, shapes, side)
    buffer = np.empty((min(count, piece), side * side))
    rows = np.empty((min(count, piece), side * side), dtype=np.float32)
    for a in range(0, count, piece):
        x = centered(images, side, seed, a, min(count, a + piece), shapes, buffer)
        out = rows[: len(x)]
        np.copyto(out, normalize(x, sigma))
        yield out
        if progress is not None:
            progress(a + len(x))


def sample(images, count: int, side: int, seed: int):
    """The whole normalized sample in memory: (float32 array (count, side*side), sigma).

    For small samples (tests, benchmarks); the patch stage writes ``pieces`` as they come.
    """
    s = sigma(images, count, side, seed)
    return np.concatenate([x.copy() for x in pieces(images, count, side, seed, s)]), s
