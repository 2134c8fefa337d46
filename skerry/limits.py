"""Resource limits of a user's server on the local backend: CPU (cores) and memory (bytes).

A server is one process tree (``skerry.hub.userserver.launcher`` and everything it starts: Jupyter,
WebDAV, kernels, their workers). Limits are set in the leader between ``fork`` and ``exec``
(:meth:`Enforcement.preexec`, a ``Popen`` ``preexec_fn``), so every process started below it
inherits them. A user's Dask cluster (``skerry.workload.clusters``) is limited the same way,
its processes joined by the platform (:meth:`Enforcement.join`) before they start anything.
Three mechanisms, the first the machine offers (:func:`offered`):

- **cgroup2**, where ``/sys/fs/cgroup`` is a writable ``cgroup2`` mount with the ``cpu``
  and ``memory`` controllers (:func:`cgroup2_root`): one cgroup per server
  (``/sys/fs/cgroup/skerry/<account>--<server>``, named after the user's OS account) with
  ``cpu.max`` (``cpu_limit`` cores, fractions exact) and ``memory.max`` (``mem_limit``).
  Not yet run by the test suite: no machine of ours has such a mount.
- **cgroup1**, where the ``cpu`` and ``memory`` controllers are writable cgroup v1 mounts
  (:func:`cgroup1_roots`; what these machines and CI have): one cgroup per server in each,
  ``<mount>/<the hub's own cgroup>/skerry/<account>--<server>``, with ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (``cpu_limit`` cores, fractions exact) and
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where the kernel has it,
  so swap does not dodge it) = ``mem_limit``.
- **rlimits**, otherwise: ``RLIMIT_AS`` (address space) = ``mem_limit`` for *each* process
  (not their sum; a process allocating past it gets ``MemoryError``/ENOMEM), and
  ``sched_setaffinity`` to ``ceil(cpu_limit)`` cores: a real cap at whole cores, a fractional
  limit is rounded *up* (0.5 -> 1 core). Which cores: a stretch of the cores the hub may use,
  starting at a place chosen from the server's name so that servers spread over the machine.
  A process may widen its own affinity again (no privilege needed) and lower, never raise, its
  rlimits: these limits stop accidents, not a user who sets out to get around them.

Rules of the cgroup mechanisms: the memory limit holds for the sum of the server's
processes; past it the kernel's OOM killer kills one process of the server's cgroup, the one
using most memory (normally the kernel that allocated past the limit: the Jupyter server and
WebDAV keep running), and nothing outside the cgroup. ``oom_score_adj`` is left alone: every
process of the server inherits the leader's, so it could not set the Jupyter server apart from
its kernels. A user's process cannot leave its cgroup (only root may move processes). The
leader joins before ``exec``; :meth:`cleanup` kills what is left in the cgroups and removes
them. If the kernel refuses the setup at run
time (:meth:`Enforcement.prepare`), rlimits are used and ``fallback`` says why.
:meth:`Enforcement.describe` names the mechanism that ran.

Guarantees (``cpu_guarantee``, ``mem_guarantee``) are not reserved on the local backend.
"""

import math
import os
import resource
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "skerry"  # every server's cgroup lies in a folder "skerry" of the hub's cgroup
CPU_PERIOD_US = 100_000
CONTROLLERS = ("cpu", "memory")
UNLIMITED = "-1"  # what cgroup v1 limit files take for "no limit"


@dataclass(frozen=True)
class Limits:
    """``cpu``: cores (None: no limit); ``memory``: bytes (None: no limit)."""

    cpu: float | None = None
    memory: int | None = None

    @classmethod
    def from_resources(cls, resources: dict | None) -> "Limits":
        """From a profile's ``resources`` (``cpu_limit``, ``mem_limit``); 0 or absent: no limit."""
        resources = resources or {}
        return cls(cpu=float(resources["cpu_limit"]) if resources.get("cpu_limit") else None,
                   memory=int(resources["mem_limit"]) if resources.get("mem_limit") else None)

    @property
    def none(self) -> bool:
        return self.cpu is None and self.memory is None


def choose_cores(cpu: float, key: str, available: set[int] | None = None) -> list[int]:
    """``ceil(cpu)`` cores out of ``available`` (default: the cores this process may use), a
    stretch starting at a place given by ``key``; all of them if ``cpu`` asks for as many or more."""
    cores = sorted(available if available is not None else os.sched_getaffinity(0))
    wanted = math.ceil(cpu)
    if wanted >= len(cores):
        return cores
    start = zlib.crc32(key.encode()) % len(cores)
    return sorted(cores[(start + i) % len(cores)] for i in range(wanted))


