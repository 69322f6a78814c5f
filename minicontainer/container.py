"""All the layers composed: a container you can start, exec into, stop and remove.

A container is a Spec (spec.py: what it is, checked) until start() forks the child
that builds it, in this order: a new session; layer 2 (which uses layer 1 when there
is no mount namespace); layer 3 (the child writes itself into its cgroup, so the
command never runs outside its budget); layer 4 (the child waits while this process
plugs a veth into its network namespace); its terminal, if it has one; layer 5
(system paths hidden, then seccomp and fewer capabilities); optionally a tiny init;
then exec. Each step runs in the child (setup_steps lists them); this process only
creates the host-side objects (state directory, address, cgroup, published ports),
waits and reads results.

Everything the container leaves on the host lives in its record (in /run) and its
data directory (its writable layer and logs, on disk; see state.py) and goes with
remove(); the mounts live in the container's own mount namespace and vanish with its
last process.
"""
from __future__ import annotations

import errno
import inspect
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

# What only some containers use (a network, published ports, exec, a kept terminal) is
# imported where it is used: `minicontainer run -- true` pays for none of it.
from . import cgroups, devices, process, security, state, syscalls
from . import namespaces as ns
from .cgroups import Cgroup
from .errors import MinicontainerError, Timeout
from .init import become_init
from .rootfs import Overlay
from .process import Result, result_of
from .spec import Spec, describe, from_record, record_of
from .terminal import WINDOW, Pty

if TYPE_CHECKING:
    from . import joining
    from .network import Attachment


