"""The performance model: what one training run costs on p ranks, N patches and h hidden units.

Derivation. A run loads its rows, then repeats one evaluation E(h) times (E does not
depend on p: the model is rank-invariant; it does depend on the problem, h). The model
has P(h) = 2 v h + v + h parameters (v = side² inputs), cut into ``count`` slices of L
values (sae.slices; both follow from P alone). In one evaluation every rank computes the
sums of its own rows, the ranks exchange three buffers, and every rank takes the
optimizer's step on its own slices:

  * compute: the busiest rank decides, with n(p, N) rows (patches are dealt out in
    whole blocks of ``block_size``, so n = block_size * ceil(ceil(N / block_size) / p),
    at most N), at c(P) per row plus a fixed c0(P) (setting the parameters); both
    grow linearly with the model: c(P) = c_P P + c_1, c0(P) = c0_P P + c0_1;
  * communication: three collectives, each rank receiving (p - 1)/p of each buffer's
    B bytes in s(p, B) steps of alpha + beta * bytes:
        an Allgatherv of the trial point          B = 8 count L,
        a Reduce_scatter of the sums by parameter B = 8 (S + p g),
        an Allgatherv of the per-slice rows       B = 8 (count + p) K,
    S the sums' length, g the totals every rank needs, K a row's length (exact, not
    fitted). MPICH uses recursive doubling (halving, for the Reduce_scatter) below
    512 KiB, s = ceil(log2 p) steps, and a ring (pairwise exchange) beyond, s = p - 1:
        t_comm(p, h) = sum over the three of  s(p, B) alpha + (p - 1)/p B beta;
  * optimizer: every rank's step on its slices, the busiest owning k(p) = ceil(count / p)
    slices, e(p, h) = k(p) L values: t_opt(e) = t_1 + t_e e, fitted to the optimizer
    benchmark (sae.sweep.optimizer: one rank's step alone, against the values it owns).

Hence, with every rank on a core of its own and cores to spare for the rest of the
machine (the launcher, the operating system),

    T(p, N, h) = load(p, N) + E(h) * (c(P) n(p, N) + c0(P) + t_comm(p, h) + t_opt(e(p, h))),

with load(p, N) = load0 + load1 * n(p, N) (each rank reads its own rows). Speedup is
T(1, N, h) / T(p, N, h) and efficiency speedup / p. On many ranks the compute shrinks as
1/p down to one block, the optimizer to one slice, and what stays is c0, the steps'
latency (3 ceil(log2 p) alpha) and the fixed part of the optimizer, t_1.

  * sharing: when p > 1 ranks take every core of a machine, as on the machine where a
    sweep runs, each rank's compute and optimizer step take longer (the memory and the
    caches are shared) and every collective waits for whichever rank the launcher or
    the operating system held up last: the loop also holds
        w(p, N, h) = omega * (c(P) n(p, N) + c0(P) + t_opt(e(p, h)))
    per evaluation, omega a fraction fitted to the multi-rank runs. ``predict`` adds it
    when asked (``shared``); validation does, since the sweep measured it.

Fitted: to the fastest run of each point's repeats (``fastest``: a busy machine only slows
a run down, so the fastest is the least disturbed). c and c0 from the single-process runs
(the compute seconds per evaluation, against n and P: a core of its own), the load terms
likewise (on more ranks the measured load also holds the ranks' start-up skew), alpha
and beta from the collectives microbenchmark (``collectives``) at the sweep's rank
counts, t_1 and t_e from the optimizer benchmark, then omega from the multi-rank runs'
loops; all by non-negative least squares of the relative error. With one hidden size
the split of c and c0 into their P and fixed parts is not determined (any split fits);
predictions at the measured hidden sizes are.

Assumed: no cache or memory effects beyond what was measured (so measure one rank on
the share of a rank count to predict, e.g. 625 patches for 16 ranks at 10,000); the
collectives are the algorithms above, with this machine's alpha and beta; and without
``shared``, no waiting for stragglers and no sharing of a machine's cores (the 2015
report's cluster: one process per EC2 instance).
"""

from __future__ import annotations

import math

import numpy as np

from .. import SaeError, h5io
from ..objective import Sums, n_params
from ..slices import Slices, row_length
from .scaling import LOOP, by_point

DOUBLE = 8  # bytes of one value in the collectives' buffers (float64)
LONG_MESSAGE = 512 * 1024  # bytes from which MPICH's allgather and reduce-scatter take p - 1 steps


def tree_steps(p):
    """ceil(log2 p): the steps of recursive doubling or halving over p ranks (0 for p = 1)."""
    p = np.asarray(p, dtype=np.float64)
    return np.ceil(np.log2(np.maximum(p, 1.0)))


def steps(p, nbytes):
    """Steps of one allgather or reduce-scatter of ``nbytes`` in all over p ranks (MPICH's choice)."""
    p = np.asarray(p, dtype=np.float64)
    return np.where(np.asarray(nbytes) < LONG_MESSAGE, tree_steps(p), p - 1.0)


