"""Figures of the sweep: speedup, efficiency, the loop's breakdown, and the model's predictions.

The only module of the package that imports matplotlib (lazily, with the Agg backend).
Each figure is written through h5io.atomic_path.
"""

from __future__ import annotations

import math

import numpy as np

from .. import h5io
from .model import model_sizes, parameters, per_evaluation, predicted_speedup
from .scaling import scaling, thousands

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


LINES = ("-", "--", ":", "-.")  # one per hidden size


def _hidden_label(h: int, hiddens) -> str:
    return f", h = {h}" if len(hiddens) > 1 else ""


def plot_scaling(points: list[dict], path, what: str) -> None:
    """speedup.png or efficiency.png (``what``): the ideal, and one line per training size
    (colour) and hidden size (line style and marker)."""
    plt = _pyplot()
    sizes = sorted({r["samples"] for r in points})
    hiddens = sorted({r["hidden"] for r in points})
    ranks = sorted({r["ranks"] for r in points})
    colors = _size_colors(plt, sizes)
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    top = max(ranks)
    if what == "speedup":
        ax.plot([1, top], [1, top], "k--", lw=1.2, label="ideal (S = p)", zorder=1)
    else:
        ax.axhline(1.0, color="k", ls="--", lw=1.2, label="ideal (E = 1)", zorder=1)
    for k, h, i, n in [(k, h, i, n) for k, h in enumerate(hiddens) for i, n in enumerate(sizes)]:
        pts = sorted((r for r in points if (r["hidden"], r["samples"]) == (h, n)), key=lambda r: r["ranks"])
        if not pts:
            continue
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
            marker=MARKERS[(i if len(hiddens) == 1 else k) % len(MARKERS)],
            ls=LINES[k % len(LINES)],
            ms=6,
            lw=1.8,
            capsize=3,
            label=f"N = {thousands(n)}{_hidden_label(h, hiddens)}",
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
    title = "Training size" + (", hidden units" if len(hiddens) > 1 else "")
    ax.legend(title=title, loc="upper left" if what == "speedup" else "lower left", fontsize=8.5)
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
    "optimizer": ("optimizer (L-BFGS on each rank's slices)", "#55A868", None),
}


