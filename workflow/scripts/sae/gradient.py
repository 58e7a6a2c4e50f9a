"""J and its gradient from the block sums (sae.objective), slice by slice of the parameters.

Each rank gets the totals over all patches of the parameters in its slices (sae.slices),
laid out by parameter (objective.Sums.aligned_index), and the few totals every parameter
needs (Sums.global_index): the sums of the hidden activations, for rho_hat and the
sparsity coefficients k, and the squared errors, for J. From them it assembles its
slices of the gradient, and J's part that every rank computes alike, plus per slice
lambda/2 times the slice's squared weights; J is the first plus the second summed over
all slices in slice order (with the optimizer's dot products, sae.lbfgs). The loop over
the parameters is compiled (numba, no fastmath: every operation as written), so its bits
depend neither on the rank count nor on the CPU.

``evaluate`` is the same arithmetic in one process, over every slice.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from .kernel import BlockKernel, lay_out
from .objective import Sums, n_params, to_blocks
from .slices import Slices


@functools.cache
def _sums(v: int, h: int) -> Sums:
    return Sums(v, h)


def gradient_slices(aligned, glob, theta, lo, hi, step, n, v, h, rho, lambda_, beta, length, out, f_parts):
    """Cost and gradient from the global sums, for the parameters [lo, hi) (whole slices of ``length``).

    aligned: the totals of those parameters (Sums.aligned_index's order, from Sums.position(lo)),
    glob: the totals every parameter needs (Sums.global_index), both in grid steps; ``step``
    the grid's four steps (Sums.grid, from BlockKernel.set_params); theta: the whole parameter
    vector (at least its first n_params values). Writes the gradient of each parameter into
    ``out`` (zero past the last parameter) and, per slice, lambda/2 times its squared weights
    into ``f_parts``; returns the rest of the cost, the same on every rank. J is that plus
    f_parts summed over all slices.
    """
    return float(
        _gradient_slices(
            aligned, glob, theta, lo, hi, length, v, h, n, rho, lambda_, beta,
            step[0], step[1], step[2], step[3], out, f_parts,
        )
    )  # fmt: skip


@njit(
    "f8(f8[::1], f8[::1], f8[::1], int64, int64, int64, int64, int64, int64, f8, f8, f8, f8, f8, f8, f8,"
    " f8[::1], f8[::1])",
    cache=True,
)
def _gradient_slices(
    aligned, glob, theta, lo, hi, length, v, h, n, rho, lambda_, beta,
    step_b, step_s, step_g2, step_sq, out, f_parts,
):  # fmt: skip
    """gradient_slices's arithmetic, one pass. The factors undo the kernel's scalings (see Sums):

    dJ/dW1 = 1/N sum (W2^T delta3 . s) [x 1]^T + k/N sum s [x 1]^T + lambda W1
           = b' / 16N + k s' / 4N + lambda W1            (dJ/db1: the same, last column, no decay)
    dJ/dW2 = 1/N sum delta3 [a2 1]^T + lambda W2 = (sum d t + sum d) / 8N + lambda W2   (G2 folded)
    dJ/db2 = sum d / 4N,   rho_hat = (sum t) / 2N + 1/2,   k = beta (-rho/rho_hat + (1-rho)/(1-rho_hat))
    """
    hv = h * v
    size = 2 * hv + h + v
    k_sparse = np.empty(h)
    kl = 0.0
    for j in range(h):
        rho_hat = glob[j] * (step_g2 / (2 * n)) + 0.5  # mean of a2 = (1 + t)/2
        ratio, ratio_off = rho / rho_hat, (1 - rho) / (1 - rho_hat)
        k_sparse[j] = beta * (ratio_off - ratio)
        kl += rho * math.log(ratio) + (1 - rho) * math.log(ratio_off)
    sq = 0.0
    for o in range(v):
        sq += glob[h + o]
    c_b, c_s, c_w2, c_b2 = step_b / (16 * n), step_s / (4 * n), step_g2 / (8 * n), step_g2 / (4 * n)
    half_lambda = 0.5 * lambda_
    pos = 0
    for k in range((hi - lo) // length):
        decay = 0.0
        for q in range(lo + k * length, lo + (k + 1) * length):
            i = q - lo
            if q < hv:  # W1 (j, :)
                w = theta[q]
                out[i] = lambda_ * w + c_b * aligned[pos] + k_sparse[q // v] * c_s * aligned[pos + 1]
                decay += w * w
                pos += 2
            elif q < 2 * hv:  # W2
                w = theta[q]
                out[i] = lambda_ * w + c_w2 * aligned[pos]
                decay += w * w
                pos += 1
            elif q < 2 * hv + h:  # b1
                out[i] = c_b * aligned[pos] + k_sparse[q - 2 * hv] * c_s * aligned[pos + 1]
                pos += 2
            elif q < size:  # b2
                out[i] = c_b2 * aligned[pos]
                pos += 1
            else:  # the last slice's padding
                out[i] = 0.0
        f_parts[k] = half_lambda * decay
    return sq * (step_sq / (2 * n)) + beta * kl


def finish(units, step, theta, n: int, v: int, h: int, rho: float, lambda_: float, beta: float):
    """Cost and gradient from the sums over all n patches (one process's ``units``, in grid steps).

    The same arithmetic as the ranks' slices together (gradient_slices on every slice,
    the slices' parts of J added in slice order).
    """
    sums, slices = _sums(v, h), Slices(n_params(v, h))
    first, second = sums.aligned_index()
    aligned = np.empty(first.size)
    lay_out(units, first, second, aligned)
    out, f_parts = np.empty(slices.padded), np.empty(slices.count)
    f_common = gradient_slices(
        aligned, units[sums.global_index()], slices.pad(theta), 0, slices.padded, step, n, v, h,
        rho, lambda_, beta, slices.length, out, f_parts,
    )  # fmt: skip
    total = 0.0
    for part in f_parts.tolist():  # in slice order, as the ranks' slices are combined
        total += part
    return f_common + total, out[: slices.size]


def evaluate(theta, x, h: int, rho: float, lambda_: float, beta: float, block_size: int, dtype=np.float64):
    """Cost and gradient over all patches x (n, v) in one process."""
    n, v = x.shape
    kernel = BlockKernel(v, h, block_size, dtype)
    step = kernel.set_params(theta, n, float(np.abs(x).max()))
    units = np.zeros(kernel.sums.size)
    for blocks in to_blocks(x, block_size, dtype):
        kernel.accumulate(blocks, units)
    return finish(units, step, theta, n, v, h, rho, lambda_, beta)
