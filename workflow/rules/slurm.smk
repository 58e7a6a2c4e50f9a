# On Slurm (the slurm executor, e.g. `--profile slurm`): before the first job is submitted,
# refuse the run if a job asks for more than any node of its partition has. Slurm would
# accept such a job and leave it pending for ever (reason PartitionConfig) unless the site
# sets EnforcePartLimits. One `error:` line per rule and resource names what the job asks,
# what the partition offers (one sinfo call) and what to change (sae/slurm.py). Snakemake
# runs onstart for a real run of this Snakefile as the main one: not for a dry run, not
# inside the jobs, and not when another workflow uses this one as a module.
from sae import slurm as slurm_nodes


def slurm_request(job):
    """What a job asks Slurm for, as the Slurm executor plugin turns it into sbatch options."""
    res = job.resources
    cpus_per_task = res.get("cpus_per_task")
    if res.get("mpi") and res.get("tasks_per_node"):
        tasks = res.get("tasks_per_node") * (res.get("nodes") or 1)
    else:
        tasks = res.get("tasks") or 1
    return slurm_nodes.Request(
        rule_name=job.rule.name,
        partition=res.get("slurm_partition") or None,
        cpus_per_task=max(1, cpus_per_task or job.threads),
        cpus_from_threads=not cpus_per_task,
        tasks=tasks,
        nodes=res.get("nodes"),
        mem_mb_per_cpu=res.get("mem_mb_per_cpu") or None,
        mem_mb=res.get("mem_mb") or None,
        runtime=res.get("runtime") or None,
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
