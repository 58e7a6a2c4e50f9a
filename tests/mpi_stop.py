"""Run under mpiexec: the training script itself, where one rank sends itself a stop signal.

Usage: mpiexec -n K python mpi_stop.py RANK SIGNAL EVALUATION -- TRAIN_MODEL_ARGUMENTS...

Rank RANK sends itself SIGNAL (e.g. SIGTERM) just before the compute of evaluation
EVALUATION (1: the first), or, with EVALUATION 0, as it starts loading its patches: a
real signal at a known moment, handled by the training's own handler, so a test can
check on which evaluation every rank stopped.
"""

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import sae.one_blas_thread  # noqa: E402, F401  (first: one BLAS thread, as train_model.py)

# isort: split
import os  # noqa: E402
import runpy  # noqa: E402
import signal  # noqa: E402

from sae import parallel, train  # noqa: E402

RANK, SIGNAL, WHEN = int(sys.argv[1]), signal.Signals[sys.argv[2]], int(sys.argv[3])


class SelfSignalling(parallel.DistributedObjective):
    def gradient(self, out):
        if self.comm.rank == RANK and self.evaluations + 1 == WHEN:
            os.kill(os.getpid(), SIGNAL)
        return super().gradient(out)


def load_shard(comm, *args, _load=train.load_shard):
    if comm.rank == RANK and WHEN == 0:
        os.kill(os.getpid(), SIGNAL)
    return _load(comm, *args)


train.DistributedObjective, train.load_shard = SelfSignalling, load_shard
sys.argv = [str(SCRIPTS / "train_model.py"), *sys.argv[5:]]  # after the "--"
runpy.run_path(sys.argv[0], run_name="__main__")