def plot_breakdown(parts: list[dict], path) -> None:
    """breakdown.png: share of the loop time by part, per rank count; one panel per training
    size (columns) and hidden size (rows)."""
    plt = _pyplot()
    sizes = sorted({r["samples"] for r in parts})
    hiddens = sorted({r["hidden"] for r in parts})
    ranks = sorted({r["ranks"] for r in parts})
    fig, axes = plt.subplots(
        len(hiddens),
        len(sizes),
        figsize=(max(2.3 * len(sizes) + 1.8, 5.5), 4.4 + 3.4 * (len(hiddens) - 1)),
        sharey=True,
        squeeze=False,
    )
    panels = [
        (ax, h, n) for row, h in zip(axes, hiddens, strict=True) for ax, n in zip(row, sizes, strict=True)
    ]
    for ax, h, n in panels:
        pts = {r["ranks"]: r for r in parts if (r["hidden"], r["samples"]) == (h, n)}
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
        ax.set_title(f"N = {thousands(n)}{_hidden_label(h, hiddens)}", pad=16)
        ax.set_ylim(0, 100)
        ax.grid(axis="x", visible=False)
    for row in axes:
        row[0].set_ylabel("Share of the loop time (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    bottom = 0.12 / len(hiddens)
    fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle("Where the optimization loop's time goes (medians; total above each bar)", y=1.0)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
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
    return f"N = {thousands(n)}"


def plot_model(model: dict, runs: list[dict], path, max_ranks: int = 1024, max_samples: float = 1e8) -> None:
    """model.png: predicted speedup and efficiency up to max_ranks and max_samples, and the
    measured points; one row of panels per hidden size."""
    plt = _pyplot()
    measured_sizes = sorted({r["samples"] for r in runs})
    hiddens = model["hidden"]
    sizes = model_sizes(measured_sizes, max_samples)
    colors = _size_colors(plt, sizes)
    # Powers of two: where the tree of ceil(log2 p) steps is full.
    p = 2.0 ** np.arange(int(math.log2(max_ranks)) + 1)
    measured = scaling(runs)
    fig, axes = plt.subplots(len(hiddens), 2, figsize=(11.5, 4.8 * len(hiddens)), squeeze=False)
    ticks = [2**k for k in range(0, int(math.log2(max_ranks)) + 1, 1 if max_ranks <= 64 else 2)]
    for (ax_s, ax_e), h in zip(axes, hiddens, strict=True):
        ax_s.plot([1, max_ranks], [1, max_ranks], "k--", lw=1.2, label="ideal")
        ax_e.axhline(1.0, color="k", ls="--", lw=1.2, label="ideal")
        for n in sizes:
            s, e = predicted_speedup(model, p, n, h)
            style = {"color": colors[n], "lw": 1.8, "ls": "-" if n in measured_sizes else "-."}
            ax_s.plot(p, s, label=_size_label(n), **style)
            ax_e.plot(p, e, **style)
        for i, n in enumerate(measured_sizes):
            pts = [r for r in measured if (r["hidden"], r["samples"]) == (h, n)]
            q = np.array([r["ranks"] for r in pts], dtype=np.float64)
            marker = {"marker": MARKERS[i % len(MARKERS)], "ms": 7, "mec": "k", "mew": 0.8, "ls": "none"}
            ax_s.plot(q, [r["speedup"] for r in pts], color=colors[n], **marker)
            ax_e.plot(q, [r["efficiency"] for r in pts], color=colors[n], **marker)
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
        ax_s.set_title(f"{h} hidden units: predicted speedup (lines), measured (markers)")
        measured_top = max((r["efficiency"] for r in measured if r["hidden"] == h), default=1.0)
        ax_e.set_ylim(0, max(1.1, 1.05 * measured_top))  # a noisy measurement stays in view
        ax_e.set_ylabel("Efficiency  speedup / p")
        ax_e.set_title(f"{h} hidden units: predicted efficiency (lines), measured (markers)")
        ax_s.plot([], [], "o", color="0.6", mec="k", mew=0.8, ms=7, label="measured (markers)")
        ax_s.legend(title="Training size", loc="upper left", ncol=1)
    fitted = []
    for h in hiddens:
        one, many = per_evaluation(model, h, 1), per_evaluation(model, h, 16)
        fitted.append(
            f"h = {h} ($P$ = {parameters(model['side'], h):.0f}): "
            f"$c$ = {_si(one['compute_per_patch'])} per patch, $c_0$ = {_si(one['compute_fixed'])}, "
            f"$t_\\mathrm{{opt}}$ = {_si(one['optimizer'])} (1 rank), {_si(many['optimizer'])} (16), "
            f"$t_\\mathrm{{comm}}$ = {_si(many['communication'])} (16), "
            f"$E$ = {model['evaluations'][str(h)]:.0f};"
        )
    text = "\n".join(
        [
            r"Model: $T(p, N) = \mathrm{load} + E\,\left(c\,n + c_0"
            r" + t_\mathrm{comm}(p) + t_\mathrm{opt}(e)\right)$"
            r", $n$ = rows of the busiest rank (whole blocks of "
            f"{model['block_size']}); $c$, $c_0$ linear in the parameter count $P$; "
            r"$t_\mathrm{comm}$: three collectives, $s(p)$ steps of $\alpha$ + $\beta$ per byte received; "
            r"$t_\mathrm{opt}$ linear in $e$, the values of the busiest rank's slices. Fitted:",
            *fitted,
            f"load = {_si(model['load_fixed'])} + {_si(model['load_per_patch'])} $\\times n$; "
            f"$\\alpha$ = {_si(model['alpha'])}, $\\beta$ = {model['beta'] * 1e9:.3g} ns/byte "
            f"(the collectives measured on {', '.join(str(r) for r in model['benchmark_ranks'])} ranks "
            "of this machine). "
            f"Lines: a core per rank. Ranks that take every core of a machine, as the measured ones "
            f"here, also wait $\\omega$ = {model['sharing']:.2f} times their compute and optimizer. "
            "Markers: measured speedup of the optimization loop (speedup.png).",
        ]
    )
    fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=8.5, color="0.25", wrap=True)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
