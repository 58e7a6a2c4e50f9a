# On Slurm (the slurm executor, e.g. `--profile slurm`): before the first job is submitted,
# refuse the run if a job asks for more than any node of its partition has. Slurm would
# accept such a job and leave it pending for ever (reason PartitionConfig) unless the site
# sets EnforcePartLimits. One `error:` line per rule and resource names what the job asks,
# what the partition offers (one sinfo call) and what to change (sae/slurm.py). Snakemake
# runs onstart for a real run of this Snakefile as the main one: not for a dry run, not
# inside the jobs, and not when another workflow uses this one as a module.
from sae import slurm as slurm_nodes


def slurm_request(job):
    """What a job asks Slurm for, as the Slurm executor plugin turns it into sbatch options
    (a resource that is not a positive number counts as not given)."""

    def number(name):
        value = job.resources.get(name)
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    given = job.resources.get("cpus_per_task")
    if isinstance(given, int) and given < 0:
        cpus_per_task = 1  # the plugin then asks for no CPU count: Slurm's default, 1
    else:
        cpus_per_task = number("cpus_per_task")
    if job.resources.get("mpi") and number("tasks_per_node"):
        tasks = number("tasks_per_node") * (number("nodes") or 1)
    else:
        tasks = number("tasks") or 1
    return slurm_nodes.Request(
        rule_name=job.rule.name,
        partition=job.resources.get("slurm_partition") or None,
        cpus_per_task=cpus_per_task or max(1, job.threads),
        cpus_from_threads=cpus_per_task is None,
        tasks=tasks,
        nodes=number("nodes"),
        mem_mb_per_cpu=number("mem_mb_per_cpu"),
        mem_mb=number("mem_mb"),
        runtime=number("runtime"),
    )


def refuse_jobs_no_slurm_node_holds():
    """Exit with the error lines if a job to be submitted can never start (see above)."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    jobs = [
        job
        for job in workflow.dag.needrun_jobs()
        if not job.is_local
        and not any(
            job.resources.get(k) for k in ("slurm_cluster", "cluster", "clusters")
        )
    ]
    if not jobs:
        return
    partitions = slurm_nodes.query()
    if partitions is None:  # sinfo cannot tell: the plugin's own submission says why
        return
    errors = slurm_nodes.problems([slurm_request(job) for job in jobs], partitions)
    if errors:
        sys.exit("\n".join(errors))


onstart:
    refuse_jobs_no_slurm_node_holds()
