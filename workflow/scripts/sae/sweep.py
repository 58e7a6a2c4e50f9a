"""The scaling sweep: run records, the runtime table, speedup, efficiency, a performance model.

One timed training run is a model.h5 written by train_model.py (named by
``run_name``); its timing attributes become one row of runtimes.csv. From
the rows come the report's runtime table (median optimization-loop seconds,
processes x training size), speedup S(p, N) = T(1, N) / T(p, N), efficiency
S / p, and the split of the loop into compute, communication and optimizer.

The performance model predicts the time of one training run on p ranks and N
patches,

    T(p, N) = load(p, N) + E * (c * n(p, N) + c0 + t_comm(p) + t_opt),

with n(p, N) the rows of the busiest rank (whole blocks), c the compute cost
per patch and evaluation and c0 its fixed part, t_opt the optimizer's time
per evaluation on rank 0, E the evaluations (independent of p: the model is
rank-invariant) and, for the Bcast of the parameters and the Reduce of the
sums as binomial trees of ceil(log2 p) steps of latency alpha and inverse
bandwidth beta,

    t_comm(p) = ceil(log2 p) * (2 alpha + beta * (bcast bytes + reduce bytes)).

c, c0 and t_opt come from the timed runs, the load terms from the
single-process runs (on more ranks the measured load also holds the ranks'
start-up skew), alpha and beta from the collectives microbenchmark
(parallel.time_collectives) at the rank counts of the sweep.

Everything here is plain functions on lists of dicts and numpy arrays; files
are written through h5io.atomic_path.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from . import SaeError, h5io

# Columns of runtimes.csv: one row per ranks x samples x repeat.
RUN_COLUMNS = (
    "ranks",
    "samples",
    "repeat",
    "evaluations",
    "iterations",
    "block_size",
    "precision",
    "cost",
    h5io.WALL_SECONDS,
    *h5io.RANK_TIMING_ATTRS,
    h5io.OPTIMIZER_SECONDS,
)
# Columns of a collectives benchmark file: one row per buffer scale.
COLLECTIVE_COLUMNS = ("ranks", "scale", "reduce_doubles", "bcast_doubles", "bytes", "seconds", "seconds_min")
# Columns of scaling.csv: one row per ranks x samples, medians over the repeats.
SCALING_COLUMNS = (
    "samples",
    "ranks",
    "runs",
    "evaluations",
    "loop_seconds",
    "loop_seconds_min",
    "loop_seconds_max",
    "speedup",
    "efficiency",
)
INTEGER_COLUMNS = {"ranks", "samples", "repeat", "evaluations", "iterations", "block_size", "runs"}
TEXT_COLUMNS = {"precision"}
OPTIONAL_ATTRS = {"precision": ""}
# The seconds the table, speedup and efficiency are about: the optimization loop (the slowest rank).
LOOP = h5io.timing_attr("loop", "max")
DOUBLE = 8  # bytes

RUN_NAME = "p{ranks}_n{samples}_r{repeat}.h5"
_RUN_NAME = re.compile(r"p(\d+)_n(\d+)_r(\d+)\.h5")


# --- Runs and CSV files --------------------------------------------------------------------------


def parse_run_name(path) -> tuple[int, int, int]:
    """(ranks, samples, repeat) from a run file named like RUN_NAME."""
    match = _RUN_NAME.fullmatch(Path(path).name)
    if not match:
        raise SaeError(f"{path}: not a sweep run file (expected a name like p2_n10000_r1.h5)")
    return tuple(int(g) for g in match.groups())


def _typed(name: str, value):
    """A column's value as its type: int, str (HDF5 may give bytes) or float."""
    if name in INTEGER_COLUMNS:
        return int(value)
    if name in TEXT_COLUMNS:
        return value.decode() if isinstance(value, bytes) else str(value)
    return float(value)


def run_record(attrs: dict, repeat: int, where="model") -> dict:
    """One runtimes.csv row from a model file's attributes."""
    row = {"repeat": int(repeat)}
    for name in RUN_COLUMNS:
        if name == "repeat":
            continue
        if name not in attrs:
            if name in OPTIONAL_ATTRS:
                row[name] = OPTIONAL_ATTRS[name]
                continue
            raise SaeError(f"{where}: attribute {name!r} missing (not written by train_model.py?)")
        row[name] = _typed(name, attrs[name])
    return row


