"""The escape lab: what an attacker inside a container tries, and which layer stops it.

Each attack runs as root inside a default container and exits 0 only if it got
through. `stopped_by` names the layer that stops it; where it is safe, `shown_with`
gives the container options (that layer switched off) under which the very same
attack succeeds — proof that it is that layer doing the work. `behind_it` names
the layer that still stops the attack when the first one is switched off (defence
in depth), with the options that switch the first one off.

Nothing here changes the host, even when an attack succeeds: escapes read a marker
file, signal 0 and trace a sleeping process the lab starts for the purpose, connect
to a loopback port the lab opens, and probe the kernel's switches (/proc/sys,
sysrq-trigger) only with access(2), which asks "could I write?" without writing.
A fork bomb and a memory hog are only ever run under a limit.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import namespaces as ns
from . import syscalls
from .chroot import escape_chroot
from .container import Container
from .security import Security

# A default container's namespaces, less one: that layer switched off.
NOT_PID, NOT_NET, NOT_MNT = (ns.DEFAULT - {kind} for kind in ("pid", "net", "mnt"))


@dataclass(frozen=True)
class Target:
    """What the lab puts on the host for the attacker to reach for."""

    marker: str      # a host file no container should be able to read
    pid: int         # a host process (a sleep the lab started)
    port: int        # a host service on 127.0.0.1
    disk: str        # major:minor of the host's root filesystem device


@dataclass(frozen=True)
class Attack:
    name: str
    command: str | Callable[[Target], None]   # shell (with $MARKER $PID $PORT $DISK) or Python
    stopped_by: str
    shown_with: dict | None = None            # options under which it safely succeeds
    behind_it: tuple[dict, str] | None = None  # (first layer off, the layer that then stops it)
    options: dict = field(default_factory=dict)  # what this attack's container always gets


@dataclass
class Outcome:
    escaped: bool
    evidence: str     # the last lines it printed


def break_out_of_chroot(target: Target) -> None:
    escape_chroot(target.marker)


def trace_host_process(target: Target) -> None:
    syscalls.ptrace_attach(target.pid)
    print(f"attached to {target.pid}", flush=True)


def find_writable_kernel_switches(target: Target) -> None:
    """access(2) with W_OK: the kernel's answer to "may I write?", nothing written."""
    switches = [p for p in ("/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern")
                if os.path.exists(p)]
    writable = [p for p in switches if os.access(p, os.W_OK)]
    print("writable:", " ".join(writable) or "none", flush=True)
    if not writable:
        raise SystemExit(1)


ATTACKS = [
    Attack("chroot breakout", break_out_of_chroot, "mount namespace (pivot_root)",
           shown_with={"namespaces": NOT_MNT}),
    Attack("mount the host's disk",
           "mknod /dev/hostdisk b ${DISK%:*} ${DISK#*:} && mount -o ro /dev/hostdisk /mnt "
           "&& ls /mnt", "capabilities (no MKNOD)",
           behind_it=({"security": Security(capabilities=False)}, "seccomp (mount)")),
    Attack("mount a new /proc and find its switches",
           "mount -t proc proc /mnt && ls /mnt/sys/kernel/core_pattern",
           "seccomp (mount)", shown_with={"security": Security.off()},
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_ADMIN)")),
    Attack("see host processes", "cat /proc/$PID/cmdline | grep mc-escape-target",
           "pid namespace", shown_with={"namespaces": NOT_PID}),
    Attack("signal a host process", "kill -0 $PID", "pid namespace",
           shown_with={"namespaces": NOT_PID}),
    Attack("ptrace a host process", trace_host_process, "pid namespace",
           behind_it=({"namespaces": NOT_PID}, "capabilities (no SYS_PTRACE)")),
    Attack("raise its own limits (mount the cgroup tree)",
           "mount -t cgroup2 none /mnt || mount -t cgroup -o pids none /mnt",
           "seccomp (mount)",
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_ADMIN)")),
    Attack("load a kernel module",
           # The kernel reading (and rejecting) our module counts: it was allowed to.
           "echo not-a-module > /tmp/evil.ko; out=$(insmod /tmp/evil.ko 2>&1); echo $out; "
           "case $out in *'invalid module format'*) exit 0;; esac; exit 1",
           "seccomp (init_module)",
           behind_it=({"security": Security(seccomp=False)}, "capabilities (no SYS_MODULE)")),
    Attack("reach a host loopback service", "echo hello | nc -w 2 127.0.0.1 $PORT",
           "network namespace", shown_with={"namespaces": NOT_NET}),
    Attack("read the host kernel's internals",
           "cat /proc/timer_list /proc/interrupts /proc/keys 2>/dev/null | grep .",
           "masked paths", shown_with={"security": Security(system_paths=False)}),
    Attack("find a writable kernel switch", find_writable_kernel_switches, "read-only paths",
           shown_with={"security": Security(system_paths=False)}),
    Attack("fork bomb",
           "bomb() { bomb | bomb & }; bomb; sleep 3; n=$(ls -d /proc/[0-9]* | wc -l); "
           "echo $n processes; [ $n -gt 2000 ]", "cgroup pids limit (1024 by default)"),
    Attack("memory exhaustion", "tail /dev/zero", "cgroup memory limit (--memory)",
           options={"memory": "64M"}),
]


