"""The training curve: cost and gradient norm against iteration, from model.h5's history.

Row i of the history is iteration i + 1 (columns cost, grad_norm, seconds). A
resumed run's history holds the iterations before the resume too; the model's
attribute ``resumed_from`` lists the iterations each resume started after, oldest
first (empty: never interrupted; a single number in model files written before the
list, 0 meaning not resumed).
"""

from __future__ import annotations

import numpy as np

from . import SaeError
from .h5io import atomic_path

DPI = 150


def summary(history: np.ndarray, attrs: dict) -> dict:
    """The numbers a figure or report states about one training run."""
    if len(history) == 0:
        raise SaeError("the model's history is empty: no iteration to draw")
    return {
        "cost": float(attrs["cost"]),
        "first_cost": float(history[0, 0]),
        "grad_norm": float(history[-1, 1]),
        "iterations": int(attrs["iterations"]),
        "max_iterations": int(attrs.get("max_iterations", attrs["iterations"])),
        "evaluations": int(attrs["evaluations"]),
        "ranks": int(attrs["ranks"]),
        "loop_seconds": float(attrs["train_seconds"]),
        "resumes": resumes(attrs.get("resumed_from", [])),
    }


def resumes(value) -> list[int]:
    """The resume iterations from a model's ``resumed_from`` attribute (list, or an older scalar)."""
    if np.ndim(value) == 0:
        return [int(value)] if int(value) else []
    return [int(k) for k in value]


def resumes_text(iterations: list[int]) -> str:
    """'iteration 17', 'iterations 60 and 150', 'iterations 5, 60 and 150'."""
    numbers = [str(k) for k in iterations]
    if len(numbers) == 1:
        return f"iteration {numbers[0]}"
    return f"iterations {', '.join(numbers[:-1])} and {numbers[-1]}"


def describe(s: dict) -> str:
    """One line: final cost, iterations, evaluations, ranks, loop seconds, and the resume if any."""
    text = (
        f"final cost {s['cost']:.6f} after {s['iterations']} iterations, {s['evaluations']} evaluations; "
        f"{s['ranks']} rank{'s' if s['ranks'] != 1 else ''}, loop {s['loop_seconds']:.2f} s"
    )
    if s["resumes"]:
        text += f" (since the resume after iteration {s['resumes'][-1]})"
    return text


def plot(history: np.ndarray, s: dict, path) -> None:
    """training.png: cost (top) and gradient norm (bottom) on log scales against iteration.

    From 40 iterations on, an inset draws the cost after the first 5% of the
    iterations on a linear scale. A resumed run has a dashed line after each iteration it was
    resumed from; the title is describe(s).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iteration = np.arange(1, len(history) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 5.6), sharex=True)
    top.plot(iteration, history[:, 0], color="#4C72B0", lw=1.6)
    top.plot(iteration[-1], history[-1, 0], "o", color="#4C72B0", ms=5)
    top.annotate(
        f"{s['cost']:.4f}",
        (iteration[-1], history[-1, 0]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="right",
        fontsize=9,
    )
    top.set_ylabel("cost J")
    first = len(history) // 20  # the slow descent after the first drop, on a linear scale
    if len(history) >= 40:
        inset = top.inset_axes((0.4, 0.36, 0.58, 0.5))
        inset.plot(iteration[first:], history[first:, 0], color="#4C72B0", lw=1.2)
        inset.tick_params(labelsize=7.5)
        inset.set_title(f"from iteration {first + 1}, linear scale", fontsize=8)
        inset.grid(True, alpha=0.3)
        for k in s["resumes"]:
            if k > first:
                inset.axvline(k + 0.5, color="0.3", ls="--", lw=1.0)
    bottom.plot(iteration, history[:, 1], color="#DD8452", lw=1.2)
    bottom.set_ylabel("gradient norm |∇J|")
    bottom.set_xlabel("L-BFGS iteration")
    for ax in (top, bottom):
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        for k in s["resumes"]:
            ax.axvline(k + 0.5, color="0.3", ls="--", lw=1.1)
    if s["resumes"]:
        bottom.text(  # lower left, inside the panel, where a falling gradient norm leaves room
            0.015,
            0.04,
            f"dashed: resumed from {resumes_text(s['resumes'])}",
            transform=bottom.transAxes,
            fontsize=9,
            color="0.3",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5},
        )
    top.set_xlim(0, max(len(history), 1) + 1)
    fig.suptitle("Training: cost and gradient norm per iteration", fontsize=12)
    top.set_title(describe(s).replace("; ", "\n"), fontsize=8.5, color="0.25")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
