"""Layer 3: cgroups — a budget of memory, CPU time and processes.

Namespaces change what a process *sees*; control groups limit what it may *use*. A
cgroup is a directory in the cgroup filesystem (under /sys/fs/cgroup): mkdir creates
a group, writing a pid into its `cgroup.procs` moves that process in (its children
are born inside), files set the budget (`memory.max`) and report the spending
(`memory.current`). A group over its memory budget meets the kernel's OOM killer,
which picks a victim inside the group — and only there. There is no system call to
learn: it is all mkdir, write, read and rmdir.

Two generations exist. cgroup v2 is one tree holding every controller (Ubuntu >= 21.10,
Debian >= 11). cgroup v1 has one tree per controller, with other file names; "hybrid"
machines mount the v1 trees plus a v2 tree holding few or no controllers. This module
finds the tree that holds each controller and speaks its dialect.

Because a container is just processes in a group, the host can hand out budgets that
add up to more than it has (over-provisioning), and still stop any one container from
taking everything: the seed's "easier to over-provision containers".
"""
from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgument, MissingControllers, Timeout
from .host import parse_size

PARENT = "minicontainer"     # our groups live below this one, in each tree
# cpuacct: v1's CPU-time counter; devices: v1's device allow-list (devices.py fills it)
NEEDED = ("memory", "cpu", "cpuacct", "pids", "devices")
CPU_PERIOD = 100_000         # microseconds; cpus=0.5 means 50 000 us of CPU per period
MIN_MEMORY = 6 * 1024**2     # as Docker: below this a container cannot even start


# -- budgets: parsed and checked before anything is created ------------------------------

@dataclass(frozen=True)
class Limits:
    """A container's budget; None means unlimited."""

    memory: int | None = None   # bytes
    cpus: float | None = None   # CPUs' worth of time, e.g. 0.5
    pids: int | None = None     # processes (and threads) at once
    cpu_period: int | None = None    # us in which `cpus` is counted (None: CPU_PERIOD)
    cpu_shares: int | None = None    # a weight against the other groups (v1 cpu.shares)
    cpuset_cpus: str | None = None   # the CPUs it may run on, e.g. "0-1,3" (cpuset.cpus)
    cpuset_mems: str | None = None   # the memory nodes it may use, e.g. "0" (cpuset.mems)

    @classmethod
    def parse(cls, memory: str | int | None = None, cpus: str | float | None = None,
              pids: str | int | None = None) -> Limits:
        """Docker's spellings: memory="64M", cpus=0.5, pids=64 (--pids-limit; "max": none)."""
        return cls(None if memory is None else parse_memory(memory),
                   None if cpus is None else parse_cpus(cpus),
                   None if pids in (None, "max") else parse_pids(pids))


def parse_memory(value: str | int) -> int:
    """A memory limit in Docker's spelling ("64M", "1g", or an int of bytes) → bytes."""
    return parse_size(value, "memory limit", MIN_MEMORY)


def parse_cpus(value: str | float) -> float:
    """A (fractional) number of CPUs, between 0.01 and the machine's count."""
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if isinstance(text, str) and re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,6})?", text):
        cpus = float(text)
    else:
        cpus = -1.0
    available = os.cpu_count() or 1
    if not 0.01 <= cpus <= available:
        raise InvalidArgument(f"invalid cpus {value!r}: choose from 0.01 to {available} "
                              "(this machine's CPUs)")
    return cpus


def cpu_max(cpus: float, period: int = CPU_PERIOD) -> str:
    """cpus=0.5 → "50000 100000": this much CPU time (us) in every period (cgroup v2's
    cpu.max; v1 splits it into cpu.cfs_quota_us and cpu.cfs_period_us)."""
    return f"{round(cpus * period)} {period}"


def check_cpu_details(period: int | None, shares: int | None, cpus: str | None,
                      mems: str | None) -> None:
    """InvalidArgument unless each is within what the kernel takes (None: not asked):
    a period of 1 ms to 1 s, shares of 2 to 262144 (v1's bounds), lists of numbers
    and ranges ("0-1,3")."""
    if period is not None and not 1000 <= period <= 1_000_000:
        raise InvalidArgument(f"invalid cpu period {period}: choose from 1000 to 1000000 us")
    if shares is not None and not 2 <= shares <= 262144:
        raise InvalidArgument(f"invalid cpu shares {shares}: choose from 2 to 262144")
    for what, text in (("cpus", cpus), ("mems", mems)):
        if text is not None and not re.fullmatch(r"\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*",
                                                 text):
            raise InvalidArgument(f"invalid cpuset {what} {text!r}: a list such as 0-1,3")


