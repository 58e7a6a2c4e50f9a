"""Training: read this rank's shard, run L-BFGS on rank 0, write the model."""

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
from scipy.optimize import minimize

from . import SaeError, cli, h5io
from .objective import initial_theta, to_blocks, unpack
from .parallel import DistributedObjective, agree, gather_seconds, shard

log = logging.getLogger("sae.train")

HYPERPARAMETERS = ("hidden", "rho", "lambda", "beta", "iterations", "seed", "block_size", "precision")
READ_ROWS = 8192  # rows per hyperslab read when the shard is loaded whole


class Interrupted(SaeError):
    """SIGTERM arrived; a checkpoint was written at the end of the iteration."""


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


def fit(objective, theta0, iterations: int, history=(), on_iteration=None):
    """L-BFGS-B from theta0 until ``iterations`` iterations in all (rank 0).

    history: rows (cost, grad_norm, seconds) of iterations done before a
    resume. on_iteration(theta, history) runs after every iteration.
    Returns (theta, history array, scipy's result).
    """
    history = [tuple(row) for row in history]
    last = {}
    offset = history[-1][2] if history else 0.0
    start = time.perf_counter()

    def fun(theta):
        cost, grad = objective(theta)
        last.update(theta=theta.copy(), cost=cost, grad=grad)
        return cost, grad

    def callback(intermediate_result):
        if not np.array_equal(intermediate_result.x, last["theta"]):
            fun(intermediate_result.x)
        row = (last["cost"], float(np.linalg.norm(last["grad"])), offset + time.perf_counter() - start)
        history.append(row)
        log.info(
            "iteration %4d/%d  cost %.6f  |grad| %.3e  evaluations %d  %.2f s",
            len(history),
            iterations,
            *row[:2],
            objective.evaluations,
            row[2],
        )
        if on_iteration is not None:
            on_iteration(last["theta"], history)

    result = minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxiter": iterations - len(history)},
    )
    return result.x, np.array(history, dtype=np.float64).reshape(-1, 3), result


