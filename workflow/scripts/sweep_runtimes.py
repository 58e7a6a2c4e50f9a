"""Rule sweep_runtimes: the timings of every timed run (model files) as runtimes.csv."""

import argparse

from sae import cli
from sae.sweep import records, scaling


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="runtimes.csv to write")
    parser.add_argument("runs", nargs="+", help="model files named like records.RUN_NAME")
    args = parser.parse_args()
    rows = records.sort_runs([records.read_run(path) for path in args.runs])
    records.write_csv(args.out, rows, records.RUN_COLUMNS)
    for (h, n), evaluations in scaling.evaluations_by_problem(rows).items():
        same = "the same on every rank count" if len(evaluations) == 1 else "DIFFERENT across rank counts"
        print(f"{h} hidden units, {n} samples: evaluations {evaluations} ({same})")
    print(f"wrote {len(rows)} runs to {args.out}")


cli.main(body)