def read_run(path) -> dict:
    """The runtimes.csv row of one timed run, checked against the file's name."""
    ranks, samples, repeat = parse_run_name(path)
    _, attrs = h5io.read_model(path)
    row = run_record(attrs, repeat, path)
    if (row["ranks"], row["samples"]) != (ranks, samples):
        raise SaeError(
            f"{path}: trained on {row['ranks']} ranks and {row['samples']} samples, "
            f"the name says {ranks} and {samples}"
        )
    return row


def sort_runs(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["samples"], r["ranks"], r["repeat"]))


def _text(value) -> str:
    """A CSV cell: floats in full precision (repr), numpy scalars as plain numbers."""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def write_csv(path, rows: list[dict], columns) -> None:
    """A CSV file with a header line; floats written with full precision (repr)."""
    with h5io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row[c]) for c in columns])


def read_csv(path, columns) -> list[dict]:
    """Rows of a CSV file written by write_csv; ``columns`` must all be there."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise SaeError(f"{path}: missing columns {', '.join(missing)}")
            rows = [{name: _typed(name, line[name]) for name in reader.fieldnames} for line in reader]
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except ValueError as err:
        raise SaeError(f"{path}: not a number in the table ({err})") from None
    if not rows:
        raise SaeError(f"{path}: no rows")
    return rows


def write_json(path, data: dict) -> None:
    with h5io.atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n")


# --- Table, speedup, efficiency, breakdown ---------------------------------------------------------


def grid(rows: list[dict]) -> tuple[list[int], list[int]]:
    """The sorted rank counts and training sizes present in ``rows``."""
    return sorted({r["ranks"] for r in rows}), sorted({r["samples"] for r in rows})


def _points(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        out.setdefault((r["ranks"], r["samples"]), []).append(r)
    return out


def median_table(rows: list[dict], key=LOOP):
    """(ranks, sizes, medians[ranks, sizes]) of ``key`` over the repeats; NaN where not run."""
    ranks, sizes = grid(rows)
    points = _points(rows)
    table = np.full((len(ranks), len(sizes)), np.nan)
    for i, p in enumerate(ranks):
        for j, n in enumerate(sizes):
            if (p, n) in points:
                table[i, j] = np.median([r[key] for r in points[p, n]])
    return ranks, sizes, table


def evaluations_by_size(rows: list[dict]) -> dict[int, list[int]]:
    """The distinct evaluation counts of each training size over all ranks and repeats.

    One value per size is what a rank-invariant model gives.
    """
    out: dict[int, set[int]] = {}
    for r in rows:
        out.setdefault(r["samples"], set()).add(r["evaluations"])
    return {n: sorted(v) for n, v in sorted(out.items())}


def scaling(rows: list[dict], key=LOOP) -> list[dict]:
    """Median seconds, speedup T(1, N) / T(p, N) and efficiency speedup / p of every point.

    The baseline is the median of the single-process runs of the same size.
    """
    points = _points(rows)
    out = []
    for n in grid(rows)[1]:
        if (1, n) not in points:
            raise SaeError(f"no single-process run of {n} samples: speedup needs ranks 1")
        base = float(np.median([r[key] for r in points[1, n]]))
        for p in sorted(q for q, m in points if m == n):
            seconds = [r[key] for r in points[p, n]]
            median = float(np.median(seconds))
            speedup = base / median
            out.append(
                {
                    "samples": n,
                    "ranks": p,
                    "runs": len(seconds),
                    "evaluations": int(np.median([r["evaluations"] for r in points[p, n]])),
                    "loop_seconds": median,
                    "loop_seconds_min": float(min(seconds)),
                    "loop_seconds_max": float(max(seconds)),
                    "speedup": speedup,
                    "efficiency": speedup / p,
                }
            )
    return out


def _thousands(n: int) -> str:
    return f"{n:,}"


def markdown_table(rows: list[dict], key=LOOP) -> str:
    """The report's Figure 3.1: median loop seconds, rows = processes, columns = training size."""
    ranks, sizes, table = median_table(rows, key)
    repeats = sorted({len(v) for v in _points(rows).values()})
    lines = [
        "| Processes / Training size | " + " | ".join(_thousands(n) for n in sizes) + " |",
        "|---:|" + "---:|" * len(sizes),
    ]
    for p, values in zip(ranks, table, strict=True):
        cells = ["—" if np.isnan(v) else f"{v:.2f} s" for v in values]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    evals = evaluations_by_size(rows)
    iterations = sorted({r["iterations"] for r in rows})
    same = all(len(v) == 1 for v in evals.values())
    counts = ", ".join(f"{_thousands(n)}: {'/'.join(str(e) for e in v)}" for n, v in evals.items())
    runs = "/".join(str(k) for k in repeats)
    lines += [
        "",
        f"Median optimization-loop seconds (slowest rank) of {runs} run{'s' if repeats != [1] else ''} "
        f"per point, {'/'.join(str(i) for i in iterations)} L-BFGS iterations. Evaluations per size "
        + (
            "(the same on every process count: the model is rank-invariant): "
            if same
            else "(DIFFER between process counts): "
        )
        + counts
        + ".",
    ]
    return "\n".join(lines) + "\n"


