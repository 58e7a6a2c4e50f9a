"""The block kernel: one evaluation's partial sums (objective.Sums) over fixed blocks of patches,
each block's rounded onto the exact grid (objective.Sums.grid).

Work goes in chunks of blocks (see objective.to_blocks): every matrix product is a batch
of per-block products of one fixed shape (numpy's matmul, BLAS), so a block's sums are
the same bits whichever rank and chunk it falls in; tanh is numpy's. The elementwise
steps between them, and the rounding onto the grid, are compiled loops (numba, no
fastmath: every operation as written, in the compute precision), one pass each where
numpy needs a call per operation: at a rank's share of a small training set, those
calls, not the arithmetic, are what an evaluation costs beyond its products.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .objective import Sums

TYPES = ("f4", "f8")  # float32 and float64 compute precision


class BlockKernel:
    """Partial sums of the objective over fixed blocks of patches, on a grid.

    ``dtype`` is the compute precision (float32 or float64); the grid and the totals
    are always float64. Buffers are allocated once (for each block width: full blocks,
    and the short last one); call ``set_params`` once per evaluation, then
    ``accumulate`` for each array of blocks.
    """

    def __init__(self, v: int, h: int, block_size: int, dtype=np.float64, chunk_rows: int = 1024):
        self.v, self.h, self.block_size, self.dtype = v, h, block_size, np.dtype(dtype)
        self.sums = Sums(v, h)
        self.chunk_blocks = max(1, chunk_rows // block_size)
        self.half, self.one = self.dtype.type(0.5), self.dtype.type(1.0)
        self._buffers: dict[int, dict] = {}  # block width -> buffers
        self.parts = np.empty((self.chunk_blocks, self.sums.size), dtype=self.dtype)  # a row per block
        self.w1h = np.empty((h, v + 1), dtype=self.dtype)
        self.w2h = np.empty((v, h + 1), dtype=self.dtype)
        self.w2t = np.empty((h, v), dtype=self.dtype)
        self.steps = np.empty(4)  # the grid's step of each part of the sums (objective.Sums.grid)
        self.inv_steps = np.empty(4)

    def _widths(self, n: int) -> dict:
        """The buffers for blocks of n patches (C-contiguous, as the compiled loops want them)."""
        if n not in self._buffers:
            k, h, v = self.chunk_blocks, self.h, self.v

            def buffer(*shape, ones_row=False):
                out = np.empty(shape, dtype=self.dtype)
                if ones_row:
                    out[..., -1, :] = 1.0
                return out

            self._buffers[n] = {
                "z": buffer(k, h, n),
                "te": buffer(k, h + 1, n, ones_row=True),  # [t; 1]
                "u": buffer(k, v, n),
                "err": buffer(k, v, n),
                "de": buffer(k, v + 1, n, ones_row=True),  # [d; 1]
                "bs": buffer(k, 2 * h, n),  # [b'; s']
                "ones": np.ones((n, 1), dtype=self.dtype),
            }
        return self._buffers[n]

    def set_params(self, theta: np.ndarray, n_total: int, xmax: float) -> np.ndarray:
        """Load theta (C-contiguous) and fix the rounding grid; returns the grid's four steps
        (objective.Sums.grid; a reused buffer)."""
        m = _load_weights(theta, self.v, self.h, self.w1h, self.w2h, self.w2t)
        self.steps[:] = self.sums.grid(n_total, xmax, m)
        np.divide(1.0, self.steps, out=self.inv_steps)
        return self.steps

    def accumulate(self, blocks: np.ndarray, units: np.ndarray) -> None:
        """Add the sums over ``blocks`` (k, v+1, n), in whole grid steps, to ``units``."""
        for a in range(0, len(blocks), self.chunk_blocks):
            self._chunk(blocks[a : a + self.chunk_blocks], units)

    def _chunk(self, x1: np.ndarray, units: np.ndarray) -> None:
        """Sums for k <= chunk_blocks blocks x1 (k, v+1, n), each rounded onto the grid."""
        k, n, h, v = x1.shape[0], x1.shape[2], self.h, self.v
        buf = self._widths(n)
        z, te, u, err, de, bs = (buf[name][:k] for name in ("z", "te", "u", "err", "de", "bs"))
        t = te[:, :h]
        parts = self.parts[:k]
        g1, g2, sq = self.sums.views(parts)

        # Forward: t = tanh(z2/2), u = tanh(z3/2).
        np.matmul(self.w1h, x1, out=z)
        np.tanh(z, out=t)
        np.matmul(self.w2h, te, out=u)
        np.tanh(u, out=u)

        # Output layer: err = a3 - x, d = err (1 - u^2) = 4 delta3 (and err^2, for the cost).
        _output_layer(u, x1, de, err, self.half, self.one)
        np.matmul(de, te.transpose(0, 2, 1), out=g2)

        # Hidden layer: s' = 1 - t^2 = 4 s, b' = (W2^T d) s' = 16 (W2^T delta3) s.
        np.matmul(self.w2t, de[:, :v], out=z)
        _hidden_layer(te, z, bs, self.one)
        np.matmul(bs, x1.transpose(0, 2, 1), out=g1)

        np.matmul(err, buf["ones"], out=sq[..., None])

        # Onto the grid, block by block; whole steps add exactly.
        _onto_grid(parts, self.sums.starts, self.inv_steps, units)


@njit([f"f8(f8[::1], int64, int64, {t}[:, ::1], {t}[:, ::1], {t}[:, ::1])" for t in TYPES], cache=True)
def _load_weights(theta, v, h, w1h, w2h, w2t):
    """The products' weights from theta = [W1, W2, b1, b2] (objective.unpack's order), in the
    compute precision; returns the max column sum of |W2| (for the b' rows' grid).

    z2/2 = [W1 b1]/2 [x; 1] and z3/2 = [W2/4, b2/2 + W2 1/4] [t; 1], since a2 = (1 + t)/2.
    """
    hv = h * v
    for j in range(h):
        for i in range(v):
            w1h[j, i] = 0.5 * theta[j * v + i]
        w1h[j, v] = 0.5 * theta[2 * hv + j]
    m = 0.0
    for j in range(h):
        column = 0.0
        for o in range(v):
            column += abs(theta[hv + o * h + j])
        m = max(m, column)
    for o in range(v):
        row = 0.0
        for j in range(h):
            w = theta[hv + o * h + j]
            w2h[o, j] = 0.25 * w
            w2t[j, o] = w
            row += w
        w2h[o, h] = 0.5 * theta[2 * hv + h + o] + 0.25 * row
    return m


def lay_out(units, first, second, out) -> None:
    """out[i] = units[first[i]] (+ units[second[i]] where that is not -1): the sums laid out by
    parameter (objective.Sums.aligned_index), exact (whole grid steps)."""
    _lay_out(units, first, second, out)


@njit("void(f8[::1], int64[::1], int64[::1], f8[::1])", cache=True)
def _lay_out(units, first, second, out):
    for i in range(out.size):
        value = units[first[i]]
        if second[i] >= 0:
            value += units[second[i]]
        out[i] = value


@njit([f"void({t}[:, :, ::1], {t}[:, :, ::1], {t}[:, :, ::1], {t}[:, :, ::1], {t}, {t})" for t in TYPES],
      cache=True)  # fmt: skip
def _output_layer(u, x1, de, err, half, one):
    """err = (u 0.5 + 0.5) - x, d = (1 - u^2) err into de's first v rows, err^2 into err."""
    k, v, n = u.shape
    for b in range(k):
        for o in range(v):
            for i in range(n):
                uu = u[b, o, i]
                e = (uu * half + half) - x1[b, o, i]
                de[b, o, i] = (one - uu * uu) * e
                err[b, o, i] = e * e


@njit([f"void({t}[:, :, ::1], {t}[:, :, ::1], {t}[:, :, ::1], {t})" for t in TYPES], cache=True)
def _hidden_layer(te, z, bs, one):
    """s' = 1 - t^2 into bs's rows h.., b' = z s' into its rows ..h (t: te's first h rows)."""
    k, h, n = z.shape
    for b in range(k):
        for j in range(h):
            for i in range(n):
                tt = te[b, j, i]
                s = one - tt * tt
                bs[b, h + j, i] = s
                bs[b, j, i] = z[b, j, i] * s


@njit([f"void({t}[:, ::1], int64[::1], f8[::1], f8[::1])" for t in TYPES], cache=True)
def _onto_grid(parts, starts, inv_steps, units):
    """units += each block's row of sums in whole grid steps (rint: ties to even); exact.
    The parts of a row start at ``starts``, each with its own grid step."""
    k, size = parts.shape
    for b in range(k):
        for part in range(starts.size):
            inv = inv_steps[part]
            stop = starts[part + 1] if part + 1 < starts.size else size
            for c in range(starts[part], stop):
                units[c] += np.rint(np.float64(parts[b, c]) * inv)
