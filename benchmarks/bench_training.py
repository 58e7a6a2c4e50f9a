"""Training speed and memory, measured side by side in one run; prints Markdown tables.

    python benchmarks/bench_training.py            # full (about 10 minutes on 2 cores)
    python benchmarks/bench_training.py --quick    # smaller sizes, for a smoke test
    python benchmarks/bench_training.py --only optimizer,mpi   # some tables only
    python benchmarks/bench_training.py --only kernel --against HEAD~1   # also the kernel of a git revision

Every ratio compares numbers measured in this same run on this machine:
kernel:    per-evaluation time, one rank, against a whole-batch float64 transcription of
           Ng's vectorized equations (objective.reference, the baseline), its rate against
           the single-core GEMM peak measured here, per-patch cost against N; with
           --against REV, the block kernel of git revision REV timed alternately with this one;
compile:   numba's compile time of the per-slice loops (an empty cache) and their load
           time from the cache, per process;
optimizer: one rank's optimizer step alone against the slices it owns (sae.sweep.optimizer),
           and the line the performance model fits to it;
mpi:       two ranks against one: optimization-loop speedup and where the two-rank loop
           goes (compute, imbalance, communication, optimizer), at hidden 25 and 100;
large:     16 x 16 patches and 400 hidden units (config/large.yaml's model) on one and two
           ranks: compute, collectives and optimizer per evaluation, and the performance
           model's prediction at 16 processes from these runs and the two benchmarks;
precision: the final cost in float32 against float64;
streaming: training streamed from HDF5 (train.memory_mb below the shard) against in memory;
workflow:  `snakemake --cores 2 results/filters.png` from an empty results/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import sae.one_blas_thread  # noqa: F401  (before numpy: one BLAS thread, as each rank has)

# isort: split
import argparse
import importlib
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np
from common import ENV, REPO, SCRIPTS, same_model, train

from sae import h5io, images, objective, patches
from sae.kernel import BlockKernel
from sae.objective import n_params
from sae.slices import Slices
from sae.sweep import model, optimizer, records, scaling

FLOP_PER_PATCH = 16e3  # five 25 x 64 products, two FLOP per multiply-add
V, H = 64, 25
HYPER = (0.01, 1e-4, 3.0)
TABLES = ("kernel", "compile", "optimizer", "mpi", "large", "precision", "streaming", "workflow")
LARGE = {"side": 16, "hidden": 400, "samples": 20000}  # config/large.yaml's model and the size


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


def make_patches(path: Path, count: int, side: int = 8) -> np.ndarray:
    """Whitened sample-image patches, normalized, written as the workflow would."""
    imgs = [img for img, _, _ in images.load("sample", whiten=True)]
    data, sigma = patches.sample(imgs, count, side, seed=0)
    attrs = {"seed": 0, "side": side, "count": count, "sigma": sigma}
    h5io.write_patches(path, count, side * side, [data], attrs)
    return data


def evaluation(block_kernel, x, block_size, dtype, theta):
    """One evaluation's block sums with ``block_kernel`` (sae.kernel.BlockKernel, or a revision's)."""
    kernel = block_kernel(V, H, block_size, dtype)
    blocks = objective.to_blocks(x, block_size, dtype)
    units = np.zeros(kernel.sums.size)

    def run():
        kernel.set_params(theta, len(x), 1.0)
        units[:] = 0
        for b in blocks:
            kernel.accumulate(b, units)

    return run


def revision_kernel(revision: str):
    """The BlockKernel class of git ``revision`` (its sae package, imported as sae_then)."""
    tmp = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "workflow/scripts/sae"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    (tmp / "workflow" / "scripts" / "sae").rename(tmp / "sae_then")
    sys.path.insert(0, str(tmp))
    kernel = tmp / "sae_then" / "kernel.py"
    module = importlib.import_module("sae_then.kernel" if kernel.exists() else "sae_then.objective")
    return module.BlockKernel


def kernel_table(x_all, sizes, block_size, against=None):
    peaks = {np.float64: gemm_peak(np.float64), np.float32: gemm_peak(np.float32)}
    theta = objective.initial_theta(V, H, np.random.default_rng(0))
    then = revision_kernel(against) if against else None
    rows = []
    for n in sizes:
        x = x_all[:n].astype(np.float64)
        base = best_seconds(lambda x=x: objective.reference(theta, x, H, *HYPER))
        row = {"N": n, "baseline": base}
        for dtype in (np.float64, np.float32):
            row[dtype] = best_seconds(evaluation(BlockKernel, x, block_size, dtype, theta))
        if then is not None:  # alternately: this kernel, the revision's, this one again
            now_then = [evaluation(k, x, block_size, np.float32, theta) for k in (BlockKernel, then)]
            times = [[], []]
            for _ in range(3):
                for run, t in zip(now_then, times, strict=True):
                    t.append(best_seconds(run, min_seconds=0.3, repeats=1))
            row["now"], row["then"] = (min(t) for t in times)
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
    if then is not None:
        print(f"\n| N | float32 ms/eval, kernel at {against} | this work tree | ratio |")
        print("|---|---|---|---|")
        for row in rows:
            print(f"| {row['N']} | {row['then'] * 1e3:.3f} | {row['now'] * 1e3:.3f} "
                  f"| {row['now'] / row['then']:.3f} |")  # fmt: skip
        print("\n(The fastest of three alternating timings of each.)")
    extra_product_share(x_all[: sizes[-1]], block_size, rows[-1][np.float32])


def extra_product_share(x, block_size, eval_seconds):
    """Time of the product the single-reduction scheme adds (sum s' [x 1]^T)."""
    blocks = objective.to_blocks(x.astype(np.float64), block_size, np.float32)[0]
    s = np.random.default_rng(0).random((len(blocks), H, block_size), dtype=np.float32)
    out = np.empty((len(blocks), H, V + 1), dtype=np.float32)
    extra = best_seconds(lambda: np.matmul(s, blocks.transpose(0, 2, 1), out=out))
    print(f"\nThe single reduction's extra product (sum s' [x 1]^T) takes {100 * extra / eval_seconds:.0f}% "
          f"of a float32 evaluation at N = {len(x)}.")  # fmt: skip


def compile_table(repeats=3):
    """Seconds to import the compiled loops in a new process: compiling them (an empty numba
    cache) and loading them from the cache; and the same process importing numpy alone."""
    probe = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"

    def seconds(module, env):
        out = subprocess.run([sys.executable, "-c", probe.format(module)], cwd=SCRIPTS, env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return float(out)

    with tempfile.TemporaryDirectory() as cache:
        env = {**ENV, "NUMBA_CACHE_DIR": cache}
        cold, warm, plain = [], [], []
        for _ in range(repeats):
            shutil.rmtree(cache)
            os.mkdir(cache)
            cold.append(seconds("sae.lbfgs, sae.gradient", env))
            warm.append(seconds("sae.lbfgs, sae.gradient", env))
            plain.append(seconds("numpy, mpi4py.MPI, h5py", env))
    print("\n| import in a new process | seconds (median of 3) |")
    print("|---|---:|")
    print(f"| numpy, mpi4py, h5py | {np.median(plain):.2f} |")
    print(f"| sae.lbfgs and sae.gradient, compiling (empty numba cache) | {np.median(cold):.2f} |")
    print(f"| sae.lbfgs and sae.gradient, from numba's cache | {np.median(warm):.2f} |")


def optimizer_table(models, evaluations):
    """One rank's optimizer step alone against the slices it owns, and the model's line."""
    print("\n| model (v, h) | slices of L | slices owned | values | µs per evaluation (fastest) |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for v, h in models:
        sl = Slices(n_params(v, h))
        mine = optimizer.measure(v, h, optimizer.owned_counts(sl.count), evaluations)
        rows += mine
        for r in mine:
            print(f"| {v}, {h} | {sl.count} of {sl.length} | {r['slices']} | {r['values']} "
                  f"| {r['seconds'] * 1e6:.1f} ({r['seconds_min'] * 1e6:.1f}) |")  # fmt: skip
    fixed, per_value = model.fit_optimizer(rows)
    print(f"\nFitted (the performance model's t_opt): {fixed * 1e6:.1f} µs + {per_value * 1e9:.2f} ns "
          f"per value owned. One process, the float32 block kernel on {optimizer.PATCHES} patches between "
          f"evaluations; medians over {evaluations} evaluations after the first ten.")  # fmt: skip
    return rows


def two_rank_runs(patches_path, hidden, n, iterations, repeats, side=8):
    """1- and 2-rank trainings, alternating, ``repeats`` of each: their model-file attributes."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for ranks in (1, 2):
                attrs = train(patches_path, Path(tmp) / "m.h5", ranks, iterations, hidden,
                              extra=["--samples", n], side=side)  # fmt: skip
                runs.append({**records.run_record(attrs, repeat + 1), **attrs})
    assert len({a["evaluations"] for a in runs}) == 1 and len({a["cost"] for a in runs}) == 1
    return runs


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
          "| 2 ranks, share of loop: compute / imbalance / communication / optimizer "
          "| peak RSS per rank, MB (shard MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for hidden, n in points:
        runs = two_rank_runs(patches_path, hidden, n, iterations, repeats)
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
          "outside its compute and optimizer step, i.e. collectives on the critical path, waiting included.)"
          )  # fmt: skip


def large_table(patches_path, iterations, repeats, evaluations):
    """config/large.yaml's model on 1 and 2 ranks: the parts of an evaluation, and the model at 16."""
    side, hidden, n = LARGE["side"], LARGE["hidden"], LARGE["samples"]
    v = side * side
    runs = two_rank_runs(patches_path, hidden, n, iterations, repeats, side=side)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "c.csv"
        mpiexec = shutil.which("mpiexec", path=ENV["PATH"])
        cmd = [mpiexec, "-n", 2, sys.executable, SCRIPTS / "sweep_collectives.py", "--side", side,
               "--hidden", hidden, "--scales", 0.25, 0.5, 1, 2, "--repeats", 30,
               "--", patches_path, out]  # fmt: skip
        subprocess.run([str(c) for c in cmd], env=ENV, check=True, capture_output=True)
        bench = records.read_csv(out, records.COLLECTIVE_COLUMNS)
    opt_rows = optimizer.measure(
        v, hidden, optimizer.owned_counts(Slices(n_params(v, hidden)).count), evaluations
    )
    fit = model.fit_model(runs, bench, opt_rows)
    print(f"\n| {side} x {side} patches, {hidden} hidden, N = {n} | 1 rank | 2 ranks |")
    print("|---|---:|---:|")
    med = {}
    for ranks in (1, 2):
        mine = [r for r in runs if r["ranks"] == ranks]
        e = mine[0]["evaluations"]
        med[ranks] = {
            k: float(np.median([r[h5io.timing_attr(k, "max")] for r in mine])) / e
            for k in ("loop", "compute", "comm", "optimizer")
        }
    labels = {"loop": "loop", "compute": "compute (slowest rank)", "comm": "collectives, waits included",
              "optimizer": "optimizer (slowest rank)"}  # fmt: skip
    for k, label in labels.items():
        print(f"| {label}, ms per evaluation | {med[1][k] * 1e3:.2f} | {med[2][k] * 1e3:.2f} |")
    not_compute = 1 - med[2]["compute"] / med[2]["loop"]
    print(
        f"| all but the ranks' compute, share of the slowest rank's loop | "
        f"{100 * (1 - med[1]['compute'] / med[1]['loop']):.1f}% | {100 * not_compute:.1f}% |"
    )
    speedup, efficiency = model.predicted_speedup(fit, 16, n, hidden)
    parts = model.predict(fit, 16, n, hidden)
    share = {k: float(parts[k] / parts["loop"]) for k in ("compute", "communication", "optimizer")}
    print(f"\nModel fitted to these runs and the two benchmarks (alpha {fit['alpha'] * 1e6:.2f} µs, "
          f"beta {fit['beta'] * 1e9:.3f} ns/byte on 2 ranks): on 16 processes at N = {n}, speedup "
          f"{float(speedup):.1f} (efficiency {float(efficiency):.2f}); the loop is compute "
          f"{100 * share['compute']:.1f}%, communication {100 * share['communication']:.1f}%, "
          f"optimizer {100 * share['optimizer']:.1f}%. ({iterations} iterations, median of {repeats} "
          "alternating runs of each.)")  # fmt: skip


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
        _, attrs = h5io.read_model(Path(tmp) / "results" / "model.h5")
    print(
        "\n`snakemake --cores 2 results/filters.png` from an empty results/, default config: "
        f"{seconds:.1f} s wall; final cost {attrs['cost']:.6f} after {attrs['evaluations']} evaluations."
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--only",
        help=f"comma-separated tables to run, of {','.join(TABLES)} (default: all)",
        default=",".join(TABLES),
    )
    parser.add_argument(
        "--against", metavar="REV", help="git revision whose kernel the kernel table also times"
    )
    args = parser.parse_args()
    tables = set(args.only.split(","))
    sizes = [2000, 8000] if args.quick else [10000, 40000, 160000]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numpy {np.__version__}; one BLAS thread per process.")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        patches_path = Path(tmp) / "patches.h5"
        x_all = make_patches(patches_path, sizes[-1])
        if "kernel" in tables:
            kernel_table(x_all, sizes, block_size=128, against=args.against)
        if "compile" in tables:
            compile_table()
        if "optimizer" in tables:
            models = [(64, 25), (64, 100)] + ([] if args.quick else [(256, 400)])
            optimizer_table(models, 40 if args.quick else 300)
        if "mpi" in tables:
            points = [(H, n) for n in sizes] + [(100, sizes[0])]
            mpi_table(
                patches_path, points, iterations=20 if args.quick else 100, repeats=2 if args.quick else 5
            )
        if "large" in tables:
            large_path = Path(tmp) / "large.h5"
            n = 1000 if args.quick else LARGE["samples"]
            make_patches(large_path, n, side=LARGE["side"])
            LARGE["samples"] = n
            large_table(
                large_path, 5 if args.quick else 30, 1 if args.quick else 3, 40 if args.quick else 100
            )
        if "precision" in tables:
            precision_table(patches_path, sizes[0])
        if "streaming" in tables:
            streaming_table(patches_path, sizes[-1], iterations=20 if args.quick else 50)
    if "workflow" in tables:
        workflow_seconds()


if __name__ == "__main__":
    main()
