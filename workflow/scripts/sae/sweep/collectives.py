"""The collectives microbenchmark: one evaluation's three collectives, without its compute.

For each buffer scale s (1 = the model's own buffers) it times, back to back as in the
training loop (parallel.DistributedObjective), an Allgatherv of round(s * P) doubles
(the trial point, P the padded parameter count), a Reduce_scatter (SUM) of round(s * S)
doubles plus p times the totals every rank needs (the sums laid out by parameter) and an
Allgatherv of the optimizer's per-slice rows, round(s * slices * columns) doubles plus a
row per rank; each rank's share of each buffer as even as whole values allow. Its rows
(COLLECTIVE_COLUMNS of ``records``) give the performance model its alpha and beta.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..objective import Sums, n_params
from ..slices import Slices, row_length


def buffers(v: int, h: int, p: int, scale: float = 1.0) -> tuple[int, int, int]:
    """Doubles of one evaluation's three buffers on p ranks: the point, the sums (with every
    rank's copy of the global totals), the optimizer's rows (with every rank's stop row)."""
    slices, sums = Slices(n_params(v, h)), Sums(v, h)
    columns = row_length()
    glob = sums.global_index().size
    point = max(1, round(scale * slices.padded))
    totals = max(1, round(scale * sums.position(slices.size))) + p * glob
    rows = max(1, round(scale * slices.count)) * columns + p * columns
    return point, totals, rows


def _split(n: int, p: int) -> list[int]:
    return [n * (r + 1) // p - n * r // p for r in range(p)]


def measure(comm, v: int, h: int, scales, repeats: int, seed: int = 0) -> np.ndarray | None:
    """Seconds of one evaluation's three collectives for each scale of the model's buffers.

    Values come from a seeded Generator. After 10 untimed evaluations, ``repeats`` are
    timed one by one on rank 0. Returns on rank 0 one row per scale: (point doubles,
    sums doubles, rows doubles, median seconds, fastest); None on the other ranks.
    """
    rng = np.random.default_rng(seed)
    p, rank = comm.size, comm.rank
    out = []
    for scale in scales:
        point_n, totals_n, rows_n = buffers(v, h, p, scale)
        point = rng.standard_normal(point_n)
        point_counts = _split(point_n, p)
        point_spec = [point, (point_counts, np.cumsum([0, *point_counts[:-1]]).tolist())]
        send = rng.standard_normal(totals_n)
        recv = np.empty(_split(totals_n, p)[rank])
        rows = rng.standard_normal(rows_n)
        row_counts = _split(rows_n, p)
        rows_spec = [rows, (row_counts, np.cumsum([0, *row_counts[:-1]]).tolist())]
        seconds = np.empty(repeats)
        comm.Barrier()
        for i in range(-10, repeats):
            start = time.perf_counter()
            comm.Allgatherv(MPI.IN_PLACE, point_spec)
            comm.Reduce_scatter(send, recv, _split(totals_n, p), op=MPI.SUM)
            comm.Allgatherv(MPI.IN_PLACE, rows_spec)
            if i >= 0:
                seconds[i] = time.perf_counter() - start
        out.append((point_n, totals_n, rows_n, float(np.median(seconds)), float(seconds.min())))
    return np.array(out, dtype=np.float64) if rank == 0 else None


def as_rows(ranks: int, scales, timings: np.ndarray) -> list[dict]:
    """Rows of COLLECTIVE_COLUMNS from ``measure``'s result on ``ranks`` ranks."""
    return [
        {
            "ranks": ranks,
            "scale": scale,
            "point_doubles": int(point),
            "sums_doubles": int(totals),
            "rows_doubles": int(rows),
            "seconds": seconds,
            "seconds_min": fastest,
        }
        for scale, (point, totals, rows, seconds, fastest) in zip(scales, timings, strict=True)
    ]
