"""Rule sweep_model: fit the performance model to the runs and the collectives benchmark, and plot it."""

import argparse

from sae import cli
from sae.sweep import model, plots, records


def body():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtimes", help="runtimes.csv to read")
    parser.add_argument("collectives", nargs="+", help="collectives benchmark CSVs, one per rank count")
    parser.add_argument("--fit", required=True, help="model.json to write (parameters, validation)")
    parser.add_argument("--plot", required=True, help="model.png to write")
    parser.add_argument("--max-ranks", type=int, required=True)
    parser.add_argument("--max-samples", type=float, required=True)
    args = parser.parse_args()
    runs = records.read_csv(args.runtimes, records.RUN_COLUMNS)
    bench = [row for path in args.collectives for row in records.read_csv(path, records.COLLECTIVE_COLUMNS)]
    fit = model.fit_model(runs, bench)
    checks = model.validation(fit, runs)
    records.write_json(args.fit, {"model": fit, "validation": checks})
    plots.plot_model(fit, runs, args.plot, args.max_ranks, args.max_samples)
    for key, value in fit.items():
        print(f"{key}: {value}")
    for c in checks:
        print(
            f"p={c['ranks']} N={c['samples']}: loop measured {c['measured_loop_seconds']:.3f} s, "
            f"predicted {c['predicted_loop_seconds']:.3f} s ({100 * c['relative_error']:+.1f} %)"
        )


cli.main(body)
