"""The collectives microbenchmark: one evaluation's Bcast + Reduce, without its compute.

For each buffer scale s (1 = the model's own buffers) it times a Bcast from rank 0 of
round(s * (n_params(v, h) + 1)) doubles (the parameters and the command word) and a
Reduce (SUM) to rank 0 of round(s * Sums(v, h).size) doubles (the block sums): the same
uppercase collectives on numpy buffers as parallel.DistributedObjective. Its rows
(COLLECTIVE_COLUMNS of ``records``) give the performance model its alpha and beta.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..objective import Sums, n_params
from .records import DOUBLE


def measure(comm, v: int, h: int, scales, repeats: int, seed: int = 0) -> np.ndarray | None:
    """Seconds of one evaluation's Bcast + Reduce for each scale of the model's buffers.

    Values come from a seeded Generator. After 10 untimed pairs, ``repeats`` pairs
    are timed one by one on rank 0, back to back as in the training loop.
    Returns on rank 0 one row per scale: (reduce doubles, bcast doubles, median
    seconds per pair, fastest pair); None on the other ranks.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for scale in scales:
        n_reduce = max(1, round(scale * Sums(v, h).size))
        n_bcast = max(1, round(scale * (n_params(v, h) + 1)))
        message = rng.standard_normal(n_bcast)
        units = rng.standard_normal(n_reduce)
        totals = np.empty_like(units) if comm.rank == 0 else None
        seconds = np.empty(repeats)
        comm.Barrier()
        for i in range(-10, repeats):
            start = time.perf_counter()
            comm.Bcast(message, root=0)
            comm.Reduce(units, totals, op=MPI.SUM, root=0)
            if i >= 0:
                seconds[i] = time.perf_counter() - start
        rows.append((n_reduce, n_bcast, float(np.median(seconds)), float(seconds.min())))
    return np.array(rows, dtype=np.float64) if comm.rank == 0 else None


def as_rows(ranks: int, scales, timings: np.ndarray) -> list[dict]:
    """Rows of COLLECTIVE_COLUMNS from ``measure``'s result on ``ranks`` ranks."""
    return [
        {
            "ranks": ranks,
            "scale": scale,
            "reduce_doubles": int(reduce_),
            "bcast_doubles": int(bcast),
            "bytes": DOUBLE * int(reduce_ + bcast),
            "seconds": seconds,
            "seconds_min": fastest,
        }
        for scale, (reduce_, bcast, seconds, fastest) in zip(scales, timings, strict=True)
    ]
