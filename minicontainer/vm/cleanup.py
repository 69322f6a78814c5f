"""After a crash: stop the QEMUs whose owner died, and remove their files.

VM.start writes a record (state.write_vm) before anything of the VM exists — the
owner's pid and start time, its scratch directory, and, once QEMU runs, QEMU's pid and
start time — and stop() removes it. A record whose owner is gone names what a crash
left behind. Killing by pid alone could hit an unrelated process that reused the
number, so a pid counts only with its recorded start time (/proc/PID/stat); if the
owner died before writing QEMU's pid, QEMU is the process whose command line names
the scratch directory (/proc/PID/cmdline), since it boots the initramfs in it. A VM
with a network card also names its lease and its tap (network.Attachment): both go
with it.

It is a module of its own, not part of machine.py, because it never builds or boots
a VM: it reads records and processes, so `minicontainer cleanup` imports it without
the life cycle, and the one place that kills processes by what a record says stays
small enough to check line by line.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from .. import state
from ..arguments import ID, check_attachment
from ..errors import BadRecord
from ..process import start_time, wait_for_exit


def cleanup() -> list[str]:
    """Stop the QEMUs whose owner died without stop(), and remove their files."""
    removed = []
    for vm_id, record in state.vm_records().items():
        if refused(vm_id, record) or state.owner_alive(record):   # refused: see refusals()
            continue
        if record["qemu"]:             # that pid, if it still is QEMU booting from tmp
            pid, started = record["qemu"]
            pids = [pid] if start_time(pid) == started and pid in _running_with(
                record["tmp"]) else []
        else:                          # died between starting QEMU and writing its pid:
            pids = _running_with(record["tmp"])   # it is the one booting our initramfs
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, 10)
        if record.get("network"):     # QEMU is gone: its tap and lease go too
            from .. import network
            network.detach(network.Attachment(**record["network"]))
        shutil.rmtree(record["tmp"], ignore_errors=True)
        state.release_vm(vm_id)
        removed.append(f"vm {vm_id}")
    return removed


def live_vms() -> frozenset[str]:
    """The ids of the VMs whose owner still runs: their leases and taps are in use."""
    return frozenset(vm_id for vm_id, record in state.vm_records().items()
                     if not refused(vm_id, record) and state.owner_alive(record))


def refusals() -> dict[str, str]:
    """The VM records cleanup leaves alone, each with why (for the user to look at)."""
    return {f"vm {vm_id}": f"the record of VM {vm_id!r} is refused, nothing was done: {why}"
            for vm_id, record in state.vm_records().items() if (why := refused(vm_id, record))}


def refused(vm_id: str, record: object) -> str | None:
    """Why a VM record may not be acted on (None: it may). A record is untrusted input:
    it must name only what VM.start makes — its scratch directory /tmp/mc-vm-<its id>,
    never another path to remove or to look for in command lines — and pids as numbers."""
    if not ID.fullmatch(vm_id) or not isinstance(record, dict):
        return "not a VM record of ours"
    qemu = record.get("qemu")
    numbers = [record.get("owner"), record.get("owner_started"), *(qemu or [])]
    if not all(type(n) is int and n > 0 for n in numbers) or not (
            qemu is None or (isinstance(qemu, list) and len(qemu) == 2)):
        return "its pids are not positive numbers with their start times"
    if record.get("tmp") != str(Path(tempfile.gettempdir()) / f"mc-vm-{vm_id}"):
        return f"its scratch directory {record.get('tmp')!r} is not mc-vm-{vm_id}"
    if record.get("network") is not None:     # only its own tap mc-<id>, on a bridge of ours
        try:
            if not isinstance(record["network"], dict):
                raise BadRecord("its network attachment is not a record")
            check_attachment(record["network"], vm_id, BadRecord)
        except BadRecord as e:
            return str(e)
    return None


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
