"""A throwaway Slurm cluster on this machine, for tests: one node, or several.

Built from Debian's packages (``apt-get install slurmctld slurmd slurm-client
munge``, and ``iproute2`` for several nodes) and meant for root on a disposable
machine or container: ``start()`` writes ``/etc/slurm/slurm.conf`` (where
``srun`` inside jobs looks for it) and starts munged, slurmctld and the slurmds;
``stop()`` puts back the slurm.conf that was there before (usually none). A
slurm.conf left behind would cost every later Snakemake command ten seconds: the
Slurm executor plugin asks ``scontrol show config`` at start-up, and scontrol
waits that long for a controller that no longer runs.

- One node (``start(nodes=1)``): slurmd runs beside slurmctld, under this
  machine's host name.
- Several nodes (``start(nodes=2)``): each slurmd runs in a network namespace
  of its own (``sae-node1``, ...; a veth pair into the bridge ``saebr0``, its
  own address 10.250.0.1N) and a UTS namespace (host name ``node1``, ...), with
  its own NodeName/NodeAddr, spool and log. slurmctld listens on the bridge
  (10.250.0.1) in this machine's namespace, where sbatch and squeue run; the
  file system and munged's socket are shared, as a cluster's shared file
  system and its munge key would be. MPI ranks on different nodes talk over
  TCP through the bridge.
- More partitions (``start(nodes=2, single=1, small=4)``): the ``nodes`` nodes
  form the default partition, ``debug``; ``single`` more nodes of the same shape
  form partition ``single`` (a one-node cluster beside it), and ``small`` nodes of
  SMALL_CPUS CPU and SMALL_MEMORY_MB MB each, the shape of the 2015 report's EC2
  t2.micro instances (1 vCPU, 1 GiB), partition ``small``. Every node then runs in
  a namespace, as above, numbered in that order (node1 ... node<all>).

Every process this module starts is recorded in ``STATE`` by PID, name and
start time, so ``stop()`` stops exactly those (and whatever still runs in its
namespaces), never a process that merely reuses a PID. ``start()`` refuses a
Slurm it did not start (a clear error, no waiting); one it started earlier is
reused if it has the requested shape and works, else replaced.

Usage: python tests/slurm_cluster.py start [NODES [SINGLE [SMALL]]]|stop|status
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
CONF_MARK = "# Written by tests/slurm_cluster.py"  # the first line of the slurm.conf start() writes
BASE = Path("/var/spool/slurm_cluster")
STATE = BASE / "cluster.json"  # what start() started: {"nodes", "processes", "netns", "bridge"}
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
MUNGE_DIRS = (MUNGE_RUN, Path("/var/lib/munge"), Path("/var/log/munge"))
PROGRAMS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
PID_FILES = {"munged": MUNGE_RUN / "munged.pid", "slurmctld": BASE / "slurmctld.pid"}
SLURMD_PID_FILE = BASE / "slurmd-%n.pid"  # %n: the node name
CLIENTS = ("/usr/bin/sinfo", "/usr/bin/scontrol", "/usr/bin/sbatch", "/usr/bin/srun")
USABLE = {"idle", "mixed", "allocated", "completing"}
NEEDS_RESUME = ("down", "drain", "fail")
# Several nodes: the bridge, its subnet, and node i's namespace, address and host name.
BRIDGE, SUBNET = "saebr0", "10.250.0"
CONTROLLER_ADDR = f"{SUBNET}.1"
CPUS_PER_NODE = 4  # claimed (config_overrides), even on 2 cores: a lone node takes a 4-rank job
# Small nodes (start(small=K)): 1 CPU, and less memory than Slurm can give on a 1 GiB machine
# once the kernel and the daemons have theirs.
SMALL_CPUS, SMALL_MEMORY_MB = 1, 900
PARTITION, SINGLE_PARTITION, SMALL_PARTITION = "debug", "single", "small"
SLURMD_TIMEOUT = 10  # seconds until slurmctld sets a silent node DOWN (test cluster only)
# Several nodes: what every task's environment gets (slurmstepd runs TASK_PROLOG, whose
# "export" lines it applies). The nodes share one kernel, so UCX (the mpich wheel's netmod
# between nodes) would see shared memory reachable and bypass the network; these make it
# use TCP on the node's link, as between machines. (MPICH's own shared memory still joins
# ranks on one node.)
TASK_PROLOG = BASE / "task_prolog.sh"
NETWORK_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0"}


def node_name(i: int) -> str:
    return f"node{i}"


def netns(i: int) -> str:
    return f"sae-node{i}"


def veth(i: int) -> str:
    """The host end of node i's veth pair (the node's end is its eth0)."""
    return f"sae-veth{i}"


def node_addr(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


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


def _must(*args: str) -> None:
    result = _run(*args)
    if result is None or result.returncode != 0:
        detail = result.stderr.strip() if result is not None else "did not finish"
        raise ClusterError(f"{' '.join(args)}: {detail}")


def node_states() -> dict[str, str]:
    """Map node name to its long state (``*`` suffix: not responding)."""
    if not _ok("scontrol", "ping"):  # fast; sinfo waits ~10 s for a dead controller
        return {}
    result = _run("sinfo", "--noheader", "--Node", "--format=%N %T")
    if result is None or result.returncode != 0:
        return {}
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


def running() -> bool:
    """Whether a Slurm controller answers and some node can take jobs."""
    return any(state in USABLE for state in node_states().values())


# --- processes, identified by PID, name and start time -------------------------------------


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, start time in clock ticks after boot) of a process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    return stat[stat.index("(") + 1 : stat.rindex(")")], rest[0], int(rest[19])


def _identity(pid: int) -> dict | None:
    info = _stat(pid)
    return None if info is None else {"pid": pid, "name": info[0], "start": info[2]}


def _is_alive(proc: dict) -> bool:
    """Whether the recorded process still runs (same PID, name and start time; no zombie)."""
    info = _stat(proc["pid"])
    return info is not None and info[0] == proc["name"] and info[2] == proc["start"] and info[1] != "Z"


def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None and info[0] == name and info[1] != "Z":
                pids.append(int(entry.name))
    return pids


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int) -> list[int]:
    """Processes living in the network namespace with this inode (a node's jobs and daemons)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if _netns_inode(f"/proc/{entry.name}/ns/net") == inode:
                pids.append(int(entry.name))
    return pids


def _terminate(procs: list[dict], timeout: float = 15) -> None:
    for proc in procs:
        if _is_alive(proc):
            os.kill(proc["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_is_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        if _is_alive(proc):
            os.kill(proc["pid"], signal.SIGKILL)


# --- state --------------------------------------------------------------------------------


def _read_state() -> dict | None:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


def _write_state(state: dict) -> None:
    BASE.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(STATE)


def check_prerequisites(nodes: int = 1) -> None:
    """ClusterError naming what this machine lacks for a test cluster of ``nodes`` nodes."""
    if os.geteuid() != 0:
        raise ClusterError("the test Slurm cluster must be started as root")
    missing = [p for p in [*PROGRAMS.values(), *CLIENTS] if not Path(p).exists()]
    if missing:
        raise ClusterError(
            f"missing {', '.join(missing)}: apt-get install -y slurmctld slurmd slurm-client munge"
        )
    if nodes > 1:
        if not all(shutil.which(cmd) for cmd in ("ip", "nsenter", "unshare")):
            raise ClusterError("several nodes need ip, nsenter and unshare: apt-get install -y iproute2")
        probe = "sae-probe"
        _run("ip", "netns", "delete", probe)
        result = _run("ip", "netns", "add", probe)
        if result is None or result.returncode != 0:
            detail = result.stderr.strip() if result is not None else "ip netns add did not finish"
            raise ClusterError(f"network namespaces are unavailable here: {detail}")
        _run("ip", "netns", "delete", probe)


def _foreign(state: dict | None) -> list[str]:
    """Slurm daemons running that start() did not start (munged is shared, not checked)."""
    ours = {p["pid"] for p in (state or {}).get("processes", []) if _is_alive(p)}
    found = [(name, pid) for name in ("slurmctld", "slurmd") for pid in _pids_named(name)]
    return [f"{name} (pid {pid})" for name, pid in found if pid not in ours]


# --- starting -----------------------------------------------------------------------------


def _start_daemon(name: str, pid_file: Path, argv: list[str], user: str | None = None) -> dict:
    """Start a self-daemonizing program; its identity once its pid file names a live process."""
    pid_file.unlink(missing_ok=True)
    result = subprocess.run(argv, capture_output=True, text=True, user=user)
    deadline = time.monotonic() + 10
    while result.returncode == 0 and time.monotonic() < deadline:
        try:
            proc = _identity(int(pid_file.read_text()))
        except (OSError, ValueError):
            proc = None
        if proc is not None and proc["name"] == name:
            return proc
        time.sleep(0.1)
    detail = (result.stderr.strip().splitlines() or ["no pid file"])[-1]
    raise ClusterError(f"{name} did not start: {detail}")


def _start_munged() -> dict:
    for directory in MUNGE_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(MUNGE_KEY.parent, "munge", "munge")
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    return _start_daemon("munged", PID_FILES["munged"], [PROGRAMS["munged"]], user="munge")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("cannot read MemTotal from /proc/meminfo")


def first_job_id() -> int:
    """A job id no earlier test cluster used: 100 ids per second of the clock (Slurm's max is 67,108,863)."""
    return 1 + time.time_ns() // 10**7 % 60_000_000


def _write_conf(host: str, nodes: int, single: int, small: int) -> None:
    """Write slurm.conf and give slurmctld and the slurmds fresh, empty state dirs."""
    shutil.rmtree(BASE / "ctld", ignore_errors=True)
    for old in BASE.glob("d-*"):
        shutil.rmtree(old, ignore_errors=True)
    (BASE / "ctld").mkdir(parents=True)
    big = nodes + single
    memory = (_memory_mb() * 9 // 10 - small * SMALL_MEMORY_MB) // big
    total = big + small
    if total == 1:
        names = [host]
        controller = host
        node_lines = f"NodeName={host} CPUs={CPUS_PER_NODE} RealMemory={memory} State=UNKNOWN"
        partitions = (
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=NO State=UP"
        )
    else:
        names = [node_name(i) for i in range(1, total + 1)]
        controller = f"{host}({CONTROLLER_ADDR})"
        node_lines = "\n".join(
            f"NodeName={node_name(i)} NodeAddr={node_addr(i)} NodeHostname={node_name(i)}"
            + (
                f" CPUs={CPUS_PER_NODE} RealMemory={memory}"
                if i <= big
                else f" CPUs={SMALL_CPUS} RealMemory={SMALL_MEMORY_MB}"
            )
            + " State=UNKNOWN"
            for i in range(1, total + 1)
        )
        partitions = (
            f"PartitionName={PARTITION} Nodes={','.join(names[:nodes])} Default=YES"
            " MaxTime=INFINITE OverSubscribe=NO State=UP"
        )
        for name, members in ((SINGLE_PARTITION, names[nodes:big]), (SMALL_PARTITION, names[big:])):
            if members:
                partitions += f"\nPartitionName={name} Nodes={','.join(members)}"
                partitions += " MaxTime=INFINITE OverSubscribe=NO State=UP"
    for name in names:
        (BASE / f"d-{name}").mkdir()
    prolog = ""
    if total > 1:
        lines = "".join(f"echo export {k}={v}\n" for k, v in NETWORK_ENV.items())
        TASK_PROLOG.write_text(f"#!/bin/sh\n# Written by tests/slurm_cluster.py\n{lines}")
        TASK_PROLOG.chmod(0o755)
        prolog = f"# Every task: TCP between the nodes (see NETWORK_ENV)\nTaskProlog={TASK_PROLOG}\n"
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(
        f"""\
{CONF_MARK}: a throwaway test cluster of {nodes} node(s).
ClusterName=testcluster
SlurmctldHost={controller}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# A node whose slurmd stops answering is DOWN after this many seconds (jobs on it end).
SlurmdTimeout={SLURMD_TIMEOUT}
# Slurm's default, as at most sites: a job no node of its partition can hold (e.g. 4 CPUs
# per task on 1-CPU nodes) is accepted and pends for ever, reason PartitionConfig. The
# workflow refuses such jobs itself before submitting them (workflow/rules/slurm.smk).
EnforcePartLimits=NO
# Finished jobs stay visible to squeue (no accounting daemon here) for 5 min.
MinJobAge=300
# Job ids differ from those of earlier test clusters (the state is wiped at every start):
# MPICH names a step's shared-memory files after it, and a killed job leaves them behind.
FirstJobId={first_job_id()}
StateSaveLocation={BASE}/ctld
SlurmdSpoolDir={BASE}/d-%n
SlurmctldPidFile={PID_FILES["slurmctld"]}
SlurmdPidFile={SLURMD_PID_FILE}
SlurmctldLogFile={BASE}/slurmctld.log
SlurmdLogFile={BASE}/slurmd-%n.log
{prolog}# Each node claims {CPUS_PER_NODE} CPUs (the slurm profile's training uses 4 tasks) even on
# a 2-core machine, a small node {SMALL_CPUS}: config_overrides makes slurmd trust this file
# over the hardware.
SlurmdParameters=config_overrides
{node_lines}
{partitions}
"""
    )


def _remove_stale_links(nodes: int) -> None:
    """Delete veth pairs and a bridge with this module's names left by an unfinished stop().

    A deleted namespace lives on while anything holds it (e.g. a copy of the mount of
    /run/netns/<name> in another mount namespace); deleting a veth's host end removes the
    pair even then.
    """
    for name in [*(veth(i) for i in range(1, nodes + 1)), BRIDGE]:
        if _ok("ip", "link", "show", name):
            _must("ip", "link", "delete", name)


def _setup_network(nodes: int, state: dict) -> None:
    """The bridge and, per node, a namespace with a veth pair into it (recorded as made)."""
    _remove_stale_links(nodes)
    _must("ip", "link", "add", BRIDGE, "type", "bridge")
    state["bridge"] = BRIDGE
    _write_state(state)
    _must("ip", "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", BRIDGE)
    _must("ip", "link", "set", BRIDGE, "up")
    for i in range(1, nodes + 1):
        ns, host_end = netns(i), veth(i)
        _must("ip", "netns", "add", ns)
        state["netns"].append({"name": ns, "inode": _netns_inode(f"/run/netns/{ns}")})
        _write_state(state)
        _must("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _must("ip", "link", "set", host_end, "master", BRIDGE)
        _must("ip", "link", "set", host_end, "up")
        _must("ip", "-n", ns, "addr", "add", f"{node_addr(i)}/24", "dev", "eth0")
        _must("ip", "-n", ns, "link", "set", "eth0", "up")
        _must("ip", "-n", ns, "link", "set", "lo", "up")
        _must("ip", "-n", ns, "route", "add", "default", "via", CONTROLLER_ADDR)


def _start_slurmd(i: int, total: int, host: str, state: dict) -> None:
    """Start node i's slurmd (of ``total`` nodes) and record it in ``state``."""
    name = host if total == 1 else node_name(i)
    pid_file = Path(str(SLURMD_PID_FILE).replace("%n", name))
    state["processes"].append(_start_daemon("slurmd", pid_file, _slurmd_argv(i, total)))
    _write_state(state)


def _slurmd_argv(i: int, nodes: int) -> list[str]:
    if nodes == 1:
        return [PROGRAMS["slurmd"]]
    # its own network namespace, and a UTS namespace whose host name is the node's name
    # (nsenter, not `ip netns exec`, which remounts /sys without the cgroup tree slurmd reads)
    script = f'hostname "$1" && exec {PROGRAMS["slurmd"]} -N "$1"'
    enter = ["nsenter", f"--net=/run/netns/{netns(i)}", "unshare", "--uts"]
    return [*enter, "sh", "-c", script, "sh", node_name(i)]


def _wait_until_usable(nodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = node_states()
        if len(states) == nodes and all(state in USABLE for state in states.values()):
            return
        for node, state in states.items():
            if state.startswith(NEEDS_RESUME):
                _run("scontrol", "update", f"nodename={node}", "state=resume")
        time.sleep(1)
    raise ClusterError(f"{nodes} Slurm node(s) did not become idle within {timeout:.0f} s; see {BASE}/*.log")


def _shape(state: dict) -> tuple[int, int, int]:
    return state.get("nodes"), state.get("single", 0), state.get("small", 0)


def _ours_and_working(state: dict | None, shape: tuple[int, int, int]) -> bool:
    if state is None or _shape(state) != shape:
        return False
    names = [p["name"] for p in state["processes"] if _is_alive(p)]
    return names.count("slurmd") == sum(shape) and "slurmctld" in names and running()


def start(nodes: int = 1, single: int = 0, small: int = 0, timeout: float = 60) -> bool:
    """Start a cluster of ``nodes`` nodes (and ``single`` and ``small`` more, in partitions of
    their own: see above); False if one of that shape this module started is already up.

    Raises ClusterError, at once, if a slurmctld or slurmd runs that this
    module did not start: it neither reuses nor stops someone else's Slurm.
    """
    total = nodes + single + small
    check_prerequisites(total)
    state = _read_state()
    foreign = _foreign(state)
    if foreign:
        raise ClusterError(
            f"a Slurm not started by tests/slurm_cluster.py is running: {', '.join(foreign)}."
            " Stop it first (the test cluster writes its own slurm.conf and neither reuses nor stops another)"
        )
    if _ours_and_working(state, (nodes, single, small)):
        return False
    stop()  # leftovers of an earlier start() that are not the cluster asked for
    host = socket.gethostname().split(".")[0]
    state = {
        "nodes": nodes,
        "single": single,
        "small": small,
        "processes": [],
        "netns": [],
        "bridge": None,
        "conf_before": _machines_conf(),
    }
    _write_state(state)
    try:
        if not _pids_named("munged"):  # a running munged (the machine's) is shared
            state["processes"].append(_start_munged())
        _write_conf(host, nodes, single, small)
        if total > 1:
            _setup_network(total, state)
        state["processes"].append(_start_daemon("slurmctld", PID_FILES["slurmctld"], [PROGRAMS["slurmctld"]]))
        _write_state(state)
        for i in range(1, total + 1):
            _start_slurmd(i, total, host, state)
        _wait_until_usable(total, timeout)
    except ClusterError:
        stop()
        raise
    return True


def stop(timeout: float = 15) -> bool:
    """Stop what start() started (daemons, their namespaces' processes, the network); True if any."""
    state = _read_state()
    if state is None:
        return False
    by_name = {name: [p for p in state["processes"] if p["name"] == name] for name in PROGRAMS}
    _terminate(by_name["slurmd"], timeout)
    for ns in state["netns"]:  # jobs' processes left in a node (slurmstepd, ranks)
        if ns["inode"] is not None:
            _terminate([p for p in map(_identity, _pids_in_netns(ns["inode"])) if p], timeout)
        _run("ip", "link", "delete", veth(int(ns["name"].removeprefix("sae-node"))))
        _run("ip", "netns", "delete", ns["name"])
    if state["bridge"]:
        _run("ip", "link", "delete", state["bridge"])
    _terminate(by_name["slurmctld"], timeout)
    _terminate(by_name["munged"], timeout)
    before = state.get("conf_before")
    if before is not None:
        CONF.write_text(before)
    else:
        CONF.unlink(missing_ok=True)
    STATE.unlink()
    return True


def _machines_conf() -> str | None:
    """The machine's own slurm.conf, to put back at stop(); None if there is none (or only ours)."""
    try:
        text = CONF.read_text()
    except FileNotFoundError:
        return None
    return None if text.startswith(CONF_MARK) else text


def node_processes(i: int) -> list[int]:
    """PIDs of everything running in node i's namespace (its slurmd, job steps and ranks)."""
    state = _read_state() or {}
    for ns in state.get("netns", []):
        if ns["name"] == netns(i):
            return _pids_in_netns(ns["inode"])
    raise ClusterError(f"no node {i} started by this module")


def revive(i: int, timeout: float = 60) -> None:
    """Bring back node i after a test took it away (link down, its processes killed): its
    link up and its slurmd started again, until Slurm has every node usable once more."""
    state = _read_state()
    if state is None or not any(ns["name"] == netns(i) for ns in state["netns"]):
        raise ClusterError(f"no node {i} started by this module")
    total = sum(_shape(state))
    _terminate([p for p in map(_identity, node_processes(i)) if p])  # whatever is left of it
    _must("ip", "link", "set", veth(i), "up")
    state["processes"] = [p for p in state["processes"] if _is_alive(p)]
    _start_slurmd(i, total, socket.gethostname().split(".")[0], state)
    _wait_until_usable(total, timeout)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "start" and len(argv) <= 4:
        nodes, single, small = [int(a) for a in argv[1:]] + [1, 0, 0][len(argv) - 1 :]
        shape = f"{nodes} node(s)" + (f", {single} single, {small} small" if single or small else "")
        print(f"started ({shape})" if start(nodes, single, small) else "already running (nothing started)")
    elif command == "stop" and len(argv) == 1:
        print("stopped" if stop() else "nothing started by this module")
    elif command == "status" and len(argv) == 1:
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
