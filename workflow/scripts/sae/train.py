"""Training, as ``run`` performs it: load each rank's shard, set up the distributed
objective, start or resume rank 0's optimizer (sae.lbfgs) from a checkpoint, optimize
with checkpoints, gather the timings, write the model.

A checkpoint holds the optimizer's whole state, so a resumed run ends bit for bit
where the uninterrupted one does; its fingerprint (config, data, optimizer, numpy)
must match this run's for it to be used.
"""

from __future__ import annotations

import contextlib
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
from .parallel import DistributedObjective, agree, describe_hosts, gather_hosts, gather_seconds, shard

log = logging.getLogger("sae.train")

HYPERPARAMETERS = ("hidden", "rho", "lambda", "beta", "iterations", "seed", "block_size", "precision")
READ_ROWS = 8192  # rows per hyperslab read when the shard is loaded whole
OPTIMIZER_SETTINGS = {"memory": 5}  # lbfgs.LBFGS's (the rest are its defaults); README: training speed


class Interrupted(SaeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written at the end of the evaluation under way."""


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

    The optimizer's name, version and settings, and numpy's version (its BLAS
    computes the optimizer's products), decide the bits of the steps to come.
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
        "optimizer": {"name": lbfgs.NAME, "version": lbfgs.VERSION, **OPTIMIZER_SETTINGS},
        "numpy": np.__version__,
    }


def resume_point(job: Job, run_fingerprint: dict):
    """(optimizer state, history, earlier resumes) from a usable checkpoint of this run, or None
    (reason logged)."""
    if job.checkpoint is None or not Path(job.checkpoint).exists():
        return None
    try:
        state, history, resumes, saved = h5io.read_checkpoint(job.checkpoint)
    except SaeError as err:
        log.warning("checkpoint not used: %s", err)
        return None
    if saved != run_fingerprint:
        diff = sorted(
            k for k in run_fingerprint.keys() | saved.keys() if run_fingerprint.get(k) != saved.get(k)
        )
        log.warning(
            "checkpoint %s is from a different config, data, optimizer or numpy (%s): not used",
            job.checkpoint,
            ", ".join(diff),
        )
        return None
    return state, history, resumes


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # Slurm's time limit; Ctrl-C (mpiexec passes it to every rank)


@contextlib.contextmanager
def stop_flag():
    """While active, a stop signal sets the flag to its name instead of ending the process (every rank).

    Rank 0 then stops at the end of the evaluation under way and the others when it
    releases them, so no rank is left waiting in a collective for one that is gone.
    """
    flag = {"set": None}

    def handler(signum, frame):
        flag["set"] = signal.Signals(signum).name

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclass
class Training:
    """Rank 0's optimizer and what it has done: the part of a run a checkpoint holds."""

    optimizer: lbfgs.LBFGS
    history: list  # rows (cost, grad_norm, seconds), one per iteration
    resumes: list  # the iterations done before each resume of this training, oldest first
    fingerprint: dict


def run(comm, hp: dict, job: Job) -> None:
    """Train on all ranks of ``comm``; rank 0 writes job.model.

    Raises SaeError on every rank alike for a bad patches file, before any
    training; Interrupted on rank 0 after SIGTERM or SIGINT, once the checkpoint is written.
    """
    wall_start = time.perf_counter()
    blocks, n_total = load(comm, hp, job)
    load_seconds = time.perf_counter() - wall_start
    objective = set_up_objective(comm, blocks, n_total, hp, job)
    interrupted = training = None
    with stop_flag() as stop:
        comm.Barrier()
        loop_start = time.perf_counter()
        if comm.rank == 0:
            try:
                training = start_or_resume(hp, job, n_total)
                optimize(objective, training, hp["iterations"], job, stop)
            except Interrupted as err:
                interrupted = err
            finally:
                objective.stop()
        else:
            objective.serve()
        loop_seconds = time.perf_counter() - loop_start
    timings = gather_timings(comm, objective, load_seconds, loop_seconds)
    if comm.rank != 0:
        return
    if interrupted is not None:
        interrupted.collective = True  # the other ranks have left every collective
        raise interrupted
    timings[h5io.WALL_SECONDS] = time.perf_counter() - wall_start
    shard_bytes = max_shard_bytes(n_total, job.side**2, hp["block_size"], comm.size, hp["precision"])
    timings["shard_mb_max"] = shard_bytes / 2**20
    write(training, hp, job, n_total, comm.size, isinstance(blocks, StreamedShard), timings)


def load(comm, hp: dict, job: Job):
    """Every rank: its shard of the patches (blocks, n_total); an error in the data stops all ranks alike."""
    v, block, dtype = job.side * job.side, hp["block_size"], np.dtype(hp["precision"])
    blocks, n_total = agree(comm, load_shard, comm, job, block, dtype)
    hosts = gather_hosts(comm)
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


def set_up_objective(comm, blocks, n_total: int, hp: dict, job: Job) -> DistributedObjective:
    """Every rank: J and its gradient over all ranks' patches."""
    return DistributedObjective(
        comm, blocks, n_total, job.side**2, hp["hidden"], hp["block_size"], np.dtype(hp["precision"]),
        hp["rho"], hp["lambda"], hp["beta"],
    )  # fmt: skip


def start_or_resume(hp: dict, job: Job, n_total: int) -> Training:
    """Rank 0: the optimizer from this run's checkpoint if there is a usable one, else from scratch."""
    run_fingerprint = fingerprint(hp, job, n_total) if job.checkpoint else {}
    resumed = resume_point(job, run_fingerprint)
    if resumed is None:
        theta0 = initial_theta(job.side**2, hp["hidden"], np.random.default_rng(hp["seed"]))
        return Training(lbfgs.LBFGS(theta0, **OPTIMIZER_SETTINGS), [], [], run_fingerprint)
    state, history, resumes = resumed
    optimizer = lbfgs.LBFGS.from_state(state, **OPTIMIZER_SETTINGS)
    training = Training(optimizer, [tuple(r) for r in history], [*resumes, len(history)], run_fingerprint)
    log.info(
        "resumed from iteration %d, evaluation %d (checkpoint %s)",
        len(history),
        training.optimizer.evaluations,
        job.checkpoint,
    )
    return training


class ProgressLines:
    """The per-iteration log lines, logged together at most every cli.FLUSH_SECONDS.

    One log record per line cost rank 0 about 25 µs per iteration (the record,
    its time stamp, the formatting), while the other ranks wait: a tenth of a
    two-rank evaluation at 10k patches. Each line still carries the time stamp
    of the batch it was logged in.
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


def optimize(objective, training: Training, iterations: int, job: Job, stop: dict) -> None:
    """Rank 0: L-BFGS until ``iterations`` in all, a checkpoint every job.checkpoint_every.

    After SIGTERM or SIGINT (``stop``), writes a checkpoint at the end of the evaluation under way
    (mid-line-search, too) and raises Interrupted.
    """
    opt, history = training.optimizer, training.history
    offset = history[-1][2] if history else 0.0
    start = time.perf_counter()
    progress = ProgressLines()
    try:
        while not opt.stopped and opt.iterations < iterations:
            if opt.tell(*objective(opt.point)):
                row = (opt.f, opt.grad_norm, offset + time.perf_counter() - start)
                history.append(row)
                cost, grad_norm, seconds = row
                progress.add(
                    f"iteration {len(history):4d}/{iterations}  cost {cost:.6f}  |grad| {grad_norm:.3e}"
                    f"  evaluations {opt.evaluations}  {seconds:.2f} s"
                )
                if len(history) % job.checkpoint_every == 0 and len(history) < iterations:
                    save_checkpoint(training, job)
            if stop["set"]:
                saved = save_checkpoint(training, job)
                raise Interrupted(
                    f"stopped by {stop['set']} after iteration {len(history)} (evaluation {opt.evaluations})"
                    + (f"; checkpoint {job.checkpoint} written: run again to resume" if saved else "")
                )
    finally:
        progress.flush()
    log.info("stopped after %d iterations in all: %s", len(history), opt.message)


def save_checkpoint(training: Training, job: Job) -> bool:
    """Rank 0: the optimizer's whole state and the history, if the run has a checkpoint file."""
    if not job.checkpoint:
        return False
    h5io.write_checkpoint(
        job.checkpoint,
        training.optimizer.state(),
        np.array(training.history, dtype=np.float64).reshape(-1, 3),
        training.resumes,
        training.fingerprint,
    )
    return True


def gather_timings(comm, objective, load_seconds: float, loop_seconds: float) -> dict | None:
    """Rank 0: the model file's timing and memory attributes, over all ranks (None elsewhere)."""
    peak_rss_mb = cli.peak_rss_mb()
    seconds = gather_seconds(
        comm, [load_seconds, loop_seconds, objective.compute_seconds, objective.comm_seconds, peak_rss_mb]
    )  # columns: h5io.RANK_TIMINGS, then peak RSS
    if comm.rank != 0:
        return None
    return {
        **h5io.rank_timing_attrs(seconds[:, :4]),
        h5io.OPTIMIZER_SECONDS: loop_seconds - seconds[0, 2] - seconds[0, 3],
        "peak_rss_mb_max": seconds[:, 4].max(),
        "train_seconds": loop_seconds,  # rank 0's
    }


def write(training: Training, hp: dict, job: Job, n_total: int, ranks: int, streamed: bool, timings: dict):
    """Rank 0: the model file (then the checkpoint is no longer needed)."""
    opt, history = training.optimizer, training.history
    w1, w2, b1, b2 = unpack(opt.x, job.side**2, hp["hidden"])
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
