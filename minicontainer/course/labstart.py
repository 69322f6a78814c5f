"""The lab image's first process: give the course its cgroups, then become JupyterLab.

The course makes containers inside the lab's container (nested), and a container's
budget is a cgroup: the lab needs the cgroup filesystem mounted read-write. Docker's
`--privileged` and a privileged Kubernetes pod mount it so; runc's default bundle (as
umoci writes it) and `minicontainer run --privileged` do not (they leave /sys read-only
and mount no cgroups). So, when /sys/fs/cgroup holds no hierarchy, this mounts each
hierarchy /proc/self/cgroup names, as the host has them: one `cgroup` mount per v1
controller set, `cgroup2` for the unified tree. Inside a cgroup namespace each mount's
root is the lab's own group, so the course sees only its own subtree. Mounting needs
CAP_SYS_ADMIN: without it the lab still starts, and `minicontainer doctor` names what
is missing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, mount

CGROUP_ROOT = Path("/sys/fs/cgroup")
SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC


def hierarchies_to_mount(proc_self_cgroup: str) -> list[tuple[str, str, str]]:
    """(directory under /sys/fs/cgroup, fstype, options) for each line of
    /proc/self/cgroup ("3:cpu,cpuacct:/path", "0::/path" for the unified tree)."""
    lines = [line.split(":", 2) for line in proc_self_cgroup.splitlines() if line]
    only_v2 = all(number == "0" for number, _, _ in lines)
    mounts = []
    for number, controllers, _ in lines:
        if number == "0":
            mounts.append(("" if only_v2 else "unified", "cgroup2", ""))
        else:
            name = controllers.removeprefix("name=")
            options = controllers if not controllers.startswith("name=") else f"none,{controllers}"
            mounts.append((name, "cgroup", options))
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
