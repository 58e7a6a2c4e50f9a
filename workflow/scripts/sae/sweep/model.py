"""The performance model: what one training run costs on p ranks and N patches.

Derivation. A run loads its rows, then repeats one evaluation E times (E does not
depend on p: the model is rank-invariant). In one evaluation every rank computes the
sums of its own rows, then the ranks exchange two fixed-size buffers, then rank 0 runs
the optimizer's step while the others wait:

  * compute: the busiest rank decides, with n(p, N) rows (patches are dealt out in
    whole blocks of ``block_size``, so n = block_size * ceil(ceil(N / block_size) / p),
    at most N), at c per row plus a fixed c0 (setting the parameters);
  * communication: a Bcast of the parameters and a Reduce of the sums, each a binomial
    tree of ceil(log2 p) steps, a step costing alpha + beta * bytes:
        t_comm(p) = ceil(log2 p) * (2 alpha + beta * m),   m = bcast bytes + reduce bytes;
  * optimizer: t_opt per evaluation, serial on rank 0.

Hence

    T(p, N) = load(p, N) + E * (c * n(p, N) + c0 + t_comm(p) + t_opt),

with load(p, N) = load0 + load1 * n(p, N) (each rank reads its own rows). Speedup is
T(1, N) / T(p, N) and efficiency speedup / p.

Fitted: c, c0 and t_opt from the timed runs (compute seconds of the slowest rank and
rank 0's optimizer seconds, per evaluation), the load terms from the single-process
runs (on more ranks the measured load also holds the ranks' start-up skew), alpha and
beta from the collectives microbenchmark (``collectives``) at the sweep's rank counts,
by non-negative least squares of the relative error.

Assumed: no cache or memory effects beyond what was measured, no OS noise, no waiting
for stragglers; the collectives are the trees above, with this machine's alpha and beta.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls

from .. import SaeError, h5io
from .scaling import scaling


def tree_steps(p):
    """ceil(log2 p): the steps of a binomial-tree Bcast or Reduce over p ranks (0 for p = 1)."""
    p = np.asarray(p, dtype=np.float64)
    return np.ceil(np.log2(np.maximum(p, 1.0)))


def busiest_rows(n, p, block_size: int):
    """Rows of the busiest rank when n rows are dealt out to p ranks in whole blocks."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    blocks = np.ceil(n / block_size)
    return np.minimum(n, block_size * np.ceil(blocks / p))