def shares_to_weight(shares: int) -> int:
    """v1's cpu.shares (2-262144, 1024 by default) as v2's cpu.weight (1-10000, 100
    by default), by runc's formula (libcontainer/cgroups: ConvertCPUSharesToCgroupV2Value)."""
    return 1 + ((shares - 2) * 9999) // 262142


def parse_pids(value: str | int) -> int:
    """A pids limit: a whole number of at least 1."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    pids = int(text) if isinstance(text, str) and re.fullmatch(r"[0-9]{1,9}", text) else 0
    if pids < 1:
        raise InvalidArgument(f"invalid pids limit {value!r}: use a whole number of at least 1")
    return pids


# -- where the controllers are -------------------------------------------------------------

def hierarchies() -> dict[str, tuple[str, Path]]:
    """For each controller: ("v1" or "v2", the mount point of the tree that holds it)."""
    where: dict[str, tuple[str, Path]] = {}
    known = {line.split()[0] for line in Path("/proc/cgroups").read_text().splitlines()[1:]}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, options, *_ = line.split()
        if fstype == "cgroup":
            for controller in set(options.split(",")) & known:
                where[controller] = ("v1", Path(mountpoint))
        elif fstype == "cgroup2":
            for controller in (Path(mountpoint) / "cgroup.controllers").read_text().split():
                where.setdefault(controller, ("v2", Path(mountpoint)))
            where.setdefault("cgroup2", ("v2", Path(mountpoint)))  # the tree itself
    return where


def mode() -> str:
    """"v2", "v1" or "hybrid": which cgroup generation(s) this machine mounts."""
    versions = {version for version, _ in hierarchies().values()}
    if versions == {"v2"}:
        return "v2"
    return "hybrid" if "v2" in versions else "v1"


# -- one container's group -----------------------------------------------------------------

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,255}")


def is_plain_path(path: str) -> bool:
    """Is `path` (from a tree's root if it starts with "/") made of plain names only,
    so that it stays inside the tree: no "..", no ".", nothing empty?"""
    parts = path.removeprefix("/").split("/")
    return all(PLAIN_NAME.fullmatch(part) and part not in (".", "..") for part in parts)


class Cgroup:
    """The group `path` (minicontainer/mc-<id>), in every tree it needs.

    A group may sit inside another of ours (minicontainer/mc-budget/mc-<id>): the
    outer group's budget then caps all the groups inside it together. A path that
    starts with "/" is taken from each tree's root as it is: an OCI bundle's
    linux.cgroupsPath (bundle_linux.cgroup_path_of checks it), which a runtime must
    honour where its user put it.
    """

    def __init__(self, path: str, limits: Limits = Limits()) -> None:
        """The group at `path` (below our parent, or from the root if it starts with
        "/") with `limits`; nothing is made yet."""
        if path.startswith("/"):
            path = path.strip("/")
        elif not path.startswith(f"{PARENT}/"):
            path = f"{PARENT}/{path}"
        self.path, self.name, self.limits = path, path.rsplit("/", 1)[-1], limits
        self.foreign = False        # create() found it there already: never ours to kill
        where = hierarchies()
        cpuset = ("cpuset",) if limits.cpuset_cpus or limits.cpuset_mems else ()
        missing = [c for c in ("memory", "cpu", "pids", *cpuset) if c not in where]
        if missing:
            raise MissingControllers(f"cgroup controllers missing: {', '.join(missing)} "
                                     "(see `minicontainer doctor`)")
        self.version = {c: where[c][0] for c in NEEDED + cpuset if c in where}
        self.trees = {c: where[c][1] for c in NEEDED + cpuset if c in where}
        self.dirs = {c: self.trees[c] / path for c in self.trees}

    def create(self) -> None:
        """mkdir the group in each tree, then write the budget into it. Below our
        parent the groups between are made too; elsewhere (an OCI cgroupsPath from
        the root) the one above must exist. A group that exists already is refused,
        and marked foreign, so that the removal of what failed leaves it alone."""
        ours = self.path.startswith(f"{PARENT}/")
        trees = dict.fromkeys(self.trees.values())          # one per tree, in order
        if taken := [tree / self.path for tree in trees if (tree / self.path).exists()]:
            self.foreign = True
            raise InvalidArgument(f"cgroup {taken[0]} exists already: another "
                                  "container's? Choose another path")
        for tree in trees:
            if ours:
                (tree / self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.version["memory"] == "v2":   # v2: controllers must be handed down
                enable_controllers(tree, (tree / self.path).parent,
                                   {"memory", "cpu", "pids"} | set(self.trees) & {"cpuset"})
            (tree / self.path).mkdir()
        if self.version.get("cpuset") == "v1":
            fill_cpusets(self.trees["cpuset"], self.dirs["cpuset"])
        self._write_limits()

    def _write_limits(self) -> None:
        limits = self.limits
        memory, cpus, pids = limits.memory, limits.cpus, limits.pids
        period = limits.cpu_period or CPU_PERIOD
        if self.version["memory"] == "v2":
            write(self.dirs["memory"] / "memory.max", memory or "max")
            write(self.dirs["memory"] / "memory.swap.max", 0 if memory else "max", missing_ok=True)
            write(self.dirs["cpu"] / "cpu.max", cpu_max(cpus, period) if cpus else f"max {period}")
            if limits.cpu_shares:
                write(self.dirs["cpu"] / "cpu.weight", shares_to_weight(limits.cpu_shares))
        else:
            if memory:
                write(self.dirs["memory"] / "memory.limit_in_bytes", memory)
                # memory + swap = memory: no swap, so the limit is real
                write(self.dirs["memory"] / "memory.memsw.limit_in_bytes", memory, missing_ok=True)
            if cpus or limits.cpu_period:
                write(self.dirs["cpu"] / "cpu.cfs_period_us", period)   # v1: two files
            if cpus:
                write(self.dirs["cpu"] / "cpu.cfs_quota_us", cpu_max(cpus, period).split()[0])
            if limits.cpu_shares:
                write(self.dirs["cpu"] / "cpu.shares", limits.cpu_shares)
        if limits.cpuset_cpus:      # within the parent's, or the kernel refuses (EINVAL)
            write(self.dirs["cpuset"] / "cpuset.cpus", limits.cpuset_cpus)
        if limits.cpuset_mems:
            write(self.dirs["cpuset"] / "cpuset.mems", limits.cpuset_mems)
        write(self.dirs["pids"] / "pids.max", pids or "max")

    def open_procs(self) -> list[int]:
        """cgroup.procs of each tree, opened here for the child to write itself into.

        Opened before fork: the child can still write them after pivot_root, when
        /sys/fs/cgroup is no longer in its view.
        """
        paths = dict.fromkeys(d / "cgroup.procs" for d in self.dirs.values())
        return [os.open(path, os.O_WRONLY) for path in paths]

    def pids(self) -> list[int]:
        """The processes in the group now (host pids)."""
        return [int(pid) for pid in read(self.dirs["pids"] / "cgroup.procs").split()]

    def stats(self) -> dict[str, float | int | None]:
        """What the group has used so far: memory (bytes), CPU (s), processes."""
        memory, cpu = self.dirs["memory"], self.dirs["cpu"]
        if self.version["memory"] == "v2":
            cpu_stat = key_values(read(cpu / "cpu.stat"))
            memory_stat = key_values(read(memory / "memory.stat"))
            stats = {"memory": int(read(memory / "memory.current")),
                     "kernel_memory": kernel_memory_v2(memory_stat),
                     "memory_peak": optional_int(memory / "memory.peak"),
                     "memory_limit": self.limits.memory,
                     "oom_kills": key_values(read(memory / "memory.events")).get("oom_kill", 0),
                     "cpu_seconds": cpu_stat["usage_usec"] / 1e6,
                     "throttled_seconds": cpu_stat.get("throttled_usec", 0) / 1e6}
        else:
            stats = {"memory": int(read(memory / "memory.usage_in_bytes")),
                     "kernel_memory": optional_int(memory / "memory.kmem.usage_in_bytes"),
                     "memory_peak": int(read(memory / "memory.max_usage_in_bytes")),
                     "memory_limit": self.limits.memory,
                     "oom_kills": key_values(read(memory / "memory.oom_control")).get(
                         "oom_kill", 0),
                     "cpu_seconds": int(read(self.dirs["cpuacct"] / "cpuacct.usage")) / 1e9,
                     "throttled_seconds": key_values(read(cpu / "cpu.stat"))[
                         "throttled_time"] / 1e9}
        stats["pids"] = int(read(self.dirs["pids"] / "pids.current"))
        return stats

    def kill(self) -> None:
        """SIGKILL every process in the group, and wait until it is empty."""
        kill_file = self.dirs["pids"] / "cgroup.kill"   # v2, Linux >= 5.14: one write
        if self.version["pids"] == "v2" and kill_file.exists() and self.dirs["pids"].exists():
            write(kill_file, 1)
        deadline = time.monotonic() + 10
        while self.dirs["pids"].exists() and (pids := self.pids()):
            for pid in pids:                # v1: one by one, until none is left
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise Timeout(f"cgroup {self.name} still has processes {pids}")
            time.sleep(0.005)

    def remove(self) -> None:
        """Kill what is left, rmdir the group, and the directories of ours above it
        once they are empty; nothing if create() found it foreign. A group outside
        our parent (an OCI cgroupsPath, read back from an untrusted record) is never
        killed in (only mc-* groups are): only rmdir'd, which the kernel refuses while
        anything is inside, once the container's pid namespace has taken its processes
        with it."""
        if self.foreign:
            return
        if self.name.startswith("mc-"):     # ours by name: records naming others are
            self.kill()                     # refused (arguments.check_record)
        for tree in dict.fromkeys(self.trees.values()):
            remove_dir(tree / self.path)
            # The plain directories a bundle's relative cgroupsPath made between
            # (an mc-* group above has an owner of its own: a budget), then our
            # parent; each rmdir only succeeds once the last group inside is gone.
            above = (tree / self.path).parent
            while above.is_relative_to(tree / PARENT) and not above.name.startswith("mc-"):
                try:
                    above.rmdir()
                except OSError:
                    break
                above = above.parent


def join(procs_fds: list[int]) -> None:
    """In the child: move this process into the group (writing "0" means "myself"),
    then close those files: a process that can write one can leave its budget for
    that group, and the container may wait a long time (created, not started) before
    its exec would close them."""
    for fd in procs_fds:
        os.write(fd, b"0")
        os.close(fd)


def enable_controllers(tree: Path, parent: Path,
                       controllers: set[str] = frozenset({"memory", "cpu", "pids"})) -> None:
    """v2: let `parent`'s subgroups use the `controllers`, enabling them on the way
    down from the tree's root.

    A v2 group may only hand its children the controllers its own parent handed it,
    and (the "no internal processes" rule) a group that hands them out holds no
    processes itself: ours never do, only the leaf mc-* groups hold processes.
    """
    chain = [parent, *parent.parents]
    for directory in reversed(chain[:chain.index(tree) + 1]):
        wanted = controllers - set(read(directory / "cgroup.subtree_control").split())
        if wanted:
            write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))


def fill_cpusets(tree: Path, group: Path) -> None:
    """v1: give each new cpuset group from the tree's root down to `group` its
    parent's CPUs and memory nodes where it has none yet: a v1 cpuset group starts
    empty, and nothing may join it, nor a group below it take a CPU, until it has
    some (runc copies them the same way; v2 inherits them by itself). Only our own:
    the group, and the directories below our parent (minicontainer/); another's
    group above an OCI cgroupsPath is left as it is."""
    chain = [group, *group.parents]
    for directory in reversed(chain[:chain.index(tree)]):
        if directory != group and not directory.is_relative_to(tree / PARENT):
            continue
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not read(directory / name).strip():
                write(directory / name, read(directory.parent / name).strip())


def remove_dir(directory: Path) -> None:
    """rmdir a cgroup; the kernel may need a moment after its last process died."""
    for _ in range(200):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.005)
    directory.rmdir()


def leftover_groups() -> list[str]:
    """The paths of all our groups, nested ones first (for `minicontainer cleanup`)."""
    found = {str(p.relative_to(tree)) for tree in {t for _, t in hierarchies().values()}
             for p in (tree / PARENT).rglob("mc-*") if p.is_dir()}
    return sorted(found, key=lambda path: (-path.count("/"), path))


# -- reading and writing cgroup files ------------------------------------------------------

def read(path: Path) -> str:
    """A cgroup file's text."""
    return path.read_text()


def write(path: Path, value: object, missing_ok: bool = False) -> None:
    """Write one value; a refusal names the file and the value, so it can be looked up."""
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError as e:
        raise OSError(e.errno, f"writing {value!r} to {path}: {e.strerror}") from None


def key_values(text: str) -> dict[str, int]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control)."""
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


def kernel_memory_v2(memory_stat: dict[str, int]) -> int:
    """The kernel's own memory charged to a v2 group: "kernel" (Linux 5.18+), else its parts."""
    if "kernel" in memory_stat:
        return memory_stat["kernel"]
    return sum(memory_stat.get(key, 0) for key in ("kernel_stack", "pagetables", "percpu",
                                                    "sock", "slab"))


def optional_int(path: Path) -> int | None:
    """A cgroup file's number, or None where this kernel has no such file."""
    try:
        return int(read(path))
    except FileNotFoundError:   # e.g. memory.peak before Linux 5.19
        return None


class Sampler:
    """Record a group's stats about ten times a second, in a background thread.

        with Sampler(container.cgroup) as sampler:
            ...                                 # the container works
        sampler.samples                         # [{"time": 0.0, "memory": ..., ...}, ...]
    """

    def __init__(self, cgroup: Cgroup, interval: float = 0.1) -> None:
        """Sample `cgroup`'s memory every `interval` seconds once entered."""
        import threading
        self.cgroup, self.interval = cgroup, interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                sample = self.cgroup.stats()
            except FileNotFoundError:           # the group is gone: nothing left to see
                return
            self.samples.append({"time": time.monotonic() - started, **sample})
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop sampling; the samples stay."""
        self._stop.set()
        self._thread.join()
