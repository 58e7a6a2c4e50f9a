"""Training, as ``run`` performs it on every rank: load the rank's shard, set up the
distributed objective, start or resume the optimizer (sae.lbfgs, on the rank's slices)
from a checkpoint, optimize with checkpoints, gather the timings, write the model.

A checkpoint holds the optimizer's whole state, whole vectors whatever the rank count,
so a resumed run, on any number of ranks, ends bit for bit where the uninterrupted one
does; its fingerprint (config, data, optimizer, numpy) must match this run's for it to
be used. A stop signal (SIGTERM, SIGINT) on any rank stops every rank at the end of the
evaluation under way, with a checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import SaeError, cli, h5io, lbfgs
from .objective import initial_theta, to_blocks, unpack
from .parallel import (
    DistributedObjective,
    Stopped,
    agree,
    describe_hosts,
    gather_hosts,
    gather_seconds,
    ranks_on_hosts,
    shard,
)
from .slices import MAX_SLICES, MEMORY
from .stop import StopRequest

log = logging.getLogger("sae.train")

HYPERPARAMETERS = ("hidden", "rho", "lambda", "beta", "iterations", "seed", "block_size", "precision")
READ_ROWS = 8192  # rows per hyperslab read when the shard is loaded whole
OPTIMIZER_SETTINGS = {"memory": MEMORY}  # lbfgs.LBFGS's (the rest are its defaults)


class Interrupted(SaeError):
    """SIGTERM or SIGINT arrived on some rank; every rank stopped (after the evaluation under way,
    with a checkpoint, in the loop)."""


@dataclass
class Job:
    """What one training run reads and writes, beyond the hyperparameters."""

    patches: str
    model: str
    side: int
    samples: int | None = None  # train on the first rows only
    expect: dict = field(default_factory=dict)  # patches-file attributes the config implies
    memory_mb: float | None = None  # cap on a rank's patches in memory; beyond it, stream
    checkpoint: str | None = None
    checkpoint_every: int = 25
    cores_granted: int | None = None


class StreamedShard:
    """A shard larger than the memory cap: read from HDF5 piece by piece at every pass.

    Iterating yields arrays of blocks as objective.to_blocks does. Two pieces of
    blocks, of 7/16 of the cap each, take turns: a reader thread fills the next
    one while the caller computes on the current one. The reader reads rows into
    a buffer of its own (the last 1/8 of the cap) and lays them out as blocks,
    a buffer at a time; h5io.PatchRows.reread and numpy's copies release the GIL,
    so the compute goes on meanwhile. The first pass checks every chunk's
    checksum; later passes re-read the chunks as stored (h5io.PatchRows.reread).
    """

    def __init__(self, rows: h5io.PatchRows, first: int, stop: int, block_size: int, dtype, cap_bytes):
        width = rows.width
        block_bytes = (width + 1) * block_size * np.dtype(dtype).itemsize
        blocks = max(1, int(cap_bytes * 7 / 16 // block_bytes))
        raw_blocks = max(1, int(cap_bytes / 8 // (width * block_size * rows.itemsize)))
        self.rows, self.block_size, self.dtype = rows, block_size, dtype
        self.raw = np.empty((raw_blocks * block_size, width), rows.dtype)  # the reader thread's
        self.buffers = [np.empty((blocks, width + 1, block_size), dtype) for _ in range(2)]
        piece = blocks * block_size  # first is a block's first row: pieces are whole blocks
        cuts = list(range(first + piece, stop, piece))
        self.pieces = list(zip([first, *cuts], [*cuts, stop], strict=True))
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-reader")
        self.ahead, self.turn = None, 0  # (index, future) of the piece being read into buffers[turn]
        self.checked = False  # the first pass checks the checksums; later ones skip them

    def _load(self, piece: tuple[int, int], blocks: np.ndarray, checked: bool) -> list:
        """Rows [start, stop) into ``blocks`` (and a short last block, at the end of the data)."""
        start, stop = piece
        done, tail = 0, []
        for a in range(start, stop, len(self.raw)):
            b = min(a + len(self.raw), stop)
            raw = self.rows.reread(a, b, self.raw) if checked else self.rows.read(a, b, self.raw)
            k = (b - a) // self.block_size
            tail = to_blocks(raw, self.block_size, self.dtype, out=blocks[done : done + k])[1:]
            done += k
        return [blocks[:done], *tail]

    def _read_ahead(self, i: int) -> None:
        self.turn = 1 - self.turn  # the buffer the caller is not using
        future = self.reader.submit(self._load, self.pieces[i], self.buffers[self.turn], self.checked)
        self.ahead = (i, future)

    def __iter__(self):
        count = len(self.pieces)
        if self.ahead is None or self.ahead[0] != 0:  # first pass, or the last one stopped early
            self._read_ahead(0)
        for i in range(count):
            ready = self.ahead[1].result()  # the reader's errors are raised here
            self.checked |= i + 1 == count  # every row read and checked once
            self._read_ahead((i + 1) % count)  # after the last: the next pass's first
            yield from ready


def load_shard(comm, job: Job, block_size: int, dtype=np.float64):
    """This rank's rows as blocks (see objective.to_blocks), and N: (blocks, n_total).

    Rows are read as hyperslabs of whole blocks. If they would take more
    than job.memory_mb in memory, the blocks are a StreamedShard instead.
    """
    n_total, attrs = h5io.patches_info(job.patches, job.side)
    for key, wanted in job.expect.items():
        if key in attrs and attrs[key] != wanted:
            raise SaeError(
                f"{job.patches}: made with patches.{key} = {attrs[key]}, but the config says {wanted}"
                " (a patches file from a different config)"
            )
    if job.samples is not None:
        if job.samples > n_total:
            raise SaeError(f"{job.patches}: {job.samples} samples requested, the file has {n_total}")
        n_total = job.samples
    first, stop = shard(n_total, block_size, comm.rank, comm.size)
    v = job.side * job.side
    rows = h5io.PatchRows(job.patches)
    if job.memory_mb is not None and (stop - first) * (v + 1) * dtype.itemsize > job.memory_mb * 2**20:
        streamed = StreamedShard(rows, first, stop, block_size, dtype, job.memory_mb * 2**20)
        for _ in streamed:  # read once: damaged rows are an error here, agreed by all ranks
            pass
        return streamed, n_total
    with rows:
        full = np.empty(((stop - first) // block_size, v + 1, block_size), dtype=dtype)
        blocks, done = [full], 0
        piece = block_size * max(1, READ_ROWS // block_size)
        for a in range(first, stop, piece):
            raw = rows.read(a, min(a + piece, stop))
            k = len(raw) // block_size
            blocks += to_blocks(raw, block_size, dtype, out=full[done : done + k])[1:]  # the short last block
            done += k
    return blocks, n_total


def max_shard_bytes(n: int, v: int, block_size: int, ranks: int, dtype) -> int:
    """Bytes of the largest rank's patches in memory (v + 1 values per patch)."""
    rows = max(b - a for a, b in (shard(n, block_size, r, ranks) for r in range(ranks)))
    return rows * (v + 1) * np.dtype(dtype).itemsize


