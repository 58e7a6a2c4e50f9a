"""Rule sweep_model: fit the performance model to the runs and the two benchmarks, and plot it."""

import argparse

from sae import cli
from sae.sweep import model, plots, records


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtimes", help="runtimes.csv to read")
    parser.add_argument("optimizer", help="the optimizer benchmark's CSV")
    parser.add_argument("collectives", nargs="+", help="collectives benchmark CSVs, one per rank count")
    parser.add_argument("--fit", required=True, help="model.json to write (parameters, validation)")
    parser.add_argument("--plot", required=True, help="model.png to write")
    parser.add_argument("--max-ranks", type=int, required=True)
    parser.add_argument("--max-samples", type=float, required=True)
    parser.add_argument(
        "--predict-at",
        type=float,
        nargs="+",
        metavar="RANKS SAMPLES",
        required=True,
        help="points to predict (pairs of ranks and samples), besides (max-ranks, max-samples)",
    )
    args = parser.parse_args()
    runs = records.read_csv(args.runtimes, records.RUN_COLUMNS)
    bench = [row for path in args.collectives for row in records.read_csv(path, records.COLLECTIVE_COLUMNS)]
    optimizer = records.read_csv(args.optimizer, records.OPTIMIZER_COLUMNS)
    fit = model.fit_model(runs, bench, optimizer)
    checks = model.validation(fit, runs)
    if len(args.predict_at) % 2:
        parser.error("--predict-at takes pairs RANKS SAMPLES")
    pairs = zip(args.predict_at[0::2], args.predict_at[1::2], strict=True)
    points = [*pairs, (args.max_ranks, args.max_samples)]
    predictions = []  # speedup on dedicated cores; speedup_shared: ranks taking a machine's every core
    for h in fit["hidden"]:
        for p, n in points:
            s, e = model.predicted_speedup(fit, p, n, h)
            shared, _ = model.predicted_speedup(fit, p, n, h, shared=True)
            predictions.append({"hidden": h, "ranks": int(p), "samples": int(n), "speedup": float(s),
                                "efficiency": float(e), "speedup_shared": float(shared)})  # fmt: skip
    records.write_json(args.fit, {"model": fit, "validation": checks, "predictions": predictions})
    plots.plot_model(fit, runs, args.plot, args.max_ranks, args.max_samples)
    for key, value in fit.items():
        print(f"{key}: {value}")
    for c in checks:
        print(
            f"h={c['hidden']} p={c['ranks']} N={c['samples']}: "
            f"loop measured {c['measured_loop_seconds']:.3f} s, "
            f"predicted {c['predicted_loop_seconds']:.3f} s ({100 * c['relative_error']:+.1f} %)"
        )

    for h in fit["hidden"]:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in model.per_evaluation(fit, h).items())
        print(f"h={h}: {terms}")
    for r in predictions:
        print(
            f"h={r['hidden']} p={r['ranks']} N={r['samples']}: predicted speedup {r['speedup']:.1f},"
            f" efficiency {r['efficiency']:.3f}; sharing a machine's cores: {r['speedup_shared']:.1f}"
        )


cli.main(body)
