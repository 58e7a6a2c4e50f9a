"""More than one machine: a two-node Slurm cluster, a network between the nodes, a lost node.

The session's test cluster (conftest.cluster, tests/slurm_cluster.py) runs one slurmd
per node, each in a network namespace and a UTS namespace of its own (its own address
and host name), so ranks on different nodes talk TCP through a bridge, as across a
cluster's network, while sharing the file system and the Python environment, as a
cluster's shared file system would. These tests use its default partition, debug:
``node1`` and ``node2``, 4 CPUs each. Needs root, Slurm and iproute2; without them the
tests skip with the reason, except in CI (CI=true), where they must run. The watchdog
test at the end needs only MPI.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import slurm_cluster
import yaml

from conftest import (
    REPO,
    copy_workflow,
    env,
    hosts_line,
    make_patches_file,
    rank_pids,
    run,
    snakemake,
    train_args,
    unavailable,
)

NODES = ("node1", "node2")
TINY = {
    "patches": {"count": 2000},
    "train": {"iterations": 20},
    "sweep": {"ranks": [1, 2, 4], "hidden": [25], "sizes": [1000], "repeats": 1, "iterations": 10},
}


def spread_profile(folder, resources):
    """A copy of slurm/config.yaml in folder/<name> whose rules get extra resources (placement)."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    # The plugin looks at the queue this many seconds after a submission, then each time it
    # finds nothing finished 10 s later than the last time: with 4 s, a test's job (10-15 s
    # here) is seen done at the second look, after 18 s (with 1 s, one over 12 s at the third,
    # after 33 s).
    profile["slurm-init-seconds-before-status-checks"] = 4
    for rule, extra in resources.items():
        profile["set-resources"][rule] = {**profile["set-resources"][rule], **extra}
    (folder / "spread").mkdir()
    (folder / "spread" / "config.yaml").write_text(yaml.safe_dump(profile))
    (folder / "mysite").mkdir()  # a user's own profile, as the README shows
    (folder / "mysite" / "config.yaml").write_text(
        yaml.safe_dump({"default-resources": {"slurm_partition": "debug"}})
    )
    return ["--profile", folder / "spread", "--profile", folder / "mysite"]


def workflow_folder(tmp_path_factory, name, config, *local):
    """A workflow copy with config tiny.yaml, whose ``local`` targets are made here, not on Slurm.

    (The one-node Slurm test runs every stage on Slurm; here only the MPI jobs matter.)
    """
    folder = tmp_path_factory.mktemp(name)
    copy_workflow(folder)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(folder, "--cores", 2, *local, "--configfile", "tiny.yaml")
    return folder


def same_model(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        return all(np.array_equal(fa[k][()], fb[k][()]) for k in ("W1", "W2", "b1", "b2"))


@pytest.fixture(scope="module")
def patches_2000(tmp_path_factory):
    return make_patches_file(tmp_path_factory.mktemp("data") / "patches.h5", 2000)


@pytest.fixture(scope="module")
def one_rank_model(tmp_path_factory, patches_2000):
    out = tmp_path_factory.mktemp("one") / "model.h5"
    run([sys.executable, *train_args(patches_2000, out, iterations=30)])
    return out


@pytest.mark.parametrize(
    ("nodes", "ranks", "placement"),
    [(2, 2, {"node1": "(rank 0)", "node2": "(rank 1)"}),
     (2, 4, {"node1": "(ranks 0-1)", "node2": "(ranks 2-3)"}),
     (1, 4, {"node1": "(ranks 0-3)"})],
)  # fmt: skip
def test_ranks_across_nodes_train_the_single_rank_model(
    cluster, tmp_path, patches_2000, one_rank_model, nodes, ranks, placement
):
    out = tmp_path / "model.h5"
    srun = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={ranks}",
        "--exclusive",
        "--mpi=pmi2",
        "--kill-on-bad-exit=1",
    ]
    proc = run(
        [*srun, sys.executable, *train_args(patches_2000, out, iterations=30)], cwd=tmp_path, timeout=300
    )
    assert hosts_line(proc.stderr) == placement  # the log names each rank's node
    assert same_model(out, one_rank_model)  # bit for bit, across TCP as through shared memory


@pytest.fixture(scope="module")
def workflow_run(cluster, tmp_path_factory):
    """`snakemake results/filters.png` and the sweep's 2- and 4-rank jobs: every MPI job spans both nodes."""
    folder = workflow_folder(
        tmp_path_factory, "twonode", TINY, "results/patches.h5", "results/sweep/patches.h5"
    )
    profiles = spread_profile(
        folder,
        {
            "train": {"slurm_extra": "'--ntasks-per-node=2'"},  # 4 tasks: 2 per node
            "sweep_train": {"nodes": 2},  # 2 ranks: 1 per node; 4: 2 per node (--exclusive)
        },
    )
    sweep = [f"results/sweep/runs/p{ranks}_h25_n1000_r1.h5" for ranks in (2, 4)]
    targets = ["results/filters.png", *sweep, "--configfile", "tiny.yaml"]
    snakemake(folder, *profiles, *targets, timeout=900)
    return folder


