"""Across two nodes: the collectives' alpha and beta on a network, and the performance model's error.

    flock /tmp/slurm.lock flock /tmp/bench.lock python benchmarks/bench_multinode.py
    ... --quick    # fewer repeats and sizes, for a smoke test

Needs root, Debian's Slurm and iproute2. Starts the two-node test cluster of
tests/slurm_cluster.py (each node a network namespace on this machine, joined by a
bridge; stopped again at the end unless it was already up), then for each network
  - bridge: the veth pairs and the bridge as they are,
  - netem:  each node's link delayed 50 us and limited to 10 Gbit/s, each way
            (tc qdisc add dev eth0 root netem delay 50us rate 10gbit, in every node;
            where the kernel lacks netem, a token bucket filter at 10 Gbit/s instead),
1. runs the sweep's collectives microbenchmark (workflow/scripts/sweep_collectives.py:
   one evaluation's three collectives at 7 buffer scales) on 2 and 4 ranks spread over both
   nodes, and fits alpha and beta as the sweep does (sae.sweep.model.fit_collectives);
2. times the training (train_model.py under srun) on 1 rank, and on 2 ranks (1 per node)
   and 4 ranks (2 per node) across the nodes, median of the repeats;
3. predicts the 2- and 4-rank loop times with the sweep's performance model: compute and
   optimizer terms fitted to the 1-rank runs on the busiest rank's rows (N, N/2, N/4),
   alpha and beta from step 1 on the same network; prints predicted against measured.
Every number comes from this one run on this machine.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import sae.one_blas_thread  # noqa: E402, F401  (before numpy: one BLAS thread)

# isort: split
import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import slurm_cluster  # noqa: E402
from bench_training import make_patches  # noqa: E402  (this folder: the same patches)

from sae import h5io  # noqa: E402
from sae.objective import n_params  # noqa: E402
from sae.slices import Slices  # noqa: E402
from sae.sweep import model as perf  # noqa: E402
from sae.sweep import optimizer, records  # noqa: E402

SCRIPTS = REPO / "workflow" / "scripts"
# Limits on each node's link: netem where the kernel has it, else a token bucket at the same
# rate (no added delay; CONFIG_NET_SCH_NETEM is off in some VM kernels).
NETEM = "netem delay 50us rate 10gbit"
TBF = "tbf rate 10gbit burst 256kb latency 1ms"
SCALES = ["0.0625", "0.125", "0.25", "0.5", "1", "2", "4"]  # as rule sweep_collectives
HIDDEN = 25
TRAIN = ["--side", "8", "--hidden", str(HIDDEN), "--rho", "0.01", "--lambda", "1e-4", "--beta", "3",
         "--seed", "0", "--block-size", "128", "--precision", "float32"]  # fmt: skip


def srun(nodes: int, ranks: int, *argv) -> subprocess.CompletedProcess:
    cmd = ["srun", f"--nodes={nodes}", f"--ntasks={ranks}", "--exclusive", "--kill-on-bad-exit=1"]
    if ranks > 1:
        cmd.append("--mpi=pmi2")
    proc = subprocess.run([*cmd, sys.executable, *map(str, argv)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} ... failed:\n{proc.stderr}")
    return proc


def set_network(qdisc: str | None) -> bool:
    """Put the qdisc on every node's link (None: remove it); False if the kernel lacks it."""
    for i in (1, 2):
        enter = ["nsenter", f"--net=/run/netns/{slurm_cluster.netns(i)}", "tc", "qdisc"]
        subprocess.run([*enter, "del", "dev", "eth0", "root"], capture_output=True)
        if qdisc and subprocess.run([*enter, "add", "dev", "eth0", "root", *qdisc.split()]).returncode:
            return False
    return True


def collectives(folder: Path, data: Path, ranks: int, repeats: int) -> list[dict]:
    out = folder / f"collectives_p{ranks}.csv"
    srun(2, ranks, SCRIPTS / "sweep_collectives.py", "--side", 8, "--hidden", HIDDEN, "--scales", *SCALES,
         "--repeats", repeats, "--", data, out)  # fmt: skip
    return records.read_csv(out, records.COLLECTIVE_COLUMNS)


def training(folder: Path, data: Path, nodes: int, ranks: int, n: int, repeat: int, iterations: int) -> dict:
    out = folder / records.RUN_NAME.format(ranks=ranks, hidden=HIDDEN, samples=n, repeat=repeat)
    argv = [SCRIPTS / "train_model.py", *TRAIN, "--iterations", iterations, "--samples", n, data, out]
    proc = srun(nodes, ranks, *argv)
    hosts = next(line.split("hosts: ", 1)[1] for line in proc.stderr.splitlines() if "hosts: " in line)
    return {**records.read_run(out), "hosts": hosts}


