"""A throwaway single-node Slurm cluster on this machine, for tests.

Built from Debian's packages (``apt-get install slurmctld slurmd slurm-client
munge``) and meant for root on a disposable machine or container: ``start()``
writes ``/etc/slurm/slurm.conf`` (where ``srun`` inside jobs looks for it) and
starts munged, slurmctld and slurmd; ``stop()`` stops only what ``start()``
started.

Usage: python tests/slurm_cluster.py start|stop|status
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
BASE = Path("/var/spool/slurm_cluster")
STARTED = BASE / "started.json"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
MUNGE_DIRS = (MUNGE_RUN, Path("/var/lib/munge"), Path("/var/log/munge"))
DAEMONS = {
    "munged": ("/usr/sbin/munged", MUNGE_RUN / "munged.pid"),
    "slurmctld": ("/usr/sbin/slurmctld", BASE / "slurmctld.pid"),
    "slurmd": ("/usr/sbin/slurmd", BASE / "slurmd.pid"),
}
CLIENTS = ("/usr/bin/sinfo", "/usr/bin/scontrol", "/usr/bin/sbatch", "/usr/bin/srun")
USABLE = {"idle", "mixed", "allocated", "completing"}
NEEDS_RESUME = ("down", "drain", "fail")


class ClusterError(RuntimeError):
    """The test cluster cannot be started."""


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ok(*args: str) -> bool:
    result = _run(*args)
    return result is not None and result.returncode == 0


def _node_states() -> dict[str, str]:
    """Map node name to its long state (``*`` suffix: not responding)."""
    if not _ok("scontrol", "ping"):  # fast; sinfo waits ~10 s for a dead controller
        return {}
    result = _run("sinfo", "--noheader", "--Node", "--format=%N %T")
    if result is None or result.returncode != 0:
        return {}
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


def running() -> bool:
    """Whether a Slurm controller answers and some node can take jobs."""
    return any(state in USABLE for state in _node_states().values())


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the test Slurm cluster must be started as root")
    missing = [p for p in [*(d[0] for d in DAEMONS.values()), *CLIENTS] if not Path(p).exists()]
    if missing:
        raise ClusterError(
            f"missing {', '.join(missing)}: apt-get install -y slurmctld slurmd slurm-client munge"
        )


def _alive(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return comm == name and state != "Z"


def _any_running(name: str) -> bool:
    return any(p.name.isdigit() and _alive(int(p.name), name) for p in Path("/proc").iterdir())


def _start_daemon(name: str, user: str | None = None) -> int:
    """Start a self-daemonizing program and return the PID from its pid file."""
    path, pid_file = DAEMONS[name]
    pid_file.unlink(missing_ok=True)
    result = subprocess.run([path], capture_output=True, text=True, user=user)
    deadline = time.monotonic() + 10
    while result.returncode == 0 and time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if _alive(pid, name):
            return pid
        time.sleep(0.1)
    detail = (result.stderr.strip().splitlines() or ["no pid file"])[-1]
    raise ClusterError(f"{name} did not start: {detail}")


def _start_munged() -> int:
    for directory in MUNGE_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(MUNGE_KEY.parent, "munge", "munge")
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    return _start_daemon("munged", user="munge")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("cannot read MemTotal from /proc/meminfo")


def _write_conf(node: str) -> None:
    """Write slurm.conf and give slurmctld/slurmd fresh, empty state dirs."""
    for state_dir in (BASE / "ctld", BASE / "d"):
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(
        f"""\
# Written by tests/slurm_cluster.py: a throwaway single-node test cluster.
ClusterName=testcluster
SlurmctldHost={node}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Reject jobs that can never fit (e.g. --ntasks 3 on 2 CPUs) instead of leaving
# them pending forever; such jobs need --overcommit.
EnforcePartLimits=ALL
# Finished jobs stay visible to squeue (no accounting daemon here) for 5 min.
MinJobAge=300
StateSaveLocation={BASE}/ctld
SlurmdSpoolDir={BASE}/d
SlurmctldPidFile={DAEMONS["slurmctld"][1]}
SlurmdPidFile={DAEMONS["slurmd"][1]}
SlurmctldLogFile={BASE}/slurmctld.log
SlurmdLogFile={BASE}/slurmd.log
# The node claims at least 4 CPUs (the slurm profile's training uses 4 tasks) even on
# a 2-core machine: config_overrides makes slurmd trust this file over the hardware.
SlurmdParameters=config_overrides
NodeName={node} CPUs={max(4, os.cpu_count() or 1)} RealMemory={_memory_mb() * 9 // 10} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=NO State=UP
"""
    )


def _wait_until_usable(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _node_states()
        if any(state in USABLE for state in states.values()):
            return
        for node, state in states.items():
            if state.startswith(NEEDS_RESUME):
                _run("scontrol", "update", f"nodename={node}", "state=resume")
        time.sleep(1)
    raise ClusterError(f"no Slurm node became idle within {timeout:.0f} s; see {BASE}/*.log")


def start(timeout: float = 60) -> bool:
    """Start the cluster unless one is usable; True if this call started any daemon."""
    _check_prerequisites()
    if running():
        return False
    stop()  # leftovers of an earlier start() that no longer make a usable cluster
    BASE.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    started: dict[str, int] = {}
    try:
        if not _any_running("munged"):
            started["munged"] = _start_munged()
        if not _any_running("slurmctld"):
            _write_conf(node)
            started["slurmctld"] = _start_daemon("slurmctld")
        if not _any_running("slurmd"):
            started["slurmd"] = _start_daemon("slurmd")
    finally:
        STARTED.write_text(json.dumps(started))
    try:
        _wait_until_usable(timeout)
    except ClusterError:
        stop()
        raise
    return bool(started)


def stop(timeout: float = 15) -> bool:
    """Stop the daemons that start() started; True if there were any."""
    try:
        started = json.loads(STARTED.read_text())
    except (OSError, ValueError):
        return False
    for name in ("slurmd", "slurmctld", "munged"):
        pid = started.get(name)
        if pid is None or not _alive(pid, name):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, name):
            os.kill(pid, signal.SIGKILL)
    STARTED.unlink()
    return bool(started)


def main(argv: list[str]) -> int:
    command = argv[0] if len(argv) == 1 else ""
    if command == "start":
        print("started" if start() else "already running (nothing started)")
    elif command == "stop":
        print("stopped" if stop() else "nothing started by this module")
    elif command == "status":
        up = running()
        print("running" if up else "not running")
        return 0 if up else 1
    else:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ClusterError as error:
        sys.exit(f"error: {error}")
