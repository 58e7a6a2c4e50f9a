# This workflow's own files: the entry scripts (one per rule), the package they import,
# and the config schema. Each is found from this file's location through Snakemake's
# source cache (workflow.source_path), never from the working directory, so the workflow
# runs from any directory and as a module of another workflow (from a path or a git host).
# The cache keeps the folder layout, so the local copies form a runnable scripts folder.
ENTRY_SCRIPTS = [
    "load_images.py",
    "sample_patches.py",
    "train_model.py",
    "plot_filters.py",
    "plot_training.py",
    "sweep_collectives.py",
    "sweep_optimizer.py",
    "sweep_runtimes.py",
    "sweep_report.py",
    "sweep_model.py",
]
PACKAGE_MODULES = [  # paths under sae/, subpackages included
    "__init__.py",
    "cli.py",
    "config.py",
    "curve.py",
    "filters.py",
    "gradient.py",
    "h5io.py",
    "images.py",
    "kernel.py",
    "labels.py",
    "lbfgs.py",
    "objective.py",
    "one_blas_thread.py",
    "parallel.py",
    "patches.py",
    "slices.py",
    "slurm.py",
    "stop.py",
    "train.py",
    "sweep/__init__.py",
    "sweep/records.py",
    "sweep/scaling.py",
    "sweep/model.py",
    "sweep/collectives.py",
    "sweep/optimizer.py",
    "sweep/plots.py",
]
SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
for name in [*ENTRY_SCRIPTS, *(f"sae/{module}" for module in PACKAGE_MODULES)]:
    workflow.source_path(f"../scripts/{name}")  # a local copy of each
SCRIPTS = Path(workflow.source_path("../scripts/sae/__init__.py")).parents[1]
sys.path.insert(0, str(SCRIPTS))  # the Snakefile's own imports (config validation)
# Rules name the scripts folder as "$SAE_SCRIPTS": the shell expands it, so the command
# text, which Snakemake compares to decide re-runs, holds no path (moving the checkout
# re-runs nothing), and a path with spaces or quotes stays one word.
os.environ.update(SAE_SCRIPTS=str(SCRIPTS))  # set here, for the rules' shells


# Each shell command runs its entry script the same way, e.g.
#     logged(f"python {script('plot_filters.py')}" " --opt {params.x:q} -- {input:q} {output:q}")
# Every field is quoted (:q); options come first, then `--` and the paths. Paths and
# config values reach the command only through Snakemake's fields, never as Python text.
# A list of any length (the image files) goes as --files-from <(printf '%s\0' {input:q}):
# printf is a shell builtin, so the names never meet the kernel's cap on arguments.
def script(name):
    """The quoted path of entry script workflow/scripts/<name>, for a rule's shell command."""
    if name not in ENTRY_SCRIPTS:
        raise ValueError(f"{name}: not in ENTRY_SCRIPTS (workflow/rules/common.smk)")
    return f'"$SAE_SCRIPTS/{name}"'


def image_files():
    """The image files named by images.source (see sae.images.source_files); none for "sample"."""
    from sae.images import source_files

    source = config["images"]["source"]
    if source == "sample":
        return []
    files = source_files(source)
    braces = [f for f in files if "{" in f or "}" in f]
    if braces:  # Snakemake reads braces in a path as a wildcard
        raise SaeError(
            f"config images.source: {braces[0]!r}: rename it, without {{ or }}"
        )
    return files


def logged(command):
    """Shell command with output to the rule's log; on failure its error line also goes to stderr."""
    # Two rounds of braces: this f-string turns {{log:q}} into Snakemake's field {log:q} and
    # {{{{ into {{, which Snakemake's formatting turns into the shell's literal {. Rule
    # filters' command renders (snakemake -n -p) as
    #   (python "$SAE_SCRIPTS/plot_filters.py" -- results/model.h5 results/filters.png) \
    #     > results/logs/filters.log 2>&1 || { grep -h '^error:' results/logs/filters.log >&2; exit 1; }
    return f"({command}) > {{log:q}} 2>&1 || {{{{ grep -h '^error:' {{log:q}} >&2; exit 1; }}}}"


def train_threads():
    """Cores to ask for: train.ranks, or for "auto" as many as Snakemake grants."""
    ranks = config["train"]["ranks"]
    return 1024 if ranks == "auto" else ranks


def train_tasks(wildcards, threads):
    """MPI ranks: train.ranks as given, or for "auto" the granted cores capped at the CPU count."""
    ranks = config["train"]["ranks"]
    return min(threads, os.cpu_count() or 1) if ranks == "auto" else ranks


def train_params(count, iterations, hidden=None):
    """The params of both training rules: every value that decides the model.

    count: patches.count the input file was made with; iterations: L-BFGS iterations;
    hidden: hidden units (or a function of the wildcards), by default train.hidden.
    """
    return dict(
        side=config["patches"]["side"],
        n=count,
        patches_seed=config["patches"]["seed"],
        hidden=config["train"]["hidden"] if hidden is None else hidden,
        rho=config["train"]["rho"],
        **{"lambda": config["train"]["lambda"]},  # a Python keyword: a dict key
        beta=config["train"]["beta"],
        iterations=iterations,
        seed=config["train"]["seed"],
        block_size=config["train"]["block_size"],
        precision=config["train"]["precision"],
    )


MPI_LAUNCH = "{resources.mpi} -n {resources.tasks} "


def train_shell(extra, launch=MPI_LAUNCH):
    """The logged training command of the training rules, with their own ``extra`` flags.

    launch: the MPI launcher prefix; "" runs one plain process (an MPI singleton).
    """
    return logged(
        f"{launch}python {script('train_model.py')}"
        " --side {params.side:q} --hidden {params.hidden:q} --rho {params.rho:q}"
        " --lambda {params.lambda:q} --beta {params.beta:q} --iterations {params.iterations:q}"
        " --seed {params.seed:q} --block-size {params.block_size:q}"
        " --precision {params.precision:q} --expect-count {params.n:q}"
        " --expect-seed {params.patches_seed:q} --memory-mb {resources.memory_mb:q}"
        f" --cores-granted {{threads}} {extra} -- {{input:q}} {{output:q}}"
    )


def mpi_launch(wildcards, resources):
    """A timing run's launcher prefix: the `mpi` resource and the rank count, or none.

    A timing run on one rank is a plain process (an MPI singleton): its rule has an empty
    `mpi` resource, since on Slurm a job with an `mpi` launcher must have more than one
    task (there it is an ordinary one-task job).
    """
    return f"{resources.mpi} -n {resources.tasks} " if resources.mpi else ""
