"""The VM's first filesystem: the containers' image packed as a cpio archive, with an /init.

A Linux kernel can start without any disk: the boot loader (here QEMU's `-initrd`)
hands it an archive, which it unpacks into a RAM filesystem and whose /init it runs
as PID 1. The archive is a cpio in the "newc" format: per file a 110-byte header of
hexadecimal ASCII fields (inode, mode, owner, size, name length, ...), then the name,
then the data, each padded to a multiple of 4 bytes; an entry named TRAILER!!! ends
it (the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
pack_initramfs writes the very image the containers use, plus an /init script, in a
few lines: both sides run the same userland.

The /init is a shell script, so every value put into it (the command, module names,
paths) is quoted with shlex.quote: it stays one word, whatever it contains.
"""
from __future__ import annotations

import functools
import gzip
import os
import shlex
import stat
from collections.abc import Iterable
from pathlib import Path

from ..rootfs import default_rootfs
from .kernel import GUEST_MODULES


def pack_initramfs(rootfs: Path, extra: dict[str, bytes | Path]) -> bytes:
    """The tree at `rootfs` plus `extra` files (archive path → content), gzip'd newc cpio."""
    out = bytearray()
    inode = 1
    for path in sorted(rootfs.rglob("*")):
        data = os.readlink(path).encode() if path.is_symlink() else (
            path.read_bytes() if path.is_file() else b"")
        out += cpio_entry(inode, str(path.relative_to(rootfs)), path.lstat().st_mode, data)
        inode += 1
    for name, content in extra.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        for parent in reversed(Path(name).parents[:-1]):
            out += cpio_entry(inode := inode + 1, str(parent), stat.S_IFDIR | 0o755, b"")
        mode = 0o100755 if name == "init" else 0o100644
        out += cpio_entry(inode := inode + 1, name, mode, data)
    out += cpio_entry(0, "TRAILER!!!", 0, b"")
    return gzip.compress(bytes(out), compresslevel=1)


def cpio_entry(inode: int, name: str, mode: int, data: bytes) -> bytes:
    """One newc record: "070701", 13 fields of 8 hex digits (inode, mode, uid, gid,
    nlink, mtime, size, 4 device numbers, name size, checksum), the name and a NUL,
    padding to a multiple of 4, the data, padding again."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


# -- the guest's /init ------------------------------------------------------------------------
# Templates with @NAME@ slots: `$` is the shell's, so string.Template would not do.

INIT = """#!/bin/sh
# PID 1 of the guest: say when the kernel handed over, mount the kernel's own
# filesystems, say when ready, run the command, report, power off.
mount -t proc proc /proc
echo "MC-INIT $(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /tmp
@HOST_FILES@
echo "MC-READY $(cut -d' ' -f1 /proc/uptime)"
@ROOT@ /bin/sh -c @COMMAND@ </dev/null 2>&1
echo "MC-EXIT=$?"
reboot -f
"""
IDLE = "while :; do sleep 3600; done"   # a VM that just stays up, for measuring

HOST_FILES = """# The host's / over 9p (read-only), with fresh /tmp and /run, as the new root.
for m in @MODULES@; do insmod "/lib/modules/$m.ko" || echo "insmod $m failed"; done
H=/mnt/host; mkdir -p $H /mnt/seen
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $H
mount -o bind $H /mnt/seen                    # the host's /tmp, before a tmpfs hides it
for d in proc sys dev; do mount -o rbind /$d $H/$d; done
grep -q cgroup2 /proc/filesystems && mount -t cgroup2 cgroup2 $H/sys/fs/cgroup
mount -t tmpfs tmpfs $H/tmp; mount -t tmpfs tmpfs $H/run
for p in @KEEP@; do mkdir -p "$H$p" && mount -o bind "/mnt/seen$p" "$H$p"; done"""


def guest_init(command: str, modules: list[str] | None = None, keep: tuple[str, ...] = ()) -> str:
    """The /init script that runs `command`; given `modules` to load, in the host's
    files (over 9p), keeping the host directories `keep` (in /tmp or /run) visible."""
    host_files = modules is not None
    mounts = _fill(HOST_FILES, MODULES=_shell_words(modules or []),
                   KEEP=_shell_words(p for p in keep if p.startswith(("/tmp/", "/run/"))))
    return _fill(INIT, HOST_FILES=mounts if host_files else "",
                 ROOT="chroot $H" if host_files else "", COMMAND=shlex.quote(command))


def _fill(template: str, **slots: str) -> str:
    """`template` with each @NAME@ replaced by slots[NAME] (already shell text)."""
    for name, text in slots.items():
        template = template.replace(f"@{name}@", text)
    return template


def _shell_words(values: Iterable[str]) -> str:
    """Values as shell words, each quoted so that it stays one word."""
    return " ".join(shlex.quote(value) for value in values)


@functools.lru_cache(maxsize=16)
def guest_initramfs(command: str, modules_dir: Path | None = None,
                    keep: tuple[str, ...] = ()) -> bytes:
    """The image plus an /init running `command` (in the host's files when given the
    kernel's `modules_dir` for 9p). Packed once per command: VMs are booted often."""
    modules = GUEST_MODULES if modules_dir else None
    init = guest_init(command, modules, keep)
    files = {f"lib/modules/{m}.ko": modules_dir / f"{m}.ko" for m in modules or []}
    return pack_initramfs(default_rootfs(), {"init": init.encode(), **files})
