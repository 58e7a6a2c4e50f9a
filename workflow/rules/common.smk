import glob


def image_files():
    """The image files named by images.source (globs expanded); none for "sample"."""
    source = config["images"]["source"]
    if source == "sample":
        return []
    files = []
    for pattern in [source] if isinstance(source, str) else source:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SaeError(f"config images.source: {pattern!r} matches no files")
        files.extend(matches)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise SaeError(f"config images.source: no such file {missing[0]!r}")
    return files


def logged(command):
    """Shell command with output to the rule's log; on failure its error line also goes to stderr."""
    return f"({command}) > {{log}} 2>&1 || {{{{ grep -h '^error:' {{log}} >&2; exit 1; }}}}"


def train_threads():
    """Cores to ask for: train.ranks, or for "auto" as many as Snakemake grants."""
    ranks = config["train"]["ranks"]
    return 1024 if ranks == "auto" else ranks


def train_tasks(wildcards, threads):
    """MPI ranks: train.ranks as given, or for "auto" the granted cores capped at the CPU count."""
    ranks = config["train"]["ranks"]
    return min(threads, os.cpu_count() or 1) if ranks == "auto" else ranks


def train_params(count, iterations):
    """The params of both training rules: every value that decides the model.

    count: patches.count the input file was made with; iterations: L-BFGS iterations.
    """
    return dict(
        side=config["patches"]["side"],
        n=count,
        patches_seed=config["patches"]["seed"],
        hidden=config["train"]["hidden"],
        rho=config["train"]["rho"],
        lam=config["train"]["lambda"],
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
        f"{launch}python workflow/scripts/train_model.py {{input}} {{output}}"
        " --side {params.side} --hidden {params.hidden} --rho {params.rho} --lambda {params.lam}"
        " --beta {params.beta} --iterations {params.iterations} --seed {params.seed}"
        " --block-size {params.block_size} --precision {params.precision}"
        " --expect-count {params.n} --expect-seed {params.patches_seed}"
        f" --memory-mb {{resources.memory_mb}} --cores-granted {{threads}} {extra}"
    )


# A timing run on one rank is a plain process (an MPI singleton): on Slurm a job with
# an `mpi` resource must have more than one task, so such a run is an ordinary one-task
# job there, which Slurm's job step starts with srun. Runs on more ranks use the
# launcher of rule `train` (mpiexec, or what a profile sets, e.g. srun on Slurm).
def train_launcher():
    """The `mpi` resource that --set-resources (or a profile) gives rule train, else mpiexec."""
    try:
        value = workflow.resource_settings.overwrite_resources["train"]["mpi"]
    except KeyError:
        return "mpiexec"
    return str(getattr(value, "raw", value)).strip(
        "'\""
    )  # a snakemake Resource, or the plain value


SWEEP_LAUNCHER = train_launcher()


def sweep_mpi(wildcards):
    return SWEEP_LAUNCHER if int(wildcards.ranks) > 1 else ""


def sweep_launch(wildcards, resources):
    return f"{resources.mpi} -n {resources.tasks} " if resources.mpi else ""
