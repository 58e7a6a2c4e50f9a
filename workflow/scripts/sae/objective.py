"""The sparse autoencoder objective, after Andrew Ng's CS294A notes.

Network, for a patch x with v pixels and h hidden units, f the sigmoid:

    a2 = f(W1 x + b1)          (h)
    a3 = f(W2 a2 + b2)         (v)

Cost over N patches:

    J = 1/(2N) sum_i ||a3_i - x_i||^2  +  lambda/2 (||W1||^2 + ||W2||^2)
        + beta sum_j KL(rho || rho_hat_j),          rho_hat = 1/N sum_i a2_i

Backpropagation:

    delta3 = (a3 - x) . a3 (1 - a3)
    delta2 = (W2^T delta3 + k) . a2 (1 - a2),   k = beta (-rho/rho_hat + (1-rho)/(1-rho_hat))
    dJ/dW2 = 1/N sum_i delta3 a2^T + lambda W2     dJ/db2 = 1/N sum_i delta3
    dJ/dW1 = 1/N sum_i delta2 x^T  + lambda W1     dJ/db1 = 1/N sum_i delta2

The sparsity coefficient k needs rho_hat over *all* patches, which a rank that
holds only a shard does not know. It enters delta2 linearly, so a rank sums the
back-propagated part and the factor s = a2 (1 - a2) separately,

    sum_i delta2 x^T = sum_i (W2^T delta3 . s) x^T  +  k . sum_i s x^T,

and ``finish`` assembles the gradient from the global totals: one reduction per
evaluation.

Exact, order-free summation: patches are cut into fixed blocks of
``block_size`` rows that do not depend on the number of ranks. Each block's
partial sums are rounded onto a power-of-two grid, chosen from a priori bounds
so that every total over all N patches is an integer number of grid steps
below 2**51. Every later addition is then exact, so the totals, and the model
trained from them, are the same bit for bit however the blocks are spread over
ranks and in whatever order they are added.
"""

from __future__ import annotations

import numpy as np


def n_params(v: int, h: int) -> int:
    """Length of the parameter vector theta = [W1, W2, b1, b2] (Ng's order)."""
    return 2 * v * h + v + h


def unpack(theta: np.ndarray, v: int, h: int):
    """Views W1 (h, v), W2 (v, h), b1 (h), b2 (v) into theta."""
    hv = h * v
    return (
        theta[:hv].reshape(h, v),
        theta[hv : 2 * hv].reshape(v, h),
        theta[2 * hv : 2 * hv + h],
        theta[2 * hv + h :],
    )


