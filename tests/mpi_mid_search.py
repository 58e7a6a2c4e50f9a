"""Run under mpiexec: train until a line search is between two of its evaluations, write the
checkpoint there and stop, with the training's own pieces (sae.train) on real ranks.

Usage: mpiexec -n K python mpi_mid_search.py PATCHES CHECKPOINT ITERATIONS
Prints (rank 0) "iteration I evaluation E" of the checkpoint.
"""

import sys
from pathlib import Path

from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
from sae import stop, train
from sae.parallel import gather_hosts

patches, checkpoint, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
hp = {
    "hidden": 25,
    "rho": 0.01,
    "lambda": 1e-4,
    "beta": 3.0,
    "iterations": iterations,
    "seed": 0,
    "block_size": 128,
    "precision": "float32",
}  # fmt: skip  (as conftest.train_args)
job = train.Job(patches=patches, model="unused", side=8, checkpoint=checkpoint)
comm = MPI.COMM_WORLD
request = stop.install()
blocks, n_total = train.load(comm, hp, job, request, gather_hosts(comm))
objective = train.set_up_objective(comm, blocks, n_total, hp, job, request)
training = train.start_or_resume(comm, objective, hp, job, n_total)
opt = training.optimizer
while not (opt.iterations > 0 and opt.line_evals > 0):  # a second trial of one line search is next
    assert opt.iterations < iterations, "no line search took two evaluations"
    objective.gather()
    if opt.tell(*objective.gradient(opt.gradient)):
        training.history.append((opt.f, opt.grad_norm, 0.0))  # as train.optimize records it
train.save_checkpoint(objective, training, job)
objective.close()
if comm.rank == 0:
    print(f"iteration {opt.iterations} evaluation {opt.evaluations}")
