"""Rule sweep_optimizer: time one rank's optimizer step alone, against the slices it owns.

One process, one core: for every hidden size, a rank owning 1, 2, 4, ... slices up to
all of them (sae.sweep.optimizer); one CSV row each, for the performance model's t_opt.
"""

import sae.one_blas_thread  # noqa: F401  (first: one BLAS thread, set before numpy loads)

# isort: split
import argparse

from sae import cli
from sae.objective import n_params
from sae.slices import Slices
from sae.sweep import optimizer, records


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="CSV to write")
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--hidden", type=int, nargs="+", required=True)
    parser.add_argument("--evaluations", type=int, required=True, help="timed evaluations per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    v = args.side * args.side
    rows = []
    for h in args.hidden:
        slices = Slices(n_params(v, h))
        for r in optimizer.measure(v, h, optimizer.owned_counts(slices.count), args.evaluations, args.seed):
            print(
                f"h={h}: {r['slices']} of {slices.count} slices ({r['values']} values):"
                f" {r['seconds'] * 1e6:.1f} us per evaluation (fastest {r['seconds_min'] * 1e6:.1f} us)"
            )
            rows.append(r)
    records.write_csv(args.out, rows, records.OPTIMIZER_COLUMNS)


cli.main(body)
