"""Exercise 02 — namespaces: the flags that make them, and pivot_root.

Check with `grade("02")` in the notebook or `make check EX=02`.
"""
import os  # noqa: F401  (you will need it)

from minicontainer import syscalls

KINDS = {"mnt": syscalls.CLONE_NEWNS, "uts": syscalls.CLONE_NEWUTS, "ipc": syscalls.CLONE_NEWIPC,
         "pid": syscalls.CLONE_NEWPID, "net": syscalls.CLONE_NEWNET, "user": syscalls.CLONE_NEWUSER,
         "cgroup": syscalls.CLONE_NEWCGROUP}


def namespace_flags(kinds: set[str]) -> int:
    """The unshare(2) flags for these kinds of namespace ("mnt", "uts", "pid", ...)."""
    # TODO
    raise NotImplementedError("each kind is one bit (see KINDS): combine them with |")


def pivot_into(new_root: str) -> None:
    """Make the mount point `new_root` the root of this mount namespace, and detach the
    old root so that nothing of the host's files can be reached any more."""
    # TODO
    raise NotImplementedError("syscalls.pivot_root and syscalls.umount(..., detach=True); "
                              "see `man 2 pivot_root` for the pivot_root('.', '.') idiom")
