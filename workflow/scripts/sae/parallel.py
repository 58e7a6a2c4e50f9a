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
from .gradient import gradient_slices
from .kernel import BlockKernel, lay_out
from .lbfgs import sum_rows
from .objective import n_params
from .slices import Slices, row_length
from .stop import StopRequest

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
    """J and its gradient over all ranks' patches, for the optimizer every rank runs on its slices.

    blocks: an iterable of this rank's arrays of blocks (see objective.to_blocks) in
    the compute dtype, iterated once per evaluation. One evaluation is three
    collectives, each on fixed-size numpy buffers:

    1. ``gather()``: an Allgatherv of every rank's slices of the trial point into
       ``theta``, the whole parameter vector (the optimizer writes its slices in place:
       ``point`` is this rank's part of ``theta``);
    2. ``gradient(out)``: this rank's sums over its rows, laid out by parameter
       (objective.Sums) and Reduce_scatter'ed, so that each rank gets the totals of its
       slices' parameters and the few every rank needs; from them, its slices of the
       gradient and its part of J;
    3. ``combine(partials)``, the optimizer's: an Allgatherv of every rank's rows of
       per-slice dot products, summed in slice order on every rank. Each rank's part
       ends with one more row, whose first value is the stop signal this rank has
       received (0: none): ``stops`` lists every rank's after each evaluation.

    Times spent in local compute and in collectives (waiting included) are kept per
    rank. With more than one rank, a Watchdog bounds each wait in a collective by
    collective_timeout() seconds.
    """

    def __init__(self, comm, blocks, n_total, v, h, block_size, dtype, rho, lambda_, beta, memory, request):
        self.comm, self.blocks, self.n_total, self.v, self.h = comm, blocks, n_total, v, h
        self.hyper = (rho, lambda_, beta)
        self.kernel = BlockKernel(v, h, block_size, dtype)
        # max |x| without a temporary the size of the shard
        local_max = np.array(
            [max(max(b[:, :-1].max(initial=0), -b[:, :-1].min(initial=0)) for b in blocks)], dtype=np.float64
        )
        self.xmax = np.empty(1)
        comm.Allreduce(local_max, self.xmax, op=MPI.MAX)
        p, rank = comm.size, comm.rank
        self.slices = slices = Slices(n_params(v, h))
        self.lo, self.hi = slices.elements(rank, p)
        owned = [slices.owned(r, p) for r in range(p)]
        length = slices.length
        # 1. the point: every rank's slices, in place
        self.theta = np.zeros(slices.padded)
        self.point = self.theta[self.lo : self.hi]
        self._theta_spec = [
            self.theta,
            ([(b - a) * length for a, b in owned], [a * length for a, _ in owned]),
        ]
        clipped = [(min(a * length, slices.size), min(b * length, slices.size)) for a, b in owned]
        self._collect_counts = ([b - a for a, b in clipped], [a for a, _ in clipped])
        # 2. the sums: by parameter, each rank's run of them followed by the global ones
        sums = self.kernel.sums
        (first, second), glob = sums.aligned_index(), sums.global_index()
        runs = [(sums.position(min(a * length, slices.size)), sums.position(min(b * length, slices.size)))
                for a, b in owned]  # fmt: skip
        self._send_first = np.concatenate([np.concatenate([first[a:b], glob]) for a, b in runs])
        none = np.full(glob.size, -1)
        self._send_second = np.concatenate([np.concatenate([second[a:b], none]) for a, b in runs])
        self._send = np.empty(self._send_first.size)
        self._recv_counts = [b - a + glob.size for a, b in runs]
        self._recv = np.empty(self._recv_counts[rank])
        self._aligned, self._glob = self._recv[: -glob.size], self._recv[-glob.size :]
        self.units = np.empty(sums.size)
        self.f_parts = np.empty(self.hi // length - self.lo // length)
        # 3. the optimizer's rows: each rank's slices, then its stop row
        columns = row_length(memory)
        counts = [(b - a + 1) * columns for a, b in owned]
        starts = np.cumsum([0, *counts])
        self.shared = np.zeros(starts[-1])
        self._shared_spec = [self.shared, (counts, starts[:-1].tolist())]
        self._mine = self.shared[starts[rank] : starts[rank + 1]].reshape(-1, columns)
        rows = np.arange(starts[-1] // columns)
        self._stop_rows = starts[1:] // columns - 1
        self._slice_rows = np.delete(rows, self._stop_rows)  # every slice's row, in slice order
        self._totals = np.empty(columns)
        self.request = request  # this rank's stop request (sae.stop)
        self.stops = np.zeros(p, dtype=np.int64)  # every rank's, after the last combine
        self.compute_seconds = self.comm_seconds = 0.0
        self.evaluations = 0
        who = f"rank {rank} on {socket.gethostname()}"
        # a bad $SAE_MPI_TIMEOUT is one error line from every rank alike (agree), not an abort
        self.watchdog = Watchdog(agree(comm, collective_timeout), who) if p > 1 else None

    def _collective(self, call, *args, **kwargs):
        start = time.perf_counter()
        if self.watchdog is not None:
            self.watchdog.arm(f"MPI_{call.__name__}")
        call(*args, **kwargs)
        if self.watchdog is not None:
            self.watchdog.disarm()
        self.comm_seconds += time.perf_counter() - start

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()

    def collect(self, local: np.ndarray) -> np.ndarray | None:
        """A vector split in slices (this rank's part: ``local``), whole on rank 0 (None elsewhere)."""
        size = self.slices.size
        mine = local[: max(0, min(self.hi, size) - self.lo)]
        out = np.empty(size) if self.comm.rank == 0 else None
        self._collective(self.comm.Gatherv, mine, [out, self._collect_counts] if out is not None else None)
        return out

    def gather(self) -> None:
        """theta = every rank's ``point`` (its slices of the trial point)."""
        self._collective(self.comm.Allgatherv, MPI.IN_PLACE, self._theta_spec)

    def gradient(self, out: np.ndarray):
        """This rank's slices of the gradient at theta into ``out``; (J's common part, per-slice parts)."""
        start = time.perf_counter()
        step = self.kernel.set_params(self.theta[: self.slices.size], self.n_total, self.xmax[0])
        self.units[:] = 0.0
        for blocks in self.blocks:
            self.kernel.accumulate(blocks, self.units)
        lay_out(self.units, self._send_first, self._send_second, self._send)
        self.compute_seconds += time.perf_counter() - start
        self.evaluations += 1
        self._collective(self.comm.Reduce_scatter, self._send, self._recv, self._recv_counts, op=MPI.SUM)
        f_common = gradient_slices(
            self._aligned, self._glob, self.theta, self.lo, self.hi, step, self.n_total, self.v, self.h,
            *self.hyper, self.slices.length, out, self.f_parts,
        )  # fmt: skip
        return f_common, self.f_parts

    def combine(self, partials: np.ndarray) -> np.ndarray:
        """Every rank's per-slice rows summed in slice order (the optimizer's ``combine``)."""
        self._mine[:-1] = partials
        self._mine[-1, 0] = self.request.signal
        self._collective(self.comm.Allgatherv, MPI.IN_PLACE, self._shared_spec)
        table = self.shared.reshape(-1, self._totals.size)
        sum_rows(table, self._slice_rows, self._totals)
        self.stops[:] = table[self._stop_rows, 0]
        return self._totals


class Stopped(Exception):
    """A stop signal reached some rank: every rank raises it (``signals``: each rank's, 0 for none)."""

    def __init__(self, signals: np.ndarray):
        super().__init__("stop signal")
        self.signals = signals


def agree(comm, task, *args, request: StopRequest | None = None):
    """Run ``task(*args)`` on every rank; if it raises SaeError on any, all ranks stop.

    The lowest failing rank raises its SaeError (one line to report), the
    others SystemExit(1), so every rank leaves together and none waits in a
    collective. Else, if a stop signal reached any rank (``request``), every rank
    raises Stopped. Returns the task's result.
    """
    try:
        result, error = task(*args), None
    except SaeError as err:
        result, error = None, err
    mine = np.array([comm.rank if error else comm.size, request.signal if request else 0])
    table = np.empty((comm.size, 2), dtype=mine.dtype)
    comm.Allgather(mine, table)
    first = table[:, 0].min()
    if first == comm.size:
        if table[:, 1].any():
            raise Stopped(table[:, 1])
        return result
    if comm.rank == first:
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


def rank_spans(ranks: list[int]) -> str:
    """'rank 3', 'ranks 0-1, 4': ranks in order, runs of consecutive ones joined."""
    runs, start = [], ranks[0]
    for prev, cur in zip(ranks, [*ranks[1:], None], strict=True):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(runs)}"


def _by_host(hosts: list[str], ranks) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for rank in ranks:
        out.setdefault(hosts[rank], []).append(rank)
    return out


def describe_hosts(hosts: list[str]) -> str:
    """'node1 (ranks 0-1); node2 (ranks 2-3)': each host and its ranks, in order of first rank."""
    return "; ".join(f"{host} ({rank_spans(rs)})" for host, rs in _by_host(hosts, range(len(hosts))).items())


def ranks_on_hosts(hosts: list[str], ranks: list[int]) -> str:
    """'rank 1 on node2', 'ranks 2-3 on node2; rank 5 on node3': some ranks, and where they run."""
    return "; ".join(f"{rank_spans(rs)} on {host}" for host, rs in _by_host(hosts, ranks).items())