def initial_theta(v: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Weights uniform in +-sqrt(6 / (v + h + 1)), biases zero (Ng's initialize)."""
    r = np.sqrt(6.0 / (v + h + 1))
    w1 = rng.uniform(-r, r, size=h * v)
    w2 = rng.uniform(-r, r, size=v * h)
    return np.concatenate([w1, w2, np.zeros(h + v)])


def to_blocks(x: np.ndarray, block_size: int, dtype=np.float64, out=None):
    """Patches (n, v) as feature-major blocks with a row of ones: [(k, v+1, B), (1, v+1, r)].

    Block j holds patches j*B .. j*B+B-1 as columns, as in Ng's notes; a
    trailing short block of r = n mod B patches comes as its own array. The
    row of ones turns biases into matrix products. ``out`` may hold the full
    blocks' array to fill (for reading a shard in pieces).
    """
    n, v = x.shape
    k, r = divmod(n, block_size)
    full = np.empty((k, v + 1, block_size), dtype=dtype) if out is None else out
    full[:, :v, :] = x[: k * block_size].reshape(k, block_size, v).transpose(0, 2, 1)
    full[:, v, :] = 1.0
    blocks = [full]
    if r:
        tail = np.empty((1, v + 1, r), dtype=dtype)
        tail[0, :v] = x[k * block_size :].T
        tail[0, v] = 1.0
        blocks.append(tail)
    return blocks


class Sums:
    """Layout of the flat buffer of one evaluation's sums over patches.

    The kernel works with t = tanh(z2/2) and u = tanh(z3/2), so that
    a2 = (1 + t)/2, a3 = (1 + u)/2, a2 (1 - a2) = (1 - t^2)/4 and
    a3 (1 - a3) = (1 - u^2)/4. With d = (a3 - x)(1 - u^2) = 4 delta3,
    s' = 1 - t^2 = 4 s and b' = (W2^T d) . s' = 16 W2^T delta3 . s:

    G1 (2h, v+1):   rows [:h] sum b' [x, 1]^T, rows [h:] sum s' [x, 1]^T
    G2 (v+1, h+1):  sum [d, 1] [t, 1]^T  (last row: sum t, and the count)
    sq (v):         sum (a3 - x)^2, per output unit

    ``finish`` undoes these exact power-of-two scalings. The grid step is one
    value over each of the four parts (rows [:h] of G1, rows [h:], G2, sq).
    """

    def __init__(self, v: int, h: int):
        self.v, self.h = v, h
        self.shapes = [(2 * h, v + 1), (v + 1, h + 1), (v,)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)

    def views(self, buf: np.ndarray):
        """(G1, G2, sq) as views into buf (..., size); leading axes are kept."""
        out, start = [], 0
        for size, shape in zip(self.sizes, self.shapes, strict=True):
            out.append(buf[..., start : start + size].reshape(*buf.shape[:-1], *shape))
            start += size
        return out

    def grid(self, n_total: int, xmax: float) -> np.ndarray:
        """Power-of-two grid step for every element of the buffer but the b' rows.

        Each step is 2**-50 of a bound on the magnitude of that total over all
        n_total patches (|x| <= xmax, |t|, |u| < 1), so any sum of block
        values rounded onto it is an exact float64 multiple of the step. The
        first ``b_rows`` elements (rows [:h] of G1) depend on W2: see ``b_step``.
        """
        xm = max(float(xmax), 1.0)
        per_patch = np.empty(self.size)
        g1, g2, sq = self.views(per_patch)
        g1[: self.h] = 0.0
        g1[self.h :] = xm
        g2[:] = 1 + xm
        sq[:] = (1 + xm) ** 2
        return grid_step(per_patch * n_total)

    @property
    def b_rows(self) -> int:
        return self.h * (self.v + 1)

    # By parameter: the totals each parameter's gradient needs, in the parameters' order
    # (W1, W2, b1, b2), so that a run of parameters needs a run of totals. W1[j, i] and b1[j]
    # need two (rows j and h + j of G1), W2[o, j] one (G2[o, j] + G2[o, h], see ``fold``), b2[o]
    # one (G2[o, h]). Every parameter also needs the few totals of global_index.

    def position(self, q: int) -> int:
        """Where parameter q's totals start in the by-parameter layout (q = n_params: its size)."""
        hv, h = self.h * self.v, self.h
        q1, q2, q3 = min(q, hv), min(max(q - hv, 0), hv), min(max(q - 2 * hv, 0), h)
        return 2 * q1 + q2 + 2 * q3 + max(q - 2 * hv - h, 0)

    def aligned_index(self) -> np.ndarray:
        """The kernel buffer's index of every total in the by-parameter layout."""
        v, h = self.v, self.h
        g1, g2, _ = self.views(np.arange(self.size))
        return np.concatenate(
            [
                np.stack([g1[:h, :v], g1[h:, :v]], axis=-1).ravel(),  # W1: b' part, s' part
                g2[:v, :h].ravel(),  # W2 (folded)
                np.stack([g1[:h, v], g1[h:, v]], axis=-1).ravel(),  # b1
                g2[:v, h],  # b2
            ]
        )

    def global_index(self) -> np.ndarray:
        """The kernel buffer's index of the totals every parameter needs: sum t (rho_hat), sq (the cost)."""
        _, g2, sq = self.views(np.arange(self.size))
        return np.concatenate([g2[self.v, : self.h], sq])

    def fold(self, units: np.ndarray) -> None:
        """G2[o, j] += G2[o, h] in place: W2's gradient from one total (exact: both are whole grid steps)."""
        _, g2, _ = self.views(units)
        g2[: self.v, : self.h] += g2[: self.v, self.h : self.h + 1]

    @staticmethod
    def b_step(n_total: int, xmax: float, w2: np.ndarray) -> float:
        """Grid step of the b' rows: their bound is (1 + xm) m xm N, m = max column sum of |W2|."""
        xm = max(float(xmax), 1.0)
        m = float(np.abs(w2).sum(axis=0).max())  # |W2^T d| <= m max|d|
        return float(grid_step((1 + xm) * m * xm * n_total))


def grid_step(bound):
    """2**-50 of the power of two just above ``bound`` (tiny bounds floored at 2**-900)."""
    return np.ldexp(1.0, np.frexp(np.maximum(bound, 2.0**-900))[1] - 50)


class BlockKernel:
    """Partial sums of the objective over fixed blocks of patches, on a grid.

    Work goes in chunks of blocks (see ``to_blocks``): every matrix product
    is a batch of per-block products of one fixed shape, so a block's sums are
    the same bits whichever rank and chunk it falls in. ``dtype`` is the
    compute precision (float32 or float64); the grid and the totals are always
    float64. Buffers are allocated once; call ``set_params`` once per
    evaluation, then ``accumulate`` for each array of blocks.
    """

    def __init__(self, v: int, h: int, block_size: int, dtype=np.float64, chunk_rows: int = 1024):
        self.v, self.h, self.block_size, self.dtype = v, h, block_size, np.dtype(dtype)
        self.sums = Sums(v, h)
        self.chunk_blocks = k = max(1, chunk_rows // block_size)
        b = block_size

        def buffer(*shape, ones_row=False):
            out = np.empty(shape, dtype=self.dtype)
            if ones_row:
                out[..., -1, :] = 1.0
            return out

        self.z = buffer(k, h, b)
        self.te = buffer(k, h + 1, b, ones_row=True)  # [t; 1]
        self.u = buffer(k, v, b)
        self.err = buffer(k, v, b)
        self.de = buffer(k, v + 1, b, ones_row=True)  # [d; 1]
        self.bs = buffer(k, 2 * h, b)  # [b'; s']
        self.ones = np.ones((b, 1), dtype=self.dtype)
        self.parts = buffer(k, self.sums.size)  # one row of sums per block
        self.rounded = np.empty((k, self.sums.size))
        self.w1h = buffer(h, v + 1)
        self.w2h = buffer(v, h + 1)
        self.w2t = buffer(h, v)
        self.inv_step = np.empty(self.sums.size)
        self.step = np.empty(self.sums.size)
        self.grid_for = None  # (n_total, xmax) the steps were computed for

    def set_params(self, theta: np.ndarray, n_total: int, xmax: float) -> np.ndarray:
        """Load theta and fix the rounding grid; returns the grid steps (a reused buffer)."""
        w1, w2, b1, b2 = unpack(theta, self.v, self.h)
        # z2/2 = [W1 b1]/2 [x; 1] and z3/2 = [W2/4, b2/2 + W2 1/4] [t; 1], since a2 = (1 + t)/2.
        self.w1h[:, :-1], self.w1h[:, -1] = 0.5 * w1, 0.5 * b1
        self.w2h[:, :-1], self.w2h[:, -1] = 0.25 * w2, 0.5 * b2 + 0.25 * w2.sum(axis=1)
        self.w2t[:] = w2.T
        if self.grid_for != (n_total, xmax):  # fixed for a whole run: computed once
            self.grid_for = (n_total, xmax)
            self.step[:] = self.sums.grid(n_total, xmax)
            np.divide(1.0, self.step, out=self.inv_step)
        b = self.sums.b_rows
        self.step[:b] = self.sums.b_step(n_total, xmax, w2)
        self.inv_step[:b] = 1.0 / self.step[0]
        return self.step

    def accumulate(self, blocks: np.ndarray, units: np.ndarray) -> None:
        """Add the sums over ``blocks`` (k, v+1, n), in whole grid steps, to ``units``."""
        for a in range(0, len(blocks), self.chunk_blocks):
            self._chunk(blocks[a : a + self.chunk_blocks], units)

    def _chunk(self, x1: np.ndarray, units: np.ndarray) -> None:
        """Sums for k <= chunk_blocks blocks x1 (k, v+1, n), each rounded onto the grid."""
        k, n, h, v = x1.shape[0], x1.shape[2], self.h, self.v
        z, te, u = self.z[:k, :, :n], self.te[:k, :, :n], self.u[:k, :, :n]
        err, de, bs = self.err[:k, :, :n], self.de[:k, :, :n], self.bs[:k, :, :n]
        t, d, s = te[:, :h], de[:, :v], bs[:, h:]
        parts = self.parts[:k]
        g1, g2, sq = self.sums.views(parts)

        # Forward: t = tanh(z2/2), u = tanh(z3/2).
        np.matmul(self.w1h, x1, out=z)
        np.tanh(z, out=t)
        np.matmul(self.w2h, te, out=u)
        np.tanh(u, out=u)

        # Output layer: err = a3 - x, d = err (1 - u^2) = 4 delta3.
        np.multiply(u, 0.5, out=err)
        err += 0.5
        err -= x1[:, :v]
        np.square(u, out=d)
        np.subtract(1.0, d, out=d)
        d *= err
        np.matmul(de, te.transpose(0, 2, 1), out=g2)

        # Hidden layer: s' = 1 - t^2 = 4 s, b' = (W2^T d) s' = 16 (W2^T delta3) s.
        np.square(t, out=s)
        np.subtract(1.0, s, out=s)
        np.matmul(self.w2t, d, out=z)
        np.multiply(z, s, out=bs[:, :h])
        np.matmul(bs, x1.transpose(0, 2, 1), out=g1)

        np.square(err, out=err)
        np.matmul(err, self.ones[:n], out=sq[..., None])

        # Onto the grid, block by block; whole steps add exactly.
        rounded = self.rounded[:k]
        np.multiply(parts, self.inv_step, out=rounded)
        np.rint(rounded, out=rounded)
        units += rounded.sum(axis=0)


def reference(theta: np.ndarray, x: np.ndarray, h: int, rho: float, lambda_: float, beta: float):
    """Ng's vectorized equations transcribed directly, whole batch, float64.

    Patches are columns here, as in the notes. The readable specification:
    the oracle for the tests and the baseline for the benchmarks.
    """
    from scipy.special import expit  # here: the workflow imports this module, scipy.special is slow to load

    data = x.T
    v, n = data.shape
    w1, w2, b1, b2 = unpack(theta, v, h)
    a2 = expit(w1 @ data + b1[:, None])
    a3 = expit(w2 @ a2 + b2[:, None])
    rho_hat = a2.mean(axis=1)
    kl = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    cost = (
        0.5 * np.sum((a3 - data) ** 2) / n + lambda_ / 2 * (np.sum(w1**2) + np.sum(w2**2)) + beta * kl.sum()
    )
    delta3 = (a3 - data) * a3 * (1 - a3)
    sparsity = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))
    delta2 = (w2.T @ delta3 + sparsity[:, None]) * a2 * (1 - a2)
    grad = np.concatenate(
        [
            (delta2 @ data.T / n + lambda_ * w1).ravel(),
            (delta3 @ a2.T / n + lambda_ * w2).ravel(),
            delta2.sum(axis=1) / n,
            delta3.sum(axis=1) / n,
        ]
    )
    return float(cost), grad