def fingerprint(hp: dict, job: Job, n_total: int) -> dict:
    """What a checkpoint must match to be resumed: hyperparameters, data, optimizer and numpy.

    The optimizer's name, version and settings (its slices included), and numpy's version
    (its BLAS computes the sums), decide the bits of the steps to come.
    """
    _, attrs = h5io.patches_info(job.patches, job.side)
    data = {k: attrs[k] for k in ("seed", "count", "sigma") if k in attrs}
    with h5io.PatchRows(job.patches) as rows:
        edges = [rows.read(0, min(n_total, 1024)), rows.read(max(0, n_total - 1024), n_total)]
    return {
        **{k: hp[k] for k in HYPERPARAMETERS if k != "iterations"},
        "side": job.side,
        "samples": n_total,
        "patches": {k: np.asarray(v).item() for k, v in data.items()},
        "rows_sha256": hashlib.sha256(b"".join(np.ascontiguousarray(e).tobytes() for e in edges)).hexdigest(),
        "optimizer": {
            "name": lbfgs.NAME,
            "version": lbfgs.VERSION,
            "max_slices": MAX_SLICES,
            **OPTIMIZER_SETTINGS,
        },
        "numpy": np.__version__,
    }


def usable_checkpoint(job: Job, run_fingerprint: dict) -> bool:
    """Rank 0: whether this run's checkpoint exists and fits it (the reason logged when not)."""
    if job.checkpoint is None or not Path(job.checkpoint).exists():
        return False
    try:
        saved = h5io.checkpoint_fingerprint(job.checkpoint)
    except SaeError as err:
        log.warning("checkpoint not used: %s", err)
        return False
    if saved != run_fingerprint:
        diff = sorted(
            k for k in run_fingerprint.keys() | saved.keys() if run_fingerprint.get(k) != saved.get(k)
        )
        log.warning(
            "checkpoint %s is from a different config, data, optimizer or numpy (%s): not used",
            job.checkpoint,
            ", ".join(diff),
        )
        return False
    return True


