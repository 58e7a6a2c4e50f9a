"""Stop signals recorded instead of ending the process, from the training script's first line.

SIGTERM (Slurm's time limit, a node's shutdown, an out-of-memory guard, ``kill``) and
SIGINT (Ctrl-C) may reach any one rank, at any moment. Ending that rank there would
leave the others waiting in a collective for it; ending it inside a Python import,
after MPI has started, leaves them waiting for good. So the training script calls
``install`` before anything else: from then on such a signal only sets
``StopRequest.signal``, and the training's collectives carry every rank's request to
all ranks (sae.parallel.agree while loading, the optimizer's combine at every
evaluation), which then stop together. Only the standard library is imported here.
"""

import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first stop signal this process has received (0: none)."""

    def __init__(self):
        self.signal = 0


def install() -> StopRequest:
    """Record SIGTERM and SIGINT in the returned StopRequest from now on, for good."""
    request = StopRequest()

    def handler(signum, frame):
        request.signal = request.signal or signum

    for signum in SIGNALS:
        signal.signal(signum, handler)
    return request
