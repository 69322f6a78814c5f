"""What this process holds of a container on the host, and how it is let go.

A running container is more than its processes: a record (in /run, state.py) that
names them, a data directory (its writable layer and logs), a cgroup, perhaps an
address on a bridge, rules for its published ports and a keeper for its terminal.
Handles is that list, for one container: filled in as container.py creates each
object, written to the record after every step (so `minicontainer cleanup` finds
them after any crash), read back from the record by another process (the CLI's
`stop`, `rm`, `exec`), and released in reverse order by release(). Ending a container
needs nothing else, so it lives here too: wait, kill, stop, remove.

A record is untrusted input (anyone who can write /run could forge one, and pids are
reused), so a pid read from it names a process of ours only if its start time matches
and it still looks like ours (_still_its_own).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Self

from . import monitor, process, state
from .cgroups import Cgroup
from .errors import MinicontainerError, Timeout
from .process import Result, result_of
from .rootfs import Overlay
from .spec import Spec, record_of

if TYPE_CHECKING:
    from .network import Attachment


class Handles:
    """The host objects of one container (its Spec's name): fresh, or as its record
    left them, each None until it exists; and how the container ends (wait, kill,
    stop, remove)."""

    def _hold(self, spec: Spec, record: dict | None = None) -> None:
        """The handles of a container: fresh, or as its record left them."""
        self.spec = spec
        record = record or {}
        self.cgroup = Cgroup(spec.cgroup, spec.limits) if spec.cgroup else None
        self.attachment: Attachment | None = None
        if record.get("network"):
            from .network import Attachment
            self.attachment = Attachment(**record["network"])
        self.detached = record.get("detached", False)
        self.directory = state.containers_dir() / spec.name if record else None  # the record
        self.data = state.data_dir() / spec.name if record else None  # its layer and logs
        self.console: int | None = None        # its terminal's master, while we hold it
        self._owner = {key: record[key] for key in ("owner", "owner_started", "created")
                       if key in record}
        self._child = _child_of(record) if record else None
        self._pid_started = record.get("pid_started")
        self._started, self._startup = 0.0, None   # when start() forked, and how long it took
        self._keeper = record.get("console")         # [pid, start time]
        self._keeper_process = None                  # the same, if we started it
        self.port_sockets: list = []      # the published ports' reservations, until the
        # monitor holds them (with no monitor: while this process lives)

    @property
    def name(self) -> str:
        """The container's name (`--name`, or mc-<id>)."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """Host pid of the container's first process (PID 1 inside a pid namespace)."""
        return self._child.main_pid if self._child else None

    @property
    def running(self) -> bool:
        """Does the container's command still run?"""
        child = self._child
        return child is not None and not child.exited and not process.wait_for_exit(child.pid, 0)

    def child(self) -> process.Child:
        """The container's processes (waiter and command); an error if never started."""
        if self._child is None:
            raise MinicontainerError(f"container {self.name} was not started")
        return self._child

    def logs(self) -> tuple[str, str]:
        """What the command wrote so far to stdout and stderr (when not attached)."""
        return tuple(_text_or_empty(self.data / name) for name in ("stdout", "stderr"))

    def result(self, duration: float) -> Result:
        """How the command ended, as the waiter recorded it, with its logs; a SIGKILL
        says whether the cgroup's OOM killer sent it."""
        out, err = self.logs()
        result = result_of(monitor.exit_status(self.directory), out, err, duration)
        result.startup = self._startup
        if self.cgroup is not None and result.signal == "SIGKILL":
            result.oom_killed = self.cgroup.stats()["oom_kills"] > 0
        return result

    def save(self) -> None:
        """Write the record as the handles are now (atomically: whole or absent)."""
        state.write(self.directory, self.record())

    def record(self) -> dict:
        """Its Spec and its handles, as its record on disk holds them."""
        child = self._child
        return {**record_of(self.spec), "detached": self.detached,
                "network": asdict(self.attachment) if self.attachment else None,
                "console": self._keeper, **self._owner,
                "pid": child.pid if child else None,
                "main_pid": child.main_pid if child else None,
                "pid_started": self._pid_started if child else None}

    def keep_console(self) -> None:
        """Hand the terminal's master to a keeper process (console.py) and let the
        container outlive us: `run -dit`, or the detach keys typed."""
        from . import console as keeper
        started = keeper.start(self.child().pidfd, self.console, self.directory,
                               self.data / "stdout")
        self._keeper = [started.pid, process.start_time(started.pid)]
        self._keeper_process = started
        os.close(self.console)
        self.console = None
        self.detached = True
        self.save()

    # -- ending it ----------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to exit (Timeout after `timeout` seconds)."""
        status = self.child().wait(timeout)
        duration = time.monotonic() - self._started
        if status is not None and monitor.exit_status(self.directory) is None:
            record_exit(self.directory, status)   # no waiter wrote it: no pid namespace
        return self.result(duration)

    def stop(self, timeout: float = 10) -> Result:
        """SIGTERM, then SIGKILL if the command is still running after `timeout` s (docker stop)."""
        self.kill(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except Timeout:
            self.kill(signal.SIGKILL)
            return self.wait()

    def remove(self, force: bool = False) -> None:
        """Delete the container's state, logs and writable layer (force: kill it first).
        A Ctrl-C (a notebook's stop button) waits until it is all gone: half a removal
        would leave objects nobody knows of while their owner lives."""
        with process.interrupts_held():
            if self.running:
                if not force:
                    raise MinicontainerError(f"container {self.name} is running: stop it "
                                             "first, or use force (`rm -f`)")
                self.kill(signal.SIGKILL)
                self.wait()
            self.release()

    def __enter__(self) -> Self:
        """The container itself: removed (force) when the block ends."""
        return self

    def __exit__(self, *exc) -> None:
        """Remove the container, running or not."""
        self._remove_whatever_happens()

    def _remove_whatever_happens(self) -> None:
        """remove(force=True) to the end: a Ctrl-C raised before remove() holds them
        starts it again, and is raised once all is gone. (One raised on the very entry
        to __exit__, before any code of ours runs, no library can catch: Python's `with`
        has that window for files too. `minicontainer cleanup` removes what it leaves
        once its owner has gone.)"""
        interrupted = None
        while True:
            try:
                self.remove(force=True)
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the container's first process (docker kill --signal)."""
        self.child().send_signal(sig)

    def stats(self) -> dict[str, float | int | None]:
        """Memory, CPU time and processes used so far, from the container's cgroup; and
        what the host spends on it besides (monitor.host_cost: its monitor, its keeper;
        published ports are rules, not processes)."""
        if self.cgroup is None:
            raise MinicontainerError(f"container {self.name} has no cgroup to measure")
        child = self._child
        waiter = child.pid if child and not child.exited and child.pid != child.main_pid else None
        return {**self.cgroup.stats(), **monitor.host_cost(
            waiter, live_helper(self._keeper, b"minicontainer.console"))}

    def release(self) -> None:
        """Let go of every host object, newest first, the record last; the processes
        must have ended (remove() kills them, and holds a Ctrl-C until this is done).
        Each handle is set to None once released: safe to call again after an error."""
        if self._child is not None:
            self._child.close()
            self._child = None
        process.close_all([self.console])
        self.console = None
        _stop_helper(self._keeper, self._keeper_process, b"minicontainer.console")
        self._keeper = self._keeper_process = None
        for held in self.port_sockets:
            held.close()
        self.port_sockets = []
        if self.spec.ports and self.attachment is not None:   # made yet or not: by tag
            from .ports import remove_rules
            remove_rules(self.attachment)
        if self.attachment is not None:
            from .network import detach
            detach(self.attachment)
            self.attachment = None
        if self.cgroup is not None and self.directory is not None:
            self.cgroup.remove()             # and whatever a crash left in it
        if self.data is not None:
            Overlay.make_removable(self.data)
            state.release_data(self.data)
            self.data = None
        if self.directory is not None:
            state.release(self.directory)
            self.directory = None


def record_exit(directory: Path, status: int) -> None:
    """Write the command's wait status (by this process: no monitor waits without a
    pid namespace)."""
    fd = os.open(directory / "exit_status.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"%d" % status)
    os.close(fd)
    os.rename(directory / "exit_status.new", directory / "exit_status")


def open_logs(data: Path) -> list[int]:
    """For the command's stdin, stdout, stderr: nothing in, logs out."""
    return [os.open(os.devnull, os.O_RDONLY)] + [
        os.open(data / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for name in ("stdout", "stderr")]


def _still_its_own(record: dict) -> bool:
    """Do the record's processes still run, and are they the container's? A pid names
    one process only with its start time; and the command must have a root of its own
    and sit in the container's cgroup, which no host process does: a record (checked
    by state.read, but never trusted) cannot point us at a process of the host's."""
    pid, main = record["pid"], record["main_pid"]
    if not pid or not main or process.start_time(pid) != record["pid_started"]:
        return False
    try:
        root, groups = os.stat(f"/proc/{main}/root"), Path(f"/proc/{main}/cgroup").read_text()
    except OSError:          # the command is gone: let its waiter write exit_status first
        process.wait_for_exit(pid, 2)
        return False
    own_root = (root.st_dev, root.st_ino) != (os.stat("/").st_dev, os.stat("/").st_ino)
    in_group = record["cgroup"] is None or any(
        line.split(":", 2)[2] == "/" + record["cgroup"].lstrip("/")  # an OCI path has its "/"
        for line in groups.splitlines())
    return own_root and in_group


def _child_of(record: dict) -> process.Child | None:
    """The record's processes, if they are still the container's (_still_its_own)."""
    if not _still_its_own(record):
        return None
    return process.Child(record["pid"], record["main_pid"],
                         process.open_pidfd(record["main_pid"], parent=record["pid"]))


def live_helper(helper: list[int] | None, module: bytes) -> int | None:
    """The pid of a helper named in a record by [pid, start time], if that process
    still runs and runs `module` (a record is not trusted); else None."""
    if helper and process.start_time(helper[0]) == helper[1] and module in _cmdline(helper[0]):
        return helper[0]
    return None


def _stop_helper(helper: list[int] | None, started: process.Child | None,
                 module: bytes) -> None:
    """Kill a helper of the container's (its terminal's keeper), named in its
    record by pid and start time, if it still runs: only if that pid is still that
    process, and it runs `module` (a record is not trusted). Collect it if it is ours."""
    if live_helper(helper, module):
        os.kill(helper[0], signal.SIGKILL)
    if started is not None:
        started.wait()
        started.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _text_or_empty(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