class Container:
    """A command run in its own namespaces, on its own copy of an image: its Spec (what
    it is) and the handles of it running (what this process holds of it)."""

    def __init__(self, command: str | Sequence[str] | Callable[[], None] = (),
                 **options) -> None:
        """Describe the container (spec.describe: Docker's option names, every one
        checked); nothing exists on the host until start()."""
        # A Python function instead of a program: runs as the container's process,
        # without exec (the notebooks use it to show an attacker's code).
        self.main = command if callable(command) else None
        self._hold(describe(command, **options))

    @classmethod
    def load(cls, name: str) -> Container:
        """The container `name`, started by this or another process (for the CLI)."""
        record = state.read(name)
        self = cls.__new__(cls)
        self.main = None
        self._hold(from_record(record), record)
        return self

    @classmethod
    def of(cls, spec: Spec) -> Container:
        """A container of a Spec made elsewhere (oci.py makes one from a config.json)."""
        self = cls.__new__(cls)
        self.main = None
        self._hold(spec)
        return self

    def child_steps(self, steps: list[process.Step],
                    channel: process.Channel) -> list[process.Step]:
        """The child's steps, as start() runs them: a runtime built on this class adds
        its own here (oci.py), once the record directory exists."""
        return steps

    def allowed_devices(self) -> tuple:
        """The devices its cgroup lets it open (devices.ALLOWED): a runtime built on
        this class adds the ones its bundle allows (oci.py)."""
        return devices.ALLOWED

    def _hold(self, spec: Spec, record: dict | None = None) -> None:
        """The handles of a container: fresh, or as its record left them."""
        self.spec = spec
        record = record or {}
        self.cgroup = Cgroup(spec.cgroup, spec.limits) if spec.cgroup else None
        self.proxy_cgroup = None
        if spec.ports:
            from .proxy import LIMITS
            self.proxy_cgroup = Cgroup(spec.proxy_cgroup, LIMITS)
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
        self._started, self._startup = 0.0, None
        self._proxy, self._keeper = record.get("proxy"), record.get("console")  # [pid, start]
        self._proxy_process = self._keeper_process = None   # the same, if we started them

    @property
    def name(self) -> str:
        """The container's name (`--name`, or mc-<id>)."""
        return self.spec.name

    # -- life cycle ------------------------------------------------------------------

    def start(self, stdio: Sequence[int | None] | None = None, detach: bool = False,
              window: tuple[int, int] = WINDOW) -> Container:
        """Create the container and start its command; return once the command runs.

        `stdio` gives the command's fds 0, 1, 2 (None in it: this process's own; the
        CLI in the foreground); without it, nothing goes in and the output goes to log
        files read by wait() and logs(). With tty the command has a terminal of
        `window` (rows, columns) instead, whose master is `console` here.
        detach=True lets the container outlive this process (`run -d`; a keeper
        process then holds its terminal); otherwise `minicontainer cleanup` removes
        it once this process is gone.
        """
        spec = self.spec
        self.detached = detach
        self._owner = {"owner": os.getpid(), "owner_started": process.start_time(os.getpid()),
                       "created": time.time()}
        self.directory = state.claim(spec.name, self._record())  # before anything else exists
        procs: list[int] = []
        listeners: list = []
        pty = Pty(window, console=True) if spec.tty else None
        try:
            self.data = state.make_data(spec.name)
            # An image's layers from the store, in a user namespace: overlayfs reads
            # their opaque marks from user.* xattrs (trusted.* are not for it there).
            layer = Overlay.create([Path(p) for p in spec.lower], self.data,
                                   nodev=spec.security.devices,
                                   userxattr=bool(spec.layers) and "user" in spec.namespaces)
            files: list[ns.Mount] = []
            if spec.network:                 # layer 4, host side; recorded at once
                self.attachment, files = lease_address(spec, self.data)
                self._save()
            procs = self._enter_budget()
            channel = process.Channel()      # spawn's pipes, for the steps that use them
            steps = self.child_steps(setup_steps(spec, layer, channel, files, procs, pty,
                                                 on_exit=partial(_record_exit, self.directory)),
                                     channel)
            if spec.ports:                   # a port in use fails before anything runs
                from .proxy import bind
                listeners = bind(spec.ports)
            self._spawn(steps, stdio, channel)
            self.console = pty.master() if pty else None
            self._save()                     # its pids, at once: cleanup must find them
            if listeners:
                self._start_proxy(listeners)
            if detach and self.console is not None:
                self.keep_console()
        except BaseException:
            for listener in listeners:       # the proxy never got them: free the ports
                listener.close()
            self.remove(force=True)
            raise
        finally:
            process.close_all(procs)
            if pty:
                pty.close()
        return self

    def keep_console(self) -> None:
        """Hand the terminal's master to a keeper process (console.py) and let the
        container outlive us: `run -dit`, or the detach keys typed."""
        from . import console as keeper
        child = self._require_child()
        started = keeper.start(child.pidfd, self.console, self.directory, self.data / "stdout")
        self._keeper = [started.pid, process.start_time(started.pid)]
        self._keeper_process = started
        os.close(self.console)
        self.console = None
        self.detached = True
        self._save()

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to exit (Timeout after `timeout` seconds)."""
        status = self._require_child().wait(timeout)
        duration = time.monotonic() - self._started
        if status is not None and not (self.directory / "exit_status").exists():
            _record_exit(self.directory, status)   # no waiter wrote it: no pid namespace
        return self._result(duration)

    def stop(self, timeout: float = 10) -> Result:
        """SIGTERM, then SIGKILL if the command is still running after `timeout` s (docker stop)."""
        child = self._require_child()
        child.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except Timeout:
            child.send_signal(signal.SIGKILL)
            return self.wait()

    def remove(self, force: bool = False) -> None:
        """Delete the container's state, logs and writable layer (force: kill it first)."""
        if self.running:
            if not force:
                raise MinicontainerError(f"container {self.name} is running: stop it first, or "
                                         "use force (`rm -f`)")
            self._child.send_signal(signal.SIGKILL)
            self.wait()
        if self._child is not None:
            self._child.close()
            self._child = None
        process.close_all([self.console])
        self.console = None
        _stop_helper(self._keeper, self._keeper_process, b"minicontainer.console")
        _stop_helper(self._proxy, self._proxy_process, b"minicontainer.proxy")
        self._keeper = self._keeper_process = self._proxy = self._proxy_process = None
        if self.attachment is not None:
            from .network import detach
            detach(self.attachment)
            self.attachment = None
        for group in (self.cgroup, self.proxy_cgroup):
            if group is not None and self.directory is not None:
                group.remove()               # and whatever a crash left in it
        if self.data is not None:
            Overlay.make_removable(self.data)
            state.release_data(self.data)
            self.data = None
        if self.directory is not None:
            state.release(self.directory)
            self.directory = None

    def __enter__(self) -> Container:
        """The container itself: removed (force) when the block ends."""
        return self

    def __exit__(self, *exc) -> None:
        """Remove the container, running or not. A Ctrl-C (a notebook's interrupt) that
        lands in the middle of the removal does not leave half a container: remove()
        picks up where it was, and the interrupt is raised once it is done."""
        interrupted = None
        while True:
            try:
                self.remove(force=True)
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted

    # -- looking inside ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Host pid of the container's first process (PID 1 inside a pid namespace)."""
        return self._child.main_pid if self._child else None

    @property
    def running(self) -> bool:
        """Does the container's command still run?"""
        child = self._child
        return child is not None and not child.exited and not process.wait_for_exit(child.pid, 0)

    def exec(self, command: str | Sequence[str] | Callable[[], None],
             timeout: float | None = 60, attach: bool = False, interactive: bool = False,
             hardened: bool = True) -> Result:
        """Run another command inside the running container to its end (docker exec;
        joining.run_in says how, and what the options do)."""
        from . import joining
        return joining.run_in(self, command, timeout, attach, interactive, hardened)

    def exec_start(self, command: str | Sequence[str] | Callable[[], None],
                   stdio: Sequence[int | None] | None = None, tty: bool = False,
                   window: tuple[int, int] = WINDOW, hardened: bool = True) -> joining.Exec:
        """Start another command inside the running container, and return it running
        (joining.start_in)."""
        from . import joining
        return joining.start_in(self, command, stdio, tty, window, hardened)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the container's first process (docker kill --signal)."""
        self._require_child().send_signal(sig)

    def stats(self) -> dict[str, float | int | None]:
        """Memory, CPU time and processes used so far, from the container's cgroup."""
        if self.cgroup is None:
            raise MinicontainerError(f"container {self.name} has no cgroup to measure")
        return self.cgroup.stats()

    def logs(self) -> tuple[str, str]:
        """What the command wrote so far to stdout and stderr (when not attached)."""
        return tuple(_text_or_empty(self.data / name) for name in ("stdout", "stderr"))

    # -- the details ------------------------------------------------------------------

    def _require_child(self) -> process.Child:
        if self._child is None:
            raise MinicontainerError(f"container {self.name} was not started")
        return self._child

    def _enter_budget(self) -> list[int]:
        """Layer 3, host side: the cgroup with its device allow-list (layer 5), and its
        cgroup.procs files opened for the child to write itself into."""
        listed = False                  # a device allow-list in force
        procs: list[int] = []
        if self.cgroup:
            self.cgroup.create()
            listed = self.spec.security.devices and devices.allow_only(
                self.cgroup, self.allowed_devices())
            procs = self.cgroup.open_procs()
        if self.spec.security.devices and "mnt" not in self.spec.namespaces and not listed:
            devices.refuse_device_nodes(Path(self.spec.rootfs))   # neither nodev nor a list
        return procs

    def _spawn(self, steps: list, stdio: Sequence[int | None] | None,
               channel: process.Channel) -> None:
        """Fork the child that runs `steps` and execs the command; logs unless `stdio`."""
        opened = _open_logs(self.data) if stdio is None else []
        try:
            self._started = time.monotonic()
            self._child = process.spawn(
                list(self.spec.command), steps, env=self.spec.env, stdio=opened or stdio,
                main=self.main, when_ready=self.attachment.connect if self.attachment else None,
                preserve_fds=self.spec.preserve_fds, channel=channel)
            self._startup = time.monotonic() - self._started
            # Once: a later save may find it a zombie already (a -dit command that
            # exits at once), and a record must keep naming the process it started.
            self._pid_started = process.start_time(self._child.pid)
        finally:
            process.close_all(opened)

    def _start_proxy(self, listeners: list) -> None:
        """Hand the published ports' sockets to a relay process, in a cgroup of its own."""
        from . import proxy
        self.proxy_cgroup.create()
        self._proxy_process = proxy.start(
            self.pid, self.attachment.address, listeners,
            [port for _, _, port in self.spec.ports], self.data / "proxy.log", self.proxy_cgroup)
        self._proxy = [self._proxy_process.pid, process.start_time(self._proxy_process.pid)]
        self._save()

    def _result(self, duration: float) -> Result:
        status = int(_text_or_empty(self.directory / "exit_status") or -1)
        out, err = self.logs()
        result = result_of(status if status >= 0 else None, out, err, duration)
        result.startup = self._startup
        if self.cgroup is not None and result.signal == "SIGKILL":
            result.oom_killed = self.cgroup.stats()["oom_kills"] > 0
        return result

    def _save(self) -> None:
        state.write(self.directory, self._record())

    def _record(self) -> dict:
        """Its Spec and its handles, as its record on disk holds them."""
        child = self._child
        return {**record_of(self.spec), "detached": self.detached,
                "network": asdict(self.attachment) if self.attachment else None,
                "proxy": self._proxy, "console": self._keeper, **self._owner,
                "pid": child.pid if child else None,
                "main_pid": child.main_pid if child else None,
                "pid_started": self._pid_started if child else None}