def busiest_rows(n, p, block_size: int):
    """Rows of the busiest rank when n rows are dealt out to p ranks in whole blocks."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    blocks = np.ceil(n / block_size)
    return np.minimum(n, block_size * np.ceil(blocks / p))


def _fit_relative(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares minimizing the relative error of ``design @ x`` to ``target``."""
    # Imported here: every Snakemake run imports this module (the report's labels, sae.labels),
    # and scipy.optimize takes most of a second to import.
    from scipy.optimize import nnls

    scale = 1.0 / np.maximum(np.abs(target), 1e-300)
    x, _ = nnls(design * scale[:, None], target * scale)
    return x


def comm_design(p, buffers_bytes) -> tuple[np.ndarray, np.ndarray]:
    """(steps, bytes received) of one evaluation's collectives: the alpha and beta columns."""
    p = np.asarray(p, dtype=np.float64)
    total_steps = sum(steps(p, b) for b in buffers_bytes)
    received = (p - 1.0) / np.maximum(p, 1.0) * sum(np.asarray(b, dtype=np.float64) for b in buffers_bytes)
    return total_steps, received


def fit_collectives(bench: list[dict]) -> tuple[float, float]:
    """(alpha seconds, beta seconds/byte) of the collectives benchmark's rows on p > 1 ranks.

    bench: rows of COLLECTIVE_COLUMNS. Returns (0, 0) without a multi-process measurement.
    """
    rows = [r for r in bench if r["ranks"] > 1]
    if not rows:
        return 0.0, 0.0
    p = [r["ranks"] for r in rows]
    columns = ("point_doubles", "sums_doubles", "rows_doubles")
    buffers_bytes = [np.array([DOUBLE * r[k] for r in rows], dtype=np.float64) for k in columns]
    design = np.column_stack(comm_design(p, buffers_bytes))
    alpha, beta = _fit_relative(design, np.array([r["seconds"] for r in rows]))
    return float(alpha), float(beta)


def fit_optimizer(rows: list[dict]) -> tuple[float, float]:
    """(t_1 seconds, t_e seconds per value) of the optimizer benchmark's rows (sae.sweep.optimizer)."""
    if not rows:
        raise SaeError("no optimizer benchmark rows")
    values = np.array([r["values"] for r in rows], dtype=np.float64)
    fixed, per_value = _fit_relative(
        np.column_stack([np.ones_like(values), values]), np.array([r["seconds"] for r in rows])
    )
    return float(fixed), float(per_value)


def _vectorized(fn, hidden):
    return np.vectorize(lambda h: fn(int(h)), otypes=[np.float64])(hidden)


def parameters(side: int, hidden) -> np.ndarray:
    """P, the model's parameter count (W1, W2, b1, b2) for v = side**2 inputs and ``hidden`` units."""
    return _vectorized(lambda h: n_params(side * side, h), hidden)


def buffer_bytes(side: int, hidden, p) -> list[np.ndarray]:
    """B of one evaluation's three buffers on p ranks: the point, the sums, the per-slice rows."""
    v = side * side

    def sizes(h):
        slices, sums = Slices(n_params(v, h)), Sums(v, h)
        return slices.padded, sums.position(slices.size), sums.global_index().size, slices.count

    padded, totals, glob, count = (_vectorized(lambda h, i=i: sizes(h)[i], hidden) for i in range(4))
    p = np.asarray(p, dtype=np.float64)
    return [
        DOUBLE * padded * np.ones_like(p),
        DOUBLE * (totals + p * glob),
        DOUBLE * (count + p) * row_length(),
    ]


def optimizer_values(side: int, hidden, p) -> np.ndarray:
    """e(p, h): the values of the busiest rank's slices."""
    v = side * side
    count = _vectorized(lambda h: Slices(n_params(v, h)).count, hidden)
    length = _vectorized(lambda h: Slices(n_params(v, h)).length, hidden)
    return np.ceil(count / np.asarray(p, dtype=np.float64)) * length


def _unique(runs: list[dict], key: str) -> int:
    values = {r[key] for r in runs}
    if len(values) != 1:
        raise SaeError(f"runs with different {key} {sorted(values)}")
    return int(values.pop())


def fastest(runs: list[dict]) -> list[dict]:
    """The fastest run (loop seconds of the slowest rank) of each point (hidden, samples, ranks)."""
    return [min(repeats, key=lambda r: r[LOOP]) for repeats in by_point(runs).values()]


