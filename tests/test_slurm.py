"""The `slurm` profile against a real Slurm cluster (Debian's packages), on big nodes and small.

The session's test cluster (conftest.cluster, tests/slurm_cluster.py) has partition
single, one node of 4 CPUs, and partition small, four nodes of 1 CPU and 900 MB: the
2015 report's EC2 t2.micro instances (test_multinode.py uses its partition debug). The
harness refuses a Slurm it did not start and stops only what it started. Without root,
Slurm or network namespaces the tests skip with the reason, except in CI (CI=true),
where they must run.

The two workflow runs checked here start in the background as soon as the session's
cluster is up (conftest.on_cluster_start): they spend most of their time waiting for the
Slurm executor plugin's next look at the queue, and the other Slurm tests run meanwhile.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import slurm_cluster
import yaml

from conftest import (
    REPO,
    SLURM_NODES,
    SLURM_SINGLE,
    SLURM_SMALL_NODES,
    env,
    hosts_line,
    on_cluster_start,
    run,
)
from sae import slurm as slurm_nodes

TINY = {
    "patches": {"count": 2000},
    "train": {"iterations": 20},
    "sweep": {"ranks": [1, 2], "sizes": [1000, 2000], "repeats": 1, "iterations": 10},
}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
# A user's own profile (the README's "mysite"): the partition, and for nodes of 1 CPU the
# setting docs/cluster.md gives for them.
SITE = {"default-resources": {"slurm_partition": slurm_cluster.SINGLE_PARTITION}}
SMALL_SITE = {"default-resources": {"slurm_partition": slurm_cluster.SMALL_PARTITION}}
SMALL_NODES_SITE = {**SMALL_SITE, "max-threads": 1}
FIRST_SMALL = SLURM_NODES + SLURM_SINGLE + 1
SMALL_NODES = {slurm_cluster.node_name(i) for i in range(FIRST_SMALL, FIRST_SMALL + SLURM_SMALL_NODES)}


def slurm_folder(tmp_path_factory, name, site):
    """A workflow copy with the slurm profile, config tiny.yaml and a site profile ``mysite``."""
    folder = tmp_path_factory.mktemp(name)
    for name in ("Snakefile", "workflow", "config", "profiles", "slurm"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (folder / "mysite").mkdir()
    (folder / "mysite" / "config.yaml").write_text(yaml.safe_dump(site))
    return folder


def start_snakemake(folder, *targets):
    """`snakemake --profile slurm --profile mysite TARGETS --configfile tiny.yaml` in the background."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--profile", "mysite", *targets,
           "--configfile", "tiny.yaml"]  # fmt: skip
    out = open(folder / "snakemake.out", "w")
    return subprocess.Popen(cmd, cwd=folder, env=env(), stdout=out, stderr=subprocess.STDOUT), out


def submitted_jobs(folder, popen, out, timeout=900):
    """{rule: [(jobid, log)]} of a finished start_snakemake run (which must succeed)."""
    try:
        code = popen.wait(timeout=timeout)
    finally:
        if popen.poll() is None:
            popen.kill()
        out.close()
    text = (folder / "snakemake.out").read_text()
    assert code == 0, text
    jobs = {}
    for jobid, log in SUBMITTED.findall(text):
        rule = re.search(r"slurm_logs/rule_([a-z_]+)/", log).group(1)
        jobs.setdefault(rule, []).append((int(jobid), log))
    return jobs


# --- Which jobs no node can hold: the check's reading of sinfo and its rules ---------------------

SINFO = """\
debug* node1 4 9947 infinite
debug* node2 4 9947 infinite
small node3 1 900 1-00:00:00
small node4 1 900 1-00:00:00
short node1 4 9947 30:00
"""


