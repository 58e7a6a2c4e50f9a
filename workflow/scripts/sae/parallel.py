"""The training's MPI: shards of fixed blocks, the distributed objective, ending ranks together.

Owns every MPI call of the training (the sweep's microbenchmark of the same
collectives is sae.sweep.collectives).

Every rank holds the whole model and the rows of its own blocks. Rank 0 runs
the optimizer; each evaluation is one Bcast of the parameters (with a command
word: evaluate or stop) and one Reduce of the fixed-size buffer of exact block
sums, both uppercase, buffer-based collectives on numpy arrays. A watchdog
ends a rank that waits in one of them longer than SAE_MPI_TIMEOUT seconds (a
peer on a lost node never answers, and TCP would wait for many minutes).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import traceback

import numpy as np
from mpi4py import MPI

from . import SaeError
from .cli import error_line, flush_logs
from .objective import BlockKernel, finish, n_params

EVALUATE, STOP = 1.0, 0.0
TIMEOUT_ENV, DEFAULT_TIMEOUT = "SAE_MPI_TIMEOUT", 300.0  # seconds one collective may wait
HOST_BYTES = 256  # a host name's bytes in gather_hosts (Linux allows 64)


def shard(n: int, block_size: int, rank: int, size: int):
    """Rows [first, stop) of a rank: whole blocks, spread as evenly as can be."""
    blocks = -(-n // block_size)
    b0, b1 = blocks * rank // size, blocks * (rank + 1) // size
    return min(b0 * block_size, n), min(b1 * block_size, n)


def collective_timeout() -> float:
    """Seconds a rank may wait in one training collective: $SAE_MPI_TIMEOUT, default 300."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SaeError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds > 0")
    return seconds


class Watchdog:
    """Ends this process if one wait (between ``arm`` and ``disarm``) lasts over ``timeout`` s.

    A thread checks about four times per timeout. On expiry it writes pending log
    lines and one ``error:`` line, then exits the process with status 1 at once
    (no MPI call: the library may be stuck): under srun --kill-on-bad-exit or
    mpiexec, that ends the job's other ranks too. mpi4py releases the GIL in
    blocking calls, so the thread runs while the main one waits.
    """

    def __init__(self, timeout: float, who: str):
        self.timeout, self.who = timeout, who
        self.since: float | None = None  # monotonic start of the current wait
        self.name = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="mpi-watchdog", daemon=True)
        self.thread.start()

    def arm(self, name: str) -> None:
        """A wait in ``name`` begins."""
        self.name, self.since = name, time.monotonic()

    def disarm(self) -> None:
        """The wait is over."""
        self.since = None

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.timeout / 4)):
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                flush_logs()
                print(
                    f"error: {self.who} waited over {self.timeout:g} s in {self.name}: a peer rank is"
                    f" dead or unreachable (lost node or network?); set {TIMEOUT_ENV} to wait longer",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)

    def close(self) -> None:
        self.done.set()


class DistributedObjective:
    """J(theta) and its gradient over all ranks' patches, for rank 0's optimizer.

    blocks: an iterable of this rank's arrays of blocks (see
    objective.to_blocks) in the compute dtype, iterated once per evaluation.
    Times spent in local compute and in collectives (waiting included) are
    kept per rank. With more than one rank, a Watchdog bounds each wait in a
    collective by collective_timeout() seconds.
    """

    def __init__(self, comm, blocks, n_total, v, h, block_size, dtype, rho, lambda_, beta):
        self.comm, self.blocks, self.n_total, self.v, self.h = comm, blocks, n_total, v, h
        self.hyper = (rho, lambda_, beta)
        self.kernel = BlockKernel(v, h, block_size, dtype)
        # max |x| without a temporary the size of the shard
        local_max = np.array(
            [max(max(b[:, :-1].max(initial=0), -b[:, :-1].min(initial=0)) for b in blocks)], dtype=np.float64
        )
        self.xmax = np.empty(1)
        comm.Allreduce(local_max, self.xmax, op=MPI.MAX)
        self.message = np.empty(n_params(self.v, h) + 1)  # theta, then the command
        self.units = np.empty(self.kernel.sums.size)
        self.totals = np.empty_like(self.units) if comm.rank == 0 else None
        self.grad = np.empty(n_params(self.v, h)) if comm.rank == 0 else None
        self.compute_seconds = self.comm_seconds = 0.0
        self.evaluations = 0
        who = f"rank {comm.rank} on {socket.gethostname()}"
        # a bad $SAE_MPI_TIMEOUT is one error line from every rank alike (agree), not an abort
        self.watchdog = Watchdog(agree(comm, collective_timeout), who) if comm.size > 1 else None

    def _local_sums(self):
        start = time.perf_counter()
        step = self.kernel.set_params(self.message[:-1], self.n_total, self.xmax[0])
        self.units[:] = 0.0
        for blocks in self.blocks:
            self.kernel.accumulate(blocks, self.units)
        self.compute_seconds += time.perf_counter() - start
        self.evaluations += 1
        return step

    def _collective(self, call, *args, **kwargs):
        start = time.perf_counter()
        if self.watchdog is not None:
            self.watchdog.arm(f"MPI_{call.__name__}")
        call(*args, **kwargs)
        if self.watchdog is not None:
            self.watchdog.disarm()
        self.comm_seconds += time.perf_counter() - start

    def _close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()

    def __call__(self, theta):
        """Rank 0: evaluate at theta on all ranks; returns (cost, gradient: a reused buffer)."""
        self.message[:-1] = theta
        self.message[-1] = EVALUATE
        self._collective(self.comm.Bcast, self.message, root=0)
        step = self._local_sums()
        self._collective(self.comm.Reduce, self.units, self.totals, op=MPI.SUM, root=0)
        theta = self.message[:-1]
        return finish(self.totals, step, theta, self.n_total, self.v, self.h, *self.hyper, out=self.grad)

    def serve(self) -> None:
        """Ranks other than 0: evaluate whenever rank 0 asks, until it says stop."""
        while True:
            self._collective(self.comm.Bcast, self.message, root=0)
            if self.message[-1] == STOP:
                self._close()
                return
            self._local_sums()
            self._collective(self.comm.Reduce, self.units, None, op=MPI.SUM, root=0)

    def stop(self) -> None:
        """Rank 0: release the serving ranks."""
        self.message[-1] = STOP
        self._collective(self.comm.Bcast, self.message, root=0)
        self._close()