def fit_model(runs: list[dict], bench: list[dict], optimizer: list[dict]) -> dict:
    """Fit the performance model (see the module docstring) to the timed runs (the fastest of
    each point's repeats) and the two benchmarks.

    Returns plain numbers (JSON-ready); ``evaluations`` maps str(hidden) to the median E.
    """
    runs = fastest(runs)
    block, side = _unique(runs, "block_size"), _unique(runs, "side")
    single = [r for r in runs if r["ranks"] == 1]
    if not single:
        raise SaeError("no single-process runs: the model's compute is fitted to them")
    n = np.array([r["samples"] for r in single], dtype=np.float64)
    e = np.array([r["evaluations"] for r in single], dtype=np.float64)
    size = parameters(side, [r["hidden"] for r in single])
    ones = np.ones_like(n)
    compute = np.array([r[h5io.timing_attr("compute", "max")] for r in single]) / e
    c_param, c_patch, c0_param, c0 = _fit_relative(np.column_stack([n * size, n, size, ones]), compute)
    load = np.array([r[h5io.timing_attr("load", "max")] for r in single])
    load1, load0 = _fit_relative(np.column_stack([n, ones]), load)
    alpha, beta = fit_collectives(bench)
    opt_fixed, opt_value = fit_optimizer(optimizer)
    hidden = sorted({int(r["hidden"]) for r in runs})
    fit = {
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
        "optimizer_fixed": opt_fixed,
        "optimizer_per_value": opt_value,
        "load_per_patch": float(load1),
        "load_fixed": float(load0),
        "alpha": alpha,
        "beta": beta,
        "benchmark_ranks": sorted({int(r["ranks"]) for r in bench}),
        "sharing": 0.0,
    }
    fit["sharing"] = _fit_sharing(fit, [r for r in runs if r["ranks"] > 1])
    return fit


def _fit_sharing(model: dict, runs: list[dict]) -> float:
    """omega: how much longer the multi-rank runs' compute and optimizer took than the model
    without sharing says, as a fraction (their loop = communication + (1 + omega) (compute +
    optimizer)); 0 without such runs."""
    if not runs:
        return 0.0
    parts = [predict(model, r["ranks"], r["samples"], r["hidden"], r["evaluations"]) for r in runs]
    own = np.array([float(x["compute"] + x["optimizer"]) for x in parts])
    rest = np.array([r[LOOP] - float(x["communication"]) for r, x in zip(runs, parts, strict=True)])
    (factor,) = _fit_relative(own[:, None], rest)
    return max(float(factor) - 1.0, 0.0)


def comm_time(model: dict, p, hidden):
    """Seconds of one evaluation's three collectives on p ranks for a model of ``hidden`` units."""
    total_steps, received = comm_design(p, buffer_bytes(model["side"], hidden, p))
    return total_steps * model["alpha"] + received * model["beta"]


def per_evaluation(model: dict, hidden, p=1) -> dict:
    """The model's terms at ``hidden`` units on p ranks: c (per patch), c0, t_comm, t_opt
    (seconds per evaluation) and the bytes of the three buffers."""
    size = parameters(model["side"], hidden)
    values = optimizer_values(model["side"], hidden, p)
    return {
        "compute_per_patch": model["compute_per_patch_param"] * size + model["compute_per_patch"],
        "compute_fixed": model["compute_fixed_param"] * size + model["compute_fixed"],
        "communication": comm_time(model, p, hidden),
        "optimizer": model["optimizer_fixed"] + model["optimizer_per_value"] * values,
        "buffer_bytes": sum(buffer_bytes(model["side"], hidden, p)),
    }


def predict(model: dict, p, n, hidden, evaluations=None, shared: bool = False) -> dict:
    """Predicted seconds of one run on p ranks, n patches and ``hidden`` units, by part (arrays broadcast).

    evaluations: E, by default the median measured at ``hidden``; shared: the p > 1 ranks take
    every core of a machine (the sharing term). Returns load, compute, communication,
    optimizer, sharing, loop (the four) and total (load + loop).
    """
    e = (
        model["evaluations"][str(hidden)]
        if evaluations is None
        else np.asarray(evaluations, dtype=np.float64)
    )
    terms = per_evaluation(model, hidden, p)
    rows = busiest_rows(n, p, model["block_size"])
    parts = {
        "load": model["load_fixed"] + model["load_per_patch"] * rows,
        "compute": e * (terms["compute_fixed"] + terms["compute_per_patch"] * rows),
        "communication": e * terms["communication"] * np.ones_like(rows),
        "optimizer": e * terms["optimizer"] * np.ones_like(rows),
    }
    many = (np.asarray(p) > 1) & shared
    parts["sharing"] = model["sharing"] * many * (parts["compute"] + parts["optimizer"])
    parts["loop"] = parts["compute"] + parts["communication"] + parts["optimizer"] + parts["sharing"]
    parts["total"] = parts["load"] + parts["loop"]
    return parts


def predicted_speedup(model: dict, p, n, hidden, shared: bool = False):
    """(speedup, efficiency) the model predicts on p ranks, n patches and ``hidden`` units."""
    p = np.asarray(p, dtype=np.float64)
    t1 = predict(model, 1, n, hidden)["total"]
    tp = predict(model, p, n, hidden, shared=shared)["total"]
    return t1 / tp, t1 / tp / p


def validation(model: dict, runs: list[dict]) -> list[dict]:
    """Measured against predicted loop seconds at every measured point (its fastest run), with the
    sharing the sweep's machine had."""
    out = []
    for run in fastest(runs):
        h, n, p = run["hidden"], run["samples"], run["ranks"]
        predicted = float(predict(model, p, n, h, run["evaluations"], shared=True)["loop"])
        out.append(
            {
                "hidden": h,
                "samples": n,
                "ranks": p,
                "measured_loop_seconds": run[LOOP],
                "predicted_loop_seconds": predicted,
                "relative_error": predicted / run[LOOP] - 1.0,
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
