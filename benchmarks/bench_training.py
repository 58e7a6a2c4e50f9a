"""Training speed and memory, measured side by side in one run; prints Markdown tables.

    python benchmarks/bench_training.py            # full (a few minutes on 2 cores)
    python benchmarks/bench_training.py --quick    # smaller sizes, for a smoke test
    python benchmarks/bench_training.py --only step,memory,mpi   # some tables only
    python benchmarks/bench_training.py --only against --against HEAD~1   # the optimizer of a git revision

Every ratio compares numbers measured in this same run on this machine:
1. per-evaluation time, one rank, against a whole-batch float64 transcription of
   Ng's vectorized equations (objective.reference, the baseline);
2. effective rate (16 kFLOP per patch per evaluation) against the single-core
   GEMM peak measured here in the same precision;
3. per-patch cost against N;
4. two ranks against one: optimization-loop speedup and communication share,
   at hidden 25 and 100;
7. rank 0's serial step per evaluation (gradient assembly and optimizer) of
   sae.lbfgs against scipy's L-BFGS-B, at hidden 25 and 100 and two N, and the
   final cost and step time of sae.lbfgs for several memories m;
8. (--against REV) the serial step of this work tree's sae.lbfgs against that of git
   revision REV, the two alternating evaluation by evaluation in one process;
5. `snakemake --cores 2 results/filters.png` from an empty results/;
6. peak RSS per rank against the shard's bytes;
and training streamed from HDF5 (train.memory_mb below the shard) against in memory,
plus the final cost in float32 against float64, and the share of an evaluation
spent in the product that the single-reduction scheme adds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import sae.one_blas_thread  # noqa: F401  (before numpy: one BLAS thread, as each rank has)

# isort: split
import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np
from common import REPO, same_model, train
from scipy.optimize import minimize

from sae import h5io, images, lbfgs, objective, patches
from sae.sweep import scaling
from sae.train import OPTIMIZER_SETTINGS as OPTIMIZER

FLOP_PER_PATCH = 16e3  # five 25 x 64 products, two FLOP per multiply-add
V, H = 64, 25
HYPER = (0.01, 1e-4, 3.0)
TABLES = ("kernel", "step", "memory", "mpi", "precision", "streaming", "workflow")


def best_seconds(fn, min_seconds=0.5, repeats=3):
    """Fastest mean time per call over ``repeats`` batches of about min_seconds each."""
    fn()
    start = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def gemm_peak(dtype) -> float:
    """Single-core GEMM rate in FLOP/s (square 1500 matrices)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((1500, 1500)).astype(dtype) for _ in range(2))
    out = np.empty_like(a)
    return 2 * 1500**3 / best_seconds(lambda: np.matmul(a, b, out=out))


def make_patches(path: Path, count: int) -> np.ndarray:
    """Whitened sample-image patches, normalized, written as the workflow would."""
    imgs = [img for img, _, _ in images.load("sample", whiten=True)]
    data, sigma = patches.sample(imgs, count, 8, seed=0)
    h5io.write_patches(path, count, 64, [data], {"seed": 0, "side": 8, "count": count, "sigma": sigma})
    return data