def describe_stops(stops: np.ndarray, hosts: list[str]) -> str:
    """'SIGTERM (rank 1 on node2)': each signal received, and the ranks and hosts that received it."""
    parts = []
    for signum in sorted({int(s) for s in stops if s}):
        ranks = [r for r, s in enumerate(stops) if s == signum]
        parts.append(f"{signal.Signals(signum).name} ({ranks_on_hosts(hosts, ranks)})")
    return " and ".join(parts)


@dataclass
class Training:
    """The optimizer (every rank's, on its slices) and what it has done: the part of a run a
    checkpoint holds (history and fingerprint: rank 0's)."""

    optimizer: lbfgs.LBFGS
    history: list  # rows (cost, grad_norm, seconds), one per iteration
    resumes: list  # the iterations done before each resume of this training, oldest first
    fingerprint: dict


def run(comm, hp: dict, job: Job, request: StopRequest) -> None:
    """Train on all ranks of ``comm``; rank 0 writes job.model.

    request: this rank's stop signals (sae.stop.install, called when the script started).

    Raises SaeError on every rank alike for a bad patches file, before any training;
    after a stop signal on any rank, Interrupted on rank 0 (once the checkpoint is
    written) and SystemExit(0) on the others: they leave quietly, and the job's status is rank 0's
    (under ``srun --kill-on-bad-exit`` a failing status on another rank could end rank 0 before
    it has written the checkpoint and its error line).
    """
    wall_start = time.perf_counter()
    hosts = gather_hosts(comm)
    blocks, n_total = load(comm, hp, job, request, hosts)
    load_seconds = time.perf_counter() - wall_start
    objective = set_up_objective(comm, blocks, n_total, hp, job, request)
    try:
        training = start_or_resume(comm, objective, hp, job, n_total)
        comm.Barrier()
        loop_start = time.perf_counter()
        try:
            optimize(objective, training, hp["iterations"], job, hosts)
        except Interrupted as err:
            err.collective = True  # every rank is leaving
            raise
        loop_seconds = time.perf_counter() - loop_start
    finally:
        objective.close()
    timings = gather_timings(comm, objective, load_seconds, loop_seconds)
    x = objective.collect(training.optimizer.x)
    if comm.rank != 0:
        return
    timings[h5io.WALL_SECONDS] = time.perf_counter() - wall_start
    shard_bytes = max_shard_bytes(n_total, job.side**2, hp["block_size"], comm.size, hp["precision"])
    timings["shard_mb_max"] = shard_bytes / 2**20
    write(training, x, hp, job, n_total, comm.size, isinstance(blocks, StreamedShard), timings)