# Container(...) takes describe()'s options: show them where help() and Jupyter's
# Shift-Tab look, though __init__ passes them on as **options.
Container.__init__.__signature__ = inspect.signature(describe).replace(
    parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                *inspect.signature(describe).parameters.values()], return_annotation=None)


# -- what the child does ---------------------------------------------------------------

def setup_steps(spec: Spec, layer: Overlay, channel: process.Channel,
                files: list[ns.Mount], procs: list[int], pty: Pty | None,
                on_exit: Callable[[int], None]) -> list[process.Step]:
    """What the container's first process does to itself between fork and exec, in
    the kernel's order (the module's docstring tells why this one)."""
    steps = [os.setsid,               # our own session: the terminal's Ctrl-C is not ours
             partial(ns.isolate, layer, spec.namespaces, spec.hostname, channel,
                     on_exit=on_exit, mounts=[*files, *spec.mounts],
                     shm_size=spec.shm_size),
             partial(make_workdir, spec.workdir)]
    if procs:
        steps.append(partial(cgroups.join, procs))   # in its budget before exec
    if "cgroup" in spec.namespaces:     # after joining: its own group is its "/" (as runc)
        steps.append(partial(syscalls.unshare, syscalls.CLONE_NEWCGROUP))
    if spec.network:
        steps.append(partial(process.wait_for_parent, channel))  # eth0 plugged in
    if pty:
        steps.append(pty.open_inside)          # in its devpts; the master comes out
    steps += security.steps(spec.security, "mnt" in spec.namespaces)  # layer 5
    steps += security.user_steps(spec.user, spec.workdir, "user" in spec.namespaces)
    if spec.init:
        steps.append(partial(become_init, channel))
    if pty:
        steps.append(pty.take_as_controlling)  # the command's, not init's
    return steps