def test_sinfo_lists_each_partitions_nodes_default_and_time_limit():
    parts = slurm_nodes.partitions(SINFO)
    assert sorted(parts) == ["debug", "short", "small"]
    assert parts["debug"].default and not parts["small"].default
    assert parts["small"].nodes == [slurm_nodes.Node(1, 900)] * 2
    assert (parts["debug"].max_minutes, parts["small"].max_minutes, parts["short"].max_minutes) == (
        None,
        1440,
        30,
    )
    assert [slurm_nodes.minutes(t) for t in ("2:00:00", "2-12", "45", "UNLIMITED")] == [120, 3600, 45, None]


def request(rule="images", partition="small", cpus=1, threads=True, **kw):
    return slurm_nodes.Request(rule, partition, cpus, threads, **kw)


def test_a_job_that_fits_is_no_problem_and_the_default_partition_is_used_without_one():
    parts = slurm_nodes.partitions(SINFO)
    fits = [request(cpus=1, mem_mb_per_cpu=800), request("train", tasks=2, mem_mb_per_cpu=800)]
    assert slurm_nodes.problems([*fits, request(partition=None, cpus=4, mem_mb=9000)], parts) == []
    assert slurm_nodes.problems([request(partition=None, cpus=8)], parts) == [
        "error: rule images asks Slurm for 8 CPUs in one task (its threads), but the largest node of"
        " partition 'debug' has 4 CPUs: run with --max-threads 4 (or put `max-threads: 4` in your profile)"
    ]


def test_each_resource_no_node_has_is_one_line_naming_the_fix():
    parts = slurm_nodes.partitions(SINFO)
    cases = {
        "cpus_per_task": request("patches", cpus=2, threads=False),
        "memory per CPU": request("patches", mem_mb_per_cpu=1000),
        "memory per node": request("patches", partition="debug", mem_mb=16000),
        "tasks": request("train", tasks=4, mem_mb_per_cpu=800),
        "sweep tasks": request("sweep_train", tasks=4),
        "nodes": request("sweep_collectives", tasks=2, nodes=3),
        "runtime": request("patches", partition="short", runtime=60),
        "partition": request("patches", partition="gpu"),
    }
    expected = {
        "cpus_per_task": "2 CPUs in one task (cpus_per_task), but the largest node of partition 'small'"
        " has 1 CPU: set cpus_per_task: 1 for patches under set-resources in slurm/config.yaml",
        "memory per CPU": "1,000 MB for one task on one node (mem_mb_per_cpu 1000 x 1 CPU), but the nodes"
        " of partition 'small' with 1 CPU have at most 900 MB: set mem_mb_per_cpu to at most 900 under"
        " set-resources in slurm/config.yaml",
        "memory per node": "16,000 MB for one task on one node (mem_mb, per node), but the nodes of"
        " partition 'debug' with 1 CPU have at most 9,947 MB: set mem_mb to at most 9947 for patches"
        " under set-resources in slurm/config.yaml",
        "tasks": "4 tasks of 1 CPU and 800 MB, but the 2 nodes of partition 'small' hold at most 2 such"
        " tasks: set tasks: 2 for train under set-resources in slurm/config.yaml",
        "sweep tasks": "4 tasks of 1 CPU, but the 2 nodes of partition 'small' hold at most 2 such tasks:"
        " leave process counts above 2 out of the config's sweep.ranks",
        "nodes": "3 nodes, but partition 'small' has 2 that can hold its tasks: set nodes: 2 for"
        " sweep_collectives under set-resources in slurm/config.yaml",
        "runtime": "60 minutes (runtime), but partition 'short' allows 30: set runtime: 30 for patches"
        " under set-resources in slurm/config.yaml",
    }
    for case, req in cases.items():
        lines = slurm_nodes.problems([req], parts)
        if case == "partition":
            assert lines == [
                "error: rule patches asks for Slurm partition 'gpu', which sinfo does not list (debug,"
                " short, small): set slurm_partition in your profile's default-resources"
            ]
        else:
            assert lines == [f"error: rule {req.rule_name} asks Slurm for {expected[case]}"], case


