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


# What the default target asks for. A run (`snakemake --cores 16`) builds the filters and
# the training curve, never the sweep. A report, or any other command that does not run
# the workflow (no execution settings), asks for every reported output built so far, so
# `snakemake --report results/report.html` holds whatever of the main job and the sweep
# exists (with nothing built yet: the main job's outputs, as a run would).
MAIN_OUTPUTS = ["results/filters.png", "results/training.png"]
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


def default_outputs(wildcards):
    """The default target's files: see above."""
    if workflow.execution_settings is not None:
        return MAIN_OUTPUTS
    built = [path for path in MAIN_OUTPUTS + SWEEP_REPORTED if os.path.exists(path)]
    return built or MAIN_OUTPUTS


def sweep_grid():
    """The sweep's runs as (ranks, hidden, samples, repeat), in the order of config `sweep`."""
    sweep = config["sweep"]
    return [
        (p, h, n, r)
        for p in sweep["ranks"]
        for h in sweep["hidden"]
        for n in sweep["sizes"]
        for r in range(1, sweep["repeats"] + 1)
    ]


def sweep_index(wildcards):
    """A timing run's index in sweep_grid()."""
    w = wildcards
    return sweep_grid().index(
        (int(w.ranks), int(w.hidden), int(w.samples), int(w.repeat))
    )


def sweep_point(wildcards):
    """A timing run's place in the grid, for its message: "grid point K of M"."""
    return f"grid point {sweep_index(wildcards) + 1} of {len(sweep_grid())}"


def sweep_priority(wildcards):
    """Earlier grid points first, so the runs start in the order their messages count."""
    return len(sweep_grid()) - sweep_index(wildcards)
