"""`exec`: another process joins a running container.

A running container is a set of namespaces, a cgroup and a confinement, held open by
its processes. A new process joins them from outside: setns(2) into each namespace
(found at /proc/PID/ns/* of the container's first process), chroot into its root
(/proc/PID/root), a write to its cgroup.procs, then the same layer 5 the first
process got - and exec. For a pid namespace setns changes only our children's, so we
fork once more (process.fork_and_wait), as nsenter does.

The joining process is a copy of ours until it execs, and that is the dangerous
moment: the container's processes can see it. So, as runc does since 2019, it is made
non-dumpable first (the container cannot open its /proc/PID/exe, the host's Python:
CVE-2019-5736, nor its fds), and it starts a session of its own, so it never holds our
terminal as its controlling tty (TIOCSTI would type into the host's shell).
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial

from . import cgroups, process, security, syscalls
from . import namespaces as ns
from .arguments import as_argv
from .errors import MinicontainerError
from .process import Result, result_of
from .spec import Spec
from .terminal import WINDOW, Pty, check_tty, finish, stdio_for


class Exec:
    """A command that start_in() started in a running container."""

    def __init__(self, child: process.Child, console: int | None, output: list[int],
                 started: float) -> None:
        """A started command, its terminal's master, its output files, when it began."""
        self.child = child
        self.console = console           # its terminal's master, with tty=True
        self.output = output             # memfds holding its stdout and stderr, if not given
        self.started = started

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to exit (Timeout after `timeout` seconds)."""
        status = self.child.wait(timeout)
        out, err = (process.read_all(fd) for fd in self.output) if self.output else ("", "")
        return result_of(status, out, err, time.monotonic() - self.started)

    def close(self) -> None:
        """Let go of its pidfd, terminal and output (once, after wait())."""
        self.child.close()
        process.close_all([self.console, *self.output])
        self.console, self.output = None, []


def run_in(container, command: str | Sequence[str] | Callable[[], None],
           timeout: float | None = 60, attach: bool = False, interactive: bool = False,
           hardened: bool = True) -> Result:
    """Run another command inside the running `container` to its end (docker exec).

    attach=True gives it our stdout and stderr (and stdin if `interactive`; else
    /dev/null), pipes in their place where they are a terminal (terminal.stdio_for),
    and passes our SIGTERM, SIGHUP and Ctrl-C on (the CLI); otherwise nothing goes in
    and the output is returned. hardened=False shares our files as they are (the
    escape lab). For the rest see start_in().
    """
    stdio, relays = (stdio_for(interactive) if hardened else ([None] * 3, [])
                     ) if attach else (None, [])
    try:
        running = start_in(container, command, stdio=stdio, hardened=hardened)
    finally:
        process.close_all(stdio or [])
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


def start_in(container, command: str | Sequence[str] | Callable[[], None],
             stdio: Sequence[int | None] | None = None, tty: bool = False,
             window: tuple[int, int] = WINDOW, hardened: bool = True) -> Exec:
    """Start another command inside the running `container` and return it running.
    `stdio`, `tty` and `window` as for Container.start(); its terminal's master is the
    returned Exec's `console`. A Python function as `command` runs without exec."""
    if not container.running:
        raise MinicontainerError(f"container {container.name} is not running")
    if tty:
        check_tty(container.spec.namespaces)
    pty = Pty(window) if tty else None
    procs = container.cgroup.open_procs() if container.cgroup else []   # in the same budget
    channel = process.Channel()
    steps = join_steps(container.spec, container.pid, channel, procs, pty, hardened)
    main = command if callable(command) else None
    output = [] if stdio is not None else [os.memfd_create("stdout"),
                                            os.memfd_create("stderr")]
    opened = [os.open(os.devnull, os.O_RDONLY), *map(os.dup, output)] if output else []
    try:
        child = process.spawn([repr(main)] if main else as_argv(command), steps,
                              env=container.spec.env, stdio=opened or stdio, main=main,
                              channel=channel)
        return Exec(child, _terminal_of(child, pty), output, time.monotonic())
    except BaseException as e:
        process.close_all(output)
        if isinstance(e, FileNotFoundError) and not container.running:   # /proc/PID/ns/*
            raise MinicontainerError(f"container {container.name} is not running: its "
                                     "command ended just now") from None
        raise
    finally:
        process.close_all(opened + procs)
        if pty:
            pty.close()


def join_steps(spec: Spec, pid: int, channel: process.Channel, procs: list[int],
               pty: Pty | None, hardened: bool = True) -> list[process.Step]:
    """What a joining process does to itself: join the container whose first process
    is `pid`, its budget and its confinement (the module says why in this order).
    hardened=False leaves out non-dumpable and the new session, as runtimes did before
    2019 (the escape lab)."""
    steps = [partial(syscalls.set_dumpable, False), os.setsid] if hardened else []
    steps += [partial(ns.join, pid, spec.namespaces, channel), partial(cgroups.join, procs),
              *security.steps(spec.security, mount_namespace=False),  # its mounts: done
              *security.user_steps(spec.user, spec.workdir,       # as docker exec
                                   "user" in spec.namespaces)]
    if pty:
        steps += [pty.open_inside, pty.take_as_controlling]
    return steps


def _terminal_of(child: process.Child, pty: Pty | None) -> int | None:
    """The master `pty` sent; with none after all, `child` is killed, not left running."""
    try:
        return pty.master() if pty else None
    except BaseException:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.close()
        raise
