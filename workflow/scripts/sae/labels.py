"""What the Snakemake report says about each output: labels read from the run's own files.

`snakemake --report` shows an output's labels as a table row, and the caption
templates (workflow/report/*.rst) quote them, so every number a caption states
comes from the files of the run it describes. Each function returns a dict of
strings (the report app sorts and prints them as text).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import curve, h5io
from .sweep import model as sweep_model
from .sweep import records, scaling


def _n(n: int) -> str:
    return f"{n:,}"


def training(model_path) -> dict:
    """The training curve: final cost, iterations, evaluations, ranks, loop seconds, resume."""
    s = curve.summary(*h5io.read_history(model_path))
    return {
        "cost": f"{s['cost']:.6f}",
        "iterations": str(s["iterations"]),
        "evaluations": str(s["evaluations"]),
        "ranks": str(s["ranks"]),
        "loop": f"{s['loop_seconds']:.2f} s",
        "resumed": f"after {curve.resumes_text(s['resumes'])}" if s["resumes"] else "no",
    }


def filters(model_path) -> dict:
    """The learned filters: how many, their size, the model's final cost."""
    params, attrs = h5io.read_model(model_path)
    side = int(attrs["side"])
    return {
        "features": str(len(params["W1"])),
        "patch": f"{side} × {side} px",  # noqa: RUF001
        "cost": f"{float(attrs['cost']):.6f}",
    }


def _problem(h: int, n: int) -> str:
    return f"h = {h}, N = {_n(n)}"


def _by_problem(points, key, unit="") -> str:
    """'value on P ranks (h = hidden, N = n), ...' at the largest rank count of each model and size."""
    parts = []
    for h, n in sorted({(r["hidden"], r["samples"]) for r in points}):
        best = max((r for r in points if (r["hidden"], r["samples"]) == (h, n)), key=lambda r: r["ranks"])
        parts.append(f"{best[key]:.2f}{unit} on {best['ranks']} ranks ({_problem(h, n)})")
    return ", ".join(parts)


def speedup(scaling_csv) -> dict:
    points = records.read_csv(scaling_csv, scaling.SCALING_COLUMNS)
    return {"figure": "speedup", "measured": _by_problem(points, "speedup", "×")}  # noqa: RUF001


def efficiency(scaling_csv) -> dict:
    points = records.read_csv(scaling_csv, scaling.SCALING_COLUMNS)
    return {"figure": "efficiency", "measured": _by_problem(points, "efficiency")}


def breakdown(runtimes_csv) -> dict:
    """Shares of the loop on the largest rank count at the largest model and size."""
    parts = scaling.breakdown(records.read_csv(runtimes_csv, records.RUN_COLUMNS))
    last = max(parts, key=lambda r: (r["hidden"], r["samples"], r["ranks"]))
    shares = " / ".join(f"{100 * last[f'{k}_share']:.1f}%" for k in scaling.BREAKDOWN_PARTS)
    return {
        "figure": "where the loop time goes",
        "measured": f"{' / '.join(scaling.BREAKDOWN_PARTS)}: {shares} on {last['ranks']} ranks"
        f" ({_problem(last['hidden'], last['samples'])})",
    }


def model(model_json) -> dict:
    """The fitted performance model at its largest model size, its worst validation error, and its
    predictions there (but the last: the model plot's far corner)."""
    fit = json.loads(Path(model_json).read_text())
    m, checks = fit["model"], fit["validation"]
    h = max(m["hidden"])
    terms = sweep_model.per_evaluation(m, h, 1)
    worst = max((abs(c["relative_error"]) for c in checks), default=0.0)
    text = (
        f"at h = {h}: c = {1e9 * terms['compute_per_patch']:.0f} ns per patch and evaluation,"
        f" t_opt = {1e6 * terms['optimizer']:.0f} µs on one rank; α = {1e6 * m['alpha']:.2f} µs,"  # noqa: RUF001
        f" β = {1e9 * m['beta']:.3f} ns/byte, sharing ω = {m['sharing']:.2f};"
        f" measured loops within ±{100 * worst:.1f}%"
    )
    said = [
        f"{r['speedup']:.1f} on {_n(r['ranks'])} ranks ({_problem(r['hidden'], r['samples'])})"
        for r in [r for r in fit.get("predictions", []) if r["hidden"] == h][:-1]
    ]
    if said:
        text += "; predicted speedup, a core per rank: " + ", ".join(said)
    return {"figure": "performance model", "measured": text}
