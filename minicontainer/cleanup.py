"""After a crash: find what dead owners left on the host, and remove it.

A Python process killed with SIGKILL (a crashed notebook kernel, a Ctrl-C at the
wrong moment, a power cut of the whole process tree) runs none of its own tidying
up. That is why every host object is written down before it exists (state.py: a
record per container and per VM, network.py: a record per network): cleanup needs
nothing but the records and the kernel's own lists.

It removes only what a record names whose owner is dead, whatever the container's
status: a live owner may still be creating its container, or about to collect its
exit status with wait(). A running container started detached (`run -d`) is left
alone too. An mc-… object that no record names (a cgroup, a bridge, a veth, rules) is
not taken for a dead owner's: its records may be under another state root
(MINICONTAINER_RUN, a test's, a second user session's, `oci --root`) that this one
cannot see, and its owner alive. It is left, and named (left_alone()), because a
crash of ours never leaves one: each record is written before its object exists and
removed after it. With `everything` it removes all but what our own records keep, so
without it it is safe to run at any time, twice, while other containers work.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

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
        removed += remove_dead_owners_groups()
        removed += remove_lab_leftovers()
        from .vm.cleanup import live_vms
        removed += networking.cleanup(set(state.names()), live_vms())
        if everything:                  # all the rest, but what our own records keep
            removed += remove_unrecorded((state.containers_dir().parent,))
        removed += network_helper.stop()     # stateless: the next run starts another
    from .vm import cleanup as vm_cleanup      # the VM side's imports only when needed
    return removed + vm_cleanup.cleanup()


def remove_lab_leftovers() -> list[str]:
    """What escape labs whose owner died left: loop devices, then their directories
    (escapes.lab_leftovers)."""
    from . import escapes
    devices, directories = escapes.lab_leftovers()
    for device in devices:
        escapes.detach_loop_device(device)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    return [f"loop device {device}" for device in devices] + [str(d) for d in directories]


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


def remove_dead_owners_groups() -> list[str]:
    """The groups made outside a container (a budget its containers share) whose owner
    died: removed, with their records. A record is untrusted: one that names a group
    under another file name is left alone, and only a group of ours (minicontainer/
    mc-…, as leftover_groups() lists them) is ever removed."""
    ours = set(cgroups.leftover_groups())
    removed = []
    for path, record in state.records_everywhere("groups", (state.containers_dir().parent,)):
        group = record.get("cgroup") if isinstance(record, dict) else None
        if (not isinstance(group, str) or group.rsplit("/", 1)[-1] != path.stem
                or _owner_alive(record)):
            continue
        if group in ours:
            Cgroup(group).remove()
        state.release_group(group)
        removed.append(path.stem)
    return removed


def _owner_alive(record: dict) -> bool:
    """state.owner_alive, for a record that may lie: one it cannot read counts as alive."""
    try:
        return state.owner_alive(record)
    except (KeyError, TypeError, ValueError, OverflowError):
        return True


def left_alone() -> list[str]:
    """What cleanup (without `everything`) leaves because no record it can see names
    it, as "NAME (KIND)": for the user to look at, or to remove with `cleanup --all`."""
    return [f"{name} ({kind})" for name, kind in unrecorded(state.record_roots())]


def remove_unrecorded(roots: tuple[Path, ...]) -> list[str]:
    """Remove every mc-… object no record under `roots` names (nested groups first)."""
    return remove_objects(unrecorded(roots))


def remove_objects(objects: list[tuple[str, str]]) -> list[str]:
    """Remove the (name, kind) objects unrecorded() listed, in its order; what went."""
    removed = []
    for name, kind in objects:
        if kind == "cgroup":
            Cgroup(name).remove()
            name = name.rsplit("/", 1)[1]
        else:
            networking.remove_host_object(name, kind)
        removed.append(f"rules {name}" if kind in ("rules", "nft table") else name)
    return removed


def unrecorded(roots: tuple[Path, ...]) -> list[tuple[str, str]]:
    """(name, kind) of the mc-… groups, links and firewall rules on the host that no
    record under `roots` names: whose owner cleanup cannot know, so cannot judge.

    The objects are listed *before* the records are read: every creation path writes
    its record before its object exists, so each object listed has its record by then.
    """
    if os.geteuid() != 0:               # a rootless user made none of these
        return []
    groups = cgroups.leftover_groups()
    network_objects = networking.host_objects()
    claimed, named = recorded_names(roots)
    # A group holding a claimed one is in use: a budget group, its containers inside.
    return ([(path, "cgroup") for path in groups
             if not any(c == path or c.startswith(path + "/") for c in claimed)] +
            [(name, kind) for name, kind in network_objects if name not in named])


def recorded_names(roots: tuple[Path, ...]) -> tuple[set[str], set[str]]:
    """The cgroup paths, and the link and rule names, that records under `roots` name.

    A container's record names its group, its veth and published ports' tag (mc-<id>)
    and its network; a network's, its bridge and rules; a VM's, its tap (mc-<id>). The
    records are read unchecked: one that lies can only make cleanup spare more."""
    claimed: set[str] = set()
    named: set[str] = set()
    for kind in ("containers", "networks", "vms", "groups"):
        for path, record in state.records_everywhere(kind, roots):
            if not isinstance(record, dict):
                continue
            own = {"containers": f"mc-{record.get('id')}", "networks": record.get("name"),
                   "vms": f"mc-{path.stem}", "groups": None}[kind]
            if own:
                named.add(str(own))
            if kind in ("containers", "groups") and isinstance(record.get("cgroup"), str):
                claimed.add(record["cgroup"])
            attachment = record.get("network")
            if isinstance(attachment, dict):
                named |= {str(attachment.get("host_end")), str(attachment.get("network"))}
    return claimed, named
