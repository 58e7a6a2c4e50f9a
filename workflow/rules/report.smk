# The Snakemake report: `snakemake --report results/report.html` after any run.
# Outputs marked with report(...) carry a caption (workflow/report/*.rst, Jinja2
# templates) and labels; the labels are read from the run's own files when the report
# is built (functions below), and the captions quote them, so every number in the
# report is the run's own.
from sae import labels as report_labels


report: "../report/workflow.rst"


def training_labels(wildcards, input):
    return report_labels.training(input[0])


def filters_labels(wildcards, input):
    return report_labels.filters(input[0])


def speedup_labels(wildcards, output):
    return report_labels.speedup(output.scaling)


def efficiency_labels(wildcards, output):
    return report_labels.efficiency(output.scaling)


def breakdown_labels(wildcards, input):
    return report_labels.breakdown(input[0])


def model_labels(wildcards, output):
    return report_labels.model(output.fit)


# The sweep's figures and tables are not part of the default target (a run of it never
# starts the sweep). For `snakemake --report` (no execution settings: the workflow is
# not executed) the default target also asks for those already built, so the report
# holds everything built so far.
SWEEP_REPORTED = [
    "results/sweep/runtimes.csv",
    "results/sweep/runtimes.md",
    "results/sweep/scaling.csv",
    "results/sweep/speedup.png",
    "results/sweep/efficiency.png",
    "results/sweep/breakdown.png",
    "results/sweep/model.json",
    "results/sweep/model.png",
]


def built_sweep_outputs(wildcards):
    """The sweep outputs that exist, when Snakemake builds a report rather than runs."""
    if workflow.execution_settings is not None:
        return []
    return [path for path in SWEEP_REPORTED if os.path.exists(path)]


class SweepPoint:
    """A sweep run's place in the grid, for a rule's message.

    In a message, ``{SWEEP_POINT:{wildcards.ranks},{wildcards.samples},{wildcards.repeat}}``
    reads "grid point K of M" (K counts ranks, then sizes, then repeats as config
    `sweep` lists them).
    """

    def __format__(self, spec):
        ranks, samples, repeat = (int(v) for v in spec.split(","))
        grid = [
            (p, n, r)
            for p in config["sweep"]["ranks"]
            for n in config["sweep"]["sizes"]
            for r in range(1, config["sweep"]["repeats"] + 1)
        ]
        return f"grid point {grid.index((ranks, samples, repeat)) + 1} of {len(grid)}"


SWEEP_POINT = SweepPoint()
