"""Resource limits of a user's server on the local backend: CPU (cores) and memory (bytes).

A server is one process tree (``skerry.hub.microinfra`` and everything it starts: Jupyter,
WebDAV, kernels, their workers). Limits are set in the leader between ``fork`` and ``exec``
(:meth:`Enforcement.preexec`, a ``Popen`` ``preexec_fn``), so every process started below it
inherits them. Two mechanisms, chosen by :func:`cgroup2_root`:

- **cgroups v2**, where ``/sys/fs/cgroup`` is a writable ``cgroup2`` mount with the ``cpu``
  and ``memory`` controllers: one cgroup per server (``/sys/fs/cgroup/skerry/<user>--<server>``)
  with ``cpu.max`` (``cpu_limit`` cores, fractions exact) and ``memory.max`` (``mem_limit``,
  for the whole tree together). The leader joins it before ``exec``.
- **otherwise, rlimits and CPU affinity**: ``RLIMIT_AS`` (address space) = ``mem_limit`` for
  *each* process (not their sum; a process allocating past it gets ``MemoryError``/ENOMEM), and
  ``sched_setaffinity`` to ``ceil(cpu_limit)`` cores: a real cap at whole cores, a fractional
  limit is rounded *up* (0.5 -> 1 core). Which cores: a stretch of the cores the hub may use,
  starting at a place chosen from the server's name so that servers spread over the machine.
  A process may widen its own affinity again (no privilege needed) and lower, never raise, its
  rlimits: these limits stop accidents, not a user who sets out to get around them.

Guarantees (``cpu_guarantee``, ``mem_guarantee``) are not reserved on the local backend.
"""

import math
import os
import resource
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "skerry"  # every server's cgroup lies under /sys/fs/cgroup/skerry/
CPU_PERIOD_US = 100_000


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


def cgroup2_root(mount: Path = CGROUP_MOUNT) -> Path | None:
    """``mount`` if it is a writable cgroup v2 hierarchy offering ``cpu`` and ``memory``, else None."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if not any(m[1] == str(mount) and m[2] == "cgroup2" and "ro" not in m[3].split(",") for m in mounts):
        return None
    try:
        controllers = (mount / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not {"cpu", "memory"} <= set(controllers) or not os.access(mount, os.W_OK):
        return None
    return mount


@dataclass
class Enforcement:
    """How ``limits`` are enforced for one server named ``key`` (``<user>--<server>``).

    In the hub: :meth:`prepare` before starting the server, :meth:`preexec` as (part of) the
    ``preexec_fn``, :meth:`cleanup` once the server has stopped. :meth:`describe` is what the
    spawner keeps in its state and admins see.
    """

    limits: Limits
    key: str
    cgroup_root: Path | None = None
    cores: list[int] = field(default_factory=list)
    fallback: str = ""  # why cgroups v2 were not used after all, if they were planned

    @classmethod
    def plan(cls, limits: Limits, key: str, available: set[int] | None = None) -> "Enforcement":
        root = cgroup2_root() if not limits.none else None
        cores = [] if root or limits.cpu is None else choose_cores(limits.cpu, key, available)
        return cls(limits, key, root, cores)

    @property
    def mechanism(self) -> str:
        if self.limits.none:
            return "none"
        return "cgroup2" if self.cgroup_root else "rlimits"

    @property
    def cgroup(self) -> Path | None:
        return self.cgroup_root / CGROUP_PARENT / self.key if self.cgroup_root else None

    def describe(self) -> dict:
        return {"mechanism": self.mechanism, "cpu": self.limits.cpu, "memory": self.limits.memory,
                "cores": self.cores, **({"cgroup": str(self.cgroup)} if self.cgroup else {}),
                **({"fallback": self.fallback} if self.fallback else {})}

    def prepare(self) -> None:
        """Create the server's cgroup and write its limits (cgroups v2 only); if the kernel
        refuses (e.g. the hub's own cgroup holds processes, so its controllers cannot be
        delegated), fall back to rlimits and affinity, said in ``fallback``.

        Untested here: the development machines have a read-only cgroup v1 hierarchy, so
        this path has not run in the test suite.
        """
        if not self.cgroup:
            return
        try:
            self._make_cgroup()
        except OSError as e:
            self.fallback = f"cgroup {self.cgroup} could not be set up ({e.strerror or e}): rlimits used"
            self.cgroup_root = None
            self.cores = [] if self.limits.cpu is None else choose_cores(self.limits.cpu, self.key)

    def _make_cgroup(self) -> None:
        parent = self.cgroup.parent
        parent.mkdir(exist_ok=True)
        # controllers must be enabled in each parent for the child's cpu.max / memory.max to exist
        for level in (self.cgroup_root, parent):
            (level / "cgroup.subtree_control").write_text("+cpu +memory")
        self.cgroup.mkdir(exist_ok=True)
        if self.limits.cpu is not None:
            quota = max(1000, int(self.limits.cpu * CPU_PERIOD_US))
            (self.cgroup / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        if self.limits.memory is not None:
            (self.cgroup / "memory.max").write_text(str(self.limits.memory))

    def preexec(self) -> None:
        """In the child, before ``exec``: join the cgroup, or set affinity and rlimits."""
        if self.cgroup:
            (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))
            return
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        if self.limits.memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.limits.memory, self.limits.memory))

    def cleanup(self) -> None:
        """Remove the server's cgroup once its processes are gone (nothing to do for rlimits)."""
        if self.cgroup:
            try:
                self.cgroup.rmdir()
            except OSError:  # still has processes, or gone already: the next start reuses it
                pass


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
