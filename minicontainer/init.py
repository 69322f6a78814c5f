"""A tiny init for PID 1, what `docker run --init` adds.

The first process of a pid namespace is its PID 1, and the kernel gives PID 1 two
duties that an ordinary command (`sleep`, a web server) does not perform:

- Orphans are re-parented to PID 1, which must wait(2) for them when they exit,
  or they stay in the process table as zombies.
- The kernel delivers to PID 1 only the signals it has a handler for. A `sleep`
  running as PID 1 ignores SIGTERM, so stopping it takes the grace period and then
  SIGKILL (which is why `docker stop` sometimes takes 10 seconds).

This init forks the command, then waits: it blocks the signals it cares about and
takes them one at a time with sigwaitinfo(2), a loop simpler than signal handlers.
Termination signals are passed on to the command; SIGCHLD means someone to reap.
When the command itself is reaped, init exits with its status, and the kernel then
kills whatever else is left in the namespace.
"""
from __future__ import annotations

import os
import signal

from .process import Channel, exit_code
from .syscalls import set_dumpable

FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH}


def become_init(channel: Channel) -> None:
    """Fork: the child returns to go on and exec the command; we stay as its init
    (and let go of spawn's `channel`: only the command's exec ends it)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED | {signal.SIGCHLD})
    # This init is the host's Python and never execs: non-dumpable before the command
    # exists, the container's processes cannot open its /proc/1/exe (the host's
    # interpreter), /proc/1/fd or /proc/1/mem. The command's exec makes it dumpable again.
    set_dumpable(False)
    command = os.fork()
    if command == 0:
        return                    # the signal mask is restored just before exec
    channel.stop_telling()
    os.closerange(3, 1 << 20)
    os._exit(supervise(command))


def supervise(command: int) -> int:
    """Forward signals to `command`, reap every child; return the command's exit code."""
    while True:
        sig = signal.sigwaitinfo(FORWARDED | {signal.SIGCHLD}).si_signo
        if sig != signal.SIGCHLD:
            os.kill(command, sig)
            continue
        for pid, status in reap_children():
            if pid == command:
                return exit_code(status)     # killed by signal N: 128 + N, as a shell says


def reap_children() -> list[tuple[int, int]]:
    """wait(2) for every child that has exited (zombies), without blocking."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))
