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
import io
import os
import shlex
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import VMError
from ..rootfs import default_rootfs
from .kernel import GUEST_MODULES, NETWORK_MODULES


def pack_initramfs(rootfs: Path, extra: dict[str, bytes | Path]) -> bytes:
    """The tree at `rootfs` plus `extra` files (archive path → content), gzip'd newc cpio."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as archive:
        inode = write_tree(archive, rootfs).entries
        for name, content in extra.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            for parent in reversed(Path(name).parents[:-1]):
                archive.write(cpio_entry(inode := inode + 1, str(parent),
                                         stat.S_IFDIR | 0o755, b""))
            mode = 0o100755 if name == "init" else 0o100644
            archive.write(cpio_entry(inode := inode + 1, name, mode, data))
        archive.write(trailer())
    return out.getvalue()


@dataclass
class Packed:
    """What write_tree put into an archive: entries, bytes of file contents, and the
    RAM the guest needs to hold them (a page per started 4 KiB, and about 1 KiB of
    inode and name per entry)."""

    entries: int = 0
    data_bytes: int = 0
    ram_bytes: int = 0


def write_tree(out: BinaryIO, rootfs: Path, skip: frozenset[str] = frozenset(),
               max_bytes: int | None = None, keep_owners: bool = False) -> Packed:
    """Write the tree at `rootfs` (but its top-level names in `skip`) to `out` as newc
    records with their modes, and (`keep_owners`) their owners and times; VMError
    past `max_bytes` of contents.

    What a layer may hold is untrusted: a regular file is opened with O_NOFOLLOW and
    read exactly as long as its fstat says, never through a symlink; device nodes
    are left out (the guest's /dev is its own devtmpfs, and overlayfs's 0:0
    whiteouts must not reappear as files). A hard link (with keep_owners) is a
    record with the inode number of the first name and no data: the kernel links
    it to that name, as `ls -l` in the container counts it.
    """
    packed, first_names = Packed(), {}     # (device, inode) → its first record's number
    for path in sorted(rootfs.rglob("*")):     # a parent sorts before its children
        name = str(path.relative_to(rootfs))
        if name.split("/")[0] in skip:
            continue
        info = path.lstat()
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            continue
        linked = keep_owners and stat.S_ISREG(info.st_mode) and info.st_nlink > 1
        first = first_names.setdefault((info.st_dev, info.st_ino), packed.entries + 1) if (
            linked) else packed.entries + 1
        size = info.st_size if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode) else 0
        size = 0 if first <= packed.entries else size    # its data went with the first
        if max_bytes is not None and packed.data_bytes + size > max_bytes:   # before reading
            raise VMError(f"the image holds more than {max_bytes // 2**20} MiB of files, "
                          "more than a VM boots from RAM (an initramfs) here")
        data = b""
        if stat.S_ISLNK(info.st_mode):
            data = os.readlink(path).encode()
        elif stat.S_ISREG(info.st_mode) and size:
            info, data = _read_regular(path, size)
        packed.entries += 1
        packed.data_bytes += len(data)
        packed.ram_bytes += -(-len(data) // 4096) * 4096 + 1024
        # An image's files keep their owners; the busybox tree goes as root built it,
        # in the four fields the course's exercise writes cpio_entry with.
        kept = {"owner": (info.st_uid, info.st_gid), "mtime": int(info.st_mtime),
                "links": info.st_nlink if linked else 1}
        out.write(cpio_entry(first, name, info.st_mode, data, **(kept if keep_owners else {})))
    return packed


def _read_regular(path: Path, size: int) -> tuple[os.stat_result, bytes]:
    """A regular file's status and its `size` bytes, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        data = file.read(size + 1) if stat.S_ISREG(info.st_mode) else b""
    if not stat.S_ISREG(info.st_mode) or len(data) != size:
        raise VMError(f"{path} changed while it was packed")
    return info, data


