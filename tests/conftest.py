"""Shared helpers: the package on sys.path, real MPI launches, a workflow copy, Snakemake runs.

Test configs are files under tests/configs/, each runnable by hand (see its header).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "configs"
SCRIPTS = REPO / "workflow" / "scripts"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(SCRIPTS))

# gradient, kernel and lbfgs are numba-compiled at import: once, here, into the checkout's
# numba cache (its __pycache__ folders), which copy_workflow copies along.
from sae import gradient, h5io, kernel, lbfgs, patches  # noqa: E402, F401


def environments_in_checkout() -> set[str]:
    """Names of the checkout's folders that are Python environments (a venv's pyvenv.cfg, a
    conda env's conda-meta/), whatever a user named them: not the project's files."""
    return {
        d.name
        for d in REPO.iterdir()
        if d.is_dir() and ((d / "pyvenv.cfg").is_file() or (d / "conda-meta").is_dir())
    }


def env():
    """The environment for child processes: this interpreter's bin first."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def unavailable(reason: str, what: str):
    """A component the test needs is missing: skip with ``reason``, or fail in CI (CI=true)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run {what}: {reason}")
    pytest.skip(reason)


def run(cmd, cwd=REPO, check=True, timeout=600):
    """Run a command, returning the CompletedProcess (text output)."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def mpirun(ranks, script, *args, **kwargs):
    """Run a Python script on ``ranks`` real MPI processes."""
    mpiexec = shutil.which("mpiexec", path=env()["PATH"])
    return run([mpiexec, "-n", ranks, sys.executable, script, *args], **kwargs)


def rank_pids(pid):
    """PIDs of the Python processes below ``pid`` (MPI ranks: Hydra gives each its own session)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, ppid = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                int(stat[stat.rindex(")") + 2 :].split()[1]),
            )
            children.setdefault(ppid, []).append((int(entry), comm))
    found, todo = [], [pid]
    while todo:
        for child, comm in children.get(todo.pop(), []):
            todo.append(child)
            if comm.startswith("python"):
                found.append(child)
    return found


def rank_of(pid) -> int:
    """The MPI rank of a rank's process (Hydra's PMI_RANK, or srun's SLURM_PROCID)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env.get(b"PMI_RANK", env.get(b"SLURM_PROCID", b"-1")))


def train_args(patches_path, model_path, iterations=15, hidden=25, block_size=128, precision="float32"):
    return [
        SCRIPTS / "train_model.py",
        patches_path,
        model_path,
        "--side", 8, "--hidden", hidden, "--rho", 0.01, "--lambda", 1e-4, "--beta", 3,
        "--iterations", iterations, "--seed", 0, "--block-size", block_size, "--precision", precision,
    ]  # fmt: skip


def smooth_images(count=3, size=64, seed=0):
    """Small images with natural-ish structure: smoothed noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = rng.normal(size=(size, size))
        for axis in (0, 1):
            img = (img + np.roll(img, 1, axis) + np.roll(img, 2, axis)) / 3
        out.append(img)
    return out


def make_patches_file(path, count, side=8, seed=0):
    """A real patches.h5 sampled from small synthetic images."""
    imgs = smooth_images()
    sigma = patches.sigma(imgs, count, side, seed)
    attrs = {"seed": seed, "side": side, "count": count, "sigma": sigma}
    h5io.write_patches(path, count, side * side, patches.pieces(imgs, count, side, seed, sigma), attrs)
    return path


@pytest.fixture(scope="session")
def patches_1001(tmp_path_factory):
    """1001 patches: not divisible by the block size, nor by 2 or 3 ranks' blocks."""
    return make_patches_file(tmp_path_factory.mktemp("data") / "patches.h5", 1001)


def hosts_line(log_text: str) -> dict[str, str]:
    """A training log's host line ("hosts: node1 (ranks 0-1); node2 (ranks 2-3)") as {host: ranks text}."""
    (line,) = re.findall(r"hosts: (.*)", log_text)
    return dict(part.split(" ", 1) for part in line.split("; "))


