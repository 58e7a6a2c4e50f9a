"""Slurm jobs that no node can hold, found before anything is submitted.

Slurm accepts a job that asks for more CPUs or memory than any node of its partition
has, unless the site sets ``EnforcePartLimits`` (its default, ``NO``, does not), and
the job then pends for ever with reason ``PartitionConfig``. ``problems`` compares
what each job asks for with the nodes of its partition, as ``sinfo`` lists them, and
returns one ``error:`` line per rule and resource, naming what the job asks, what the
partition offers and what to change. ``query`` runs sinfo once.

Read from a job: CPUs per task (``cpus_per_task``, else its threads), tasks, nodes,
memory (``mem_mb_per_cpu``, else ``mem_mb`` per node) and ``runtime``, as the Slurm
executor plugin turns them into sbatch options. Options in ``slurm_extra`` are left
to Slurm.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

# One line per node and partition: "debug* node1 4 9947 infinite" (* marks the default).
SINFO = ["sinfo", "--noheader", "--Node", "--format=%P %N %c %m %l"]
PROFILE = "slurm/config.yaml"


@dataclass(frozen=True)
class Node:
    cpus: int
    memory_mb: int


@dataclass
class Partition:
    name: str
    default: bool
    max_minutes: float | None  # None: no time limit
    nodes: list[Node]


@dataclass(frozen=True)
class Request:
    """What one job asks Slurm for."""

    rule_name: str
    partition: str | None  # None: the default partition
    cpus_per_task: int
    cpus_from_threads: bool  # the CPUs are the rule's threads (no cpus_per_task resource)
    tasks: int = 1
    nodes: int | None = None
    mem_mb_per_cpu: int | None = None
    mem_mb: int | None = None  # per node; used when mem_mb_per_cpu is not set
    runtime: int | None = None  # minutes


def minutes(limit: str) -> float | None:
    """A Slurm time limit as sinfo prints it ([days-]hours:minutes:seconds, minutes:seconds,
    "infinite") in minutes; None for no limit."""
    if limit.lower() in ("infinite", "unlimited", "n/a"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, mins, secs = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, mins, secs = parts
    elif len(parts) == 2:  # minutes:seconds
        hours, (mins, secs) = 0, parts
    else:
        hours, mins, secs = 0, parts[0], 0
    return int(days or 0) * 1440 + hours * 60 + mins + secs / 60


def partitions(sinfo_output: str) -> dict[str, Partition]:
    """{name: Partition} from the output of SINFO."""
    found: dict[str, Partition] = {}
    for line in sinfo_output.splitlines():
        if not line.strip():
            continue
        name, _node, cpus, memory, limit = line.split()
        default = name.endswith("*")
        name = name.rstrip("*")
        part = found.setdefault(name, Partition(name, default, minutes(limit), []))
        part.nodes.append(Node(int(cpus.rstrip("+")), int(memory.rstrip("+"))))
    return found


def query() -> dict[str, Partition] | None:
    """The cluster's partitions, from one sinfo call; None if sinfo cannot tell."""
    try:
        proc = subprocess.run(SINFO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return partitions(proc.stdout) or None


def _tasks_fix(rule: str, fits: int) -> str:
    if rule.endswith(("sweep_train", "sweep_collectives")):
        return f"leave process counts above {fits} out of the config's sweep.ranks"
    if rule.endswith("train"):
        return f"set tasks: {fits} for {rule} under set-resources in {PROFILE}"
    return f"give {rule} at most {fits} tasks"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _task_memory(req: Request) -> tuple[int | None, str]:
    """MB one task needs on its node, and where the number comes from."""
    if req.mem_mb_per_cpu:
        cpus = req.cpus_per_task
        return req.mem_mb_per_cpu * cpus, f"mem_mb_per_cpu {req.mem_mb_per_cpu} x {_plural(cpus, 'CPU')}"
    if req.mem_mb:
        return req.mem_mb, "mem_mb, per node"
    return None, ""


def _per_node(req: Request, node: Node) -> int:
    """How many of the job's tasks ``node`` can hold."""
    fit = node.cpus // req.cpus_per_task
    if req.mem_mb_per_cpu:
        fit = min(fit, node.memory_mb // (req.mem_mb_per_cpu * req.cpus_per_task))
    elif req.mem_mb and node.memory_mb < req.mem_mb:
        fit = 0
    return fit


def check(req: Request, part: Partition) -> list[tuple[str, str]]:
    """[(resource, error line)] for what no set of ``part``'s nodes can ever give the job."""
    head = f"error: rule {req.rule_name} asks Slurm for"
    where = f"partition '{part.name}'"
    found = []
    cpus = req.cpus_per_task
    most = max(n.cpus for n in part.nodes)
    need, source = _task_memory(req)
    if cpus > most:
        if req.cpus_from_threads:
            fix = f"run with --max-threads {most} (or put `max-threads: {most}` in your profile)"
            what = f"{_plural(cpus, 'CPU')} in one task (its threads)"
        else:
            fix = f"set cpus_per_task: {most} for {req.rule_name} under set-resources in {PROFILE}"
            what = f"{_plural(cpus, 'CPU')} in one task (cpus_per_task)"
        has = _plural(most, "CPU")
        found.append(("cpus", f"{head} {what}, but the largest node of {where} has {has}: {fix}"))
    elif need is not None and need > (room := max(n.memory_mb for n in part.nodes if n.cpus >= cpus)):
        if req.mem_mb_per_cpu:
            fix = f"set mem_mb_per_cpu to at most {room // cpus} under set-resources in {PROFILE}"
        else:
            fix = f"set mem_mb to at most {room} for {req.rule_name} under set-resources in {PROFILE}"
        found.append(
            (
                "memory",
                f"{head} {need:,} MB for one task on one node ({source}), but the nodes of {where}"
                f" with {_plural(cpus, 'CPU')} have at most {room:,} MB: {fix}",
            )
        )
    else:  # one task fits: do all of them?
        holds = sorted((_per_node(req, n) for n in part.nodes), reverse=True)
        usable = sum(1 for k in holds if k > 0)
        fits = sum(holds[: req.nodes] if req.nodes is not None else holds)
        if req.nodes is not None and req.nodes > usable:
            found.append(
                (
                    "nodes",
                    f"{head} {_plural(req.nodes, 'node')}, but {where} has {usable} that can hold"
                    f" its tasks: set nodes: {usable} for {req.rule_name} under set-resources in {PROFILE}",
                )
            )
        elif req.tasks > fits:
            task = _plural(cpus, "CPU") + (f" and {need:,} MB" if need is not None else "")
            found.append(
                (
                    "tasks",
                    f"{head} {req.tasks} tasks of {task}, but the {_plural(len(part.nodes), 'node')}"
                    f" of {where} hold at most {fits} such tasks: {_tasks_fix(req.rule_name, fits)}",
                )
            )
    if req.runtime is not None and part.max_minutes is not None and req.runtime > part.max_minutes:
        limit = int(part.max_minutes)
        found.append(
            (
                "runtime",
                f"{head} {req.runtime} minutes (runtime), but {where} allows {limit}:"
                f" set runtime: {limit} for {req.rule_name} under set-resources in {PROFILE}",
            )
        )
    return found


KINDS = ("partition", "cpus", "memory", "nodes", "tasks", "runtime")


def problems(requests: list[Request], parts: dict[str, Partition]) -> list[str]:
    """One error line per rule and resource for the jobs that can never start, sorted by rule
    (for a rule, the line of its largest job)."""
    default = next((p for p in parts.values() if p.default), None)
    found: dict[tuple[str, str], str] = {}
    for req in sorted(requests, key=lambda r: -r.tasks):
        if req.partition is None:
            if default is None:
                continue  # Slurm chooses; nothing to compare with
            part = default
        elif req.partition in parts:
            part = parts[req.partition]
        else:
            listed = ", ".join(sorted(parts))
            found.setdefault(
                (req.rule_name, "partition"),
                f"error: rule {req.rule_name} asks for Slurm partition '{req.partition}', which sinfo"
                f" does not list ({listed}): set slurm_partition in your profile's default-resources",
            )
            continue
        for resource, line in check(req, part):
            found.setdefault((req.rule_name, resource), line)
    return [found[key] for key in sorted(found, key=lambda key: (key[0], KINDS.index(key[1])))]
