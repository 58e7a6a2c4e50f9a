"""Rule train: MPI-parallel L-BFGS training of the sparse autoencoder.

Launch with ``mpiexec -n RANKS python train_model.py ...``; every rank reads
only its own rows of patches.h5, rank 0 writes the model.
"""

import sae.one_blas_thread  # noqa: F401  (first: one BLAS thread, set before numpy loads)
from sae import stop

REQUEST = stop.install()  # from here on, SIGTERM and SIGINT stop every rank together (sae.stop)

# isort: split
import argparse  # noqa: E402  (after install: a signal during the imports is recorded too)

from mpi4py import MPI  # noqa: E402

from sae import cli, parallel, train  # noqa: E402

COMM = MPI.COMM_WORLD


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
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
    parser.add_argument("--expect-count", type=int, help="patches.count the file must have been made with")
    parser.add_argument("--expect-seed", type=int, help="patches.seed the file must have been made with")
    parser.add_argument("--memory-mb", type=float, help="cap on each rank's patches in memory; 0: none")
    parser.add_argument("--checkpoint", help="checkpoint file: written as training goes, resumed from")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="iterations between checkpoints")
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
    expect = {"count": args.expect_count, "seed": args.expect_seed, "side": args.side}
    job = train.Job(
        patches=args.patches,
        model=args.out,
        side=args.side,
        samples=args.samples,
        expect={k: v for k, v in expect.items() if v is not None},
        memory_mb=args.memory_mb or None,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        cores_granted=args.cores_granted,
    )
    with parallel.abort_on_failure(COMM):
        train.run(COMM, hp, job, REQUEST)


cli.main(body, quiet=COMM.rank != 0)
