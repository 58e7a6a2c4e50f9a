"""Beyond memory: the patch stage and streamed training from 10^5 to 10^7 patches; prints Markdown tables.

    flock /tmp/bench.lock python benchmarks/bench_memory.py          # about 8 minutes, 4 GB of disk
    flock /tmp/bench.lock python benchmarks/bench_memory.py --quick  # small sizes, a smoke test

Measured in one run on this machine, every file in a temporary folder (deleted at the end):
1. the patch stage (`sample_patches.py`, the rule's script) at 10^5, 10^6 and 10^7 patches of
   the whitened sample photographs: wall seconds, patches per second, peak RSS (its own getrusage);
   and 10^6 patches from 1,000 photographs (2 GB of images, beyond the stage's image cache);
2. streamed training (train.memory_mb below the shard) against in memory, per evaluation, at
   sizes that fit: 160k patches on one rank (memory_mb 4) and 10^6 on two (memory_mb 64),
   alternating runs, bitwise-identical models checked (memory_mb 16 at 160k: larger pieces);
   and one evaluation's pass alone, in this process, 30 alternating passes; at memory_mb 4,
   where that pass's extra time goes (the reader made to do less; another process on the
   other CPU spinning or copying memory);
3. 10^7 patches on two ranks with memory_mb 64 (a few iterations): per-evaluation time and peak
   RSS per rank, against the shard's size in memory;
4. the issue's done-when: `snakemake --cores 2 results/model.h5` with patches.count 4,000,000 and
   train {memory_mb: 64, iterations: 3}, every process's peak RSS (VmHWM, polled from /proc);
5. what 10^8 patches would take, here and on 64 ranks, from these rates and the performance model
   of docs/scaling.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import sae.one_blas_thread  # noqa: F401  (before numpy: the passes below compute as a rank does)

# isort: split
import argparse
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time

import h5py
import numpy as np
import yaml
from common import ENV, REPO, SCRIPTS, same_model, train

from sae import h5io
from sae.kernel import BlockKernel
from sae.objective import initial_theta, to_blocks
from sae.train import StreamedShard

V = 64
# The performance model (docs/scaling.md) fitted on this machine (sweep_collectives, sweep_model):
ALPHA, BETA, MESSAGE_BYTES = 1.75e-6, 0.142e-9, 64.8 * 1024  # s, s/byte, bytes per evaluation
EVALUATIONS = 411  # per 400 L-BFGS iterations (the sweep's median)


def run(cmd, **kwargs):
    cmd = [str(c) for c in cmd]
    return subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True, **kwargs)


def per_evaluation(attrs) -> float:
    return attrs["loop_seconds_max"] / attrs["evaluations"]


def patch_stage(images, out, count):
    """(seconds, peak RSS MB) of the patch stage writing ``count`` patches."""
    start = time.perf_counter()
    proc = run([sys.executable, SCRIPTS / "sample_patches.py", images, out,
                "--count", count, "--side", 8, "--seed", 0])  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, float(re.search(r"peak RSS (\d+) MB", proc.stdout).group(1))


def patch_table(images, folder, counts):
    print("\n| patches | file MB | seconds | patches per second | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|")
    rates = {}
    for count in counts:
        out = folder / f"patches_{count}.h5"
        seconds, peak = patch_stage(images, out, count)
        rates[count] = count / seconds
        mb = out.stat().st_size / 2**20
        print(f"| {count:,} | {mb:,.0f} | {seconds:.1f} | {count / seconds:,.0f} | {peak:.0f} |")
    return rates


def many_photographs_table(folder, photographs, count):
    """The patch stage from many photographs (more than its 256 MB image cache holds)."""
    images = folder / "many.h5"
    rng = np.random.default_rng(0)  # whitened photographs look like noise to the sampler
    named = ((rng.standard_normal((512, 512)), f"photo{k}.jpg", "0" * 64) for k in range(photographs))
    h5io.write_images(images, named, True, 1.0)
    seconds, peak = patch_stage(images, folder / "many_patches.h5", count)
    print("\n| photographs of 512 x 512 | images.h5 MB | patches | seconds | patches per second "
          "| peak RSS MB |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {photographs:,} | {images.stat().st_size / 2**20:,.0f} | {count:,} | {seconds:.1f} "
          f"| {count / seconds:,.0f} | {peak:.0f} |")  # fmt: skip
    images.unlink()
    (folder / "many_patches.h5").unlink()


def streaming_table(folder, cases, repeats):
    """Per evaluation, streamed against in memory: alternating runs, medians and best."""
    print(
        "\n| N, ranks | memory_mb | ms per evaluation, in memory | streamed "
        "| streamed / in memory: median (best) | model |"
    )
    print("|---|---:|---:|---:|---:|---|")
    ratios = {}
    for patches, n, ranks, cap, iterations in cases:
        whole, streamed, same = [], [], True
        for _ in range(repeats):
            a = train(patches, folder / "a.h5", ranks, iterations)
            b = train(patches, folder / "b.h5", ranks, iterations, extra=["--memory-mb", cap])
            assert b["streamed"] and not a["streamed"]
            same &= same_model(folder / "a.h5", folder / "b.h5") and a["cost"] == b["cost"]
            whole.append(per_evaluation(a))
            streamed.append(per_evaluation(b))
        ratio = np.median(streamed) / np.median(whole)
        ratios[(n, ranks)] = ratio
        print(f"| {n:,}, {ranks} | {cap} | {1e3 * np.median(whole):.1f} | {1e3 * np.median(streamed):.1f} "
              f"| {ratio:.2f}x ({min(streamed) / min(whole):.2f}x) "
              f"| {'bitwise identical' if same else 'DIFFERENT'} |")  # fmt: skip
    return ratios


def pass_timer(n):
    """Seconds of one evaluation's pass of the training's kernel over an iterable of blocks."""
    kernel = BlockKernel(V, 25, 128, np.float32)
    theta = initial_theta(V, 25, np.random.default_rng(0))
    units = np.zeros(kernel.sums.size)

    def evaluation(blocks):
        start = time.perf_counter()
        kernel.set_params(theta, n, 1.0)
        for b in blocks:
            kernel.accumulate(b, units)
        return time.perf_counter() - start

    return evaluation


def passes_table(patches, n, caps, repeats):
    """One evaluation's pass over a shard, in this process: in memory against streamed.

    The kernel of the training over every block, alternating in-memory and streamed passes
    (StreamedShard with its reader thread), the best and median of ``repeats`` each: the
    loop of the table above without the optimizer and process start-up, less noisy.
    """
    evaluation = pass_timer(n)
    print(f"\n| one evaluation's pass, N = {n:,}, 1 rank | ms in memory | ms streamed "
          "| streamed / in memory: best (median) |")  # fmt: skip
    print("|---|---:|---:|---:|")
    with h5io.PatchRows(patches) as rows:
        whole = to_blocks(rows.read(0, n), 128, np.float32)
        for cap in caps:
            streamed = StreamedShard(rows, 0, n, 128, np.float32, cap * 2**20)
            evaluation(streamed)  # the first pass checks the checksums
            a, b = zip(*[(evaluation(whole), evaluation(streamed)) for _ in range(repeats)], strict=True)
            ratio = np.median(np.array(b) / np.array(a))
            print(f"| memory_mb {cap} | {1e3 * min(a):.1f} | {1e3 * min(b):.1f} "
                  f"| {min(b) / min(a):.2f}x ({ratio:.2f}x) |")  # fmt: skip


def reader_table(patches, n, cap, repeats):
    """Where a streamed pass's extra time goes: what the reader thread does, made to do less.

    The passes of ``passes_table`` at one cap, alternating: in memory; the same pieces with
    a reader that does nothing (blocks already in place), that copies the rows from an
    array in memory, that reads them from the file without laying out blocks, and the
    real reader; then in memory again while another process on the other CPU spins, or
    copies 16 MB over and over (CPU time against memory traffic).
    """
    evaluation = pass_timer(n)

    class Doing(StreamedShard):
        """The pieces and hand-overs of StreamedShard; its reader only does ``work(a, b)``."""

        def _load(self, piece, blocks, checked):
            start, stop = piece
            for a in range(start, stop, len(self.raw)):
                self.work(a, min(a + len(self.raw), stop))
            return [blocks[: (stop - start) // self.block_size]]

    with h5io.PatchRows(patches) as rows:
        in_memory = rows.read(0, n)
        whole = to_blocks(in_memory, 128, np.float32)
        real = StreamedShard(rows, 0, n, 128, np.float32, cap * 2**20)
        evaluation(real)  # the first pass checks the checksums
        readers = {"the real reader: reads rows (os.preadv), lays out blocks": real}
        work = {
            "reads rows (os.preadv) only": lambda raw, a, b: rows.reread(a, b, raw),
            "copies rows from memory (numpy) only": lambda raw, a, b: np.copyto(raw[: b - a], in_memory[a:b]),
            "nothing (blocks in place)": lambda raw, a, b: None,
        }
        for what, task in work.items():
            shard = Doing(rows, 0, n, 128, np.float32, cap * 2**20)
            shard.buffers = real.buffers  # real blocks, so that the kernel computes the same
            shard.work = functools.partial(task, shard.raw)
            readers[what] = shard
        times = {"in memory": [], **{k: [] for k in readers}}
        for _ in range(repeats):
            times["in memory"].append(evaluation(whole))
            for what, shard in readers.items():
                times[what].append(evaluation(shard))
        copying = "import numpy as np\na = np.ones(2**22, np.float32)\nb = a.copy()\nwhile True: b[...] = a"
        others = {
            "in memory, another process spinning on the other CPU": "while True: pass",
            "in memory, another process copying 16 MB on the other CPU": copying,
        }
        times.update({what: [] for what in others})
        for _ in range(max(1, repeats // 3)):
            for what, code in others.items():
                times["in memory"].append(evaluation(whole))
                other = subprocess.Popen([sys.executable, "-c", code])
                time.sleep(0.3)
                times[what] += [evaluation(whole) for _ in range(3)]
                other.kill()
                other.wait()
    base = np.array(times["in memory"])
    print(f"\n| one pass, N = {n:,}, memory_mb {cap}: the reader does | ms, best "
          "| / in memory: best (median) |")  # fmt: skip
    print("|---|---:|---:|")
    for what, t in times.items():
        t = np.array(t)
        ratios = f"{t.min() / base.min():.2f}x ({np.median(t) / np.median(base):.2f}x)"
        print(f"| {what} | {1e3 * t.min():.1f} | {ratios} |")


def large_table(patches, n, folder, ranks, cap, iterations):
    attrs = train(patches, folder / "large.h5", ranks, iterations, extra=["--memory-mb", cap])
    seconds = per_evaluation(attrs)
    print(f"\n| N = {n:,}, {ranks} ranks, memory_mb {cap} | value |")
    print("|---|---:|")
    print(f"| load and first read, s | {attrs['load_seconds_max']:.1f} |")
    print(f"| seconds per evaluation | {seconds:.2f} |")
    print(f"| ns per patch and evaluation (per rank) | {1e9 * seconds * ranks / n:.0f} |")
    print(f"| peak RSS per rank, MB (max over ranks) | {attrs['peak_rss_mb_max']:.0f} |")
    print(f"| the shard in memory would be, MB | {attrs['shard_mb_max']:,.0f} |")
    return seconds * ranks / n  # seconds per patch and evaluation on one rank, streamed


def descendants(pid):
    """PIDs of every process below ``pid``."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def peak_kib(pid):
    """(name, VmHWM in KiB) of a running process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
    script = next(
        (Path(a.decode()).name for a in cmdline if a.endswith(b".py")), Path(cmdline[0].decode()).name
    )
    script = "snakemake" if b"snakemake" in cmdline else script
    return (script, int(hwm.group(1))) if hwm else None


def done_when(folder, count, cap, iterations):
    """The issue's check: the whole workflow at ``count`` patches with a memory cap; peaks per process."""
    work = folder / "workflow"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    config = {"patches": {"count": count}, "train": {"memory_mb": cap, "iterations": iterations}}
    (work / "big.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "results/model.h5", "--cores", "2",
                             "--configfile", "big.yaml"], cwd=work, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    peaks = {}
    while proc.poll() is None:
        for pid in [proc.pid, *descendants(proc.pid)]:
            seen = peak_kib(pid)
            if seen:
                peaks[(pid, seen[0])] = max(peaks.get((pid, seen[0]), 0), seen[1])
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"the workflow failed ({proc.returncode}); see {work}/results/logs")
    by_name = {}
    for (_, name), kib in peaks.items():
        by_name[name] = max(by_name.get(name, 0), kib)
    logged = {}
    for rule in ("images", "patches"):
        text = (work / "results" / "logs" / f"{rule}.log").read_text()
        logged[rule] = float(re.search(r"peak RSS (\d+) MB", text).group(1))
    with h5py.File(work / "results" / "model.h5") as f:
        logged["train"] = float(f.attrs["peak_rss_mb_max"])
    print(f"\n`snakemake --cores 2 results/model.h5` with patches.count {count:,}, "
          f"train.memory_mb {cap}, train.iterations {iterations}: {seconds:.0f} s wall. "
          "Peak RSS (VmHWM) of every process seen:")  # fmt: skip
    print("\n| process | peak RSS MB |")
    print("|---|---:|")
    for name, kib in sorted(by_name.items(), key=lambda item: -item[1]):
        print(f"| {name} | {kib / 1024:.0f} |")
    print("\nAs the stages log it (getrusage): " + ", ".join(f"{k} {v:.0f} MB" for k, v in logged.items()))
    return max(by_name.values()) / 1024


