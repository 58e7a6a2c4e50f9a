"""Training: read this rank's shard, run L-BFGS on rank 0, write the model."""

from __future__ import annotations

import logging
import resource
import time

import numpy as np
from scipy.optimize import minimize

from . import SaeError, h5io
from .objective import initial_theta, to_blocks, unpack
from .parallel import DistributedObjective, agree, gather_seconds, shard

log = logging.getLogger("sae.train")

HYPERPARAMETERS = ("hidden", "rho", "lambda", "beta", "iterations", "seed", "block_size", "precision")


def fit(objective, theta0: np.ndarray, iterations: int):
    """L-BFGS-B from theta0 for at most ``iterations`` iterations (rank 0).

    Returns (theta, history rows (cost, grad_norm, seconds), scipy's result).
    """
    last = {}
    history = []
    start = time.perf_counter()

    def fun(theta):
        cost, grad = objective(theta)
        last.update(theta=theta.copy(), cost=cost, grad_norm=float(np.linalg.norm(grad)))
        return cost, grad

    def callback(intermediate_result):
        if not np.array_equal(intermediate_result.x, last["theta"]):
            fun(intermediate_result.x)
        row = (last["cost"], last["grad_norm"], time.perf_counter() - start)
        history.append(row)
        log.info(
            "iteration %4d/%d  cost %.6f  |grad| %.3e  evaluations %d  %.2f s",
            len(history),
            iterations,
            *row[:2],
            objective.evaluations,
            row[2],
        )

    result = minimize(
        fun, theta0, jac=True, method="L-BFGS-B", callback=callback, options={"maxiter": iterations}
    )
    return result.x, np.array(history, dtype=np.float64).reshape(-1, 3), result


TIMINGS = ("load", "loop", "compute", "comm")
READ_ROWS = 8192  # rows per hyperslab read


def load_shard(comm, patches_path, side: int, block_size: int, samples=None, dtype=np.float64):
    """This rank's rows, read as hyperslabs, as blocks (see objective.to_blocks): (blocks, n_total).

    samples: train on the first ``samples`` rows only (all rows if None).
    """
    n_total, _ = h5io.patches_info(patches_path, side)
    if samples is not None:
        if samples > n_total:
            raise SaeError(f"{patches_path}: {samples} samples requested, the file has {n_total}")
        n_total = samples
    first_row, stop_row = shard(n_total, block_size, comm.rank, comm.size)
    full = np.empty(((stop_row - first_row) // block_size, side * side + 1, block_size), dtype=dtype)
    blocks, done = [full], 0
    piece = block_size * max(1, READ_ROWS // block_size)
    for rows in h5io.read_rows(patches_path, first_row, stop_row, piece):
        k = len(rows) // block_size
        blocks += to_blocks(rows, block_size, dtype, out=full[done : done + k])[1:]  # the short last block
        done += k
    return blocks, n_total


def max_shard_bytes(n: int, v: int, block_size: int, ranks: int, dtype) -> int:
    """Bytes of the largest rank's patches in memory (v + 1 values per patch)."""
    rows = max(b - a for a, b in (shard(n, block_size, r, ranks) for r in range(ranks)))
    return rows * (v + 1) * np.dtype(dtype).itemsize


def run(
    comm,
    patches_path,
    model_path,
    hp: dict,
    side: int,
    samples: int | None = None,
    cores_granted: int | None = None,
) -> None:
    """Train on all ranks of ``comm``; rank 0 writes ``model_path``.

    hp: the HYPERPARAMETERS. samples: use only the first rows of the file.
    Raises SaeError (on every rank alike) for a bad patches file, before any
    training.
    """
    wall_start = time.perf_counter()
    v, h, block = side * side, hp["hidden"], hp["block_size"]
    dtype = np.dtype(hp["precision"])
    blocks, n_total = agree(comm, load_shard, comm, patches_path, side, block, samples, dtype)
    load_seconds = time.perf_counter() - wall_start
    if comm.rank == 0:
        note = ""
        if cores_granted is not None and cores_granted > comm.size:
            note = f" (Snakemake granted {cores_granted} cores; capped at this machine's CPUs)"
        log.info("%d ranks%s; %d patches of %d pixels in blocks of %d", comm.size, note, n_total, v, block)

    objective = DistributedObjective(comm, blocks, n_total, h, block, hp["rho"], hp["lambda"], hp["beta"])
    comm.Barrier()
    loop_start = time.perf_counter()
    if comm.rank == 0:
        theta0 = initial_theta(v, h, np.random.default_rng(hp["seed"]))
        try:
            theta, history, result = fit(objective, theta0, hp["iterations"])
        finally:
            objective.stop()
    else:
        objective.serve()
    loop_seconds = time.perf_counter() - loop_start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    seconds = gather_seconds(
        comm, [load_seconds, loop_seconds, objective.compute_seconds, objective.comm_seconds, peak_rss_mb]
    )  # columns: TIMINGS, then peak RSS
    if comm.rank != 0:
        return

    log.info("stopped after %d iterations: %s", result.nit, result.message)
    w1, w2, b1, b2 = unpack(theta, v, h)
    timing = {
        **{f"{name}_seconds_max": seconds[:, i].max() for i, name in enumerate(TIMINGS)},
        **{f"{name}_seconds_mean": seconds[:, i].mean() for i, name in enumerate(TIMINGS)},
        "optimizer_seconds": loop_seconds - seconds[0, 2] - seconds[0, 3],
        "peak_rss_mb_max": seconds[:, 4].max(),
        "shard_mb_max": max_shard_bytes(n_total, side * side, block, comm.size, dtype) / 2**20,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    model_attrs = {
        **{k: hp[k] for k in HYPERPARAMETERS},
        "max_iterations": hp["iterations"],
        "iterations": result.nit,
        "cost": result.fun,
        "evaluations": objective.evaluations,
        "ranks": comm.size,
        "train_seconds": loop_seconds,
        "side": side,
        "samples": n_total,
        **timing,
    }
    h5io.write_model(model_path, {"W1": w1, "W2": w2, "b1": b1, "b2": b2}, history, model_attrs)
    log.info(
        "cost %.6f after %d evaluations; loop %.2f s; wrote %s",
        result.fun,
        objective.evaluations,
        loop_seconds,
        model_path,
    )