def cpio_entry(inode: int, name: str, mode: int, data: bytes, owner: tuple[int, int] = (0, 0),
               mtime: int = 0, links: int = 1) -> bytes:
    """One newc record: "070701", 13 fields of 8 hex digits (inode, mode, uid, gid,
    nlink, mtime, size, 4 device numbers, name size, checksum), the name and a NUL,
    padding to a multiple of 4, the data, padding again."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, *owner, links, mtime & 0xFFFFFFFF, len(data), 0, 0, 0, 0,
              len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


def trailer() -> bytes:
    """The record that ends one archive (the kernel reads on: another may follow)."""
    return cpio_entry(0, "TRAILER!!!", 0, b"")


# -- the guest's /init ------------------------------------------------------------------------
# Templates with @NAME@ slots: `$` is the shell's, so string.Template would not do.

INIT = """#!@SHELL@
# PID 1 of the guest: say when the kernel handed over, mount the kernel's own
# filesystems, say when ready, run the command, report, power off.
@PREPARE@
mount -t proc proc /proc
echo "MC-INIT $(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /tmp
@MODULES@
@NETWORK@
@HOST_FILES@
echo "MC-READY $(cut -d' ' -f1 /proc/uptime)"
@ROOT@ /bin/sh -c @COMMAND@ </dev/null 2>&1
echo "MC-EXIT=$?"
reboot -f
"""
IDLE = "while :; do sleep 3600; done"   # a VM that just stays up, for measuring
# A VM that answers (VM.exec): each line that arrives on its console runs as a shell
# command, and "MC-ANSWERED=<exit code>" follows its output. No echo: the console
# would otherwise send every line typed back, mixed into the answer.
# "MC-LISTENING" says the echo is off, so the first line can be sent.
ANSWER = ("stty -echo </dev/console; echo MC-LISTENING; while read -r line; do "
          "sh -c \"$line\" </dev/null 2>&1; echo \"MC-ANSWERED=$?\"; done </dev/console")

# The drivers this guest needs (a network card, 9p), packed as files: no modprobe,
# no modules.dep, so insmod in the order of their dependencies.
MODULES = """for m in @MODULES@; do insmod "@DIR@/$m.ko" || echo "insmod $m failed"; done"""

# eth0, the virtio network card, with the address machine.py leased for it on our
# bridge; the kernel's command line carries it (mc.address=, mc.gateway=), as the
# kernel's own ip= would if the driver were built in rather than a module.
NETWORK = """for word in $(cat /proc/cmdline); do
  case "$word" in mc.address=*) address=${word#*=};; mc.gateway=*) gateway=${word#*=};; esac
done
ip link set lo up; ip link set eth0 up
ip addr add "$address" dev eth0 && ip route add default via "$gateway" || echo "no eth0" """

HOST_FILES = """# The host's / over 9p (read-only), with fresh /tmp and /run, as the new root.
H=/mnt/host; mkdir -p $H /mnt/seen
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $H
mount -o bind $H /mnt/seen                    # the host's /tmp, before a tmpfs hides it
for d in proc sys dev; do mount -o rbind /$d $H/$d; done
grep -q cgroup2 /proc/filesystems && mount -t cgroup2 cgroup2 $H/sys/fs/cgroup
mount -t tmpfs tmpfs $H/tmp; mount -t tmpfs tmpfs $H/run
for p in @KEEP@; do mkdir -p "$H$p" && mount -o bind "/mnt/seen$p" "$H$p"; done"""


def guest_init(command: str, modules: list[str] | None = None, keep: tuple[str, ...] = (),
               host_files: bool = False, network: bool = False) -> str:
    """The /init script that loads `modules` and runs `command`: with `network`, after
    setting up eth0; with `host_files`, in the host's files (over 9p), keeping the
    host directories `keep` (in /tmp or /run) visible."""
    mounts = _fill(HOST_FILES,
                   KEEP=_shell_words(p for p in keep if p.startswith(("/tmp/", "/run/"))))
    return _fill(INIT, SHELL="/bin/sh", PREPARE="",
                 MODULES=_fill(MODULES, MODULES=_shell_words(modules), DIR="/lib/modules")
                 if modules else "",
                 NETWORK=NETWORK if network else "", HOST_FILES=mounts if host_files else "",
                 ROOT="chroot $H" if host_files else "", COMMAND=shlex.quote(command))


# -- the /init of an image from the store -----------------------------------------------------
# An image need not have a busybox, nor `reboot` or `mount` (a python or debian image
# has neither reboot nor a static shell), so the init runs on our own static busybox,
# kept with the init in a directory of ours, /.minicontainer, that the kernel is told
# to start from (rdinit=): the image's own /init, if it has one, stays untouched. The
# command itself runs in the image's /bin/sh, with the image's Env in its working
# directory, as `docker run IMAGE sh -c COMMAND` would (but as the guest's root: the
# image's User is not applied yet).

PRIVATE = ".minicontainer"             # our init and busybox, beside the image's files
IMAGE_INIT = f"/{PRIVATE}/init"        # for the kernel's rdinit=
INIT_APPLETS = ("sh", "mount", "mkdir", "cut", "env", "reboot",   # what INIT calls,
                "cat", "insmod", "ip")                            # and NETWORK

IMAGE_PREPARE = f"""export PATH=/{PRIVATE}/bin      # our busybox's applets, not the image's
mkdir -p /proc /sys /dev /tmp           # an image need not have them"""


def image_init(command: str, env: dict[str, str], workdir: str, network: bool = False) -> str:
    """The init script that runs `command` in an image, with `env` in `workdir`; with
    `network`, after loading the card's drivers (ours, beside our init) and setting up
    eth0."""
    variables = _shell_words(f"{name}={value}" for name, value in env.items())
    modules = _fill(MODULES, MODULES=_shell_words(NETWORK_MODULES), DIR=f"/{PRIVATE}/modules")
    return _fill(INIT, SHELL=f"/{PRIVATE}/bin/busybox sh", PREPARE=IMAGE_PREPARE,
                 MODULES=modules if network else "", NETWORK=NETWORK if network else "",
                 HOST_FILES="",
                 ROOT=f"cd {shlex.quote(workdir)} && env -i {variables}",
                 COMMAND=shlex.quote(command))


@functools.lru_cache(maxsize=16)
def image_init_archive(command: str, env: tuple[tuple[str, str], ...], workdir: str,
                       modules_dir: Path | None = None) -> bytes:
    """A small archive of /.minicontainer: our busybox, links to the applets the init
    uses, the init running `command`, and given the kernel's `modules_dir`, a network
    card's drivers; booted after the image's own archive."""
    busybox = (default_rootfs() / "bin" / "busybox").read_bytes()
    init = image_init(command, dict(env), workdir, network=modules_dir is not None).encode()
    drivers = [(f"{PRIVATE}/modules", stat.S_IFDIR | 0o755, b""),
               *((f"{PRIVATE}/modules/{m}.ko", stat.S_IFREG | 0o644,
                  (modules_dir / f"{m}.ko").read_bytes()) for m in NETWORK_MODULES)
               ] if modules_dir else []
    records = [(PRIVATE, stat.S_IFDIR | 0o755, b""), (f"{PRIVATE}/bin", stat.S_IFDIR | 0o755, b""),
               (f"{PRIVATE}/bin/busybox", stat.S_IFREG | 0o755, busybox),
               *((f"{PRIVATE}/bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
                 for applet in INIT_APPLETS), *drivers,
               (f"{PRIVATE}/init", stat.S_IFREG | 0o755, init)]
    archive = b"".join(cpio_entry(inode, name, mode, data)
                       for inode, (name, mode, data) in enumerate(records, start=1))
    return gzip.compress(archive + trailer(), compresslevel=1, mtime=0)


def _fill(template: str, **slots: str) -> str:
    """`template` with each @NAME@ replaced by slots[NAME] (already shell text)."""
    for name, text in slots.items():
        template = template.replace(f"@{name}@", text)
    return template


def _shell_words(values: Iterable[str]) -> str:
    """Values as shell words, each quoted so that it stays one word."""
    return " ".join(shlex.quote(value) for value in values)


@functools.lru_cache(maxsize=16)
def guest_initramfs(command: str, modules_dir: Path | None = None, keep: tuple[str, ...] = (),
                    host_files: bool = False, network: bool = False) -> bytes:
    """The image plus an /init running `command`, in the host's files (`host_files`:
    9p), with a network card (`network`); their drivers come from the kernel's
    `modules_dir`. Packed once per command: VMs are booted often."""
    wanted = (GUEST_MODULES if host_files else []) + (NETWORK_MODULES if network else [])
    modules = list(dict.fromkeys(wanted))                 # each once, in order
    init = guest_init(command, modules, keep, host_files, network)
    files = {f"lib/modules/{m}.ko": modules_dir / f"{m}.ko" for m in modules}
    return pack_initramfs(default_rootfs(), {"init": init.encode(), **files})
