"""The monitor: the one process a detached container keeps on the host, and its cost.

A container with its own pid namespace has a PID 1 whose parent lives outside it
(process.fork_and_wait): only a parent can collect a process's exit status, wait(2),
so someone must stay behind to learn how the container ended and write it where `ps`,
`wait` and `inspect` look. Docker keeps a containerd-shim (a Go process) per
container for this; Podman keeps conmon (a small C program); `runc run -d` and crun
keep nothing, and the exit status is lost to init.

Ours was a forked copy of our Python runtime: about 3 MiB of the host's memory per
container, for a `sleep` that costs 0.1 MiB. Now the copy execs mc-monitor
(monitor.c, built by setup into the cache's lib directory), a static C program of a
few dozen lines that waits, writes the status, and exits the way its child did: what
is left per container is that program's few private pages (bench/cost.py, 50 idle
`run -d sleep`: 0.05 MiB PSS of monitor per container, beside 0.07 MiB for the
`sleep` itself and 0.08 for a crun container's; the Python waiter was ~10 MiB PSS,
~3 MiB USS). That is conmon's design without conmon's other duties (the logs are
files the container writes itself; a terminal's keeper, console.py, is the only
other process, and only with `-t`). Published ports need no process either: they are
DNAT rules (ports.py), and the socket that reserves each host port is one more fd the
monitor inherits and holds until it exits, so the port stays taken exactly as long
as the container runs, whoever started it.

What it holds must not be a way out of the container (Hardening item 1): the exit
status goes to a *regular file* the runtime opened before any namespace changed,
never a directory fd; the binary is exec'd by an fd opened at the same time, so no
path need resolve in whatever root the waiter is in by then; and the monitor makes
itself non-dumpable, so no process of the same uid can ptrace it or open its fds.
It is static: a dynamic program's loader (ld.so) is found by path, which after a
chroot would be the container's.

Without the binary (setup not run, no compiler) the waiter stays Python, as before,
and `minicontainer doctor` says so. host_cost() counts what the host spends on a
container beyond its own processes: the monitor and a terminal's keeper.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .host import cache_dir
from .process import Waiter

PROGRAM = "mc-monitor"
SYSTEM_LIB = Path("/var/cache/minicontainer/lib")   # where root's setup builds it


def program_path() -> Path | None:
    """The monitor binary setup built, if there is one we may run: ours, or root's
    (a rootless user's cache has none); None if neither is there."""
    for lib in (cache_dir() / "lib", SYSTEM_LIB):
        path = lib / PROGRAM
        if _trusted(path):
            return path
    return None


def _trusted(path: Path) -> bool:
    """Is `path` a regular file that only root or we could have written? (Root
    execs it: a binary another user can replace would be theirs to run as root.)"""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (stat.S_ISREG(info.st_mode) and info.st_uid in (0, os.geteuid())
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def waiter_for(directory: Path, held: tuple[int, ...] = ()) -> Waiter:
    """A container's Waiter: directory/exit_status (made empty here; the monitor fills
    it in) and the monitor binary, both opened now, on the host; and `held`, fds of
    ours for the monitor to hold (the published ports' sockets)."""
    status = os.open(directory / "exit_status", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    path = program_path()
    return Waiter(status, os.open(path, os.O_RDONLY) if path else None, held)


def close(waiter: Waiter) -> None:
    """Close the waiter's fds here (the waiter has its own copies)."""
    for fd in (waiter.exit_status, waiter.program):
        if fd is not None:
            os.close(fd)


def exit_status(directory: Path) -> int | None:
    """The wait status the monitor wrote in directory/exit_status; None while it has
    not (the file is made empty at the start, and written once, at the exit)."""
    try:
        text = (directory / "exit_status").read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else None


def pss(pid: int | None) -> int | None:
    """Proportional set size of process `pid` in bytes (each shared page split among
    its users, /proc/PID/smaps_rollup); None if there is no such process."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def host_cost(monitor: int | None, keeper: int | None) -> dict[str, int | None]:
    """PSS in bytes of each process the host keeps for a container besides its own
    (None: it has none), and their sum as `host_pss`."""
    costs = {"monitor_pss": pss(monitor), "keeper_pss": pss(keeper)}
    return {**costs, "host_pss": sum(c for c in costs.values() if c)}


def doctor_check() -> tuple[bool, str, str]:
    """(found, what was found, how to fix) for `minicontainer doctor`."""
    path = program_path()
    if path:
        return True, str(path), ""
    return False, "missing: each detached container keeps a Python waiter (~3 MiB)", (
        "run `make setup` (it builds minicontainer/monitor.c with gcc)")
