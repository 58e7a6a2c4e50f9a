"""Run under mpiexec: one distributed evaluation at a seeded theta; rank 0 saves it.

Usage: mpiexec -n K python mpi_objective.py PATCHES OUT.npz BLOCK_SIZE
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from sae.objective import initial_theta
from sae.parallel import DistributedObjective
from sae.train import Job, load_shard

patches_path, out, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
comm = MPI.COMM_WORLD
blocks, n_total = load_shard(comm, Job(patches_path, "", 8), block)
objective = DistributedObjective(comm, blocks, n_total, 64, 25, block, np.float64, 0.01, 1e-4, 3.0)
if comm.rank == 0:
    theta = initial_theta(64, 25, np.random.default_rng(5))
    cost, grad = objective(theta)
    objective.stop()
    rows = sum(b.shape[0] * b.shape[2] for b in blocks)
    np.savez(out, cost=cost, grad=grad, rows=rows, evaluations=objective.evaluations)
else:
    objective.serve()