def load(comm, hp: dict, job: Job, request: StopRequest, hosts):
    """Every rank: its shard of the patches (blocks, n_total); an error in the data, or a stop
    signal on any rank, stops all ranks alike."""
    v, block, dtype = job.side * job.side, hp["block_size"], np.dtype(hp["precision"])
    try:
        blocks, n_total = agree(comm, load_shard, comm, job, block, dtype, request=request)
    except Stopped as stop:
        if comm.rank != 0:
            raise SystemExit(0) from None  # quietly: rank 0 reports (see run)
        raise Interrupted(
            f"stopped by {describe_stops(stop.signals, hosts)} while loading the patches"
        ) from None
    if comm.rank == 0:
        note = ""
        if job.cores_granted is not None and job.cores_granted > comm.size:
            note = f" (Snakemake granted {job.cores_granted} cores; capped at this machine's CPUs)"
        log.info("%d ranks%s; %d patches of %d pixels in blocks of %d", comm.size, note, n_total, v, block)
        if "SLURM_JOB_ID" in os.environ:
            log.info("running in Slurm job %s", os.environ["SLURM_JOB_ID"])
        log.info("hosts: %s", describe_hosts(hosts))
        if isinstance(blocks, StreamedShard):
            log.info("shards exceed train.memory_mb = %g: streaming them from HDF5", job.memory_mb)
    return blocks, n_total


def set_up_objective(comm, blocks, n_total: int, hp: dict, job: Job, request) -> DistributedObjective:
    """Every rank: J and its gradient over all ranks' patches, for the optimizer on its slices."""
    return DistributedObjective(
        comm, blocks, n_total, job.side**2, hp["hidden"], hp["block_size"], np.dtype(hp["precision"]),
        hp["rho"], hp["lambda"], hp["beta"], OPTIMIZER_SETTINGS["memory"], request,
    )  # fmt: skip


def start_or_resume(comm, objective: DistributedObjective, hp: dict, job: Job, n_total: int) -> Training:
    """Every rank: the optimizer on its slices, from this run's checkpoint if there is a usable
    one (rank 0 decides), else from scratch."""
    run_fingerprint = fingerprint(hp, job, n_total) if job.checkpoint and comm.rank == 0 else {}
    resume = np.array([comm.rank == 0 and usable_checkpoint(job, run_fingerprint)], dtype=np.int64)
    comm.Bcast(resume, root=0)
    length, settings = objective.slices.length, OPTIMIZER_SETTINGS
    if not resume[0]:
        theta0 = initial_theta(job.side**2, hp["hidden"], np.random.default_rng(hp["seed"]))
        x0 = objective.slices.pad(theta0)[objective.lo : objective.hi]
        optimizer = lbfgs.LBFGS(x0, length, objective.combine, point=objective.point, **settings)
        return Training(optimizer, [], [], run_fingerprint)
    state, history, resumes, _ = agree(comm, h5io.read_checkpoint, job.checkpoint, objective.lo, objective.hi)
    optimizer = lbfgs.LBFGS.from_state(state, length, objective.combine, point=objective.point, **settings)
    training = Training(optimizer, [tuple(r) for r in history], [*resumes, len(history)], run_fingerprint)
    if comm.rank == 0:
        log.info(
            "resumed from iteration %d, evaluation %d (checkpoint %s)",
            len(history),
            optimizer.evaluations,
            job.checkpoint,
        )
    return training


class ProgressLines:
    """The per-iteration log lines, logged together at most every cli.FLUSH_SECONDS.

    One log record per line cost rank 0 about 25 µs per iteration (the record,
    its time stamp, the formatting), while the other ranks wait. Each line still
    carries the time stamp of the batch it was logged in.
    """

    def __init__(self):
        self.lines: list[str] = []
        self.logged = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)
        if time.monotonic() - self.logged >= cli.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            stamp = time.strftime("%H:%M:%S ")
            log.info("\n".join(self.lines).replace("\n", "\n" + stamp))  # the first stamp: the formatter's
        self.lines, self.logged = [], time.monotonic()


