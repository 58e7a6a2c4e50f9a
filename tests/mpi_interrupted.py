"""Run under mpiexec: rank 1 is interrupted (KeyboardInterrupt, as Ctrl-C raises it) while rank 0
waits in a collective for it, inside the training script's guard (parallel.abort_on_failure).

Usage: mpiexec -n 2 python mpi_interrupted.py
"""

import sys
from pathlib import Path

from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from sae import cli, parallel


def body():
    with parallel.abort_on_failure(MPI.COMM_WORLD):
        if MPI.COMM_WORLD.rank == 1:
            raise KeyboardInterrupt
        MPI.COMM_WORLD.Barrier()  # never completed: rank 1 is gone


cli.main(body)