def extrapolate(patch_rate, c_streamed, optimizer):
    """What 10^8 patches would take, on this machine and on 64 ranks."""
    n = 1e8

    def evaluation(p):
        return c_streamed * n / p + optimizer + np.ceil(np.log2(p)) * (2 * ALPHA + BETA * MESSAGE_BYTES)

    print(f"\n10^8 patches (a {n * V * 4 / 2**30:.0f} GB patches.h5): the patch stage at "
          f"{patch_rate:,.0f} patches/s takes {n / patch_rate / 60:.0f} min here, "
          "in the same memory as 10^6 and 10^7.")  # fmt: skip
    for p in (2, 64):
        t = evaluation(p)
        print(f"Training on {p} ranks (streamed, {c_streamed * 1e9:.0f} ns per patch and evaluation "
              "per rank, "
              f"{EVALUATIONS} evaluations for 400 iterations): {t:.2f} s per evaluation, "
              f"{EVALUATIONS * t / 3600:.2f} h in all; each rank holds at most memory_mb of patches "
              f"(its shard would be {n / p * (V + 1) * 4 / 2**30:.1f} GB).")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    counts = [10**4, 10**5] if args.quick else [10**5, 10**6, 10**7]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = folder / "images.h5"
        run([sys.executable, SCRIPTS / "load_images.py", images])
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        print(f"Machine: {os.cpu_count()} CPUs, {ram:.0f} GB RAM; "
              "patch stage on the ten whitened sample photographs, 8x8 patches.")  # fmt: skip
        rates = patch_table(images, folder, counts)
        many_photographs_table(folder, 100 if args.quick else 1000, counts[1])
        small = folder / "patches_160k.h5"
        patch_stage(images, small, 16000 if args.quick else 160000)
        n_small, iterations = (16000, 10) if args.quick else (160000, 30)
        cases = [(small, n_small, 1, cap, iterations) for cap in ((1,) if args.quick else (4, 16))]
        cases.append((folder / f"patches_{counts[1]}.h5", counts[1], 2, 1 if args.quick else 64, 5))
        streaming_table(folder, cases, 1 if args.quick else 3)
        passes_table(small, n_small, (1,) if args.quick else (4, 16, 64), 30)
        reader_table(small, n_small, 1 if args.quick else 4, 3 if args.quick else 15)
        c_streamed = large_table(folder / f"patches_{counts[-1]}.h5", counts[-1], folder, 2,
                                 1 if args.quick else 64, 3)  # fmt: skip
        for count in counts:
            (folder / f"patches_{count}.h5").unlink()
        peak = done_when(folder, 40000 if args.quick else 4_000_000, 1 if args.quick else 64, 3)
        print(f"Largest: {peak:.0f} MB.")
        a = train(small, folder / "opt.h5", 1, 30)
        extrapolate(max(rates.values()), c_streamed, a["optimizer_seconds_max"] / a["evaluations"])


if __name__ == "__main__":
    main()