def make_workdir(path: str) -> None:
    """Create the working directory in the new root if the image lacks it, as Docker
    does (a file in its place fails the start, in one line)."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "the working directory is not a directory",
                                 path) from None


# -- what this process does for it on the host --------------------------------------------

def lease_address(spec: Spec, data: Path) -> tuple[Attachment, list[ns.Mount]]:
    """Layer 4, host side: an address on the container's network, and the /etc/hosts
    and /etc/resolv.conf files (written in `data`) to show at those paths inside."""
    from . import network as networking
    hosts, resolv = data / "hosts", data / "resolv.conf"
    resolv.write_text(networking.resolv_conf())
    attachment = networking.attach(spec.network, spec.name, spec.id, spec.hostname, hosts)
    hosts, resolv = (os.path.realpath(path) for path in (hosts, resolv))  # as openat2 wants
    return attachment, [ns.Mount("/etc/hosts", hosts),
                        ns.Mount("/etc/resolv.conf", resolv)]


def run(command: str | Sequence[str] | Callable[[], None] = (),
        timeout: float | None = None, **options) -> Result:
    """Run `command` in a new container to completion, then remove it (docker run --rm)."""
    with Container(command, **options) as container:
        container.start()
        return container.wait(timeout)


# -- small helpers -------------------------------------------------------------------------

def _record_exit(directory: Path, status: int) -> None:
    """Write the command's wait status (called by the waiter, outside the namespaces)."""
    fd = os.open(directory / "exit_status.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"%d" % status)
    os.close(fd)
    os.rename(directory / "exit_status.new", directory / "exit_status")


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
        line.split(":", 2)[2] == f"/{record['cgroup']}" for line in groups.splitlines())
    return own_root and in_group


def _child_of(record: dict) -> process.Child | None:
    """The record's processes, if they are still the container's (_still_its_own)."""
    if not _still_its_own(record):
        return None
    return process.Child(record["pid"], record["main_pid"],
                         process.open_pidfd(record["main_pid"], parent=record["pid"]))


def _open_logs(data: Path) -> list[int]:
    """For the command's stdin, stdout, stderr: nothing in, logs out."""
    return [os.open(os.devnull, os.O_RDONLY)] + [
        os.open(data / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for name in ("stdout", "stderr")]


def _stop_helper(helper: list[int] | None, started: process.Child | None,
                 module: bytes) -> None:
    """Kill a helper of the container's (its proxy, its terminal's keeper), named in its
    record by pid and start time, if it still runs: only if that pid is still that
    process, and it runs `module` (a record is not trusted). Collect it if it is ours."""
    if helper and process.start_time(helper[0]) == helper[1] and module in _cmdline(helper[0]):
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
