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
from scipy.special import expit


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


def with_bias_column(x: np.ndarray) -> np.ndarray:
    """Patches (n, v) as (n, v + 1) float64 rows with a trailing 1.

    The extra column turns bias terms into matrix products: x1 @ [W1 b1]^T is
    W1 x + b1, and sums of delta x1^T carry the bias gradient in their last
    column.
    """
    x1 = np.empty((x.shape[0], x.shape[1] + 1))
    x1[:, :-1] = x
    x1[:, -1] = 1.0
    return x1


class Sums:
    """Layout of one flat buffer holding the per-patch sums of one evaluation.

    G1 (2h, v+1): rows [:h] sum (W2^T delta3 . s) [x, 1]^T, rows [h:] sum s [x, 1]^T
    G2 (v, h+1):  sum delta3 [a2, 1]^T
    a2 (h):       sum a2
    sq (v):       sum (a3 - x)^2, per output unit
    """

    def __init__(self, v: int, h: int):
        self.v, self.h = v, h
        shapes = [(2 * h, v + 1), (v, h + 1), (h,), (v,)]
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.shapes = shapes
        self.size = sum(self.sizes)

    def views(self, buf: np.ndarray):
        """(G1, G2, a2, sq) as views into buf."""
        out, start = [], 0
        for size, shape in zip(self.sizes, self.shapes, strict=True):
            out.append(buf[start : start + size].reshape(shape))
            start += size
        return out

    def grid(self, n_total: int, xmax: float, w2: np.ndarray) -> np.ndarray:
        """Power-of-two grid step for every element of the buffer.

        Each step is 2**-50 of a bound on the magnitude of that total over all
        n_total patches (|x| <= xmax, sigmoids in (0, 1)), so any sum of
        block values rounded onto it stays an exact float64 integer multiple.
        """
        xm = max(float(xmax), 1.0)
        m = float(np.abs(w2).sum(axis=0).max())  # bounds |W2^T delta3| / |delta3|
        step = np.empty(self.size)
        g1, g2, a2, sq = self.views(step)
        h = self.h
        g1[:h] = 0.0625 * m * (1 + xm) * xm
        g1[h:] = 0.25 * xm
        g2[:] = 0.25 * (1 + xm)
        a2[:] = 1.0
        sq[:] = (1 + xm) ** 2
        bound = np.maximum(step * n_total, 2.0**-900)
        return np.ldexp(1.0, np.frexp(bound)[1] - 50)


class BlockKernel:
    """Partial sums of the objective over blocks of patches, on a fixed grid.

    Buffers are allocated once for ``block_size`` rows and reused; call
    ``set_params`` once per evaluation, then ``accumulate`` for each block.
    """

    def __init__(self, v: int, h: int, block_size: int):
        self.v, self.h, self.block_size = v, h, block_size
        self.sums = Sums(v, h)
        b = block_size
        self.z = np.empty((b, h))
        self.a2e = np.ones((b, h + 1))  # [a2, 1]
        self.a3 = np.empty((b, v))
        self.err = np.empty((b, v))
        self.d3 = np.empty((b, v))
        self.bs = np.empty((b, 2 * h))  # [W2^T delta3 . s, s]
        self.part = np.empty(self.sums.size)
        self.w1e = np.empty((h, v + 1))  # [W1, b1]
        self.w2e = np.empty((v, h + 1))  # [W2, b2]
        self.w2 = np.empty((v, h))
        self.inv_step = np.empty(self.sums.size)

    def set_params(self, theta: np.ndarray, n_total: int, xmax: float) -> np.ndarray:
        """Load theta and fix the rounding grid; returns the grid steps."""
        w1, w2, b1, b2 = unpack(theta, self.v, self.h)
        self.w1e[:, :-1], self.w1e[:, -1] = w1, b1
        self.w2e[:, :-1], self.w2e[:, -1] = w2, b2
        self.w2[:] = w2
        step = self.sums.grid(n_total, xmax, w2)
        np.divide(1.0, step, out=self.inv_step)
        return step

    def accumulate(self, x1: np.ndarray, units: np.ndarray) -> None:
        """Add one block's sums, in whole grid steps, to ``units``.

        x1: (n, v+1) rows of one block with the bias column, n <= block_size.
        """
        n, h, v = x1.shape[0], self.h, self.v
        g1, g2, a2sum, sq = self.sums.views(self.part)
        z, a2e, a3 = self.z[:n], self.a2e[:n], self.a3[:n]
        err, d3, bs = self.err[:n], self.d3[:n], self.bs[:n]
        a2, s = a2e[:, :h], bs[:, h:]

        # Forward pass.
        np.matmul(x1, self.w1e.T, out=z)
        expit(z, out=a2)
        np.matmul(a2e, self.w2e.T, out=a3)
        expit(a3, out=a3)

        # Output layer: delta3 = (a3 - x) . a3 (1 - a3).
        np.subtract(a3, x1[:, :v], out=err)
        np.subtract(1.0, a3, out=d3)
        d3 *= a3
        d3 *= err
        np.matmul(d3.T, a2e, out=g2)

        # Hidden layer: back-propagated part and the sparsity factor s.
        np.subtract(1.0, a2, out=s)
        s *= a2
        np.matmul(d3, self.w2, out=z)
        np.multiply(z, s, out=bs[:, :h])
        np.matmul(bs.T, x1, out=g1)

        np.add.reduce(a2, axis=0, out=a2sum)
        err *= err
        np.add.reduce(err, axis=0, out=sq)

        # Onto the grid: whole steps, added exactly.
        self.part *= self.inv_step
        np.rint(self.part, out=self.part)
        units += self.part