def test_workflow_on_two_nodes_places_ranks_on_both(workflow_run):
    logs = workflow_run / "results" / "logs"
    assert hosts_line((logs / "train.log").read_text()) == {"node1": "(ranks 0-1)", "node2": "(ranks 2-3)"}
    for ranks in (2, 4):
        log = logs / "sweep" / f"train_p{ranks}_h25_n1000_r1.log"
        assert set(hosts_line(log.read_text())) == set(NODES)
    runs = workflow_run / "results/sweep/runs"
    assert same_model(runs / "p2_h25_n1000_r1.h5", runs / "p4_h25_n1000_r1.h5")
    assert (workflow_run / "results" / "filters.png").stat().st_size > 0


def test_workflow_model_on_two_nodes_equals_the_single_rank_one(workflow_run, tmp_path):
    """The main training (4 ranks, 2 per node) against one plain process on the same patches."""
    with h5py.File(workflow_run / "results/model.h5") as f:
        assert f.attrs["ranks"] == 4
        hp = {k: f.attrs[k] for k in ("hidden", "block_size", "precision", "max_iterations")}
    out = tmp_path / "model.h5"
    args = train_args(
        workflow_run / "results/patches.h5",
        out,
        iterations=int(hp["max_iterations"]),
        hidden=int(hp["hidden"]),
        block_size=int(hp["block_size"]),
        precision=str(hp["precision"]),
    )
    run([sys.executable, *args])
    assert same_model(out, workflow_run / "results/model.h5")


