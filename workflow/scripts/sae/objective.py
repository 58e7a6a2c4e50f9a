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

and the gradient is assembled from the global totals (sae.gradient): one reduction
per evaluation.

Exact, order-free summation: patches are cut into fixed blocks of
``block_size`` rows that do not depend on the number of ranks. Each block's
partial sums are rounded onto a power-of-two grid, chosen from a priori bounds
so that every total over all N patches is an integer number of grid steps
below 2**51. Every later addition is then exact, so the totals, and the model
trained from them, are the same bit for bit however the blocks are spread over
ranks and in whatever order they are added.

This module defines the sums (their layout, their grid) and holds the readable
reference; sae.kernel computes the sums fast, sae.gradient turns their totals into
J and its gradient.
"""

from __future__ import annotations

import math

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

    sae.gradient undoes these exact power-of-two scalings. The grid step is one
    value over each of the four parts (rows [:h] of G1, rows [h:], G2, sq), which
    start at ``starts``.
    """

    def __init__(self, v: int, h: int):
        self.v, self.h = v, h
        self.shapes = [(2 * h, v + 1), (v + 1, h + 1), (v,)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)
        self.starts = np.array([0, self.b_rows, 2 * self.b_rows, self.size - v], dtype=np.int64)

    def views(self, buf: np.ndarray):
        """(G1, G2, sq) as views into buf (..., size); leading axes are kept."""
        out, start = [], 0
        for size, shape in zip(self.sizes, self.shapes, strict=True):
            out.append(buf[..., start : start + size].reshape(*buf.shape[:-1], *shape))
            start += size
        return out

    @staticmethod
    def grid(n_total: int, xmax: float, m: float) -> tuple[float, float, float, float]:
        """The power-of-two grid step of each part: b' rows, s' rows, G2, sq.

        Each step is 2**-50 of a bound on the magnitude of the part's totals over all
        n_total patches (|x| <= xm = max(xmax, 1), |t|, |u| < 1, and m the max column
        sum of |W2|, so |W2^T d| <= m max|d|): any sum of block values rounded onto it is
        an exact float64 multiple of the step. Per patch the bounds are (1 + xm) m xm,
        xm, 1 + xm and (1 + xm)^2.
        """
        xm = max(float(xmax), 1.0)
        per_patch = ((1 + xm) * m * xm, xm, 1 + xm, (1 + xm) ** 2)
        return tuple(grid_step(bound * n_total) for bound in per_patch)

    @property
    def b_rows(self) -> int:
        return self.h * (self.v + 1)

    # By parameter: the totals each parameter's gradient needs, in the parameters' order
    # (W1, W2, b1, b2), so that a run of parameters needs a run of totals. W1[j, i] and b1[j]
    # need two (rows j and h + j of G1), W2[o, j] one (G2[o, j] + G2[o, h]: the sum of two
    # totals, exact since both are whole grid steps), b2[o] one (G2[o, h]). Every parameter
    # also needs the few totals of global_index.

    def position(self, q: int) -> int:
        """Where parameter q's totals start in the by-parameter layout (q = n_params: its size)."""
        hv, h = self.h * self.v, self.h
        q1, q2, q3 = min(q, hv), min(max(q - hv, 0), hv), min(max(q - 2 * hv, 0), h)
        return 2 * q1 + q2 + 2 * q3 + max(q - 2 * hv - h, 0)

    def aligned_index(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel buffer's indices of every total in the by-parameter layout: each is the
        buffer's value at ``first``, plus its value at ``second`` where that is not -1 (W2)."""
        v, h = self.v, self.h
        g1, g2, _ = self.views(np.arange(self.size))
        first = np.concatenate(
            [
                np.stack([g1[:h, :v], g1[h:, :v]], axis=-1).ravel(),  # W1: b' part, s' part
                g2[:v, :h].ravel(),  # W2: sum d t, then (second) sum d
                np.stack([g1[:h, v], g1[h:, v]], axis=-1).ravel(),  # b1
                g2[:v, h],  # b2
            ]
        )
        second = np.full(first.size, -1)
        w2 = slice(2 * h * v, 3 * h * v)
        second[w2] = np.repeat(g2[:v, h], h)
        return first, second

    def global_index(self) -> np.ndarray:
        """The kernel buffer's index of the totals every parameter needs: sum t (rho_hat), sq (the cost)."""
        _, g2, sq = self.views(np.arange(self.size))
        return np.concatenate([g2[self.v, : self.h], sq])


def grid_step(bound: float) -> float:
    """2**-50 of the power of two just above ``bound`` (tiny bounds floored at 2**-900)."""
    return math.ldexp(1.0, math.frexp(max(bound, 2.0**-900))[1] - 50)


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