def test_one_line_per_rule_and_resource_for_its_largest_job_sorted_by_rule():
    parts = slurm_nodes.partitions(SINFO)
    requests = [
        *(request("sweep_train", tasks=ranks) for ranks in (1, 2, 4, 8, 16)),
        request("images", cpus=4, runtime=2000),
        request("images", cpus=4),
    ]
    lines = slurm_nodes.problems(requests, parts)
    assert [line.split(" asks Slurm for ")[1].split(",")[0] for line in lines] == [
        "4 CPUs in one task (its threads)",
        "2000 minutes (runtime)",
        "16 tasks of 1 CPU",
    ]


# --- A job that no node can hold ----------------------------------------------------------------


def test_jobs_no_small_node_can_hold_are_refused_before_anything_is_submitted(cluster, tmp_path_factory):
    """`snakemake --profile slurm sweep` on the 1-CPU nodes without the small-node setting, and
    with an 8-rank grid point: the images job's 4 threads fit no node, 8 one-CPU tasks not the
    4 nodes. Slurm keeps such a job pending for ever (shown first, with the sbatch options the
    plugin gives the 8-rank run); the workflow refuses them at once, before submitting anything,
    with one line for each rule naming the resource and the fix."""
    sbatch = ["sbatch", "--parsable", "-p", slurm_cluster.SMALL_PARTITION, "--ntasks=8",
              "--cpus-per-task=1", "--mem-per-cpu=800", "--exclusive", "--wrap", "true"]  # fmt: skip
    jobid = run(sbatch).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while (state := run(["squeue", "-h", "-j", jobid, "-o", "%T %r"]).stdout.split()) != [
            "PENDING",
            "PartitionConfig",
        ]:
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    finally:
        run(["scancel", jobid])
    folder = slurm_folder(tmp_path_factory, "refused", SMALL_SITE)
    (folder / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "sweep": {**TINY["sweep"], "ranks": [1, 8]}}))
    began = time.monotonic()
    popen, out = start_snakemake(folder, "sweep")
    try:
        code = popen.wait(timeout=120)
    finally:
        if popen.poll() is None:
            popen.kill()
        out.close()
    took = time.monotonic() - began
    text = (folder / "snakemake.out").read_text()
    assert code != 0 and took < 60, (took, text)
    tasks = "8 tasks of 1 CPU and 800 MB, but the 4 nodes of partition 'small' hold at most 4 such tasks"
    fix = "leave process counts above 4 out of the config's sweep.ranks"
    assert [line for line in text.splitlines() if line.startswith("error: ")] == [
        "error: rule images asks Slurm for 4 CPUs in one task (its threads), but the largest node of"
        " partition 'small' has 1 CPU: run with --max-threads 1 (or put `max-threads: 1` in your profile)",
        f"error: rule sweep_collectives asks Slurm for {tasks}: {fix}",
        f"error: rule sweep_train asks Slurm for {tasks}: {fix}",
    ]
    assert not SUBMITTED.search(text) and not (folder / ".snakemake" / "slurm_logs").exists()


# --- The workflow on a 4-CPU node and, at the same time, on 1-CPU nodes ----------------------------


BACKGROUND = {}  # name: (folder, process, its output file), started by start_runs


def start_runs(tmp_path_factory):
    """The workflow on the one-node partition and on the small nodes, at once (each in its own
    workflow copy), as soon as the session's cluster is up:

    - single: `snakemake --profile slurm --profile mysite sweep results/filters.png`;
    - small: the main job and a 2-rank timing run, with the small-node setting (max-threads: 1).
    """
    big = slurm_folder(tmp_path_factory, "slurm", SITE)
    BACKGROUND["big"] = (big, *start_snakemake(big, "sweep", "results/filters.png"))
    small = slurm_folder(tmp_path_factory, "small_nodes", SMALL_NODES_SITE)
    targets = ["results/filters.png", "results/sweep/runs/p2_h25_n1000_r1.h5"]
    BACKGROUND["small"] = (small, *start_snakemake(small, *targets))
    return [BACKGROUND[name][1] for name in ("big", "small")]


on_cluster_start({"slurm_run", "small_nodes_run"}, start_runs)