def test_sigterm_to_one_nodes_ranks_stops_every_rank_with_a_checkpoint(cluster, tmp_path, patches_2000):
    """node2 is drained: its init system sends SIGTERM to its processes, here its two ranks alone.

    Every rank stops after the evaluation under way, rank 0 (on node1) writes the checkpoint and
    the error line names node2's ranks; the next run, on one rank here, ends bit for bit where
    an uninterrupted training does.
    """
    iterations, checkpoint, log_path = 2000, tmp_path / "ckpt.h5", tmp_path / "train.log"
    args = train_args(patches_2000, tmp_path / "model.h5", iterations=iterations)
    args += ["--checkpoint", checkpoint, "--checkpoint-every", 5]
    srun = ["srun", "--nodes=2", "--ntasks=4", "--exclusive", "--mpi=pmi2", "--kill-on-bad-exit=1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*srun, sys.executable, *map(str, args)], cwd=tmp_path, env=env(),
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists():  # in the loop, on both nodes
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            ranks = [p for p in slurm_cluster.node_processes(2) if b"train_model.py" in cmdline(p)]
            assert len(ranks) == 2
            for pid in ranks:
                os.kill(pid, signal.SIGTERM)
            assert proc.wait(timeout=30) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert hosts_line(text) == {"node1": "(ranks 0-1)", "node2": "(ranks 2-3)"}
    stopped = re.search(
        r"error: stopped by SIGTERM \((ranks 2-3|rank [23]) on node2\) after iteration (\d+) \(evaluation"
        r" (\d+)\); checkpoint .* written",
        text,
    )
    assert stopped and int(stopped.group(2)) < iterations, text
    assert not (tmp_path / "model.h5").exists()
    resumed = run([sys.executable, *args], cwd=tmp_path)
    assert f"resumed from iteration {stopped.group(2)}, evaluation {stopped.group(3)}" in resumed.stderr
    run([sys.executable, *train_args(patches_2000, tmp_path / "ref.h5", iterations=iterations)])
    assert same_model(tmp_path / "model.h5", tmp_path / "ref.h5")
    with h5py.File(tmp_path / "model.h5") as a, h5py.File(tmp_path / "ref.h5") as b:
        assert np.array_equal(a["history"][:, :2], b["history"][:, :2])


def cmdline(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def slurm_job_state(jobid):
    proc = subprocess.run(["squeue", "-h", "-j", str(jobid), "-o", "%T"], capture_output=True, text=True)
    return proc.stdout.strip()


def test_a_lost_node_ends_the_job_and_the_retry_resumes_on_the_other(cluster, tmp_path_factory):
    """node2's link goes down and all its processes die mid-training; the retry finishes on node1.

    Afterwards node2 is brought back (its link up, its slurmd started again) for the session's
    later tests.
    """
    config = {"patches": {"count": 2000}, "train": {"iterations": 1000, "checkpoint_every": 5}}
    folder = workflow_folder(tmp_path_factory, "lostnode", config, "results/patches.h5")
    # --spread-job: the 4 ranks span both nodes while both are up, and fit on one after
    profiles = spread_profile(folder, {"train": {"slurm_extra": "'--spread-job'"}})
    cmd = [sys.executable, "-m", "snakemake", *profiles, "results/model.h5", "--configfile", "tiny.yaml"]
    out = open(folder / "snakemake.out", "w")
    timeout = {**env(), "SAE_MPI_TIMEOUT": "10"}  # the rank watchdog, inherited by the jobs
    snakemake = subprocess.Popen(
        [str(c) for c in cmd], cwd=folder, env=timeout, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        log, checkpoint = folder / "results/logs/train.log", folder / "results/checkpoints/model.h5"
        deadline = time.monotonic() + 300
        while not (checkpoint.exists() and log.exists() and "node2" in log.read_text()):
            assert snakemake.poll() is None, (folder / "snakemake.out").read_text()
            assert time.monotonic() < deadline, "no checkpoint of a training on both nodes within 300 s"
            time.sleep(0.05)
        # node2 is lost at once (the training takes seconds; a slow squeue first let it finish,
        # and the model it wrote was then removed with the cancelled job): its link goes down,
        # then everything in it dies (slurmd, step, ranks)
        subprocess.run(["ip", "link", "set", slurm_cluster.veth(2), "down"], check=True)
        for pid in slurm_cluster.node_processes(2):
            os.kill(pid, signal.SIGKILL)
        lost = time.monotonic()
        (jobid,) = [int(p.stem) for p in (folder / ".snakemake/slurm_logs/rule_train").glob("*.log")]
        assert slurm_job_state(jobid) == "RUNNING"  # Slurm notices the loss seconds later
        assert "wrote results/model.h5" not in log.read_text()  # lost mid-training
        while slurm_job_state(jobid) in ("RUNNING", "COMPLETING"):
            assert time.monotonic() - lost < 60, (
                f"job {jobid} still {slurm_job_state(jobid)} 60 s after the loss"
            )
            time.sleep(0.5)
        assert not (folder / "results/model.h5").exists()  # no model from the failed attempt
        assert snakemake.wait(timeout=600) == 0, (folder / "snakemake.out").read_text()
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
        out.close()
        slurm_cluster.revive(2)  # back in the partition for the session's later tests
    assert slurm_cluster.node_states()["node2"] == "idle"
    text = log.read_text()  # the retry's log: a new Slurm job, on node1 alone
    (retry,) = [
        p.stem for p in (folder / ".snakemake/slurm_logs/rule_train").glob("*.log") if p.stem != str(jobid)
    ]
    assert f"running in Slurm job {retry}" in text
    assert re.search(r"resumed from iteration [1-9]\d*", text), text
    assert hosts_line(text) == {"node1": "(ranks 0-3)"}
    with h5py.File(folder / "results/model.h5") as f:
        assert len(f.attrs["resumed_from"]) == 1 and f.attrs["resumed_from"][0] > 0


def test_a_rank_whose_peer_stops_answering_ends_after_the_timeout(tmp_path, patches_2000):
    """The watchdog: one rank frozen (SIGSTOP, as if its node vanished) ends the whole run."""
    log = open(tmp_path / "train.log", "w")
    mpiexec = shutil.which("mpiexec", path=env()["PATH"])
    args = train_args(patches_2000, tmp_path / "model.h5", iterations=100000)
    proc = subprocess.Popen(
        [mpiexec, "-n", "2", sys.executable, *map(str, args)],
        env={**env(), "SAE_MPI_TIMEOUT": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while "iteration" not in (tmp_path / "train.log").read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        ranks = sorted(rank_pids(proc.pid))
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGSTOP)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "train.log").read_text()
    assert re.search(
        r"error: rank \d on \S+ waited over 2 s in MPI_(Allgatherv|Reduce_scatter): a peer rank is dead", text
    ), text
    assert not (tmp_path / "model.h5").exists()


def test_a_bad_watchdog_timeout_is_one_error_line(tmp_path, patches_2000):
    mpiexec = shutil.which("mpiexec", path=env()["PATH"])
    cmd = [mpiexec, "-n", "2", sys.executable, *map(str, train_args(patches_2000, tmp_path / "model.h5"))]
    proc = subprocess.run(cmd, env={**env(), "SAE_MPI_TIMEOUT": "soon"}, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "error: SAE_MPI_TIMEOUT='soon': must be a number of seconds > 0" in proc.stderr


def test_the_harness_refuses_a_slurm_it_did_not_start(tmp_path):
    """A slurmd that tests/slurm_cluster.py did not start: an error at once, nothing started or stopped."""
    if os.geteuid() != 0 or not shutil.which("slurmd"):
        unavailable("the harness needs root and Slurm", "the harness test")
    fake = tmp_path / "slurmd"  # a real process of that name, not started by the harness
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([fake, "60"])
    try:
        with pytest.raises(slurm_cluster.ClusterError, match=rf"not started by .* slurmd \(pid {proc.pid}\)"):
            slurm_cluster.start(nodes=2)
        assert proc.poll() is None  # left alone
    finally:
        proc.kill()
        proc.wait()
