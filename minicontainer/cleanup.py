"""After a crash: find what dead owners left on the host, and remove it.

A Python process killed with SIGKILL (a crashed notebook kernel, a Ctrl-C at the
wrong moment, a power cut of the whole process tree) runs none of its own tidying
up. That is why every host object is written down before it exists (state.py: a
record per container and per VM, network.py: a record per network): cleanup needs
nothing but the records and the kernel's own lists.

It removes only what belongs to a dead owner, whatever the container's status: a
live owner may still be creating its container, or about to collect its exit status
with wait(). A running container started detached (`run -d`) is left alone too. With
`everything` it removes all, so without it it is safe to run at any time, twice,
while other containers work.
"""
from __future__ import annotations

import os

from . import cgroups, state
from . import network as networking
from . import network_helper
from .cgroups import Cgroup
from .container import Container
from .errors import BadRecord, ContainerNotFound
from .rootfs import Overlay


def cleanup(everything: bool = False) -> list[str]:
    """Remove what dead owners left behind; with `everything`, stop and remove all."""
    removed = state.remove_stale_drafts()
    for name in state.names():
        try:
            record = state.describe(name)
        except ContainerNotFound:       # removed by its owner just now
            continue
        except BadRecord:               # names what is not its own: act on nothing of it
            continue                    # (refused_records() tells the user which)
        still_wanted = state.owner_alive(record) or (record["detached"] and
                                                     record["status"] == "running")
        if still_wanted and not everything:
            continue
        Container.load(name).remove(force=True)
        removed.append(name)
    removed += remove_orphaned_data()
    if os.geteuid() == 0:               # a rootless user made no cgroups or networks
        removed += remove_stray_cgroups(everything)
        from .vm.cleanup import live_vms
        removed += networking.cleanup(set(state.names()), everything, live_vms())
        removed += network_helper.stop()     # stateless: the next run starts another
    from .vm import cleanup as vm_cleanup      # the VM side's imports only when needed
    return removed + vm_cleanup.cleanup()


def remove_orphaned_data() -> list[str]:
    """Writable layers and logs whose records a reboot forgot (records live in /run,
    data on disk)."""
    with state.locked():
        orphans = state.orphaned_data()
        for directory in orphans:
            Overlay.make_removable(directory)
            state.release_data(directory, lock=False)
    return [f"data of {directory.name}" for directory in orphans]


def refused_records() -> dict[str, str]:
    """Containers whose record is refused (altered or planted), with the reason: cleanup
    leaves them alone, since acting on what they name is the attack."""
    refused = {}
    for name in state.names():
        try:
            state.read(name)
        except BadRecord as e:
            refused[name] = str(e)
        except ContainerNotFound:
            pass
    from .vm import cleanup as vm_cleanup
    return refused | vm_cleanup.refusals()


def remove_stray_cgroups(everything: bool = False) -> list[str]:
    """Groups no container claims (a crashed experiment's budget group); a group
    holding a claimed one is in use and stays. A container claims its own group. A
    group that still holds processes stays too, unless `everything`: their owner is
    alive, and its records are elsewhere (another MINICONTAINER_RUN, or `oci --root`),
    not ours to judge.

    The groups are listed *before* the records are read: a container writes its
    record before it makes its group, so every group we list has its record by then.
    """
    groups = cgroups.leftover_groups()
    claimed = set()
    for name in state.names():
        try:
            record = state.read_unchecked(name)
            claimed.add(str(record["cgroup"]))
        except (ContainerNotFound, KeyError, TypeError):
            pass
    live = set() if everything else {path for path in groups if _holds_processes(path)}
    strays = [path for path in groups
              if not any(c == path or (c or "").startswith(path + "/") for c in claimed)
              and not any(g == path or g.startswith(path + "/") for g in live)]
    for path in strays:                      # nested ones first
        Cgroup(path).remove()
    return [path.rsplit("/", 1)[1] for path in strays]


def _holds_processes(path: str) -> bool:
    """Does the group at `path` hold a process now (gone meanwhile: no)?"""
    try:
        return bool(Cgroup(path).pids())
    except OSError:
        return False
