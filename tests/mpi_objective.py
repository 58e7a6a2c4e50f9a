"""Run under mpiexec: one distributed evaluation at a seeded theta; rank 0 saves it.

Every rank writes its slices of theta, the ranks gather it, each computes its slices
of the gradient, and J's per-slice parts are combined as the optimizer combines its
dot products.

Usage: mpiexec -n K python mpi_objective.py PATCHES OUT.npz BLOCK_SIZE
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from sae import slices
from sae.objective import initial_theta
from sae.parallel import DistributedObjective
from sae.stop import StopRequest
from sae.train import Job, load_shard

patches_path, out, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
comm = MPI.COMM_WORLD
blocks, n_total = load_shard(comm, Job(patches_path, "", 8), block)
objective = DistributedObjective(
    comm, blocks, n_total, 64, 25, block, np.float64, 0.01, 1e-4, 3.0, slices.MEMORY, StopRequest()
)
theta = objective.slices.pad(initial_theta(64, 25, np.random.default_rng(5)))
objective.point[:] = theta[objective.lo : objective.hi]
objective.gather()
grad = np.empty(objective.hi - objective.lo)
f_common, f_parts = objective.gradient(grad)
partials = np.zeros((len(f_parts), slices.row_length()))
partials[:, slices.F] = f_parts
cost = f_common + objective.combine(partials)[slices.F]
whole = objective.collect(grad)
objective.close()
if comm.rank == 0:
    rows = sum(b.shape[0] * b.shape[2] for b in blocks)
    np.savez(
        out, cost=cost, grad=whole, rows=rows, evaluations=objective.evaluations, gathered=objective.theta
    )