def finish(totals, theta, n: int, v: int, h: int, rho: float, lam: float, beta: float):
    """Cost and gradient from the global sums over all n patches."""
    g1, g2, a2sum, sq = Sums(v, h).views(totals)
    w1, w2, _, _ = unpack(theta, v, h)
    rho_hat = a2sum / n
    k = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))
    kl = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    cost = sq.sum() / (2 * n) + lam / 2 * (np.vdot(w1, w1) + np.vdot(w2, w2)) + beta * kl.sum()

    grad_w1b1 = (g1[:h] + k[:, None] * g1[h:]) / n
    grad = np.concatenate(
        [
            (grad_w1b1[:, :v] + lam * w1).ravel(),
            (g2[:, :h] / n + lam * w2).ravel(),
            grad_w1b1[:, v],
            g2[:, h] / n,
        ]
    )
    return float(cost), grad


def block_ranges(n: int, block_size: int, start_block: int = 0, stop_block: int | None = None):
    """Row ranges [a, b) of the fixed blocks start_block..stop_block of n rows."""
    if stop_block is None:
        stop_block = -(-n // block_size)
    for k in range(start_block, stop_block):
        yield k * block_size, min((k + 1) * block_size, n)


def evaluate(theta: np.ndarray, x: np.ndarray, h: int, rho: float, lam: float, beta: float, block_size: int):
    """Cost and gradient over all patches x (n, v) in one process."""
    n, v = x.shape
    x1 = with_bias_column(x)
    kernel = BlockKernel(v, h, block_size)
    step = kernel.set_params(theta, n, float(np.abs(x).max()))
    units = np.zeros(kernel.sums.size)
    for a, b in block_ranges(n, block_size):
        kernel.accumulate(x1[a:b], units)
    return finish(units * step, theta, n, v, h, rho, lam, beta)


def reference(theta: np.ndarray, x: np.ndarray, h: int, rho: float, lam: float, beta: float):
    """Ng's vectorized equations transcribed directly, whole batch, float64.

    Patches are columns here, as in the notes. The readable specification:
    the oracle for the tests and the baseline for the benchmarks.
    """
    data = x.T
    v, n = data.shape
    w1, w2, b1, b2 = unpack(theta, v, h)
    a2 = expit(w1 @ data + b1[:, None])
    a3 = expit(w2 @ a2 + b2[:, None])
    rho_hat = a2.mean(axis=1)
    kl = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    cost = 0.5 * np.sum((a3 - data) ** 2) / n + lam / 2 * (np.sum(w1**2) + np.sum(w2**2)) + beta * kl.sum()
    delta3 = (a3 - data) * a3 * (1 - a3)
    sparsity = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))
    delta2 = (w2.T @ delta3 + sparsity[:, None]) * a2 * (1 - a2)
    grad = np.concatenate(
        [
            (delta2 @ data.T / n + lam * w1).ravel(),
            (delta3 @ a2.T / n + lam * w2).ravel(),
            delta2.sum(axis=1) / n,
            delta3.sum(axis=1) / n,
        ]
    )
    return float(cost), grad
