"""Exercise 01 — chroot: a different `/`, and why it is not a jail.

Fill in the two functions, then check them: in the notebook `grade("01")`, in a
terminal `make check EX=01` (or `python -m minicontainer.course.grade 01`).
"""
import os


def chroot_into(rootfs: str) -> None:
    """Make `rootfs` this process's `/` and step into it."""
    # TODO
    raise NotImplementedError("two calls of the os module: change the root, then the "
                              "working directory")


def escape_chroot(host_file: str) -> None:
    """You are root inside a chroot: climb out and write `host_file`'s bytes to stdout."""
    # TODO
    raise NotImplementedError("chroot again into a subdirectory (/tmp): your working "
                              "directory is now above the root, and '..' will take you "
                              "higher; then make where you end up your root")
