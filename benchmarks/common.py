"""What the benchmarks share: the repository's paths, child processes' environment, a training run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # this interpreter's bin first


def train(patches, out, ranks, iterations, hidden=25, precision="float32", extra=(), side=8):
    """Train with the rule's script on ``ranks`` processes started by mpiexec (one rank too:
    the same MPI set-up for every count); returns the model file's attributes."""
    mpiexec = shutil.which("mpiexec", path=ENV["PATH"])
    cmd = [mpiexec, "-n", ranks, sys.executable, SCRIPTS / "train_model.py", patches, out,
           "--side", side, "--hidden", hidden, "--rho", 0.01, "--lambda", 1e-4, "--beta", 3,
           "--iterations", iterations, "--seed", 0, "--block-size", 128, "--precision", precision,
           *extra]  # fmt: skip
    subprocess.run([str(c) for c in cmd], env=ENV, check=True, capture_output=True)
    with h5py.File(out) as f:
        return dict(f.attrs)


def same_model(a, b) -> bool:
    """Whether two model files hold bitwise the same W1, W2, b1 and b2."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        return all(np.array_equal(fa[k][()], fb[k][()]) for k in ("W1", "W2", "b1", "b2"))