class StreamedShard:
    """A shard larger than the memory cap: read from HDF5 piece by piece at every pass.

    Iterating yields arrays of blocks as objective.to_blocks does. Two pieces of
    at most half the cap each take turns: a reader thread reads the next piece
    from HDF5 and lays it out as blocks while the caller computes on the current
    one (h5py and numpy's copies release the GIL). The first pass checks every
    chunk's checksum; later passes re-read the same chunks as stored (h5io.PatchRows.reread).
    """

    def __init__(self, rows: h5io.PatchRows, first: int, stop: int, block_size: int, dtype, cap_bytes):
        width = rows.width
        per_row = (width + 1) * np.dtype(dtype).itemsize + width * rows.itemsize
        blocks = max(1, int(cap_bytes / 2 // (per_row * block_size)))
        self.rows, self.first, self.stop, self.block_size, self.dtype = rows, first, stop, block_size, dtype
        self.piece = blocks * block_size
        self.buffers = [  # (rows as read, the same rows as blocks)
            (np.empty((self.piece, width), rows.dtype), np.empty((blocks, width + 1, block_size), dtype))
            for _ in range(2)
        ]
        # Pieces end on multiples of ``step``: whole HDF5 chunks when a piece holds one, so that
        # no chunk is read twice in a pass; whole blocks in any case (first is a block's first row).
        chunk = rows.chunk_rows if rows.chunk_rows and rows.chunk_rows % block_size == 0 else block_size
        step = self.piece // chunk * chunk or self.piece
        cuts = list(range(-(-(first + 1) // step) * step, stop, step))
        self.pieces = list(zip([first, *cuts], [*cuts, stop], strict=True))
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-reader")
        self.ahead, self.turn = None, 0  # (index, future) of the piece being read into buffers[turn]
        self.checked = False  # the first pass checks the checksums; later ones skip them

    def _load(self, piece: tuple[int, int], buffer, checked: bool) -> list:
        raw, blocks = buffer
        raw = self.rows.reread(*piece, raw) if checked else self.rows.read(*piece, raw)
        return to_blocks(raw, self.block_size, self.dtype, out=blocks[: len(raw) // self.block_size])

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
    """What a checkpoint must match to be resumed: hyperparameters and data identity."""
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
    }


def resume_point(job: Job, run_fingerprint: dict):
    """(theta, history, evaluations) from a usable checkpoint of this run, or None."""
    if job.checkpoint is None or not Path(job.checkpoint).exists():
        return None
    try:
        theta, history, evaluations, saved = h5io.read_checkpoint(job.checkpoint)
    except SaeError as err:
        log.warning("checkpoint not used: %s", err)
        return None
    if saved != run_fingerprint:
        diff = sorted(
            k for k in run_fingerprint.keys() | saved.keys() if run_fingerprint.get(k) != saved.get(k)
        )
        log.warning(
            "checkpoint %s is from a different config or data (%s): not used", job.checkpoint, ", ".join(diff)
        )
        return None
    return theta, history, evaluations


@contextlib.contextmanager
def sigterm_flag():
    """While active, SIGTERM sets the flag instead of ending the process (every rank)."""
    flag = {"set": False}

    def handler(signum, frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(comm, hp: dict, job: Job) -> None:
    """Train on all ranks of ``comm``; rank 0 writes job.model.

    Raises SaeError on every rank alike for a bad patches file, before any
    training; Interrupted on rank 0 after SIGTERM, once the checkpoint is written.
    """
    wall_start = time.perf_counter()
    v, h, block = job.side * job.side, hp["hidden"], hp["block_size"]
    dtype = np.dtype(hp["precision"])
    blocks, n_total = agree(comm, load_shard, comm, job, block, dtype)
    load_seconds = time.perf_counter() - wall_start
    if comm.rank == 0:
        note = ""
        if job.cores_granted is not None and job.cores_granted > comm.size:
            note = f" (Snakemake granted {job.cores_granted} cores; capped at this machine's CPUs)"
        log.info("%d ranks%s; %d patches of %d pixels in blocks of %d", comm.size, note, n_total, v, block)
        if "SLURM_JOB_ID" in os.environ:
            log.info("running in Slurm job %s", os.environ["SLURM_JOB_ID"])
        if isinstance(blocks, StreamedShard):
            log.info("shards exceed train.memory_mb = %g: streaming them from HDF5", job.memory_mb)

    objective = DistributedObjective(
        comm, blocks, n_total, v, h, block, dtype, hp["rho"], hp["lambda"], hp["beta"]
    )
    interrupted = None
    with sigterm_flag() as sigterm:
        comm.Barrier()
        loop_start = time.perf_counter()
        if comm.rank == 0:
            run_fingerprint = fingerprint(hp, job, n_total) if job.checkpoint else {}
            resumed = resume_point(job, run_fingerprint)
            theta0, history, before = resumed or (
                initial_theta(v, h, np.random.default_rng(hp["seed"])),
                (),
                0,
            )
            done = len(history)
            if resumed:
                log.info("resumed from iteration %d (checkpoint %s)", done, job.checkpoint)

            def on_iteration(theta, history):
                due = len(history) % job.checkpoint_every == 0 and len(history) < hp["iterations"]
                if job.checkpoint and (sigterm["set"] or due):
                    evaluations = before + objective.evaluations
                    h5io.write_checkpoint(
                        job.checkpoint, theta, np.array(history), evaluations, run_fingerprint
                    )
                if sigterm["set"]:
                    raise Interrupted(
                        f"stopped by SIGTERM after iteration {len(history)}"
                        + (
                            f"; checkpoint {job.checkpoint} written: run again to resume"
                            if job.checkpoint
                            else ""
                        )
                    )

            try:
                theta, history, result = fit(objective, theta0, hp["iterations"], history, on_iteration)
            except Interrupted as err:
                interrupted = err
            finally:
                objective.stop()
        else:
            objective.serve()
        loop_seconds = time.perf_counter() - loop_start
    peak_rss_mb = cli.peak_rss_mb()
    seconds = gather_seconds(
        comm, [load_seconds, loop_seconds, objective.compute_seconds, objective.comm_seconds, peak_rss_mb]
    )  # columns: h5io.RANK_TIMINGS, then peak RSS
    if comm.rank != 0:
        return
    if interrupted is not None:
        interrupted.collective = True  # the other ranks have left every collective
        raise interrupted

    log.info("stopped after %d iterations in all: %s", len(history), result.message)
    w1, w2, b1, b2 = unpack(theta, v, h)
    timing = {
        **h5io.rank_timing_attrs(seconds[:, :4]),
        h5io.OPTIMIZER_SECONDS: loop_seconds - seconds[0, 2] - seconds[0, 3],
        "peak_rss_mb_max": seconds[:, 4].max(),
        "shard_mb_max": max_shard_bytes(n_total, v, block, comm.size, dtype) / 2**20,
        h5io.WALL_SECONDS: time.perf_counter() - wall_start,
    }
    model_attrs = {
        **{k: hp[k] for k in HYPERPARAMETERS},
        "max_iterations": hp["iterations"],
        "iterations": len(history),
        "resumed_from": done,
        "cost": result.fun,
        "evaluations": before + objective.evaluations,
        "ranks": comm.size,
        "train_seconds": loop_seconds,
        "side": job.side,
        "samples": n_total,
        "streamed": isinstance(blocks, StreamedShard),
        **timing,
    }
    try:
        h5io.write_model(job.model, {"W1": w1, "W2": w2, "b1": b1, "b2": b2}, history, model_attrs)
    except SaeError as err:
        err.collective = True  # the other ranks have left every collective: no abort needed
        raise
    if job.checkpoint:
        Path(job.checkpoint).unlink(missing_ok=True)
    log.info(
        "cost %.6f after %d evaluations; loop %.2f s; wrote %s",
        result.fun,
        before + objective.evaluations,
        loop_seconds,
        job.model,
    )