def kernel_table(x_all, sizes, block_size):
    peaks = {np.float64: gemm_peak(np.float64), np.float32: gemm_peak(np.float32)}
    theta = objective.initial_theta(V, H, np.random.default_rng(0))
    rows = []
    for n in sizes:
        x = x_all[:n].astype(np.float64)
        base = best_seconds(lambda x=x: objective.reference(theta, x, H, *HYPER))
        row = {"N": n, "baseline": base}
        for dtype in (np.float64, np.float32):
            kernel = objective.BlockKernel(V, H, block_size, dtype)
            blocks = objective.to_blocks(x, block_size, dtype)
            units = np.zeros(kernel.sums.size)

            def evaluation(kernel=kernel, blocks=blocks, units=units, n=n):
                kernel.set_params(theta, n, 1.0)
                units[:] = 0
                for b in blocks:
                    kernel.accumulate(b, units)

            row[dtype] = best_seconds(evaluation)
        rows.append(row)

    print(f"\nSingle-core GEMM peak: {peaks[np.float64] / 1e9:.1f} GFLOP/s float64, "
          f"{peaks[np.float32] / 1e9:.1f} GFLOP/s float32 (1500 x 1500, one thread)\n")  # fmt: skip
    print("| N | baseline ms/eval | float64 ms/eval | float32 ms/eval | speedup f64 / f32 vs baseline "
          "| % of GEMM peak f64 / f32 | ns per patch f64 / f32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        n, t64, t32, base = row["N"], row[np.float64], row[np.float32], row["baseline"]
        pct = [100 * FLOP_PER_PATCH * n / t / peaks[d] for t, d in ((t64, np.float64), (t32, np.float32))]
        times = f"| {n} | {base * 1e3:.2f} | {t64 * 1e3:.2f} | {t32 * 1e3:.2f} "
        print(f"{times}| {base / t64:.2f}x / {base / t32:.2f}x | {pct[0]:.0f}% / {pct[1]:.0f}% "
              f"| {t64 / n * 1e9:.0f} / {t32 / n * 1e9:.0f} |")  # fmt: skip
    first, last = rows[0], rows[-1]
    print(f"\nPer-patch cost, N = {last['N']} over N = {first['N']}: "
          f"float64 {last[np.float64] / last['N'] / (first[np.float64] / first['N']):.2f}x, "
          f"float32 {last[np.float32] / last['N'] / (first[np.float32] / first['N']):.2f}x, "
          f"baseline {last['baseline'] / last['N'] / (first['baseline'] / first['N']):.2f}x")  # fmt: skip
    extra_product_share(x_all[: sizes[0]], block_size, rows[0][np.float32])


def extra_product_share(x, block_size, eval_seconds):
    """Time of the product the single-reduction scheme adds (sum s' [x 1]^T)."""
    blocks = objective.to_blocks(x.astype(np.float64), block_size, np.float32)[0]
    s = np.random.default_rng(0).random((len(blocks), H, block_size), dtype=np.float32)
    out = np.empty((len(blocks), H, V + 1), dtype=np.float32)
    extra = best_seconds(lambda: np.matmul(s, blocks.transpose(0, 2, 1), out=out))
    print(f"\nThe single reduction's extra product (sum s' [x 1]^T) takes {100 * extra / eval_seconds:.0f}% "
          f"of a float32 evaluation at N = {len(x)}.")  # fmt: skip


def mpi_table(patches_path, points, iterations, repeats):
    """One rank against two, ``repeats`` runs of each, alternating; medians are compared.

    On a 2-core machine two ranks take every core, so anything else that runs
    (the launcher, the OS) delays them and not one rank: single runs vary by
    a few percent, as much as the effects measured here. Where two ranks'
    loop goes is split as the sweep's breakdown does (sae.sweep.scaling.breakdown).
    points: (hidden units, N) pairs.
    """
    print("\n| hidden | N | loop s, 1 rank | loop s, 2 ranks "
          "| speedup: medians (best runs; range over pairs) "
          "| 2 ranks, share of loop: compute / imbalance / communication / optimizer step "
          "| peak RSS per rank, MB (shard MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for hidden, n in points:
            runs = []
            for repeat in range(repeats):
                for ranks in (1, 2):
                    attrs = train(
                        patches_path, Path(tmp) / "m.h5", ranks, iterations, hidden, extra=["--samples", n]
                    )
                    runs.append({**attrs, "repeat": repeat})
            assert len({a["evaluations"] for a in runs}) == 1
            loop = {r: [a["loop_seconds_max"] for a in runs if a["ranks"] == r] for r in (1, 2)}
            median = {r: float(np.median(loop[r])) for r in loop}
            pairs = [a / b for a, b in zip(loop[1], loop[2], strict=True)]
            (parts,) = [b for b in scaling.breakdown(runs) if b["ranks"] == 2]
            shares = " / ".join(f"{100 * parts[f'{k}_share']:.1f}%" for k in scaling.BREAKDOWN_PARTS)
            rss = {r: max(a["peak_rss_mb_max"] for a in runs if a["ranks"] == r) for r in (1, 2)}
            shard = {a["ranks"]: a["shard_mb_max"] for a in runs}
            best = min(loop[1]) / min(loop[2])
            print(f"| {hidden} | {n} | {median[1]:.2f} | {median[2]:.2f} | {median[1] / median[2]:.2f}x "
                  f"({best:.2f}x; {min(pairs):.2f}-{max(pairs):.2f}) | {shares} "
                  f"| 1 rank: {rss[1]:.0f} ({shard[1]:.1f}); "
                  f"2 ranks: {rss[2]:.0f} ({shard[2]:.1f}) |")  # fmt: skip
    print(f"\n({iterations} L-BFGS iterations, float32, the same evaluations on 1 and 2 ranks; "
          f"median of {repeats} runs each, alternating. Communication: the slowest rank's loop "
          "outside compute and rank 0's optimizer step, i.e. collectives on the critical path.)")  # fmt: skip


class Compute:
    """The float32 kernel over all patches x in one process: ``compute(theta)`` fills the
    block sums (``units``) and returns the grid steps, as one rank's compute does in training."""

    def __init__(self, x, hidden):
        self.n, self.hidden = len(x), hidden
        self.kernel = objective.BlockKernel(V, hidden, 128, np.float32)
        self.blocks = objective.to_blocks(x, 128, np.float32)
        self.units = np.zeros(self.kernel.sums.size)
        self.grad = np.empty(objective.n_params(V, hidden))
        self.xmax = float(np.abs(x).max())

    def __call__(self, theta):
        step = self.kernel.set_params(theta, self.n, self.xmax)
        self.units[:] = 0
        for b in self.blocks:
            self.kernel.accumulate(b, self.units)
        return step

    def finish(self, step, theta):
        """Cost and gradient (a reused buffer) from the sums, as rank 0 assembles them."""
        return objective.finish(self.units, step, theta, self.n, V, self.hidden, *HYPER, out=self.grad)


def serial_step(x, hidden, evaluations, optimizer, skip=15):
    """Rank 0's serial time per evaluation: from the end of the compute to the next evaluation.

    That is gradient assembly (objective.finish) and the optimizer step: scipy's
    L-BFGS-B through ``minimize`` (optimizer "scipy", what training used before
    sae.lbfgs), or sae.lbfgs.LBFGS with the settings ``optimizer`` (a dict). The
    real kernel runs between steps, one process, and evicts the optimizer's
    data from cache as in training. Medians over evaluations after the first
    ``skip`` (by then the memory is full). Returns (finish, optimizer step,
    serial in all) in seconds, and the final cost.
    """
    compute = Compute(x, hidden)
    marks = []  # (start of compute, end of compute, end of finish) per evaluation

    def fun(theta):
        start = time.perf_counter()
        step = compute(theta)
        computed = time.perf_counter()
        cost, g = compute.finish(step, theta)
        if optimizer == "scipy":
            g = g.copy()  # scipy keeps it; training before sae.lbfgs made a new one per evaluation
        marks.append((start, computed, time.perf_counter()))
        return cost, g

    theta0 = objective.initial_theta(V, hidden, np.random.default_rng(0))
    if optimizer == "scipy":
        cost = minimize(
            fun, theta0, jac=True, method="L-BFGS-B", options={"maxfun": evaluations, "maxiter": 10**6}
        ).fun
    else:
        opt = lbfgs.LBFGS(theta0, **optimizer)
        while opt.evaluations < evaluations and not opt.stopped:
            opt.tell(*fun(opt.point))
        cost = opt.f
    marks = np.array(marks)
    finish = marks[skip:-1, 2] - marks[skip:-1, 1]
    serial = marks[skip + 1 :, 0] - marks[skip:-1, 1]
    return np.median(finish), np.median(serial - finish), np.median(serial), cost


def step_table(x_all, sizes, hiddens, evaluations, repeats):
    """Rank 0's serial step per evaluation, scipy's L-BFGS-B against sae.lbfgs as trained, alternating."""
    print("\n| hidden | N | scipy L-BFGS-B: finish / optimizer / serial µs "
          "| sae.lbfgs: finish / optimizer / serial µs | serial, sae.lbfgs / scipy |")  # fmt: skip
    print("|---|---|---|---|---|")
    serial = {}
    for hidden in hiddens:
        for n in sizes:
            runs = {"scipy": [], "lbfgs": []}
            for _ in range(repeats):
                runs["scipy"].append(serial_step(x_all[:n], hidden, evaluations(n), "scipy")[:3])
                runs["lbfgs"].append(serial_step(x_all[:n], hidden, evaluations(n), OPTIMIZER)[:3])
            best = {k: np.min(np.array(v), axis=0) * 1e6 for k, v in runs.items()}  # fastest of the repeats
            serial[hidden, n] = best["lbfgs"][2]
            cells = " | ".join(" / ".join(f"{t:.0f}" for t in best[k]) for k in ("scipy", "lbfgs"))
            print(f"| {hidden} | {n} | {cells} | {best['lbfgs'][2] / best['scipy'][2]:.2f} |")
    growth = ", ".join(f"hidden {h}: {serial[h, sizes[-1]] / serial[h, sizes[0]]:.2f}x" for h in hiddens)
    print(f"\n(One process, the float32 kernel between steps; medians over evaluations 16 on, the fastest "
          f"of {repeats} runs each, alternating.) Growth of sae.lbfgs's serial step from N = {sizes[0]} "
          f"to {sizes[-1]}: {growth}.")  # fmt: skip


def against_table(x_all, sizes, hiddens, revision, evaluations=400):
    """Rank 0's serial step (assembly and optimizer) of sae.lbfgs here and at git ``revision``.

    Both optimizers start from the same point; their evaluations alternate, each after
    its own pass of the real float32 kernel, so that both see the same cold caches and
    the same machine: on a shared machine whose speed drifts by tens of percent from
    minute to minute, this compares what separate runs cannot. Medians after 15
    evaluations; the final costs show whether the path changed.
    """
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:workflow/scripts/sae/lbfgs.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lbfgs_then.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("lbfgs_then", path)
        then = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(then)
    print(f"\n| hidden | N | serial µs, sae.lbfgs at {revision} | this work tree | ratio "
          f"| final cost ({evaluations} evaluations), at {revision} / now |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for hidden in hiddens:
        for n in sizes:
            compute = Compute(x_all[:n], hidden)
            theta0 = objective.initial_theta(V, hidden, np.random.default_rng(0))
            opts = [then.LBFGS(theta0, **OPTIMIZER), lbfgs.LBFGS(theta0, **OPTIMIZER)]
            seconds = [[], []]
            for _ in range(evaluations):
                for opt, times in zip(opts, seconds, strict=True):
                    step = compute(opt.point)
                    start = time.perf_counter()
                    opt.tell(*compute.finish(step, opt.point))
                    times.append(time.perf_counter() - start)
            old, new = (np.median(t[15:]) * 1e6 for t in seconds)
            print(f"| {hidden} | {n} | {old:.0f} | {new:.0f} | {new / old:.2f} "
                  f"| {opts[0].f:.6f} / {opts[1].f:.6f} |")  # fmt: skip


def variants_table(x, hiddens, iterations_evaluations):
    """The memory m (pairs kept): final cost and serial step, against scipy's L-BFGS-B."""
    variants = [("scipy L-BFGS-B, m = 10", "scipy")] + [
        (f"sae.lbfgs, m = {m}", {"memory": m}) for m in (10, 5, 3)
    ]
    columns = " | ".join(f"hidden {h}: final cost, serial µs per evaluation" for h in hiddens)
    print(f"\n| optimizer (N = {len(x)}, {iterations_evaluations} evaluations) | {columns} |")
    print("|---|" + "---|" * len(hiddens))
    for name, optimizer in variants:
        cells = []
        for h in hiddens:
            _, _, serial, cost = serial_step(x, h, iterations_evaluations, optimizer)
            cells.append(f"{cost:.6f}, {serial * 1e6:.0f}")
        chosen = " (chosen)" if optimizer == OPTIMIZER else ""
        print(f"| {name}{chosen} | " + " | ".join(cells) + " |")


def streaming_table(patches_path, n, iterations, cap_mb=4):
    """Training from HDF5 piece by piece (train.memory_mb below the shard) against in memory."""
    print(f"\n| N = {n}, 1 rank | loop s | peak RSS MB | model |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        whole = train(patches_path, Path(tmp) / "a.h5", 1, iterations, extra=["--samples", n])
        streamed = train(
            patches_path, Path(tmp) / "b.h5", 1, iterations, extra=["--samples", n, "--memory-mb", cap_mb]
        )
        same = same_model(Path(tmp) / "a.h5", Path(tmp) / "b.h5")
    print(f"| in memory ({whole['shard_mb_max']:.1f} MB shard) | {whole['loop_seconds_max']:.2f} "
          f"| {whole['peak_rss_mb_max']:.0f} | |")  # fmt: skip
    print(f"| streamed, memory_mb = {cap_mb} | {streamed['loop_seconds_max']:.2f} "
          f"| {streamed['peak_rss_mb_max']:.0f} | {'bitwise identical' if same else 'DIFFERENT'} |"
          )  # fmt: skip
    print(
        f"\nStreaming takes {streamed['loop_seconds_max'] / whole['loop_seconds_max']:.2f}x"
        " the in-memory loop time."
    )


def precision_table(patches_path, n):
    print(f"\n| precision | final cost (N = {n}, 400 iterations, 2 ranks) | loop s |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        costs = {}
        for precision in ("float64", "float32"):
            attrs = train(
                patches_path, Path(tmp) / "m.h5", 2, 400, precision=precision, extra=["--samples", n]
            )
            costs[precision] = attrs["cost"]
            print(f"| {precision} | {attrs['cost']:.6f} | {attrs['loop_seconds_max']:.2f} |")
    print(
        "\nfloat32 final cost differs from float64 by "
        f"{100 * abs(costs['float32'] / costs['float64'] - 1):.2f}%."
    )


def workflow_seconds():
    """`snakemake --cores 2 results/filters.png` from an empty results/, default config."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("Snakefile", "workflow", "config"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, Path(tmp) / name)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "results/filters.png"],
                       cwd=tmp, check=True, capture_output=True)  # fmt: skip
        seconds = time.perf_counter() - start
    print(
        "\n`snakemake --cores 2 results/filters.png` from an empty results/, default config: "
        f"{seconds:.1f} s wall."
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--only",
        help=f"comma-separated tables to run, of {','.join(TABLES)},against (default: all but against)",
        default=",".join(TABLES),
    )
    parser.add_argument("--against", metavar="REV", help="git revision for table 'against' (e.g. HEAD~1)")
    args = parser.parse_args()
    tables = set(args.only.split(","))
    if "against" in tables and not args.against:
        parser.error("table 'against' needs --against REV")
    sizes = [2000, 8000] if args.quick else [10000, 40000, 160000]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numpy {np.__version__}; one BLAS thread per process.")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        patches_path = Path(tmp) / "patches.h5"
        x_all = make_patches(patches_path, sizes[-1])
        if "kernel" in tables:
            kernel_table(x_all, sizes, block_size=128)
        if "step" in tables:
            evaluations = 30 if args.quick else 100
            step_table(
                x_all, sizes[:: len(sizes) - 1], (25, 100), lambda n: evaluations, 1 if args.quick else 2
            )
        if "against" in tables:
            against_table(x_all, sizes[:: len(sizes) - 1], (25, 100), args.against, 60 if args.quick else 400)
        if "memory" in tables:
            variants_table(x_all[: sizes[0]], (25, 100), 60 if args.quick else 415)
        if "mpi" in tables:
            points = [(H, n) for n in sizes] + [(100, sizes[0])]
            mpi_table(
                patches_path, points, iterations=20 if args.quick else 100, repeats=2 if args.quick else 5
            )
        if "precision" in tables:
            precision_table(patches_path, sizes[0])
        if "streaming" in tables:
            streaming_table(patches_path, sizes[-1], iterations=20 if args.quick else 50)
    if "workflow" in tables:
        workflow_seconds()


if __name__ == "__main__":
    main()
