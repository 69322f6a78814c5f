"""All the layers composed: a container you can start, exec into, stop and remove.

`Container` is a plain description (command, image, namespaces, budget, network,
name) until start() forks the child that builds it, in this order: a new session;
layer 2 (which uses layer 1 when there is no mount namespace); layer 3 (the child
writes itself into its cgroup, so the command never runs outside its budget); layer 4
(the child waits while this process plugs a veth into its network namespace);
layer 5 (system paths hidden, then seccomp and fewer capabilities); optionally a
tiny init; then exec. Each step runs in the child; this process only
creates the host-side objects (state directory, address, cgroup, published ports),
waits and reads results.

Everything the container leaves on the host lives in its record (in /run) and its
data directory (its writable layer and logs, on disk; see state.py) and goes with
remove(); the mounts live in the container's own mount namespace and vanish with its
last process.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from . import cgroups, console as keeper, devices, process, proxy, security, state, syscalls
from . import network as networking
from . import namespaces as ns
from .arguments import (as_argv, check_count, check_host, check_hostname, check_name,
                        check_namespaces, check_ports, check_rootless)
from .cgroups import Cgroup, Limits
from .errors import InvalidArgument, MinicontainerError, Timeout
from .host import parse_size
from .init import become_init
from .rootfs import Overlay, check_rootfs, default_rootfs
from .security import Security
from .terminal import WINDOW, Pty, check_tty, finish, stdio_for

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A fork bomb must hit a wall, not the host: with a cgroup there is always a pids
# limit (Podman's default is 2048; Docker has none). pids_limit="max" lifts it.
DEFAULT_PIDS_LIMIT = 1024


@dataclass
class Result:
    """How a command ended. exit_code is what a shell reports: 128+N if killed by signal N."""

    exit_code: int
    stdout: str
    stderr: str
    duration: float              # seconds, from start() to exit
    signal: str | None = None    # "SIGKILL" etc. when the process was killed by a signal
    startup: float | None = None  # seconds, from start() until the command was running
    oom_killed: bool = False     # killed by the kernel for going over its memory limit


class Container:
    """A command run in its own namespaces, on its own copy of an image."""

    def __init__(self, command: str | Sequence[str] | Callable[[], None], *,
                 name: str | None = None, rootfs: str | os.PathLike | None = None,
                 hostname: str | None = None,
                 namespaces: Iterable[str] = ns.DEFAULT, init: bool = False,
                 env: dict[str, str] | None = None, memory: str | int | None = None,
                 cpus: str | float | None = None, pids_limit: str | int | None = None,
                 cgroup: bool | None = None, cgroup_parent: Cgroup | None = None,
                 network: str | None = None,
                 ports: dict[int, int] | Iterable[str] | None = None,
                 security: Security | None = None, rootless: bool = False,
                 shm_size: str | int = ns.SHM_SIZE, preserve_fds: int = 0,
                 tty: bool = False) -> None:
        check_host(rootless)
        # A Python function instead of a program: runs as the container's process,
        # without exec (the notebooks use it to show an attacker's code).
        self.main = command if callable(command) else None
        self.command = [repr(command)] if self.main else as_argv(command)
        self.id = os.urandom(6).hex()
        self.name = check_name(name or f"mc-{self.id}")
        self.hostname = check_hostname(hostname or self.name)
        self.rootless = rootless
        self.namespaces = check_namespaces(set(namespaces) | ({"user"} if rootless else set()))
        cgroup = not rootless if cgroup is None else cgroup
        if rootless:
            check_rootless(cgroup, (memory, cpus, pids_limit), network)
        self.rootfs = check_rootfs(Path(rootfs)) if rootfs else default_rootfs()
        self.init = init
        self.shm_size = parse_size(shm_size, "shm size", 1)   # docker --shm-size
        self.preserve_fds = check_count(preserve_fds, "preserve_fds", 0)  # podman's option
        self.tty = bool(tty)                 # a terminal of its own (terminal.py), `run -t`
        if self.tty:
            check_tty(self.namespaces)
        self.console: int | None = None      # its master, while this process holds it
        self._keeper: list[int] | None = None   # pid and start time of console.py's keeper
        self._keeper_process: process.Child | None = None   # the same, when we started it
        if not cgroup and (memory, cpus, pids_limit) != (None, None, None):
            raise InvalidArgument("memory, cpus and pids_limit need a cgroup (cgroup=True)")
        self.limits = Limits.parse(memory, cpus, DEFAULT_PIDS_LIMIT if cgroup and pids_limit
                                   is None else pids_limit)
        parent = cgroup_parent.path if cgroup_parent else cgroups.PARENT   # docker --cgroup-parent
        self.cgroup = Cgroup(f"{parent}/mc-{self.id}", self.limits) if cgroup else None
        self.network = network
        self.ports = check_ports(ports or {}, network, self.namespaces)
        self.attachment: networking.Attachment | None = None
        # The relay of the published ports gets a budget of its own: a flood of
        # connections spends the proxy's memory and pids, never the host's or ours.
        self.proxy_cgroup = (Cgroup(f"{cgroups.PARENT}/mc-{self.id}-proxy", proxy.LIMITS)
                             if self.ports else None)
        self._proxy: list[int] | None = None
        self._proxy_process: process.Child | None = None
        self.security = security or Security()      # all defences on, as in `docker run`
        self.env = {"PATH": PATH, "HOME": "/root", "HOSTNAME": self.hostname, **(env or {})}
        self.detached = False
        self.directory: Path | None = None     # the record, in /run
        self.data: Path | None = None          # the writable layer and logs, on disk
        self._child: process.Child | None = None
        self._started = 0.0
        self._startup: float | None = None
        self._pid_started: int | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self, stdio: Sequence[int | None] | None = None, detach: bool = False,
              window: tuple[int, int] = WINDOW) -> Container:
        """Create the container and start its command; return once the command runs.

        `stdio` gives the command's fds 0, 1, 2 (None in it: this process's own; the
        CLI in the foreground); without it, nothing goes in and the output goes to log
        files read by wait() and logs(). With tty=True the command has a terminal of
        `window` (rows, columns) instead, whose master is `console` here.
        detach=True lets the container outlive this process (`run -d`; a keeper
        process then holds its terminal); otherwise `minicontainer cleanup` removes
        it once this process is gone.
        """
        self.detached = detach
        self._owner = {"owner": os.getpid(), "owner_started": process.start_time(os.getpid()),
                       "created": time.time()}
        self.directory = state.claim(self.name, self._record())  # before anything else exists
        procs: list[int] = []
        listeners: list = []
        pty = Pty(window, console=True) if self.tty else None
        try:
            self.data = state.make_data(self.name)
            layer = Overlay.create(self.rootfs, self.data, nodev=self.security.devices)
            files = self._lease_address() if self.network else {}
            channel = process.Channel()      # spawn's pipes, for the steps that use them
            steps = [os.setsid,       # our own session: the terminal's Ctrl-C is not ours
                     partial(ns.isolate, layer, self.namespaces, self.hostname, channel,
                             on_exit=partial(_record_exit, self.directory), files=files,
                             shm_size=self.shm_size)]
            listed = False                  # a device allow-list in force (layer 5, in layer 3)
            if self.cgroup:
                self.cgroup.create()
                listed = self.security.devices and devices.allow_only(self.cgroup)
                procs = self.cgroup.open_procs()
                steps.append(partial(cgroups.join, procs))   # in its budget before exec
            if self.security.devices and "mnt" not in self.namespaces and not listed:
                devices.refuse_device_nodes(self.rootfs)     # neither nodev nor an allow-list
            if self.network:
                steps.append(partial(process.wait_for_parent, channel))  # eth0 plugged in
            if pty:
                steps.append(pty.open_inside)          # in its devpts; the master comes out
            steps += security.steps(self.security, "mnt" in self.namespaces)  # layer 5
            if self.init:
                steps.append(partial(become_init, channel))
            if pty:
                steps.append(pty.take_as_controlling)  # the command's, not init's
            listeners = proxy.bind(self.ports)   # a port in use fails before anything runs
            opened = self._open_logs() if stdio is None else []
            try:
                self._started = time.monotonic()
                self._child = process.spawn(
                    self.command, steps, env=self.env, stdio=opened or stdio, main=self.main,
                    when_ready=self.attachment.connect if self.network else None,
                    preserve_fds=self.preserve_fds, channel=channel)
                self._startup = time.monotonic() - self._started
                # Once: a later save may find it a zombie already (a -dit command that
                # exits at once), and a record must keep naming the process it started.
                self._pid_started = process.start_time(self._child.pid)
            finally:
                _close(opened)
            self.console = pty.master() if pty else None
            self._save()                     # its pids, at once: cleanup must find them
            if listeners:
                self.proxy_cgroup.create()
                self._proxy_process = proxy.start(
                    self.pid, self.attachment.address, listeners,
                    [port for _, _, port in self.ports], self.data / "proxy.log",
                    self.proxy_cgroup)
                self._proxy = [self._proxy_process.pid,
                               process.start_time(self._proxy_process.pid)]
                self._save()
            if detach and self.console is not None:
                self.keep_console()
        except BaseException:
            for listener in listeners:       # the proxy never got them: free the ports
                listener.close()
            self.remove(force=True)
            raise
        finally:
            _close(procs)
            if pty:
                pty.close()
        return self

    def keep_console(self) -> None:
        """Hand the terminal's master to a keeper process (console.py) and let the
        container outlive us: `run -dit`, or the detach keys typed."""
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
        if self.console is not None:
            os.close(self.console)
            self.console = None
        _stop_helper(self._keeper, self._keeper_process, b"minicontainer.console")
        self._keeper, self._keeper_process = None, None
        self._stop_proxy()
        if self.attachment is not None:
            networking.detach(self.attachment)
            self.attachment = None
        if self.cgroup is not None and self.directory is not None:
            self.cgroup.remove()
        if self.data is not None:
            Overlay.make_removable(self.data)
            state.release_data(self.data)
            self.data = None
        if self.directory is not None:
            state.release(self.directory)
            self.directory = None

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        self.remove(force=True)

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
        """Run another command inside the running container to its end (docker exec).

        attach=True gives it our stdout and stderr (and stdin if `interactive`; else
        /dev/null), pipes in their place where they are a terminal (terminal.stdio_for),
        and passes our SIGTERM, SIGHUP and Ctrl-C on (the CLI); otherwise nothing goes
        in and the output is returned. hardened=False shares our files as they are (the
        escape lab). For the rest see exec_start().
        """
        stdio, relays = (stdio_for(interactive) if hardened else ([None] * 3, [])
                         ) if attach else (None, [])
        try:
            running = self.exec_start(command, stdio=stdio, hardened=hardened)
        finally:
            _close(stdio or [])
        try:
            for relay in relays:
                relay.start()
            with process.signals_passed_to(running.child) if attach else nullcontext():
                result = running.wait(timeout)
            finish(relays)
            return result
        except BaseException:                # a time-out, a second Ctrl-C: not left behind
            running.child.send_signal(signal.SIGKILL)
            running.wait()
            raise
        finally:
            running.close()

    def exec_start(self, command: str | Sequence[str] | Callable[[], None],
                   stdio: Sequence[int | None] | None = None, tty: bool = False,
                   window: tuple[int, int] = WINDOW, hardened: bool = True) -> Exec:
        """Start another command inside the running container (docker exec); return it
        running. `stdio` and `tty`, `window` as for start(); its terminal's master is
        the returned Exec's `console`.

        The joining process is a copy of this one until it execs: it is made
        non-dumpable first, so the container cannot open its /proc/PID/exe (the
        host's Python: CVE-2019-5736) or its fds, and it starts a session of its own, so
        it never holds our terminal as its controlling tty (TIOCSTI would type into the
        host's shell). A Python function as `command` runs in there without exec (for
        demos). hardened=False leaves both out, as runtimes did before 2019 (the lab).
        """
        if not self.running:
            raise MinicontainerError(f"container {self.name} is not running")
        if tty:
            check_tty(self.namespaces)
        pty = Pty(window) if tty else None
        procs = self.cgroup.open_procs() if self.cgroup else []   # in the same budget
        steps = [partial(syscalls.set_dumpable, False), os.setsid] if hardened else []
        channel = process.Channel()
        steps += [partial(ns.join, self.pid, self.namespaces, channel),
                  partial(cgroups.join, procs),
                  *security.steps(self.security, mount_namespace=False)]  # mounts: done
        if pty:
            steps += [pty.open_inside, pty.take_as_controlling]
        main = command if callable(command) else None
        output = [] if stdio is not None else [os.memfd_create("stdout"),
                                                os.memfd_create("stderr")]
        opened = [os.open(os.devnull, os.O_RDONLY), *map(os.dup, output)] if output else []
        try:
            child = process.spawn([repr(main)] if main else as_argv(command), steps,
                                  env=self.env, stdio=opened or stdio, main=main,
                                  channel=channel)
            try:
                console = pty.master() if pty else None
            except BaseException:            # no terminal after all: not left running
                child.send_signal(signal.SIGKILL)
                child.wait()
                child.close()
                raise
            return Exec(child, console, output, time.monotonic())
        except BaseException:
            _close(output)
            raise
        finally:
            _close(opened + procs)
            if pty:
                pty.close()

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
        return tuple(_text(self.data / name) for name in ("stdout", "stderr"))

    # -- the details ------------------------------------------------------------------

    def _require_child(self) -> process.Child:
        if self._child is None:
            raise MinicontainerError(f"container {self.name} was not started")
        return self._child

    def _result(self, duration: float) -> Result:
        status = int(_text(self.directory / "exit_status") or -1)
        out, err = self.logs()
        result = _result(status if status >= 0 else None, out, err, duration)
        result.startup = self._startup
        if self.cgroup is not None and result.signal == "SIGKILL":
            result.oom_killed = self.cgroup.stats()["oom_kills"] > 0
        return result

    def _open_logs(self) -> list[int]:
        """For the command's stdin, stdout, stderr: nothing in, logs out."""
        return [os.open(os.devnull, os.O_RDONLY)] + [
            os.open(self.data / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for name in ("stdout", "stderr")]

    def _lease_address(self) -> dict[str, Path]:
        """Layer 4, host side: an address on the network, and the /etc/hosts and
        /etc/resolv.conf files the child will bind-mount into its root."""
        hosts, resolv = self.data / "hosts", self.data / "resolv.conf"
        resolv.write_text(networking.resolv_conf())
        self.attachment = networking.attach(self.network, self.name, self.id, self.hostname, hosts)
        self._save()
        return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}

    def _stop_proxy(self) -> None:
        _stop_helper(self._proxy, self._proxy_process, b"minicontainer.proxy")
        self._proxy, self._proxy_process = None, None
        if self.proxy_cgroup is not None and self.directory is not None:
            self.proxy_cgroup.remove()    # and whatever it left there (a crash: cleanup)

    def _save(self) -> None:
        state.write(self.directory, self._record())

    def _record(self) -> dict:
        child = self._child
        return {
            "name": self.name, "id": self.id, "command": self.command,
            "rootfs": str(self.rootfs), "hostname": self.hostname,
            "namespaces": sorted(self.namespaces), "init": self.init, "env": self.env,
            "rootless": self.rootless,
            "detached": self.detached,
            "cgroup": self.cgroup.path if self.cgroup else None,
            "proxy_cgroup": self.proxy_cgroup.path if self.proxy_cgroup else None,
            "limits": {"memory": self.limits.memory, "cpus": self.limits.cpus,
                       "pids": self.limits.pids},
            "network": asdict(self.attachment) if self.attachment else None,
            "ports": self.ports, "proxy": self._proxy, "security": self.security.as_dict(),
            "tty": self.tty, "console": self._keeper,
            **self._owner,
            "pid": child.pid if child else None, "main_pid": child.main_pid if child else None,
            "pid_started": self._pid_started if child else None}

    @classmethod
    def load(cls, name: str) -> Container:
        """The container `name`, started by this or another process (for the CLI)."""
        record = state.read(name)
        self = cls.__new__(cls)
        self.name, self.id, self.command = record["name"], record["id"], record["command"]
        self.main = None
        self.rootfs, self.hostname = Path(record["rootfs"]), record["hostname"]
        self.namespaces, self.init = frozenset(record["namespaces"]), record["init"]
        self.rootless = record["rootless"]
        self.detached = record["detached"]
        self.limits = Limits(**record["limits"])
        self.network = record["network"]["network"] if record["network"] else None
        self.attachment = networking.Attachment(**record["network"]) if record["network"] else None
        self.ports, self._proxy, self._proxy_process = record["ports"], record["proxy"], None
        self.tty, self._keeper, self._keeper_process = record["tty"], record["console"], None
        self.console = None
        self.security = Security(**record["security"])
        self.cgroup = Cgroup(record["cgroup"], self.limits) if record["cgroup"] else None
        self.proxy_cgroup = (Cgroup(record["proxy_cgroup"], proxy.LIMITS)
                             if record.get("proxy_cgroup") else None)
        self.env, self.directory, self._started = record["env"], state.containers_dir() / name, 0.0
        self.data = state.data_dir() / name
        self._startup = None
        self._owner = {key: record[key] for key in ("owner", "owner_started", "created")}
        self._pid_started = record["pid_started"]
        self._child = None
        if _still_its_own(record):
            self._child = process.Child(record["pid"], record["main_pid"], process.open_pidfd(
                record["main_pid"], parent=record["pid"]))
        return self


class Exec:
    """A command that exec_start() started in a running container."""

    def __init__(self, child: process.Child, console: int | None, output: list[int],
                 started: float) -> None:
        self.child = child
        self.console = console           # its terminal's master, with tty=True
        self.output = output             # memfds holding its stdout and stderr, if not given
        self.started = started

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to exit (Timeout after `timeout` seconds)."""
        status = self.child.wait(timeout)
        out, err = (_read(fd) for fd in self.output) if self.output else ("", "")
        return _result(status, out, err, time.monotonic() - self.started)

    def close(self) -> None:
        """Let go of its pidfd, terminal and output (once, after wait())."""
        self.child.close()
        _close([self.console, *self.output])
        self.console, self.output = None, []


def run(command: str | Sequence[str] | Callable[[], None], timeout: float | None = None,
        **options) -> Result:
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


def _result(status: int | None, out: str, err: str, duration: float) -> Result:
    if status is None:                       # not ours to wait for, and nobody wrote it
        return Result(-1, out, err, duration)
    return Result(process.exit_code(status), out, err, duration, process.killed_by(status))


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _close(fds: Iterable[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
