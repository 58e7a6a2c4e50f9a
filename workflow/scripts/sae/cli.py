"""What every entry script shares: logging to stderr in batches, and one-line errors.

Owns how a script reports: progress lines (BatchedStreamHandler), a SaeError as the
single line ``error: ...`` and exit status 1 (``main``). Each entry script keeps its own
argparse preamble: its options are its interface, which its rule's shell line spells
out, and a shared parser builder would hide that (``duplicates`` lists the preambles
as same-shape pairs; they stay on purpose).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import time

from . import SaeError

FLUSH_SECONDS = 0.5  # progress lines are written together at most this often


class BatchedStreamHandler(logging.StreamHandler):
    """Writes log lines in batches, at most one write every ``interval`` seconds.

    Training logs a line per iteration, every few milliseconds. Writing each
    one costs rank 0 a system call, and under mpiexec it also wakes the
    launcher's stdio forwarding on cores the ranks are using, all while the
    other ranks wait (2-3% of a two-rank loop). A line is written with the
    first line logged ``interval`` seconds or more after the last write, so it
    waits at most that long or one iteration. Warnings and errors, and
    ``flush()`` (at exit and before an error line), write at once.
    """

    def __init__(self, stream, interval: float = FLUSH_SECONDS):
        super().__init__(stream)
        self.interval = interval
        self.pending: list[str] = []  # formatted lines
        self.written = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.WARNING or time.monotonic() - self.written >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self.pending = self.pending, []
            self.written = time.monotonic()
            if lines:
                self.stream.write("".join(lines))
            self.stream.flush()


def nul_separated(path) -> list[str]:
    """The names in file ``path``, each ended by a NUL byte (``printf '%s\\0' NAME...``).

    A rule passes a list of any length this way, through a shell builtin and a
    process substitution: as arguments, tens of thousands of paths would exceed
    the kernel's limit on a command's arguments (ARG_MAX, 2 MB on Linux).
    NUL is the one byte no path can hold; empty names are dropped.
    """
    with open(path, "rb") as f:
        return [os.fsdecode(name) for name in f.read().split(b"\0") if name]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flush_logs() -> None:
    """Write pending log lines now (before an error line, or before MPI_Abort)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def error_line(err: BaseException) -> bool:
    """Write the pending log lines, then ``error: ...`` for a SaeError or Ctrl-C; False for
    any other error (the caller's to report, with its traceback)."""
    if not isinstance(err, SaeError | KeyboardInterrupt):
        return False
    flush_logs()
    text = err if isinstance(err, SaeError) else "interrupted (Ctrl-C)"  # the user's own stop
    print(f"error: {text}", file=sys.stderr, flush=True)
    return True


def main(body, quiet: bool = False) -> None:
    """Run ``body()``; a SaeError becomes one line on stderr and exit status 1, Ctrl-C one line
    and status 130 (nothing half-written is left either way).

    quiet: log warnings only (MPI ranks other than 0).
    """
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler])
    try:
        body()
    except (SaeError, KeyboardInterrupt) as err:
        error_line(err)
        sys.exit(1 if isinstance(err, SaeError) else 128 + signal.SIGINT)
    finally:
        flush_logs()  # before a traceback, too
