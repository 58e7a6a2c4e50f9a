"""Scaling: from run rows to the runtime table, speedup, efficiency and the loop's breakdown.

Everything is about the optimization loop of the slowest rank (LOOP). A point is
(hidden units h, training size N, ranks p); speedup S(p, N) = T(1, N) / T(p, N) at
the same h, with medians over the repeats, efficiency S / p, and the split of the
loop into compute, load imbalance, communication and the slowest rank's optimizer. Plain
functions on the row dicts of ``records``.
"""

from __future__ import annotations

import numpy as np

from .. import SaeError, h5io
from .records import RUN_COLUMNS, TEXT_COLUMNS

# The seconds the table, speedup and efficiency are about: the optimization loop (the slowest rank).
LOOP = h5io.timing_attr("loop", "max")
# Columns of scaling.csv: one row per hidden x samples x ranks, medians over the repeats.
SCALING_COLUMNS = (
    "hidden",
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


def grid(rows: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """The sorted rank counts, hidden sizes and training sizes present in ``rows``."""
    return tuple(sorted({r[key] for r in rows}) for key in ("ranks", "hidden", "samples"))


def by_point(rows: list[dict]) -> dict[tuple[int, int, int], list[dict]]:
    """The rows of each point (hidden, samples, ranks), in that order."""
    out: dict[tuple[int, int, int], list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["hidden"], r["samples"], r["ranks"])):
        out.setdefault((r["hidden"], r["samples"], r["ranks"]), []).append(r)
    return out


def median_table(rows: list[dict], hidden: int, key=LOOP):
    """(ranks, sizes, medians[ranks, sizes]) of ``key`` over the repeats at ``hidden``; NaN where not run."""
    ranks, _, sizes = grid(rows)
    points = by_point(rows)
    table = np.full((len(ranks), len(sizes)), np.nan)
    for i, p in enumerate(ranks):
        for j, n in enumerate(sizes):
            if (hidden, n, p) in points:
                table[i, j] = np.median([r[key] for r in points[hidden, n, p]])
    return ranks, sizes, table


def evaluations_by_problem(rows: list[dict]) -> dict[tuple[int, int], list[int]]:
    """The distinct evaluation counts of each (hidden, samples) over all ranks and repeats.

    One value per problem is what a rank-invariant model gives.
    """
    out: dict[tuple[int, int], set[int]] = {}
    for r in rows:
        out.setdefault((r["hidden"], r["samples"]), set()).add(r["evaluations"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def scaling(rows: list[dict], key=LOOP) -> list[dict]:
    """Median seconds, speedup T(1, N) / T(p, N) and efficiency speedup / p of every point.

    The baseline is the median of the single-process runs of the same hidden and training size.
    """
    points = by_point(rows)
    out = []
    for (h, n, p), runs in points.items():
        if (h, n, 1) not in points:
            raise SaeError(f"no single-process run of {h} hidden units, {n} samples: speedup needs ranks 1")
        base = float(np.median([r[key] for r in points[h, n, 1]]))
        seconds = [r[key] for r in runs]
        median = float(np.median(seconds))
        speedup = base / median
        out.append(
            {
                "hidden": h,
                "samples": n,
                "ranks": p,
                "runs": len(seconds),
                "evaluations": int(np.median([r["evaluations"] for r in runs])),
                "loop_seconds": median,
                "loop_seconds_min": float(min(seconds)),
                "loop_seconds_max": float(max(seconds)),
                "speedup": speedup,
                "efficiency": speedup / p,
            }
        )
    return out


def thousands(n: int) -> str:
    return f"{n:,}"


def markdown_table(rows: list[dict], key=LOOP) -> str:
    """The report's Figure 3.1: median loop seconds, rows = processes, columns = training size.

    One table per hidden size, headed by it when there are several.
    """
    _, hiddens, _ = grid(rows)
    lines = []
    for h in hiddens:
        ranks, sizes, table = median_table(rows, h, key)
        if len(hiddens) > 1:
            lines += [f"**{h} hidden units**", ""]
        lines += [
            "| Processes / Training size | " + " | ".join(thousands(n) for n in sizes) + " |",
            "|---:|" + "---:|" * len(sizes),
        ]
        for p, values in zip(ranks, table, strict=True):
            cells = ["—" if np.isnan(v) else f"{v:.2f} s" for v in values]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
    repeats = sorted({len(v) for v in by_point(rows).values()})
    evals = evaluations_by_problem(rows)
    iterations = sorted({r["iterations"] for r in rows})
    same = all(len(v) == 1 for v in evals.values())
    counts = ("; " if len(hiddens) > 1 else ", ").join(
        (f"{h} hidden, " if len(hiddens) > 1 else "") + f"{thousands(n)}: {'/'.join(str(e) for e in v)}"
        for (h, n), v in evals.items()
    )
    runs = "/".join(str(k) for k in repeats)
    lines += [
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
    minus the mean; optimizer: the slowest rank's optimizer step (every rank's loop outside
    collectives and compute);
    communication: the rest of the slowest rank's loop (collectives on the
    critical path, waiting included). The four add up to ``loop``.
    """
    out = []
    for (h, n, p), runs in by_point(rows).items():
        med = {k: float(np.median([r[k] for r in runs])) for k in RUN_COLUMNS if k not in TEXT_COLUMNS}
        loop = med[LOOP]
        compute = med[h5io.timing_attr("compute", "mean")]
        imbalance = max(med[h5io.timing_attr("compute", "max")] - compute, 0.0)
        optimizer = max(med[h5io.timing_attr("optimizer", "max")], 0.0)
        communication = max(loop - compute - imbalance - optimizer, 0.0)
        parts = {"compute": compute, "imbalance": imbalance, "communication": communication}
        parts["optimizer"] = optimizer
        total = sum(parts.values())
        out.append(
            {
                "hidden": h,
                "samples": n,
                "ranks": p,
                "loop": loop,
                **parts,
                **{f"{k}_share": v / total if total > 0 else 0.0 for k, v in parts.items()},
            }
        )
    return out