BREAKDOWN_PARTS = ("compute", "imbalance", "communication", "optimizer")


def breakdown(rows: list[dict]) -> list[dict]:
    """Where the loop time goes, per point (medians over repeats, seconds per run).

    compute: mean over ranks of local compute; imbalance: slowest rank's compute
    minus the mean; optimizer: rank 0 outside collectives and compute;
    communication: the rest of the slowest rank's loop (collectives on the
    critical path, waiting included). The four add up to ``loop``.
    """
    out = []
    for (p, n), runs in sorted(_points(rows).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = {k: float(np.median([r[k] for r in runs])) for k in RUN_COLUMNS if k not in TEXT_COLUMNS}
        loop = med[LOOP]
        compute = med[h5io.timing_attr("compute", "mean")]
        imbalance = max(med[h5io.timing_attr("compute", "max")] - compute, 0.0)
        optimizer = max(med[h5io.OPTIMIZER_SECONDS], 0.0)
        communication = max(loop - compute - imbalance - optimizer, 0.0)
        parts = {"compute": compute, "imbalance": imbalance, "communication": communication}
        parts["optimizer"] = optimizer
        total = sum(parts.values())
        out.append(
            {
                "ranks": p,
                "samples": n,
                "loop": loop,
                **parts,
                **{f"{k}_share": v / total if total > 0 else 0.0 for k, v in parts.items()},
            }
        )
    return out


# --- Performance model ---------------------------------------------------------------------------


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


# --- Figures ---------------------------------------------------------------------------------------

DPI = 150


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.fontsize": 9.5,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _save(fig, path) -> None:
    with h5io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def _size_colors(plt, sizes):
    cmap = plt.get_cmap("viridis")
    return {n: cmap(0.88 * i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}


MARKERS = "osD^vP*Xph"


def _rank_axis(ax, ranks) -> None:
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(p) for p in ranks])
    ax.set_xlim(0.5 if max(ranks) <= 4 else 0, max(ranks) + (0.5 if max(ranks) <= 4 else 1))
    ax.set_xlabel("Processes p")


