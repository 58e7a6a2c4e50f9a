"""Rule sweep_report: the runtime table, speedup, efficiency and breakdown from runtimes.csv."""

import argparse
import logging

from sae import cli, h5io
from sae.sweep import plots, records, scaling

log = logging.getLogger("sweep_report")


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtimes", help="runtimes.csv to read")
    parser.add_argument("--table", required=True, help="runtimes.md to write")
    parser.add_argument(
        "--scaling", required=True, help="scaling.csv to write (medians, speedup, efficiency)"
    )
    parser.add_argument("--speedup", required=True, help="speedup.png to write")
    parser.add_argument("--efficiency", required=True, help="efficiency.png to write")
    parser.add_argument("--breakdown", required=True, help="breakdown.png to write")
    args = parser.parse_args()
    rows = records.read_csv(args.runtimes, records.RUN_COLUMNS)
    evaluations = scaling.evaluations_by_problem(rows)
    if any(len(v) > 1 for v in evaluations.values()):
        log.warning("evaluations differ between rank counts of one problem (hidden, size): %s", evaluations)
    table = scaling.markdown_table(rows)
    with h5io.atomic_path(args.table) as tmp:
        tmp.write_text(table)
    points = scaling.scaling(rows)
    records.write_csv(args.scaling, points, scaling.SCALING_COLUMNS)
    plots.plot_scaling(points, args.speedup, "speedup")
    plots.plot_scaling(points, args.efficiency, "efficiency")
    plots.plot_breakdown(scaling.breakdown(rows), args.breakdown)
    print(table)
    for p in points:
        print(
            f"h={p['hidden']} N={p['samples']} p={p['ranks']}: "
            f"speedup {p['speedup']:.3f}, efficiency {p['efficiency']:.3f}"
        )


cli.main(body)
