"""The MPI layer: shards, and the reduced objective on real MPI processes."""

import itertools
import sys

import h5py
import numpy as np
import pytest

from conftest import REPO, mpirun, run
from sae import gradient, objective, parallel


@pytest.mark.parametrize(("n", "block", "size"), [(1001, 128, 3), (1000, 100, 4), (10, 4, 5), (5, 8, 2)])
def test_shards_are_whole_blocks_covering_every_row_once(n, block, size):
    rows = [parallel.shard(n, block, r, size) for r in range(size)]
    assert rows[0][0] == 0 and rows[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    assert all(start % block == 0 for start, _ in rows)
    blocks = [-(-(b - a) // block) for a, b in rows]
    assert max(blocks) - min(blocks) <= 1  # as even as whole blocks allow


@pytest.mark.parametrize("ranks", [2, 3])
def test_reduced_cost_and_gradient_equal_the_single_process_ones(tmp_path, patches_1001, ranks):
    out = tmp_path / "eval.npz"
    mpirun(ranks, REPO / "tests" / "mpi_objective.py", patches_1001, out, 128)
    got = np.load(out)
    with h5py.File(patches_1001) as f:
        x = f["patches"][()]
    theta = objective.initial_theta(64, 25, np.random.default_rng(5))
    cost, grad = gradient.evaluate(theta, x, 25, 0.01, 1e-4, 3.0, 128)
    assert float(got["cost"]) == cost  # bit for bit, not approximately
    assert np.array_equal(got["grad"], grad)
    assert np.array_equal(got["gathered"][: len(theta)], theta)  # every rank's slices, gathered
    assert 0 < int(got["rows"]) < 1001 and int(got["evaluations"]) == 1


def test_mpi_entry_scripts_pin_one_blas_thread_before_numpy_loads(tmp_path):
    """The first import of every MPI entry script pins BLAS to one thread, and it takes effect."""
    import ast

    for script in ("train_model.py", "sweep_collectives.py"):
        tree = ast.parse((REPO / "workflow" / "scripts" / script).read_text())
        first = next(node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom))
        assert isinstance(first, ast.Import) and first.names[0].name == "sae.one_blas_thread", script
    probe = (
        "import sae.one_blas_thread, time, numpy as np\n"
        "a = np.random.default_rng(0).random((1200, 1200))\n"
        "c, w = time.process_time(), time.perf_counter()\n"
        "for _ in range(8): a @ a\n"
        "print((time.process_time() - c) / (time.perf_counter() - w))\n"
    )
    out = run([sys.executable, "-c", probe], cwd=REPO / "workflow" / "scripts").stdout
    assert float(out) < 1.3  # CPU time per wall time: one thread busy, not two


def test_ctrl_c_on_one_rank_outside_the_loop_ends_every_rank_with_one_line(tmp_path):
    """A rank interrupted while another waits for it in a collective: MPI_Abort ends both at once,
    with the error line (before: the waiting rank hung until the MPI timeout, 300 s)."""
    proc = mpirun(2, REPO / "tests" / "mpi_interrupted.py", check=False, timeout=120)
    assert proc.returncode != 0 and "error: interrupted (Ctrl-C)" in proc.stderr, proc.stderr
