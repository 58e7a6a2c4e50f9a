"""Rule train: MPI-parallel L-BFGS training of the sparse autoencoder.

Launch with ``mpiexec -n RANKS python train_model.py ...``; every rank reads
only its own rows of patches.h5, rank 0 writes the model.
"""

import os

# One BLAS thread per rank: the ranks are the parallelism.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from mpi4py import MPI  # noqa: E402

from sae import SaeError, cli, train  # noqa: E402

COMM = MPI.COMM_WORLD


def body():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("patches", help="patches.h5 to read")
    parser.add_argument("out", help="model.h5 to write")
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--rho", type=float, required=True)
    parser.add_argument("--lambda", dest="lambda_", type=float, required=True)
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--block-size", type=int, required=True)
    parser.add_argument("--precision", choices=["float32", "float64"], required=True)
    parser.add_argument("--samples", type=int, help="train on the first SAMPLES rows only")
    parser.add_argument("--cores-granted", type=int, help="cores Snakemake granted (for the log)")
    args = parser.parse_args()
    hp = {
        "hidden": args.hidden,
        "rho": args.rho,
        "lambda": args.lambda_,
        "beta": args.beta,
        "iterations": args.iterations,
        "seed": args.seed,
        "block_size": args.block_size,
        "precision": args.precision,
    }
    try:
        train.run(COMM, args.patches, args.out, hp, args.side, args.samples, args.cores_granted)
    except (SaeError, SystemExit):
        raise  # raised on every rank alike (see parallel.agree): all leave together
    except Exception:
        if COMM.size == 1:
            raise
        # An unexpected failure on one rank must not leave the others waiting in a collective.
        traceback.print_exc()
        sys.stderr.flush()
        COMM.Abort(1)


cli.main(body, quiet=COMM.rank != 0)
