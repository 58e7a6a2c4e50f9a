"""The performance model: what one training run costs on p ranks, N patches and h hidden units.

Derivation. A run loads its rows, then repeats one evaluation E(h) times (E does not
depend on p: the model is rank-invariant; it does depend on the problem, h). The model
has P(h) = 2 v h + v + h parameters (v = side² inputs). In one evaluation every rank
computes the sums of its own rows, then the ranks exchange two fixed-size buffers, then
rank 0 runs the optimizer's step while the others wait:

  * compute: the busiest rank decides, with n(p, N) rows (patches are dealt out in
    whole blocks of ``block_size``, so n = block_size * ceil(ceil(N / block_size) / p),
    at most N), at c(P) per row plus a fixed c0(P) (setting the parameters); both
    grow linearly with the model: c(P) = c_P P + c_1, c0(P) = c0_P P + c0_1;
  * communication: a Bcast of the parameters and a Reduce of the sums, each a binomial
    tree of ceil(log2 p) steps, a step costing alpha + beta * bytes:
        t_comm(p, h) = ceil(log2 p) * (2 alpha + beta * m(h)),
    m(h) = 8 bytes * (P + 1 + the sums' length): the buffers' exact size, not fitted;
  * optimizer: t_opt(P) = t_P P + t_1 per evaluation, serial on rank 0 (L-BFGS works
    on vectors of length P).

Hence

    T(p, N, h) = load(p, N) + E(h) * (c(P) n(p, N) + c0(P) + t_comm(p, h) + t_opt(P)),

with load(p, N) = load0 + load1 * n(p, N) (each rank reads its own rows). Speedup is
T(1, N, h) / T(p, N, h) and efficiency speedup / p. More hidden units raise compute
(∝ P n) and the serial step and the messages (∝ P) alike, so the ratio that limits
efficiency changes only through the fixed parts (latency alpha, c0_1, t_1) and
through how the measured t_P compares with c_P n.

Fitted: c and c0 and t_opt from the timed runs (compute seconds of the slowest rank and
rank 0's optimizer seconds, per evaluation, against n and P), the load terms from the
single-process runs (on more ranks the measured load also holds the ranks' start-up
skew), alpha and beta from the collectives microbenchmark (``collectives``) at the
sweep's rank counts, all by non-negative least squares of the relative error. With one
hidden size the split of each term into its P and fixed parts is not determined (any
split fits); predictions at the measured hidden sizes are.

Assumed: no cache or memory effects beyond what was measured, no OS noise, no waiting
for stragglers; the collectives are the trees above, with this machine's alpha and beta.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls

from .. import SaeError, h5io
from ..objective import Sums, n_params
from .records import DOUBLE
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


def parameters(side: int, hidden) -> np.ndarray:
    """P, the model's parameter count (W1, W2, b1, b2) for v = side**2 inputs and ``hidden`` units."""
    return np.vectorize(lambda h: n_params(side * side, int(h)), otypes=[np.float64])(hidden)


def buffer_bytes(side: int, hidden) -> np.ndarray:
    """m, the bytes of one evaluation's Bcast (parameters and command word) plus Reduce (sums)."""
    sums = np.vectorize(lambda h: Sums(side * side, int(h)).size, otypes=[np.float64])(hidden)
    return DOUBLE * (parameters(side, hidden) + 1.0 + sums)


def _unique(runs: list[dict], key: str) -> int:
    values = {r[key] for r in runs}
    if len(values) != 1:
        raise SaeError(f"runs with different {key} {sorted(values)}")
    return int(values.pop())


