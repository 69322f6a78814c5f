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
data directory (its writable layer and logs, on disk; see state.py), is listed by
its Handles (handles.py) and goes with remove(); the mounts live in the container's
own mount namespace and vanish with its last process.
"""
from __future__ import annotations

import errno
import inspect
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

# What only some containers use (a network, published ports, exec, a kept terminal) is
# imported where it is used: `minicontainer run -- true` pays for none of it.
from . import cgroups, devices, monitor, process, security, state, syscalls
from . import namespaces as ns
from .cgroups import Cgroup
from .handles import Handles, open_logs
from .init import become_init
from .rootfs import BoundRoot, Overlay
from .process import Result
from .spec import Spec, describe, from_record
from .terminal import WINDOW, Pty

if TYPE_CHECKING:
    from . import joining
    from .network import Attachment


class Container(Handles):
    """A command run in its own namespaces, on its own copy of an image: its Spec (what
    it is), its Handles (what the host holds of it, and wait, stop, remove: handles.py)
    and what you can do with it: start, exec."""

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
        return cls.of(from_record(record), record)

    @classmethod
    def of(cls, spec: Spec, record: dict | None = None) -> Container:
        """A container of a Spec made elsewhere (oci.py makes one from a config.json),
        as its record left it if there is one."""
        self = cls.__new__(cls)
        self.main = None
        self._hold(spec, record)
        return self

    def child_steps(self, steps: list[process.Step],
                    channel: process.Channel) -> list[process.Step]:
        """The child's steps, as start() runs them: a runtime built on this class adds
        its own here (oci.py), once the record directory exists."""
        return steps

    def root_layer(self) -> Overlay | BoundRoot:
        """What becomes its root: the image under a writable layer of its own, in its
        data directory (a runtime built on this class may use a directory as it is:
        oci.py)."""
        spec = self.spec
        # An image's layers from the store, in a user namespace: overlayfs reads
        # their opaque marks from user.* xattrs (trusted.* are not for it there).
        return Overlay.create([Path(p) for p in spec.lower], self.data,
                              nodev=spec.security.devices,
                              userxattr=bool(spec.layers) and "user" in spec.namespaces)

    def allowed_devices(self) -> tuple:
        """The devices its cgroup lets it open (devices.ALLOWED): a runtime built on
        this class adds the ones its bundle allows (oci.py)."""
        return devices.ALLOWED

    def child_ready(self, pid: int) -> None:
        """What this process does while the child `pid` waits for it
        (process.wait_for_parent): plug in its network; a runtime built on this class
        adds its own (oci.py: a user namespace's id maps)."""
        if self.attachment:
            self.attachment.connect(pid)

    # -- life cycle ------------------------------------------------------------------

    def start(self, stdio: Sequence[int | None] | None = None, detach: bool = False,
              window: tuple[int, int] = WINDOW) -> Container:
        """Create the container and start its command; return once the command runs.

        The command's fds 0, 1, 2 are `stdio` (None in it: ours), else nothing in and
        log files out (wait(), logs()); with tty, a terminal of `window` (rows,
        columns) whose master is `console`. detach=True lets it outlive this process
        (`run -d`); otherwise `minicontainer cleanup` removes it once we are gone.
        """
        spec = self.spec
        self.detached = detach
        self._owner = {"owner": os.getpid(), "owner_started": process.start_time(os.getpid()),
                       "created": time.time()}
        self.directory = state.claim(spec.name, self.record())  # before anything else exists
        # No call between the claim and `try`: a Ctrl-C is raised at a call, and one
        # raised there would leave the record behind.
        procs: list[int] = []
        pty, waiter = None, process.PLAIN_WAITER
        try:
            pty = Pty(window, console=True) if spec.tty else None
            if spec.ports:                   # a port in use fails before anything runs
                from .ports import reserve
                self.port_sockets = reserve(spec.ports)
            # fds, opened on the host, now; the ports' sockets are the monitor's to hold
            waiter = monitor.waiter_for(self.directory,
                                        tuple(s.fileno() for s in self.port_sockets))
            self.data = state.data_dir() / spec.name   # named first: an interrupt
            state.make_data(spec.name)                  # inside still removes it
            layer = self.root_layer()
            files: list[ns.Mount] = []
            if spec.network:                 # layer 4, host side; recorded at once
                with process.interrupts_held():
                    self.attachment, files = lease_address(spec, self.data)
                self.save()
            procs = enter_budget(spec, self.cgroup, self.allowed_devices())
            channel = process.Channel()      # spawn's pipes, for the steps that use them
            steps = self.child_steps(setup_steps(spec, layer, channel, files, procs, pty,
                                                 waiter), channel)
            self._started = time.monotonic()
            spawn_command(self, steps, stdio, channel)   # self._child from here on
            self._startup = time.monotonic() - self._started
            # Once: a later save may find it a zombie already (a -dit command that
            # exits at once), and a record must keep naming the process it started.
            self._pid_started = process.start_time(self._child.pid)
            self.console = pty.master() if pty else None
            self.save()                      # its pids, at once: cleanup must find them
            if spec.ports:
                publish_ports(self)
            if detach and self.console is not None:
                self.keep_console()
        except BaseException:
            self._remove_whatever_happens()  # the ports' sockets and rules too
            raise
        finally:
            process.close_all(procs)
            monitor.close(waiter)
            if pty:
                pty.close()
        return self

    # -- looking inside (and ending it: handles.py) ---------------------------------

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

# Container(...) takes describe()'s options: show them where help() and Jupyter's
# Shift-Tab look, though __init__ passes them on as **options.
Container.__init__.__signature__ = inspect.signature(describe).replace(
    parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                *inspect.signature(describe).parameters.values()], return_annotation=None)


