"""Rule sweep_collectives: time one evaluation's three collectives on the model's buffers.

Launch with ``mpiexec -n RANKS python sweep_collectives.py ...``; rank 0 writes
one CSV row per buffer scale (1 = the model's buffers) for the performance model.
"""

import sae.one_blas_thread  # noqa: F401  (first: one BLAS thread, set before numpy loads)

# isort: split
import argparse

from mpi4py import MPI

from sae import SaeError, cli, h5io, parallel
from sae.sweep import collectives, records

COMM = MPI.COMM_WORLD


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("patches", help="patches.h5 of the sweep (its width v = side * side)")
    parser.add_argument("out", help="CSV to write")
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument(
        "--scales", type=float, nargs="+", required=True, help="buffer sizes, 1 = the model's"
    )
    parser.add_argument("--repeats", type=int, required=True, help="timed evaluations per scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if 1.0 not in args.scales:
        raise SaeError("--scales must include 1 (the model's own buffers)")
    parallel.agree(COMM, h5io.patches_info, args.patches, args.side)
    v = args.side * args.side
    with parallel.abort_on_failure(COMM):
        timings = collectives.measure(COMM, v, args.hidden, args.scales, args.repeats, args.seed)
    if COMM.rank != 0:
        return
    rows = collectives.as_rows(COMM.size, args.scales, timings)
    for r in rows:
        print(
            f"{COMM.size} ranks, scale {r['scale']:g}: Allgatherv {r['point_doubles']}, Reduce_scatter "
            f"{r['sums_doubles']}, Allgatherv {r['rows_doubles']} doubles: {r['seconds'] * 1e6:.1f} us"
            f" (fastest {r['seconds_min'] * 1e6:.1f} us)"
        )
    records.write_csv(args.out, rows, records.COLLECTIVE_COLUMNS)


cli.main(body, quiet=COMM.rank != 0)