def cpu_quota_us(cpu: float) -> int:
    """CFS quota per :data:`CPU_PERIOD_US` for ``cpu`` cores (at least the kernel's 1 ms)."""
    return max(1000, round(cpu * CPU_PERIOD_US))


def _mountinfo() -> list[list[str]]:
    """``/proc/self/mountinfo``, split: [3] the folder of its hierarchy mounted, [4] mount
    point, [5] mount options; after ``-``: file system type, source, super options."""
    try:
        with open("/proc/self/mountinfo") as f:
            return [line.split() for line in f]
    except OSError:
        return []


def cgroup2_root(mount: Path = CGROUP_MOUNT) -> Path | None:
    """``mount`` if it is a writable cgroup v2 hierarchy offering ``cpu`` and ``memory``, else None."""
    for m in _mountinfo():
        fs = m[m.index("-") + 1:]
        if m[4] == str(mount) and fs[0] == "cgroup2" and "ro" not in m[5].split(","):
            break
    else:
        return None
    try:
        controllers = (mount / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not {"cpu", "memory"} <= set(controllers) or not os.access(mount, os.W_OK):
        return None
    return mount


def cgroup1_roots() -> dict[str, Path] | None:
    """For ``cpu`` and ``memory``: the folder of this process's own cgroup in that
    controller's cgroup v1 mount, if both are mounted writable with their limit files; else None."""
    try:
        own = {}  # controller -> this process's cgroup path in its hierarchy
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            own.update((name, path) for name in names.split(",") if name)
    except (OSError, ValueError):
        return None
    roots = {}
    for m in _mountinfo():
        fs = m[m.index("-") + 1:]
        if fs[0] != "cgroup" or "ro" in m[5].split(","):
            continue
        for controller in set(fs[2].split(",")) & set(CONTROLLERS) & own.keys():
            # the mount shows the hierarchy from m[3] down: our cgroup must lie below it
            relative = os.path.relpath(own[controller], m[3])
            if not relative.startswith(".."):
                roots[controller] = Path(m[4]) / relative
    files = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes"}
    if roots.keys() != set(CONTROLLERS) or not all(
            (roots[c] / files[c]).exists() and os.access(roots[c], os.W_OK) for c in CONTROLLERS):
        return None
    # ours, not the root (v1 roots are writable here too): servers count against the hub's own limits
    return {c: roots[c].resolve() for c in CONTROLLERS}


def offered() -> str:
    """The mechanism this machine offers when there are limits: cgroup2, cgroup1 or rlimits."""
    if cgroup2_root():
        return "cgroup2"
    return "cgroup1" if cgroup1_roots() else "rlimits"


@dataclass
class Enforcement:
    """How ``limits`` are enforced for one server named ``key`` (``<account>--<server>``: the
    user's OS account, the hub user in single-user mode).

    In the hub: :meth:`prepare` before starting the server, :meth:`preexec` as (part of) the
    ``preexec_fn``, :meth:`cleanup` once the server has stopped. :meth:`describe` is what the
    spawner keeps in its state and admins see.
    """

    limits: Limits
    key: str
    cgroup_root: Path | None = None  # cgroup2: the hierarchy
    cgroup1: dict[str, Path] = field(default_factory=dict)  # cgroup1: controller -> the hub's cgroup
    cores: list[int] = field(default_factory=list)
    fallback: str = ""  # why cgroups were not used after all, if they were planned

    @classmethod
    def plan(cls, limits: Limits, key: str, available: set[int] | None = None) -> "Enforcement":
        if limits.none:
            return cls(limits, key)
        root = cgroup2_root()
        roots = {} if root else (cgroup1_roots() or {})
        cores = [] if root or roots or limits.cpu is None else choose_cores(limits.cpu, key, available)
        return cls(limits, key, root, roots, cores)

    @property
    def mechanism(self) -> str:
        if self.limits.none:
            return "none"
        return "cgroup2" if self.cgroup_root else "cgroup1" if self.cgroup1 else "rlimits"

    @property
    def cgroups(self) -> dict[str, Path]:
        """The server's cgroups: controller (``cpu+memory`` for v2) -> folder."""
        if self.cgroup_root:
            return {"cpu+memory": self.cgroup_root / CGROUP_PARENT / self.key}
        return {c: root / CGROUP_PARENT / self.key for c, root in self.cgroup1.items()}

    def describe(self) -> dict:
        cgroups = {c: str(p) for c, p in self.cgroups.items()}
        return {"mechanism": self.mechanism, "cpu": self.limits.cpu, "memory": self.limits.memory,
                "cores": self.cores, **({"cgroups": cgroups} if cgroups else {}),
                **({"fallback": self.fallback} if self.fallback else {})}

    def prepare(self) -> None:
        """Create the server's cgroups and write its limits (cgroup mechanisms only); if the
        kernel refuses (e.g. v2: the hub's own cgroup holds processes, so its controllers cannot
        be delegated), remove what was made and fall back to rlimits and affinity, said in
        ``fallback``."""
        if not self.cgroups:
            return
        try:
            self._make_cgroup2() if self.cgroup_root else self._make_cgroup1()
        except OSError as e:
            self._remove_cgroups()
            where = ", ".join(str(p) for p in self.cgroups.values())
            self.fallback = f"cgroup {where} could not be set up ({e.strerror or e}): rlimits used"
            self.cgroup_root, self.cgroup1 = None, {}
            self.cores = [] if self.limits.cpu is None else choose_cores(self.limits.cpu, self.key)

    def _make_cgroup2(self) -> None:
        cgroup = self.cgroups["cpu+memory"]
        parent = cgroup.parent
        parent.mkdir(exist_ok=True)
        # controllers must be enabled in each parent for the child's cpu.max / memory.max to exist
        for level in (self.cgroup_root, parent):
            (level / "cgroup.subtree_control").write_text("+cpu +memory")
        cgroup.mkdir(exist_ok=True)
        if self.limits.cpu is not None:
            (cgroup / "cpu.max").write_text(f"{cpu_quota_us(self.limits.cpu)} {CPU_PERIOD_US}")
        if self.limits.memory is not None:
            (cgroup / "memory.max").write_text(str(self.limits.memory))

    def _make_cgroup1(self) -> None:
        cgroups = self.cgroups
        for cgroup in cgroups.values():
            cgroup.mkdir(parents=True, exist_ok=True)
        # every file is written, "-1" where there is no limit: a reused cgroup keeps nothing old
        cpu = cgroups["cpu"]
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        quota = UNLIMITED if self.limits.cpu is None else str(cpu_quota_us(self.limits.cpu))
        (cpu / "cpu.cfs_quota_us").write_text(quota)
        memory, limit = cgroups["memory"], UNLIMITED if self.limits.memory is None else str(self.limits.memory)
        memsw = memory / "memory.memsw.limit_in_bytes"  # absent without swap accounting
        if memsw.exists():
            memsw.write_text(UNLIMITED)  # memsw may never be below limit_in_bytes: lift it first
        (memory / "memory.limit_in_bytes").write_text(limit)
        if memsw.exists():
            memsw.write_text(limit)

    def preexec(self) -> None:
        """In the child, before ``exec``: join the cgroups, or set affinity and rlimits."""
        self.join(os.getpid())

    def join(self, pid: int) -> None:
        """Put process ``pid`` (not yet forked children) under the limits: into the cgroups, or
        its affinity and rlimits set (``prlimit``: the platform may set another process's)."""
        if self.cgroups:
            for cgroup in self.cgroups.values():
                (cgroup / "cgroup.procs").write_text(str(pid))
            return
        if self.cores:
            os.sched_setaffinity(pid, self.cores)
        if self.limits.memory is not None:
            resource.prlimit(pid, resource.RLIMIT_AS, (self.limits.memory, self.limits.memory))

    def cleanup(self, wait: float = 5.0) -> None:
        """Once the server has stopped: kill what is left in its cgroups (processes that left
        its process group, e.g. kernels in sessions of their own), wait up to ``wait`` seconds
        for them to go, and remove the cgroups and, if then empty, their ``skerry`` parents.
        Nothing to do for rlimits. Blocks: call it off the event loop."""
        cgroups = [p for p in self.cgroups.values() if p.is_dir()]
        deadline = time.monotonic() + wait
        while any(members(p) for p in cgroups) and time.monotonic() < deadline:
            for pid in {pid for p in cgroups for pid in members(p)}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        for cgroup in self.cgroups.values():
            for folder in (cgroup, cgroup.parent):
                try:
                    folder.rmdir()
                except OSError:  # gone already, still has processes, or (parent) other servers'
                    pass


def members(cgroup: Path) -> set[int]:
    """The pids in ``cgroup`` (none if it does not exist)."""
    try:
        return {int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def cpu_seconds(pids) -> float:
    """CPU seconds used by ``pids`` and the children they have reaped (utime + stime + cutime +
    cstime from ``/proc/<pid>/stat``). Approximate: children that ended and were reaped by a
    process outside ``pids``, or that are still unreaped, are not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in set(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += sum(int(v) for v in fields[11:15])  # fields 14-17 of stat(5): utime stime cutime cstime
    return total / ticks