@pytest.fixture(scope="module")
def slurm_run(cluster):
    folder, popen, out = BACKGROUND["big"]
    return folder, submitted_jobs(folder, popen, out)


@pytest.fixture(scope="module")
def small_nodes_run(cluster):
    folder, popen, out = BACKGROUND["small"]
    return folder, submitted_jobs(folder, popen, out)


def test_every_training_is_its_own_slurm_job(slurm_run):
    _, jobs = slurm_run
    timing = jobs["sweep_train"] + jobs["sweep_train_one_rank"]
    assert len(timing) == 4  # ranks [1, 2] x sizes [1000, 2000] x 1 repeat
    assert len(jobs["sweep_train_one_rank"]) == 2
    assert len(jobs["train"]) == 1
    ids = [jobid for rule in jobs.values() for jobid, _ in rule]
    assert len(ids) == len(set(ids))
    for _, log in timing + jobs["train"]:
        assert os.path.exists(log)  # the plugin's job log (slurm-keep-successful-logs)
    for light in ("filters", "sweep_report", "sweep_model", "sweep_runtimes"):
        assert light not in jobs  # local rules


def test_each_jobs_mpi_world_is_its_rank_count_started_by_srun(slurm_run):
    folder, jobs = slurm_run
    for jobid, log in jobs["sweep_train"] + jobs["sweep_train_one_rank"]:
        wildcards = re.search(r"rule_sweep_train\w*/(\d+)_(\d+)_(\d+)_(\d+)/", log).groups()
        ranks, hidden, samples, repeat = wildcards
        name = f"p{ranks}_h{hidden}_n{samples}_r{repeat}"
        run_log = (folder / "results/logs/sweep" / f"train_{name}.log").read_text()
        assert f"running in Slurm job {jobid}" in run_log
        with h5py.File(folder / "results/sweep/runs" / f"{name}.h5") as f:
            assert f.attrs["ranks"] == int(ranks) and f.attrs["samples"] == int(samples)
    ((jobid, _),) = jobs["train"]
    train_log = (folder / "results/logs/train.log").read_text()
    assert f"running in Slurm job {jobid}" in train_log and "4 ranks" in train_log  # the profile's tasks
    with h5py.File(folder / "results/model.h5") as f:
        assert f.attrs["ranks"] == 4


def test_outputs_of_the_sweep_and_main_job_on_slurm(slurm_run):
    folder, _ = slurm_run
    results = folder / "results"
    rows = (results / "sweep/runtimes.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    for name in ("runtimes.md", "speedup.png", "efficiency.png", "breakdown.png", "model.png"):
        assert (results / "sweep" / name).stat().st_size > 0
    assert (results / "filters.png").stat().st_size > 0


def test_on_small_nodes_the_documented_setting_runs_the_workflow_with_tasks_spread_over_nodes(
    small_nodes_run,
):
    """1-CPU nodes and `max-threads: 1`: the images job asks for 1 CPU; the training's 4 tasks
    land on 4 nodes, a 2-rank timing run's on 2; every job runs on the small nodes."""
    folder, jobs = small_nodes_run
    assert sorted(jobs) == ["images", "patches", "sweep_patches", "sweep_train", "train"]
    for rule in jobs.values():
        for _, log in rule:  # the plugin's job log: Snakemake's header inside the job names its node
            found = set(re.findall(r"^  Host: (\S+)$", Path(log).read_text(), re.M))
            assert found and found <= SMALL_NODES, (log, found)
    logs = folder / "results" / "logs"
    assert "threads: 1;" in (logs / "images.log").read_text()
    train = list(hosts_line((logs / "train.log").read_text()))
    assert len(train) == 4 and set(train) <= SMALL_NODES and len(set(train)) == 4
    with h5py.File(folder / "results" / "model.h5") as f:
        assert f.attrs["ranks"] == 4
    sweep = list(hosts_line((logs / "sweep" / "train_p2_h25_n1000_r1.log").read_text()))
    assert len(set(sweep)) == 2 and set(sweep) <= SMALL_NODES
    assert (folder / "results" / "filters.png").stat().st_size > 0
