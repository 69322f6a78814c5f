"""After a crash: find what dead owners left on the host, and remove it.

A Python process killed with SIGKILL (a crashed notebook kernel, a Ctrl-C at the
wrong moment, a power cut of the whole process tree) runs none of its own tidying
up. That is why every host object is written down before it exists (state.py: a
record per container and per VM, network.py: a record per network): cleanup needs
nothing but the records and the kernel's own lists.

It removes only what belongs to a dead owner. A container whose owner still runs,
or one started detached (`run -d`), is left alone unless `everything` is asked for,
so it is safe to run at any time, twice, while other containers work.
"""
from __future__ import annotations

import os

from . import cgroups, state
from . import network as networking
from .cgroups import Cgroup
from .container import Container
from .errors import ContainerNotFound


def cleanup(everything: bool = False) -> list[str]:
    """Remove what dead owners left behind; with `everything`, stop and remove all."""
    removed = state.remove_stale_drafts()
    for name in state.names():
        try:
            record = state.describe(name)
        except ContainerNotFound:       # removed by its owner just now
            continue
        if record["status"] == "running" and not (everything or record["orphaned"]):
            continue
        Container.load(name).remove(force=True)
        removed.append(name)
    if os.geteuid() == 0:               # a rootless user made no cgroups or networks
        removed += remove_stray_cgroups()
        removed += networking.cleanup(set(state.names()))
    from .vm import cleanup as cleanup_vms    # QEMU's imports only when needed
    return removed + cleanup_vms()


def remove_stray_cgroups() -> list[str]:
    """Groups no container claims (a crash before the record, a crashed experiment's
    budget group); a group holding a claimed one is in use and stays. A container
    claims its own group and its port proxy's."""
    claimed = set()
    for name in state.names():
        try:
            record = state.read(name)
            claimed |= {record["cgroup"], record.get("proxy_cgroup")}
        except (ContainerNotFound, KeyError):
            pass
    strays = [path for path in cgroups.leftover_groups()
              if not any(c == path or (c or "").startswith(path + "/") for c in claimed)]
    for path in strays:                      # nested ones first
        Cgroup(path).remove()
    return [path.rsplit("/", 1)[1] for path in strays]