def plot_scaling(points: list[dict], path, what: str) -> None:
    """speedup.png or efficiency.png: one line per training size, the ideal drawn (``what``)."""
    plt = _pyplot()
    sizes = sorted({r["samples"] for r in points})
    ranks = sorted({r["ranks"] for r in points})
    colors = _size_colors(plt, sizes)
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    top = max(ranks)
    if what == "speedup":
        ax.plot([1, top], [1, top], "k--", lw=1.2, label="ideal (S = p)", zorder=1)
    else:
        ax.axhline(1.0, color="k", ls="--", lw=1.2, label="ideal (E = 1)", zorder=1)
    for i, n in enumerate(sizes):
        pts = sorted((r for r in points if r["samples"] == n), key=lambda r: r["ranks"])
        p = np.array([r["ranks"] for r in pts], dtype=np.float64)
        base = pts[0]["loop_seconds"] * pts[0]["speedup"]  # T(1, N)
        value = np.array([r[what] for r in pts])
        # Range over the repeats: the fastest and slowest run against the median T(1, N).
        low = base / np.array([r["loop_seconds_max"] for r in pts])
        high = base / np.array([r["loop_seconds_min"] for r in pts])
        if what == "efficiency":
            low, high = low / p, high / p
        ax.errorbar(
            p,
            value,
            yerr=[np.maximum(value - low, 0), np.maximum(high - value, 0)],
            color=colors[n],
            marker=MARKERS[i % len(MARKERS)],
            ms=6,
            lw=1.8,
            capsize=3,
            label=f"N = {_thousands(n)}",
            zorder=2,
        )
    _rank_axis(ax, ranks)
    if what == "speedup":
        ax.set_ylabel("Speedup  S = T(1, N) / T(p, N)")
        highest = max(max(r["loop_seconds"] * r["speedup"] / r["loop_seconds_min"] for r in points), top)
        ax.set_ylim(0, highest * 1.1 + 0.1)
        ax.set_title("Speedup of the optimization loop")
    else:
        ax.set_ylabel("Efficiency  E = S / p")
        highest = max(max(r["efficiency"] for r in points), 1.0)
        ax.set_ylim(0, max(1.15, highest * 1.08))
        ax.set_title("Parallel efficiency of the optimization loop")
    ax.legend(title="Training size", loc="upper left" if what == "speedup" else "lower left")
    fig.text(
        0.99,
        -0.01,
        "medians of the repeats; bars: fastest to slowest run",
        ha="right",
        va="top",
        fontsize=8,
        color="0.4",
    )
    _save(fig, path)
    plt.close(fig)


BREAKDOWN_STYLE = {
    "compute": ("compute (mean over ranks)", "#4C72B0", None),
    "imbalance": ("load imbalance (slowest rank \u2212 mean)", "#8FAADC", "///"),
    "communication": ("communication (Bcast + Reduce, waiting)", "#DD8452", None),
    "optimizer": ("optimizer (L-BFGS on rank 0)", "#55A868", None),
}


