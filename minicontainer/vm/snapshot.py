"""Snapshot and restore: a VM that need not boot (Firecracker's trick).

A running guest is nothing but state: its RAM, its CPUs' registers, its devices'
registers. QEMU can write all of it out — the very "live migration" that moves a
running VM to another host, sent into a file instead of a socket — and a second QEMU,
started with the same machine and `-incoming`, reads it back and lets the guest go on
where it stopped: no firmware, no kernel boot, no init. The guest does not notice; its
boot_id, its processes and its uptime are the saved ones. Firecracker restores its
microVMs from such snapshots in milliseconds, which is how a "VM per function" can
start about as fast as a container.

QEMU is driven here over QMP, the QEMU Machine Protocol: JSON lines on a unix socket
(`-qmp unix:PATH`). After a greeting and `qmp_capabilities`, each {"execute": NAME}
gets one {"return": ...} or {"error": ...}; events ({"event": ...}) may come between.
Saving is `stop` (pause the CPUs, so the state no longer changes), `migrate` to
`exec:cat > FILE`, then `query-migrate` until "completed". (QEMU 8.2 added a `file:`
URI; `exec:` works on the QEMU 7 of Debian 12 as well.) What QEMU runs for `exec:` is a
shell command line, so the file's path is quoted.

Docker has a cousin of this, `docker checkpoint` (CRIU): it freezes a container's
processes to files, because there is no machine to save, only processes of the host.
"""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from pathlib import Path

from ..errors import Timeout, VMError


class QMP:
    """A QMP connection to one QEMU: command() sends one command and returns its answer."""

    def __init__(self, path: Path, timeout: float = 30,
                 process: subprocess.Popen | None = None) -> None:
        """Connect to QEMU's socket at `path` (waiting up to `timeout` s for QEMU,
        `process`, to create it) and negotiate capabilities, as the greeting asks."""
        deadline = time.monotonic() + timeout
        while True:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.socket.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.socket.close()
                if process is not None and process.poll() is not None:
                    raise VMError(f"QEMU exited (status {process.returncode}) before it "
                                  "opened its QMP socket") from None
                if time.monotonic() > deadline:
                    raise Timeout(f"QEMU did not open its QMP socket within {timeout} s") from None
                time.sleep(0.005)
        self.socket.settimeout(timeout)
        self.stream = self.socket.makefile("rw", encoding="utf-8")
        self._read()                                   # {"QMP": {"version": ...}}
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments) -> object:
        """Run QMP command `name` and return its "return" value; VMError on an error."""
        self.stream.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self.stream.flush()
        while True:
            answer = self._read()
            if "error" in answer:
                raise VMError(f"QEMU refused {name}: {answer['error'].get('desc')}")
            if "return" in answer:
                return answer["return"]              # anything else was an event

    def _read(self) -> dict:
        """One JSON message from QEMU; VMError if QEMU has closed the socket."""
        line = self.stream.readline()
        if not line:
            raise VMError("QEMU closed its QMP socket (it exited)")
        return json.loads(line)

    def close(self) -> None:
        """Close the connection (QEMU goes on)."""
        self.stream.close()
        self.socket.close()


def save(qmp: QMP, state_file: Path, timeout: float = 120) -> None:
    """Pause the guest and write its whole state (RAM, CPUs, devices) to `state_file`."""
    qmp.command("stop")
    qmp.command("migrate", uri=f"exec:cat > {shlex.quote(str(state_file))}")
    wait_for_migration(qmp, timeout)


def incoming_options(state_file: Path) -> list[str]:
    """QEMU's options to start paused and read a guest's state from `state_file`."""
    return ["-incoming", f"exec:cat {shlex.quote(str(state_file))}"]


def resume(qmp: QMP, timeout: float = 120) -> None:
    """Wait until QEMU has read the saved state back, then let the guest's CPUs run."""
    wait_for_migration(qmp, timeout)
    qmp.command("cont")


def wait_for_migration(qmp: QMP, timeout: float) -> None:
    """Poll `query-migrate` until it says "completed"; VMError if it failed."""
    deadline = time.monotonic() + timeout
    while (status := qmp.command("query-migrate").get("status")) != "completed":
        if status in ("failed", "cancelled"):
            raise VMError(f"saving or restoring the VM's state {status}")
        if time.monotonic() > deadline:
            raise Timeout(f"the VM's state was not moved within {timeout} s")
        time.sleep(0.005)
