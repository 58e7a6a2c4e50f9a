"""The optimizer's step on one rank, alone, against the values the rank owns: the model's t_opt.

In training, every rank spends each evaluation outside its compute and the collectives on
its own slices (sae.slices) of the optimizer: the gradient's assembly from the reduced sums
(gradient.gradient_slices) and the optimizer's ``tell`` (its pass over the slices, the sum
of every slice's row of dot products in slice order, the line search's logic and, at the
end of an iteration, the next direction). ``measure`` times exactly that, on one core, for
a rank that owns k whole slices of a model of h hidden units, with the real block kernel
run between evaluations (as in training, it pushes the optimizer's data out of the caches).
The optimizer minimizes a convex quadratic on the rank's values, whose line searches take
t = 1 nearly always, as training's do; a run that stops is started again.
"""

from __future__ import annotations

import time

import numpy as np

from .. import lbfgs
from ..gradient import gradient_slices
from ..kernel import BlockKernel
from ..objective import Sums, initial_theta, n_params, to_blocks
from ..slices import MEMORY, Slices, row_length

PATCHES = 1024  # the block kernel's patches between evaluations


def owned_counts(count: int) -> list[int]:
    """Slices owned, 1, 2, 4, ... up to ``count`` (the ranks 1, 2, 4, ... leave the busiest rank)."""
    out, k = [], 1
    while k < count:
        out.append(k)
        k *= 2
    return [*out, count]


def measure(v: int, h: int, owned: list[int], evaluations: int, seed: int = 0) -> list[dict]:
    """Seconds per evaluation of one rank's optimizer step, owning k slices for each k in ``owned``.

    Rows: hidden, slices (k), values (k times the slice length), median and fastest
    seconds over the evaluations after the first ten.
    """
    rng = np.random.default_rng(seed)
    size = n_params(v, h)
    slices, sums = Slices(size), Sums(v, h)
    kernel = BlockKernel(v, h, 128, np.float32)
    blocks = to_blocks(rng.random((PATCHES, v)), 128, np.float32)
    theta = slices.pad(initial_theta(v, h, rng))
    units = np.zeros(sums.size)
    step = kernel.set_params(theta[:size], PATCHES, 1.0)
    rows = []
    for k in owned:
        lo, hi = 0, k * slices.length
        aligned = rng.integers(-(2**20), 2**20, sums.position(min(hi, size))).astype(np.float64)
        glob = np.full(h + v, float(PATCHES))
        table = np.zeros((slices.count + 1, row_length()))  # every slice's row, and a stop row
        every = np.arange(slices.count)
        totals = np.empty(table.shape[1])

        def combine(partials, table=table, every=every, totals=totals, k=k):
            table[:k] = partials
            lbfgs.sum_rows(table, every, totals)
            return totals

        curvature = np.geomspace(1.0, 1e4, hi - lo)  # the quadratic's, from the rank's values
        grad, f_parts = np.empty(hi - lo), np.empty(k)
        opt, seconds = None, []
        while len(seconds) < evaluations:
            if opt is None or opt.stopped:
                opt = lbfgs.LBFGS(rng.standard_normal(hi - lo), slices.length, combine, memory=MEMORY)
            for b in blocks:  # the compute of an evaluation: evicts the optimizer's data
                kernel.accumulate(b, units)
            start = time.perf_counter()
            gradient_slices(aligned, glob, theta, lo, hi, step, PATCHES, v, h, 0.01, 1e-4, 3.0,
                            slices.length, grad, f_parts)  # fmt: skip
            spent = time.perf_counter() - start
            x = opt.point
            np.multiply(curvature, x, out=opt.gradient)
            f = 0.5 * float(x @ opt.gradient)
            start = time.perf_counter()
            opt.tell(f)
            seconds.append(spent + time.perf_counter() - start)
        tail = np.array(seconds[10:])
        rows.append(
            {
                "hidden": h,
                "slices": k,
                "values": hi - lo,
                "seconds": float(np.median(tail)),
                "seconds_min": float(tail.min()),
            }
        )
    return rows