def plot_breakdown(parts: list[dict], path) -> None:
    """breakdown.png: share of the loop time by part, per rank count, one panel per size."""
    plt = _pyplot()
    sizes = sorted({r["samples"] for r in parts})
    ranks = sorted({r["ranks"] for r in parts})
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(max(2.3 * len(sizes) + 1.8, 5.5), 4.4), sharey=True, squeeze=False
    )
    for ax, n in zip(axes[0], sizes, strict=True):
        pts = {r["ranks"]: r for r in parts if r["samples"] == n}
        x = np.arange(len(ranks))
        bottom = np.zeros(len(ranks))
        for key, (label, color, hatch) in BREAKDOWN_STYLE.items():
            share = np.array([100 * pts[p][f"{key}_share"] if p in pts else 0.0 for p in ranks])
            ax.bar(
                x, share, 0.7, bottom=bottom, color=color, hatch=hatch, edgecolor="white", lw=0.6, label=label
            )
            bottom += share
        for xi, p in zip(x, ranks, strict=True):
            if p in pts:
                ax.text(xi, 101.5, f"{pts[p]['loop']:.2f} s", ha="center", va="bottom", fontsize=8.5)
        ax.set_xticks(x)
        ax.set_xticklabels([str(p) for p in ranks])
        ax.set_xlabel("Processes p")
        ax.set_title(f"N = {_thousands(n)}", pad=16)
        ax.set_ylim(0, 100)
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("Share of the loop time (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle("Where the optimization loop's time goes (medians; total above each bar)", y=1.0)
    fig.tight_layout(rect=(0, 0.12, 1, 0.97))
    _save(fig, path)
    plt.close(fig)


def _si(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if abs(seconds) >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-12:.3g} ps"


def _size_label(n: int) -> str:
    """N = 10,000, or N = 10^6 as mathtext for powers of ten from 100,000 on."""
    exponent = round(math.log10(n))
    if n >= 100_000 and 10**exponent == n:
        return f"N = $10^{{{exponent}}}$"
    return f"N = {_thousands(n)}"


def plot_model(model: dict, runs: list[dict], path, max_ranks: int = 1024, max_samples: float = 1e8) -> None:
    """model.png: predicted speedup and efficiency up to max_ranks and max_samples, measured points."""
    plt = _pyplot()
    measured_sizes = sorted({r["samples"] for r in runs})
    sizes = model_sizes(measured_sizes, max_samples)
    colors = _size_colors(plt, sizes)
    # Powers of two: where the tree of ceil(log2 p) steps is full.
    p = 2.0 ** np.arange(int(math.log2(max_ranks)) + 1)
    measured = scaling(runs)
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11.5, 4.8))
    ax_s.plot([1, max_ranks], [1, max_ranks], "k--", lw=1.2, label="ideal")
    ax_e.axhline(1.0, color="k", ls="--", lw=1.2, label="ideal")
    for n in sizes:
        s, e = predicted_speedup(model, p, n)
        style = {"color": colors[n], "lw": 1.8, "ls": "-" if n in measured_sizes else "-."}
        ax_s.plot(p, s, label=_size_label(n), **style)
        ax_e.plot(p, e, **style)
    for i, n in enumerate(measured_sizes):
        pts = [r for r in measured if r["samples"] == n]
        q = np.array([r["ranks"] for r in pts], dtype=np.float64)
        marker = {"marker": MARKERS[i % len(MARKERS)], "ms": 7, "mec": "k", "mew": 0.8, "ls": "none"}
        ax_s.plot(q, [r["speedup"] for r in pts], color=colors[n], **marker)
        ax_e.plot(q, [r["efficiency"] for r in pts], color=colors[n], **marker)
    ticks = [2**k for k in range(0, int(math.log2(max_ranks)) + 1, 1 if max_ranks <= 64 else 2)]
    for ax in (ax_s, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlim(0.85, max_ranks * 1.18)
        ax.set_xlabel("Processes p")
    ax_s.set_yscale("log", base=2)
    ax_s.set_yticks(ticks)
    ax_s.set_yticklabels([str(t) for t in ticks])
    ax_s.set_ylim(0.8, max_ranks * 1.2)
    ax_s.set_ylabel("Speedup  T(1, N) / T(p, N)")
    ax_s.set_title("Predicted speedup (lines) and measured (markers)")
    ax_e.set_ylim(0, 1.1)
    ax_e.set_ylabel("Efficiency  speedup / p")
    ax_e.set_title("Predicted efficiency (lines) and measured (markers)")
    ax_s.plot([], [], "o", color="0.6", mec="k", mew=0.8, ms=7, label="measured (markers)")
    ax_s.legend(title="Training size", loc="upper left", ncol=1)
    text = "\n".join(
        [
            r"Model: $T(p, N) = \mathrm{load} + E\,\left(c\,n + c_0"
            r" + \lceil \log_2 p \rceil\,(2\alpha + \beta m) + t_\mathrm{opt}\right)$"
            r", $n$ = rows of the busiest rank (whole blocks of "
            f"{model['block_size']}).",
            f"Fitted: $c$ = {_si(model['compute_per_patch'])} per patch, "
            f"$c_0$ = {_si(model['compute_fixed'])}, "
            f"$t_\\mathrm{{opt}}$ = {_si(model['optimizer'])}, $E$ = {model['evaluations']:.0f}, "
            f"load = {_si(model['load_fixed'])} + {_si(model['load_per_patch'])} $\\times n$;",
            f"$\\alpha$ = {_si(model['alpha'])}, $\\beta$ = {model['beta'] * 1e9:.3g} ns/byte, "
            f"$m$ = {model['buffer_bytes'] / 1024:.1f} KiB (Bcast + Reduce; measured on "
            f"{', '.join(str(r) for r in model['benchmark_ranks'])} ranks of this machine). "
            "Markers: measured speedup of the optimization loop (speedup.png).",
        ]
    )
    fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=8.5, color="0.25", wrap=True)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