def optimize(objective, training: Training, iterations: int, job: Job, hosts) -> None:
    """Every rank: L-BFGS until ``iterations`` in all, a checkpoint every job.checkpoint_every.

    After a stop signal on any rank (seen by all in the evaluation's combine), writes a
    checkpoint at the end of the evaluation under way (mid-line-search, too) and raises
    Interrupted on every rank.
    """
    opt, history = training.optimizer, training.history
    rank0 = objective.comm.rank == 0
    offset = history[-1][2] if history else 0.0
    start = time.perf_counter()
    progress = ProgressLines()
    try:
        while not opt.stopped and opt.iterations < iterations:
            objective.gather()
            if opt.tell(*objective.gradient(opt.gradient)):
                if rank0:
                    row = (opt.f, opt.grad_norm, offset + time.perf_counter() - start)
                    history.append(row)
                    progress.add(
                        f"iteration {opt.iterations:4d}/{iterations}  cost {row[0]:.6f}  |grad| {row[1]:.3e}"
                        f"  evaluations {opt.evaluations}  {row[2]:.2f} s"
                    )
                if opt.iterations % job.checkpoint_every == 0 and opt.iterations < iterations:
                    save_checkpoint(objective, training, job)
            if objective.stops.any():
                saved = save_checkpoint(objective, training, job)
                if not rank0:
                    raise SystemExit(0)  # quietly: rank 0 reports (see run)
                raise Interrupted(
                    f"stopped by {describe_stops(objective.stops, hosts)} after iteration {opt.iterations}"
                    f" (evaluation {opt.evaluations})"
                    + (f"; checkpoint {job.checkpoint} written: run again to resume" if saved else "")
                )
    finally:
        progress.flush()
    if rank0:
        log.info("stopped after %d iterations in all: %s", opt.iterations, opt.message)


def save_checkpoint(objective: DistributedObjective, training: Training, job: Job) -> bool:
    """Every rank: the optimizer's whole state and the history, if the run has a checkpoint file.

    Rank 0 writes it; the split vectors reach it one row at a time (parallel.collect).
    """
    if not job.checkpoint:
        return False
    state = training.optimizer.state()
    size = objective.slices.size
    split = {}
    for name in lbfgs.ARRAYS:
        value = state.pop(name)
        gathered = (objective.collect(row) for row in np.atleast_2d(value))
        split[name] = h5io.Split((*value.shape[:-1], size), gathered)
    if objective.comm.rank != 0:
        for value in split.values():
            for _ in value.rows:
                pass
        return True
    h5io.write_checkpoint(
        job.checkpoint,
        {**split, **state},
        np.array(training.history, dtype=np.float64).reshape(-1, 3),
        training.resumes,
        training.fingerprint,
    )
    return True


def gather_timings(comm, objective, load_seconds: float, loop_seconds: float) -> dict | None:
    """Rank 0: the model file's timing and memory attributes, over all ranks (None elsewhere)."""
    optimizer_seconds = loop_seconds - objective.compute_seconds - objective.comm_seconds
    seconds = gather_seconds(
        comm,
        [load_seconds, loop_seconds, objective.compute_seconds, objective.comm_seconds, optimizer_seconds,
         cli.peak_rss_mb()],
    )  # columns: h5io.RANK_TIMINGS, then peak RSS  # fmt: skip
    if comm.rank != 0:
        return None
    return {
        **h5io.rank_timing_attrs(seconds[:, :-1]),
        "peak_rss_mb_max": seconds[:, -1].max(),
        "train_seconds": loop_seconds,  # rank 0's
    }


def write(training: Training, x, hp: dict, job: Job, n_total: int, ranks: int, streamed: bool, timings: dict):
    """Rank 0: the model file (then the checkpoint is no longer needed)."""
    opt, history = training.optimizer, training.history
    w1, w2, b1, b2 = unpack(x, job.side**2, hp["hidden"])
    model_attrs = {
        **{k: hp[k] for k in HYPERPARAMETERS},
        "max_iterations": hp["iterations"],
        "iterations": len(history),
        "resumed_from": np.array(training.resumes, dtype=np.int64),  # every resume's iteration
        "cost": opt.f,
        "evaluations": opt.evaluations,
        "ranks": ranks,
        "side": job.side,
        "samples": n_total,
        "streamed": streamed,
        **timings,
    }
    history = np.array(history, dtype=np.float64).reshape(-1, 3)
    try:
        h5io.write_model(job.model, {"W1": w1, "W2": w2, "b1": b1, "b2": b2}, history, model_attrs)
    except SaeError as err:
        err.collective = True  # the other ranks have left every collective: no abort needed
        raise
    if job.checkpoint:
        Path(job.checkpoint).unlink(missing_ok=True)
    log.info(
        "cost %.6f after %d evaluations; loop %.2f s; wrote %s",
        opt.f,
        opt.evaluations,
        timings["train_seconds"],
        job.model,
    )