def agree(comm, task, *args):
    """Run ``task(*args)`` on every rank; if it raises SaeError on any, all ranks stop.

    The lowest failing rank raises its SaeError (one line to report), the
    others SystemExit(1), so every rank leaves together and none waits in a
    collective. Returns the task's result.
    """
    try:
        result, error = task(*args), None
    except SaeError as err:
        result, error = None, err
    mine = np.array([comm.rank if error else comm.size])
    first = np.empty(1, dtype=mine.dtype)
    comm.Allreduce(mine, first, op=MPI.MIN)
    if first[0] == comm.size:
        return result
    if comm.rank == first[0]:
        error.collective = True  # every rank is leaving: no need to abort the others
        raise error
    raise SystemExit(1)


@contextlib.contextmanager
def abort_on_failure(comm):
    """Let an error end only this rank when all ranks leave alike, else abort them all.

    An error marked ``collective`` (see ``agree``; or raised after the last
    collective) and SystemExit pass through; any other failure on one rank,
    Ctrl-C outside the training loop included (a rank blocked in a collective
    would not see its own), must not leave the others waiting in a collective,
    so it is reported here and ends the job with MPI_Abort.

    Unlike ``python -m mpi4py script.py``, which calls MPI_Abort for every
    unhandled exception, SystemExit with a nonzero status included: errors all
    ranks agreed on end each rank normally with exit status 1 and one ``error:``
    line (no abort, so no launcher noise and Snakemake sees an ordinary
    failure); only a failure on one rank aborts, after the batched log lines
    are written and with a SaeError as one line rather than a traceback.
    """
    try:
        yield
    except SystemExit:
        raise
    except (Exception, KeyboardInterrupt) as err:
        if comm.size == 1 or getattr(err, "collective", False):
            raise
        if not error_line(err):
            flush_logs()
            traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)


def gather_seconds(comm, values) -> np.ndarray | None:
    """Per-rank timing values gathered on rank 0 as a (ranks, k) array."""
    mine = np.asarray(values, dtype=np.float64)
    out = np.empty((comm.size, len(mine))) if comm.rank == 0 else None
    comm.Gather(mine, out, root=0)
    return out


def gather_hosts(comm) -> list[str] | None:
    """Every rank's host name, gathered on rank 0 (None elsewhere), in rank order."""
    mine = np.zeros(HOST_BYTES, dtype=np.uint8)
    name = socket.gethostname().encode()[:HOST_BYTES]
    mine[: len(name)] = np.frombuffer(name, dtype=np.uint8)
    out = np.empty((comm.size, HOST_BYTES), dtype=np.uint8) if comm.rank == 0 else None
    comm.Gather(mine, out, root=0)
    if comm.rank != 0:
        return None
    return [row.tobytes().rstrip(b"\0").decode(errors="replace") for row in out]


def describe_hosts(hosts: list[str]) -> str:
    """'node1 (ranks 0-1), node2 (ranks 2-3)': each host and its ranks, in order of first rank."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        ranks.setdefault(host, []).append(rank)

    def spans(rs):
        runs, start = [], rs[0]
        for prev, cur in zip(rs, [*rs[1:], None], strict=True):
            if cur != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        return ", ".join(runs)

    return "; ".join(f"{host} (rank{'s' if len(rs) > 1 else ''} {spans(rs)})" for host, rs in ranks.items())