def main():
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and one size, for a smoke test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000], help="training sizes N")
    args = parser.parse_args()
    sizes = [10000] if args.quick else args.sizes
    repeats, iterations, bench_repeats = (1, 30, 100) if args.quick else (3, 100, 300)
    started = slurm_cluster.start(nodes=2)
    try:
        (REPO / "results").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=REPO / "results") as tmp:  # shared by the nodes, git-ignored
            folder = Path(tmp)
            data = folder / "patches.h5"
            make_patches(data, max(sizes))
            for qdisc in (None, NETEM):
                if not set_network(qdisc):
                    print(f"\n({qdisc.split()[0]} is not available here: {TBF} instead)")
                    qdisc = TBF
                    set_network(qdisc)
                try:
                    report(qdisc, folder, data, sizes, repeats, iterations, bench_repeats)
                finally:
                    set_network(None)
    finally:
        if started:
            slurm_cluster.stop()


def report(qdisc, folder, data, sizes, repeats, iterations, bench_repeats):
    print(f"\n## Network: {f'{qdisc} on each node link' if qdisc else 'the bridge, no limits'}")
    bench = [row for p in (2, 4) for row in collectives(folder, data, p, bench_repeats)]
    alpha, beta = perf.fit_collectives(bench)
    print(f"\nCollectives across the nodes (median of {bench_repeats} evaluations' three, microseconds):\n")
    print("| bytes (the three buffers, on 2 ranks) | 2 ranks | 4 ranks | fit 2 ranks | fit 4 ranks |")
    print("|---:|---:|---:|---:|---:|")
    columns = ("point_doubles", "sums_doubles", "rows_doubles")
    for scale in sorted({r["scale"] for r in bench}):
        row = {r["ranks"]: r for r in bench if r["scale"] == scale}
        fit = {}
        for p in (2, 4):
            steps, received = perf.comm_design(p, [8.0 * row[p][k] for k in columns])
            fit[p] = steps * alpha + received * beta
        nbytes = sum(8 * row[2][k] for k in columns)
        print(f"| {nbytes:,} | {row[2]['seconds'] * 1e6:.1f} | {row[4]['seconds'] * 1e6:.1f} |"
              f" {fit[2] * 1e6:.1f} | {fit[4] * 1e6:.1f} |")  # fmt: skip
    print(f"\nalpha = {alpha * 1e6:.2f} us, beta = {beta * 1e9:.3f} ns/byte ({1 / beta / 1e9:.2f} GB/s)")

    runs = []
    for n in sizes:
        for r in range(1, repeats + 1):
            for p in (1, 2, 4):  # interleaved, so that drifts hit all alike
                runs.append(training(folder, data, 1 if p == 1 else 2, p, n, r, iterations))
            for p in (2, 4):  # one rank on the busiest rank's rows: compute per patch and fixed
                rows = int(perf.busiest_rows(n, p, 128))
                if not any(x["ranks"] == 1 and x["samples"] == rows and x["repeat"] == r for x in runs):
                    runs.append(training(folder, data, 1, 1, rows, r, iterations))
    single = [r for r in runs if r["ranks"] == 1]
    count = Slices(n_params(64, HIDDEN)).count
    model = perf.fit_model(single, bench, optimizer.measure(64, HIDDEN, optimizer.owned_counts(count), 200))
    terms = {k: float(v) for k, v in perf.per_evaluation(model, HIDDEN).items()}
    print(
        f"\nModel from the 1-rank runs: compute {terms['compute_per_patch'] * 1e9:.0f} ns per patch"
        f" + {terms['compute_fixed'] * 1e6:.0f} us, optimizer {terms['optimizer'] * 1e6:.0f} us"
        f" per evaluation on one rank (the optimizer benchmark)\n"
    )
    cores = os.cpu_count() or 1
    print("| N | ranks | hosts | evaluations | loop s measured | model: loop s | error | with"
          f" {cores} cores shared | error | communication s | measured compute + optimizer"
          " + model communication | error |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for p in (1, 2, 4):
            mine = [r for r in runs if r["ranks"] == p and r["samples"] == n]
            loop = statistics.median(r[h5io.timing_attr("loop", "max")] for r in mine)
            e = mine[0]["evaluations"]
            parts = {k: float(v) for k, v in perf.predict(model, p, n, HIDDEN, e).items()}
            # more ranks than cores: each rank's compute and rank 0's step get cores/p of a core
            shared = parts["loop"] + (max(1, p / cores) - 1) * (parts["compute"] + parts["optimizer"])
            # the network part alone: each run's own compute (slowest rank) and optimizer seconds
            # (whatever the cores allowed) plus the alpha-beta communication
            comm = e * float(perf.comm_time(model, p, HIDDEN))
            own = statistics.median(
                r[h5io.timing_attr("compute", "max")] + r[h5io.timing_attr("optimizer", "max")] + comm
                for r in mine
            )

            def err(x, loop=loop):
                return f"{100 * (x / loop - 1):+.1f}%"

            print(f"| {n:,} | {p} | {mine[0]['hosts']} | {e} | {loop:.3f} | {parts['loop']:.3f} |"
                  f" {err(parts['loop'])} | {shared:.3f} | {err(shared)} | {comm:.3f} | {own:.3f} |"
                  f" {err(own)} |")  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n(this machine has {cores} cores: the model assumes a core per rank; load average now {load})")


if __name__ == "__main__":
    try:
        main()
    except slurm_cluster.ClusterError as err:
        sys.exit(f"error: {err}")
