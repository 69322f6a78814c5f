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

from . import cgroups, devices, process, proxy, security, state, syscalls
from . import network as networking
from . import namespaces as ns
from .arguments import (as_argv, check_count, check_host, check_hostname, check_name,
                        check_namespaces, check_ports, check_rootless)
from .cgroups import Cgroup, Limits
from .errors import InvalidArgument, MinicontainerError, Timeout
from .init import become_init
from .rootfs import Overlay, check_rootfs, default_rootfs
from .security import Security

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
                 shm_size: str | int = ns.SHM_SIZE, preserve_fds: int = 0) -> None:
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
        self.shm_size = cgroups.parse_memory(shm_size, "shm size", 1)   # docker --shm-size
        self.preserve_fds = check_count(preserve_fds, "preserve_fds", 0)  # podman's option
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

    # -- life cycle ------------------------------------------------------------------

    def start(self, attach: bool = False, detach: bool = False) -> Container:
        """Create the container and start its command; return once the command runs.

        attach=True shares this process's stdin/stdout/stderr (the CLI in the
        foreground); otherwise output goes to log files read by wait() and logs().
        detach=True lets the container outlive this process (`run -d`); otherwise
        `minicontainer cleanup` removes it once this process is gone.
        """
        self.detached = detach
        self._owner = {"owner": os.getpid(), "owner_started": process.start_time(os.getpid())}
        self.directory = state.claim(self.name, self._record())  # before anything else exists
        procs: list[int] = []
        listeners: list = []
        try:
            self.data = state.make_data(self.name)
            layer = Overlay.create(self.rootfs, self.data, nodev=self.security.devices)
            files = self._lease_address() if self.network else {}
            steps = [os.setsid,       # our own session: the terminal's Ctrl-C is not ours
                     partial(ns.isolate, layer, self.namespaces, self.hostname,
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
                steps.append(process.wait_for_parent)      # until the host plugs in eth0
            steps += security.steps(self.security, "mnt" in self.namespaces)  # layer 5
            if self.init:
                steps.append(become_init)
            listeners = proxy.bind(self.ports)   # a port in use fails before anything runs
            stdio = self._open_stdio(attach)
            try:
                self._started = time.monotonic()
                self._child = process.spawn(
                    self.command, steps, env=self.env, stdio=stdio, main=self.main,
                    when_ready=self.attachment.connect if self.network else None,
                    preserve_fds=self.preserve_fds)
                self._startup = time.monotonic() - self._started
            finally:
                _close(stdio)
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
        except BaseException:
            for listener in listeners:       # the proxy never got them: free the ports
                listener.close()
            self.remove(force=True)
            raise
        finally:
            _close(procs)
        return self

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
        child = self._child
        return child is not None and not child.exited and not process.wait_for_exit(child.pid, 0)

    def exec(self, command: str | Sequence[str] | Callable[[], None],
             timeout: float | None = 60, attach: bool = False, hardened: bool = True
             ) -> Result:
        """Run another command inside the running container (docker exec).

        The joining process is a copy of this one until it execs: it is made
        non-dumpable first, so the container cannot open its /proc/PID/exe (the
        host's Python: CVE-2019-5736) or its fds, and it starts a session of its own, so
        it never holds our terminal as its controlling tty (TIOCSTI would type into the
        host's shell). Attached (the CLI), our SIGTERM, SIGHUP and Ctrl-C are passed on.
        A Python function as `command` runs in there without exec (for demos).
        hardened=False leaves both out, as runtimes did before 2019 (the escape lab).
        """
        if not self.running:
            raise MinicontainerError(f"container {self.name} is not running")
        import tempfile
        procs = self.cgroup.open_procs() if self.cgroup else []   # in the same budget
        steps = [partial(syscalls.set_dumpable, False), os.setsid] if hardened else []
        steps += [partial(ns.join, self.pid, self.namespaces), partial(cgroups.join, procs),
                 *security.steps(self.security, mount_namespace=False)]  # mounts: done
        main = command if callable(command) else None
        started = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            stdio = [None] * 3 if attach else [os.open(os.devnull, os.O_RDONLY),
                                               os.dup(out.fileno()), os.dup(err.fileno())]
            try:
                child = process.spawn([repr(main)] if main else as_argv(command), steps,
                                      env=self.env, stdio=stdio, main=main)
            finally:
                _close(stdio + procs)
            try:
                with process.signals_passed_to(child) if attach else nullcontext():
                    status = child.wait(timeout)
            except BaseException:            # a time-out, a second Ctrl-C: not left behind
                child.send_signal(signal.SIGKILL)
                child.wait()
                raise
            finally:
                child.close()
            return _result(status, _read(out), _read(err), time.monotonic() - started)

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

    def _open_stdio(self, attach: bool) -> list[int | None]:
        """The child's stdin, stdout, stderr: ours (attach), or nothing in, logs out."""
        if attach:
            return [None, None, None]
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
        if self._proxy and process.start_time(self._proxy[0]) == self._proxy[1] and (
                b"minicontainer.proxy" in _cmdline(self._proxy[0])):   # a record is not trusted
            os.kill(self._proxy[0], signal.SIGKILL)
        if self._proxy_process is not None:        # ours: collect its exit status
            self._proxy_process.wait()
            self._proxy_process.close()
            self._proxy_process = None
        self._proxy = None
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
            "created": time.time(), **self._owner,
            "pid": child.pid if child else None, "main_pid": child.main_pid if child else None,
            "pid_started": process.start_time(child.pid) if child else None}

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
        self.security = Security(**record["security"])
        self.cgroup = Cgroup(record["cgroup"], self.limits) if record["cgroup"] else None
        self.proxy_cgroup = (Cgroup(record["proxy_cgroup"], proxy.LIMITS)
                             if record.get("proxy_cgroup") else None)
        self.env, self.directory, self._started = record["env"], state.containers_dir() / name, 0.0
        self.data = state.data_dir() / name
        self._startup = None
        self._child = None
        if _still_its_own(record):
            self._child = process.Child(record["pid"], record["main_pid"], process.open_pidfd(
                record["main_pid"], parent=record["pid"]))
        return self


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


def _read(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _close(fds: Iterable[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