def copy_workflow(folder):
    """Copy the workflow (Snakefile, workflow/, config/, profiles/) into ``folder``; its Snakefile.

    The __pycache__ folders come along, with numba's cache of the compiled loops (valid in the
    copy: it matches a source file by its size and modification time, which the copy keeps), so
    that a test's run does not spend seconds compiling them again. tests/test_docs.py's fresh
    clone leaves them out: the first run of a new clone compiles them, as a user's does.
    """
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, folder / name)
        else:
            shutil.copy(src, folder / name)
    return folder / "Snakefile"


def snakemake(folder, *args, check=True, timeout=600):
    """Run this interpreter's Snakemake in ``folder``; the CompletedProcess (text output)."""
    return run([sys.executable, "-m", "snakemake", *args], cwd=folder, check=check, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from the "Job stats" table Snakemake prints (a run's or a dry run's
    output); empty when there is nothing to be done."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:")[1].split("\ntotal")[0]
    return {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[3:] if line.strip()}


def load_config(name: str) -> dict:
    """The test config tests/configs/<name>.yaml."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def write_config(path, *layers: dict):
    """A config file merging ``layers`` in order (each section's keys update the last); its path."""
    config: dict = {}
    for layer in layers:
        for section, values in layer.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The session's one run of the small pipeline that tests only read from: `snakemake --cores
    2 --configfile small.yaml` (the default target: filters.png and training.png) in a workflow
    copy; (folder, its small.yaml, the CompletedProcess). Tests add files (reports, configs) but
    change none the run wrote."""
    folder = tmp_path_factory.mktemp("small_run")
    copy_workflow(folder)
    config = write_config(folder / "small.yaml", load_config("small"))
    proc = snakemake(folder, "--cores", "2", "--configfile", config)
    return folder, config, proc


@pytest.fixture
def workflow_copy(tmp_path):
    """A temporary copy of the workflow to run Snakemake in."""
    copy_workflow(tmp_path)
    return tmp_path


sys.path.insert(0, str(REPO / "tests"))  # slurm_cluster, the test cluster harness

# The session's Slurm cluster: partition debug (the default) of 4-CPU nodes, partition single
# of one such node, partition small of 1-CPU nodes with 900 MB (the 2015 report's EC2 t2.micro
# instances). Each partition serves its own tests, so some can run at once.
SLURM_NODES, SLURM_SINGLE, SLURM_SMALL_NODES = 2, 1, 4
# (fixture names, start): start(tmp_path_factory) runs as soon as the cluster is up, if a selected
# test uses one of the fixtures; it starts work in the background and returns its processes.
_ON_CLUSTER_START = []


def on_cluster_start(fixtures, start):
    """Have the session's cluster call ``start`` once it is up, if a selected test uses one of
    ``fixtures`` (a module's Snakemake runs on Slurm, which then wait for Slurm beside the other
    Slurm tests instead of after them); the processes it returns are killed at the end if left."""
    _ON_CLUSTER_START.append((set(fixtures), start))


@pytest.fixture(scope="session")
def cluster(request, tmp_path_factory):
    """The test Slurm cluster of tests/slurm_cluster.py, started once for every test that needs
    one (test_slurm.py, test_multinode.py) and stopped at the end of the session.

    Needs root, Debian's Slurm, iproute2 and network namespaces (each node is a namespace);
    without them the tests skip with the reason, except in CI (CI=true), where they must run.
    """
    import slurm_cluster

    try:
        slurm_cluster.check_prerequisites(nodes=SLURM_NODES + SLURM_SINGLE + SLURM_SMALL_NODES)
    except slurm_cluster.ClusterError as err:
        unavailable(str(err), "the Slurm tests")
    started = slurm_cluster.start(nodes=SLURM_NODES, single=SLURM_SINGLE, small=SLURM_SMALL_NODES)
    background = []
    try:
        for fixtures, start in _ON_CLUSTER_START:
            if any(fixtures & set(item.fixturenames) for item in request.session.items):
                background += start(tmp_path_factory)
        yield slurm_cluster
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if started:
            slurm_cluster.stop()
    # the test cluster's slurm.conf is gone (a leftover one slows every later snakemake by 10 s)
    assert (
        not started
        or not slurm_cluster.CONF.exists()
        or not slurm_cluster.CONF.read_text().startswith(slurm_cluster.CONF_MARK)
    )
