"""After a crash: stop the QEMUs whose owner died, and remove their files.

VM.start writes a record (state.write_vm) before anything of the VM exists — the
owner's pid and start time, its scratch directory, and, once QEMU runs, QEMU's pid and
start time — and stop() removes it. A record whose owner is gone names what a crash
left behind. Killing by pid alone could hit an unrelated process that reused the
number, so a pid counts only with its recorded start time (/proc/PID/stat); if the
owner died before writing QEMU's pid, QEMU is the process whose command line names
the scratch directory (/proc/PID/cmdline), since it boots the initramfs in it.

It is a module of its own, not part of machine.py, because it never builds or boots
a VM: it reads records and processes, so `minicontainer cleanup` imports it without
the life cycle, and the one place that kills processes by what a record says stays
small enough to check line by line.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from .. import state
from ..process import start_time, wait_for_exit


def cleanup() -> list[str]:
    """Stop the QEMUs whose owner died without stop(), and remove their files."""
    removed = []
    for vm_id, record in state.vm_records().items():
        if state.owner_alive(record):
            continue
        if record["qemu"]:
            pids = [record["qemu"][0]] if start_time(record["qemu"][0]) == record["qemu"][1] else []
        else:                          # died between starting QEMU and writing its pid:
            pids = _running_with(record["tmp"])   # it is the one booting our initramfs
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, 10)
        shutil.rmtree(record["tmp"], ignore_errors=True)
        state.release_vm(vm_id)
        removed.append(f"vm {vm_id}")
    return removed


def _running_with(path: str) -> list[int]:
    """The processes whose command line mentions `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and path.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:                # gone meanwhile
            pass
    return found