def _fit_relative(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares minimizing the relative error of ``design @ x`` to ``target``."""
    scale = 1.0 / np.maximum(np.abs(target), 1e-300)
    x, _ = nnls(design * scale[:, None], target * scale)
    return x


def fit_collectives(bench: list[dict]) -> tuple[float, float]:
    """(alpha seconds, beta seconds/byte) of t = ceil(log2 p) (2 alpha + beta bytes), p > 1.

    bench: rows of COLLECTIVE_COLUMNS; ``bytes`` are the Bcast's plus the Reduce's.
    Returns (0, 0) without a multi-process measurement.
    """
    rows = [r for r in bench if r["ranks"] > 1]
    if not rows:
        return 0.0, 0.0
    steps = tree_steps([r["ranks"] for r in rows])
    design = np.column_stack([2.0 * steps, steps * np.array([r["bytes"] for r in rows])])
    alpha, beta = _fit_relative(design, np.array([r["seconds"] for r in rows]))
    return float(alpha), float(beta)


def model_buffer_bytes(bench: list[dict]) -> float:
    """Bytes of one evaluation's Bcast plus Reduce, from the benchmark's scale-1 rows."""
    ones = {r["bytes"] for r in bench if r["scale"] == 1.0}
    if len(ones) != 1:
        raise SaeError("the collectives benchmark needs exactly one buffer size at scale 1")
    return float(ones.pop())


def fit_model(runs: list[dict], bench: list[dict]) -> dict:
    """Fit the performance model (see the module docstring) to the timed runs and the benchmark."""
    blocks = {r["block_size"] for r in runs}
    if len(blocks) != 1:
        raise SaeError(f"runs with different block sizes {sorted(blocks)}")
    block = blocks.pop()
    p = np.array([r["ranks"] for r in runs], dtype=np.float64)
    n = np.array([r["samples"] for r in runs], dtype=np.float64)
    e = np.array([r["evaluations"] for r in runs], dtype=np.float64)
    rows = busiest_rows(n, p, block)
    ones = np.ones_like(rows)
    c, c0 = _fit_relative(
        np.column_stack([rows, ones]), np.array([r[h5io.timing_attr("compute", "max")] for r in runs]) / e
    )
    # Reading the rows, from single-process runs: on more ranks the measured load also holds
    # the ranks' start-up skew (the first collective waits for the last rank to start).
    single = np.array([r["ranks"] == 1 for r in runs]) if any(r["ranks"] == 1 for r in runs) else ones > 0
    load = np.array([r[h5io.timing_attr("load", "max")] for r in runs])
    load1, load0 = _fit_relative(np.column_stack([rows, ones])[single], load[single])
    alpha, beta = fit_collectives(bench)
    return {
        "block_size": int(block),
        "evaluations": float(np.median(e)),
        "compute_per_patch": float(c),
        "compute_fixed": float(c0),
        "optimizer": float(np.median(np.array([r[h5io.OPTIMIZER_SECONDS] for r in runs]) / e)),
        "load_per_patch": float(load1),
        "load_fixed": float(load0),
        "alpha": alpha,
        "beta": beta,
        "buffer_bytes": model_buffer_bytes(bench),
        "benchmark_ranks": sorted({int(r["ranks"]) for r in bench}),
    }


def comm_time(model: dict, p):
    """Seconds of one evaluation's Bcast + Reduce on p ranks."""
    return tree_steps(p) * (2.0 * model["alpha"] + model["beta"] * model["buffer_bytes"])


def predict(model: dict, p, n, evaluations=None) -> dict:
    """Predicted seconds of one run on p ranks and n patches, by part (arrays broadcast).

    Returns load, compute, communication, optimizer, loop (compute + communication +
    optimizer) and total (load + loop).
    """
    e = model["evaluations"] if evaluations is None else np.asarray(evaluations, dtype=np.float64)
    rows = busiest_rows(n, p, model["block_size"])
    parts = {
        "load": model["load_fixed"] + model["load_per_patch"] * rows,
        "compute": e * (model["compute_fixed"] + model["compute_per_patch"] * rows),
        "communication": e * comm_time(model, p) * np.ones_like(rows),
        "optimizer": e * model["optimizer"] * np.ones_like(rows),
    }
    parts["loop"] = parts["compute"] + parts["communication"] + parts["optimizer"]
    parts["total"] = parts["load"] + parts["loop"]
    return parts


def predicted_speedup(model: dict, p, n):
    """(speedup, efficiency) the model predicts on p ranks and n patches."""
    p = np.asarray(p, dtype=np.float64)
    t1 = predict(model, 1, n)["total"]
    tp = predict(model, p, n)["total"]
    return t1 / tp, t1 / tp / p


def validation(model: dict, runs: list[dict]) -> list[dict]:
    """Measured against predicted loop seconds at every measured point (medians of the repeats)."""
    out = []
    for point in scaling(runs):
        p, n = point["ranks"], point["samples"]
        predicted = float(predict(model, p, n, point["evaluations"])["loop"])
        out.append(
            {
                "ranks": p,
                "samples": n,
                "measured_loop_seconds": point["loop_seconds"],
                "predicted_loop_seconds": predicted,
                "relative_error": predicted / point["loop_seconds"] - 1.0,
            }
        )
    return out


def model_sizes(measured: list[int], max_samples: float) -> list[int]:
    """Training sizes to draw model lines for: the measured ones, then every decade up to max_samples."""
    first = 10 ** math.ceil(math.log10(max(max(measured), 1) * 1.0001))
    decades = []
    n = first
    while n <= max_samples:
        decades.append(int(n))
        n *= 10
    return sorted(set(measured) | set(decades))