# -- what the child does ---------------------------------------------------------------

def setup_steps(spec: Spec, layer: Overlay | BoundRoot, channel: process.Channel,
                files: list[ns.Mount], procs: list[int], pty: Pty | None,
                waiter: process.Waiter) -> list[process.Step]:
    """What the container's first process does to itself between fork and exec, in
    the kernel's order (the module's docstring tells why this one); `waiter` is for
    the process left outside its pid namespace (monitor.py)."""
    # Non-dumpable until exec makes it dumpable again: no process of the same uid in a
    # pid namespace it shares (an OCI bundle can join one) may open its /proc/PID/fd,
    # the host's files (runc's nsexec does the same; joining.py for exec).
    steps = [partial(syscalls.set_dumpable, False),
             os.setsid,               # our own session: the terminal's Ctrl-C is not ours
             partial(ns.isolate, layer, spec.namespaces, spec.hostname, channel,
                     waiter=waiter, mounts=[*files, *spec.mounts],
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

def enter_budget(spec: Spec, cgroup: Cgroup | None, allowed: tuple) -> list[int]:
    """Layer 3, host side: the cgroup with its device allow-list (layer 5: `allowed`),
    and its cgroup.procs files opened for the child to write itself into."""
    listed = False                  # a device allow-list in force
    procs: list[int] = []
    if cgroup:
        cgroup.create()
        listed = spec.security.devices and devices.allow_only(cgroup, allowed)
        procs = cgroup.open_procs()
    if spec.security.devices and "mnt" not in spec.namespaces and not listed:
        devices.refuse_device_nodes(Path(spec.rootfs))   # neither nodev nor a list
    return procs


def publish_ports(container: Container) -> None:
    """Layer 4, host side: the published ports' DNAT rules (tagged with its veth, so
    cleanup finds them); once a monitor holds the reserved ports, we let them go."""
    from .ports import add_rules
    add_rules(container.attachment, list(container.spec.ports))
    if container.pid != container.child().pid:      # a monitor holds the sockets now
        for held in container.port_sockets:
            held.close()
        container.port_sockets = []


def spawn_command(container: Container, steps: list[process.Step],
                  stdio: Sequence[int | None] | None, channel: process.Channel) -> None:
    """Fork the child that runs `steps` and execs the command (logs unless `stdio`); the
    container holds it (its _child) before a Ctrl-C can be raised between the two."""
    opened = open_logs(container.data) if stdio is None else []
    try:
        process.spawn(
            list(container.spec.command), steps, env=container.spec.env,
            stdio=opened or stdio, main=container.main, when_ready=container.child_ready,
            preserve_fds=container.spec.preserve_fds, channel=channel,
            adopt=partial(setattr, container, "_child"))   # what removal kills and waits for
    finally:
        process.close_all(opened)


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
