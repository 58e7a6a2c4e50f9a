"""The `slurm` profile against a real single-node Slurm cluster (Debian's packages).

tests/slurm_cluster.py starts munged, slurmctld and slurmd (refusing a Slurm it
did not start), and stops only what it started. Without root or Slurm the tests skip
with the reason, except in CI (CI=true), where they must run.
"""

import os
import re
import shutil
import sys

import h5py
import pytest
import slurm_cluster
import yaml

from conftest import REPO, run, unavailable

TINY = {
    "patches": {"count": 2000},
    "train": {"iterations": 20},
    "sweep": {"ranks": [1, 2], "sizes": [1000, 2000], "repeats": 1, "iterations": 10},
}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def cluster():
    try:
        slurm_cluster.check_prerequisites()
    except slurm_cluster.ClusterError as err:
        unavailable(str(err), "the Slurm tests")
    started = slurm_cluster.start()
    yield
    if started:
        slurm_cluster.stop()
        # the test cluster's slurm.conf is gone (a leftover one slows every later snakemake by 10 s)
        assert not slurm_cluster.CONF.exists() or not slurm_cluster.CONF.read_text().startswith(
            slurm_cluster.CONF_MARK
        )


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """`snakemake --profile slurm --profile <site> sweep results/filters.png` (tiny config, workflow copy)."""
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("Snakefile", "workflow", "config", "profiles", "slurm"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    site = tmp_path_factory.mktemp("mysite")  # a user's own profile, as the README shows
    (site / "config.yaml").write_text(yaml.safe_dump({"default-resources": {"slurm_partition": "debug"}}))
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--profile", site, "sweep",
           "results/filters.png", "--configfile", "tiny.yaml"]  # fmt: skip
    proc = run(cmd, cwd=folder, timeout=900)
    jobs = {}
    for jobid, log in SUBMITTED.findall(proc.stdout + proc.stderr):
        rule = re.search(r"slurm_logs/rule_([a-z_]+)/", log).group(1)
        jobs.setdefault(rule, []).append((int(jobid), log))
    return folder, jobs


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