def fit_model(runs: list[dict], bench: list[dict]) -> dict:
    """Fit the performance model (see the module docstring) to the timed runs and the benchmark.

    Returns plain numbers (JSON-ready); ``evaluations`` maps str(hidden) to the median E.
    """
    block, side = _unique(runs, "block_size"), _unique(runs, "side")
    p = np.array([r["ranks"] for r in runs], dtype=np.float64)
    n = np.array([r["samples"] for r in runs], dtype=np.float64)
    e = np.array([r["evaluations"] for r in runs], dtype=np.float64)
    size = parameters(side, [r["hidden"] for r in runs])
    rows = busiest_rows(n, p, block)
    ones = np.ones_like(rows)
    compute = np.array([r[h5io.timing_attr("compute", "max")] for r in runs]) / e
    c_param, c_patch, c0_param, c0 = _fit_relative(np.column_stack([rows * size, rows, size, ones]), compute)
    optimizer = np.array([r[h5io.timing_attr("optimizer", "max")] for r in runs]) / e
    t_param, t0 = _fit_relative(np.column_stack([size, ones]), optimizer)
    # Reading the rows, from single-process runs: on more ranks the measured load also holds
    # the ranks' start-up skew (the first collective waits for the last rank to start).
    single = np.array([r["ranks"] == 1 for r in runs]) if any(r["ranks"] == 1 for r in runs) else ones > 0
    load = np.array([r[h5io.timing_attr("load", "max")] for r in runs])
    load1, load0 = _fit_relative(np.column_stack([rows, ones])[single], load[single])
    alpha, beta = fit_collectives(bench)
    hidden = sorted({int(r["hidden"]) for r in runs})
    return {
        "block_size": block,
        "side": side,
        "hidden": hidden,
        "evaluations": {
            str(h): float(np.median([r["evaluations"] for r in runs if r["hidden"] == h])) for h in hidden
        },
        "compute_per_patch_param": float(c_param),
        "compute_per_patch": float(c_patch),
        "compute_fixed_param": float(c0_param),
        "compute_fixed": float(c0),
        "optimizer_per_param": float(t_param),
        "optimizer_fixed": float(t0),
        "load_per_patch": float(load1),
        "load_fixed": float(load0),
        "alpha": alpha,
        "beta": beta,
        "benchmark_ranks": sorted({int(r["ranks"]) for r in bench}),
    }


def per_evaluation(model: dict, hidden) -> dict:
    """The model's terms at ``hidden`` units: c (per patch), c0, t_opt (seconds per evaluation), m (bytes)."""
    size = parameters(model["side"], hidden)
    return {
        "compute_per_patch": model["compute_per_patch_param"] * size + model["compute_per_patch"],
        "compute_fixed": model["compute_fixed_param"] * size + model["compute_fixed"],
        "optimizer": model["optimizer_per_param"] * size + model["optimizer_fixed"],
        "buffer_bytes": buffer_bytes(model["side"], hidden),
    }


def comm_time(model: dict, p, hidden):
    """Seconds of one evaluation's Bcast + Reduce on p ranks for a model of ``hidden`` units."""
    m = buffer_bytes(model["side"], hidden)
    return tree_steps(p) * (2.0 * model["alpha"] + model["beta"] * m)


def predict(model: dict, p, n, hidden, evaluations=None) -> dict:
    """Predicted seconds of one run on p ranks, n patches and ``hidden`` units, by part (arrays broadcast).

    evaluations: E, by default the median measured at ``hidden``. Returns load, compute,
    communication, optimizer, loop (compute + communication + optimizer) and total (load + loop).
    """
    e = (
        model["evaluations"][str(hidden)]
        if evaluations is None
        else np.asarray(evaluations, dtype=np.float64)
    )
    terms = per_evaluation(model, hidden)
    rows = busiest_rows(n, p, model["block_size"])
    parts = {
        "load": model["load_fixed"] + model["load_per_patch"] * rows,
        "compute": e * (terms["compute_fixed"] + terms["compute_per_patch"] * rows),
        "communication": e * comm_time(model, p, hidden) * np.ones_like(rows),
        "optimizer": e * terms["optimizer"] * np.ones_like(rows),
    }
    parts["loop"] = parts["compute"] + parts["communication"] + parts["optimizer"]
    parts["total"] = parts["load"] + parts["loop"]
    return parts


def predicted_speedup(model: dict, p, n, hidden):
    """(speedup, efficiency) the model predicts on p ranks, n patches and ``hidden`` units."""
    p = np.asarray(p, dtype=np.float64)
    t1 = predict(model, 1, n, hidden)["total"]
    tp = predict(model, p, n, hidden)["total"]
    return t1 / tp, t1 / tp / p


def validation(model: dict, runs: list[dict]) -> list[dict]:
    """Measured against predicted loop seconds at every measured point (medians of the repeats)."""
    out = []
    for point in scaling(runs):
        h, n, p = point["hidden"], point["samples"], point["ranks"]
        predicted = float(predict(model, p, n, h, point["evaluations"])["loop"])
        out.append(
            {
                "hidden": h,
                "samples": n,
                "ranks": p,
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
