"""The lab image's first process: give the course its cgroups, then become JupyterLab.

The course makes containers inside the lab's container (nested), and a container's
budget is a cgroup: the lab needs the cgroup filesystem mounted read-write. Docker's
`--privileged` and a privileged Kubernetes pod mount it so; runc's default bundle (as
umoci writes it) and `minicontainer run --privileged` do not (they leave /sys read-only
and mount no cgroups). So, when /sys/fs/cgroup holds no hierarchy, this mounts the
hierarchies the course's own runtime uses (cgroups.py: memory, cpu, cpuacct, pids and
devices on v1; the one unified tree on v2), and no other.

Why no other: a cgroup namespace makes a mount's root the group the process was in
when the namespace was made. The runtime that started the lab gave it a group of its
own only in the hierarchies it uses (ours: cgroups.NEEDED; runc: every one). In the
others (freezer, blkio, cpuset, name=systemd, a hybrid host's unified tree under
minicontainer) that group is the host's root, whose `release_agent` the host kernel
runs as root: mounting those would hand the host to the lab. This only stops labstart
from offering them: a lab run --privileged may still mount them itself, and has other
ways to the host besides (/proc/sys, every device). A privileged lab belongs on a
machine its student may own, or in a VM of its own (Kata): docs/classroom-at-scale.md.
Mounting needs CAP_SYS_ADMIN: without it the lab still starts, and `minicontainer
doctor` names what is missing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..cgroups import NEEDED
from ..syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, mount

CGROUP_ROOT = Path("/sys/fs/cgroup")
SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC


def hierarchies_to_mount(proc_self_cgroup: str) -> list[tuple[str, str, str]]:
    """(directory under /sys/fs/cgroup, fstype, options) for each hierarchy in
    /proc/self/cgroup ("3:cpu,cpuacct:/path", "0::/path" for the unified tree) that
    holds a controller the course's runtime uses: the ones the lab has a group of its
    own in, whichever runtime started it."""
    lines = [line.split(":", 2) for line in proc_self_cgroup.splitlines() if line]
    v1_controllers = {c for number, listed, _ in lines if number != "0" for c in listed.split(",")}
    # The unified tree holds our controllers when no v1 tree does (v2, or a hybrid host
    # that moved them there); on a v1/hybrid host it holds none of ours.
    wants_unified = not {"memory", "cpu", "pids"} <= v1_controllers
    only_v2 = all(number == "0" for number, _, _ in lines)
    mounts = []
    for number, controllers, _ in lines:
        if number == "0":
            if wants_unified:
                mounts.append(("" if only_v2 else "unified", "cgroup2", ""))
        elif set(controllers.split(",")) & set(NEEDED):
            mounts.append((controllers, "cgroup", controllers))
    return mounts


def mount_cgroups() -> list[str]:
    """Mount the cgroup hierarchies if /sys/fs/cgroup shows none; the directories mounted."""
    if any(CGROUP_ROOT.glob("*/cgroup.procs")) or (CGROUP_ROOT / "cgroup.procs").exists():
        return []                               # a privileged pod's: already there
    mounts = hierarchies_to_mount(Path("/proc/self/cgroup").read_text())
    if any(directory for directory, _, _ in mounts):
        mount("cgroup", CGROUP_ROOT, "tmpfs", SAFE, "mode=755")   # a place for the trees
    done = []
    for directory, fstype, options in mounts:
        target = CGROUP_ROOT / directory
        target.mkdir(exist_ok=True)
        mount("cgroup", target, fstype, SAFE, options or None)
        done.append(str(target))
    return done


def main() -> None:
    """Mount the cgroups (when allowed), then exec the command given (JupyterLab)."""
    try:
        mount_cgroups()
    except OSError as error:
        print(f"labstart: no cgroups for the course ({error}): run the lab privileged",
              file=sys.stderr)
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