@contextmanager
def target() -> Iterator[Target]:
    """The bait on the host: a marker file, a sleeping process, a loopback service."""
    sleeper = subprocess.Popen(["mc-escape-target", "600"], executable="sleep")
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_answer, args=(listener,), daemon=True).start()
    disk = os.stat("/").st_dev
    with tempfile.TemporaryDirectory(prefix="mc-escape-") as directory:
        marker = Path(directory) / "marker"
        marker.write_text(f"host-only-{os.urandom(6).hex()}")
        try:
            yield Target(str(marker), sleeper.pid, listener.getsockname()[1],
                         f"{os.major(disk)}:{os.minor(disk)}")
        finally:
            sleeper.kill()
            sleeper.wait()
            listener.close()


def _answer(listener: socket.socket) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return                    # closed: the lab is over
        with connection:
            connection.sendall(b"host service\n")


def attempt(attack: Attack, bait: Target, **changes) -> Outcome:
    """Run `attack` in a container with the attack's options, then `changes`."""
    options = {**attack.options, **changes}
    if callable(attack.command):
        command = partial(attack.command, bait)
    else:
        command = ["/bin/sh", "-c", attack.command]
    env = {"MARKER": bait.marker, "PID": str(bait.pid), "PORT": str(bait.port),
           "DISK": bait.disk}
    with Container(command, env=env, **options) as container:
        result = container.start().wait(timeout=60)
    text = (result.stdout + result.stderr).strip().splitlines()
    evidence = " / ".join(text[-3:]).replace("\0", " ")
    if not evidence and result.signal:
        evidence = f"killed by {result.signal}"
    return Outcome(result.exit_code == 0, evidence[:200])


def run_lab(attacks: list[Attack] = ATTACKS, layers_off: bool = True) -> list[dict]:
    """Every attack against a default container; a row per attack, for a table.

    With `layers_off`, each attack is tried again with its layer switched off where
    that is safe (it should get through), or else with the first layer off (the next
    one should stop it).
    """
    rows = []
    with target() as bait:
        for attack in attacks:
            outcome = attempt(attack, bait)
            row = {"attack": attack.name, "blocked": not outcome.escaped,
                   "stopped by": attack.stopped_by, "evidence": outcome.evidence}
            if layers_off and attack.shown_with:
                off = attempt(attack, bait, **attack.shown_with)
                row["with it off"] = "gets through" if off.escaped else "still blocked"
            elif layers_off and attack.behind_it:
                off = attempt(attack, bait, **attack.behind_it[0])
                row["with it off"] = ("gets through" if off.escaped
                                      else f"stopped by {attack.behind_it[1]}")
            else:
                row["with it off"] = "not tried: it would harm the host"
            rows.append(row)
    return rows
