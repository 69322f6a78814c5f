"""What an image is: a directory tree that becomes someone's `/`.

A container image is nothing more than files: a shell, some programs, /etc/passwd,
and empty directories where the kernel's own filesystems (/proc, /sys, /dev) will be
mounted. Ours is built from the host's static busybox, one binary that is every basic
Unix command at once (it looks at the name it was started as), so `ls`, `sh` and
`hostname` are links to it. Being static, it needs no shared libraries: copying that
one file is enough. No registry, no network.

Several containers share one image without changing it thanks to overlayfs: a
read-only lower directory (the image), a writable upper directory per container that
receives every change, and a merged view mounted where the container's root will be.
An image from the store (images/) is several lower directories, one per layer, stacked
top first (`lowerdir=top:...:bottom`).

An OCI bundle's root is the other way (BoundRoot): the runtime spec says the
container's writes land in the bundle's directory itself, so a runtime binds that
directory and uses it as it is, with no layer of its own.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import RootfsError
from .host import cache_dir
from .syscalls import (MS_BIND, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
                       MS_RDONLY, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, mount)

BUSYBOX = Path(os.environ.get("MINICONTAINER_BUSYBOX", "/bin/busybox"))
ROOTFS_LAYOUT_VERSION = "1"  # bump when the tree below changes, to rebuild caches

# The PATH a container gets unless its image sets one (Docker's default, the same).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EMPTY_DIRS = ["proc", "sys", "dev", "tmp", "root", "run", "var/tmp", "home", "mnt"]
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "minicontainer\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/os-release": 'NAME="minicontainer busybox"\nID=busybox\n',
}


def is_static(binary: Path) -> bool:
    """True if the ELF file has no PT_INTERP header, i.e. needs no dynamic loader."""
    with open(binary, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            return False
        end = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # 64-bit
            phoff, = struct.unpack_from(end + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 54)
        else:
            phoff, = struct.unpack_from(end + "I", header, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != PT_INTERP
               for i in range(phnum))


def find_busybox() -> Path:
    """The host's static busybox, or a RootfsError saying how to get one."""
    if not BUSYBOX.is_file():
        raise RootfsError(f"{BUSYBOX} not found: install it with `apt-get install busybox-static`"
                          " (or run `make setup`)")
    if not is_static(BUSYBOX):
        raise RootfsError(f"{BUSYBOX} is dynamically linked and would not run inside the "
                          "image: install the static one with `apt-get install busybox-static`")
    return BUSYBOX


def default_rootfs() -> Path:
    """The busybox image, built once into the cache and reused afterwards."""
    busybox = find_busybox()
    stat = busybox.stat()  # a new busybox (size, time) or a new layout: a new image
    name = f"busybox-{stat.st_size}-{stat.st_mtime_ns}-v{ROOTFS_LAYOUT_VERSION}"
    target = cache_dir() / "rootfs" / name
    if not target.is_dir():
        build_busybox_rootfs(target, busybox)
    return target


def build_busybox_rootfs(target: Path, busybox: Path | None = None,
                         applets_from: Path | None = None) -> Path:
    """Build the image into a temporary directory, then rename it into place.

    rename(2) is atomic: an interrupted build leaves a `.building-*` directory that
    the next build removes, never a half tree under the real name.
    """
    import shutil
    import subprocess
    import tempfile   # only needed on the rare rebuild
    busybox = busybox or find_busybox()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(".building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tree = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    (tree / "bin").mkdir()
    shutil.copy2(busybox, tree / "bin" / "busybox")
    # The applet list comes from running busybox: `applets_from` for a foreign one.
    applets = subprocess.run([applets_from or busybox, "--list-full"], capture_output=True,
                             text=True, check=True).stdout.split()
    for applet in applets:            # e.g. "bin/sh", "usr/bin/wget"
        link = tree / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to("/bin/busybox")
    for name in EMPTY_DIRS:
        (tree / name).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    for name, text in FILES.items():
        (tree / name).parent.mkdir(exist_ok=True)
        (tree / name).write_text(text)
    tree.chmod(0o755)
    try:
        tree.rename(target)
    except OSError:               # another process finished the same build first
        shutil.rmtree(tree, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def check_rootfs(rootfs: Path) -> Path:
    """Refuse a rootfs that cannot work, with a message that says why."""
    rootfs = Path(rootfs)
    if not rootfs.exists():
        raise RootfsError(f"rootfs {rootfs} does not exist "
                          "(omit --rootfs to use the busybox image)")
    if not rootfs.is_dir():
        raise RootfsError(f"rootfs {rootfs} is not a directory")
    if not os.path.lexists(rootfs / "bin" / "sh"):
        raise RootfsError(f"rootfs {rootfs} has no /bin/sh: is it a root filesystem?")
    return rootfs.resolve()


@dataclass
class Overlay:
    """An image (`lower`, never changed) seen through a writable layer (`upper`).

    `lower` is one directory, or an image's layers, top first. `work` is overlayfs's
    scratch space, on the same filesystem as `upper`; `merged` is where the combined
    tree appears once mounted. `nodev`: no device node in the image opens (see
    devices.py). `userxattr`: read overlayfs's marks (an opaque directory) from
    `user.overlay.*` xattrs, as a mount in a user namespace must.

    The mount's options are one string of at most a page (4096 bytes), and a layer's
    path in the store is about 100 characters: written out, some 40 layers would not
    fit. So each layer gets a short name, a symlink `lower/N` in the container's own
    directory (made by create()), and the mount runs from that `lower` directory with
    relative names, `lowerdir=0:1:2,upperdir=../upper,workdir=../work`: even
    overlayfs's own limit of 500 layers fits. (Docker's overlay2 does the same with
    its `l/` links.)
    """

    lower: Path | Sequence[Path]
    upper: Path
    work: Path
    merged: Path
    nodev: bool = True
    userxattr: bool = False

    def __post_init__(self) -> None:
        """A list of one layer is that layer's directory, as one given alone."""
        if not isinstance(self.lower, (str, os.PathLike)) and len(self.lower) == 1:
            self.lower = Path(self.lower[0])     # one layer: a directory like any other

    @property
    def layers(self) -> list[Path]:
        """The lower directories, top first."""
        return [Path(self.lower)] if isinstance(self.lower, (str, os.PathLike)) else [
            Path(layer) for layer in self.lower]

    @classmethod
    def create(cls, lower: Path | Sequence[Path], under: Path, nodev: bool = True,
               userxattr: bool = False) -> Overlay:
        """Make the empty upper, work and merged directories below `under` (and the
        short names of several lower layers, `under`/lower/N)."""
        layer = cls(lower, under / "upper", under / "work", under / "rootfs", nodev, userxattr)
        for directory in (layer.upper, layer.work, layer.merged):
            directory.mkdir()
        if len(layer.layers) > 1:
            (under / "lower").mkdir()
            for number, path in enumerate(layer.layers):
                (under / "lower" / str(number)).symlink_to(path)
        return layer

    @staticmethod
    def make_removable(under: Path) -> None:
        """overlayfs leaves work/work with mode 000: root may remove it anyway, a
        rootless owner must first let themselves in."""
        scratch = under / "work" / "work"
        if scratch.is_dir():
            scratch.chmod(0o700)

    def options(self) -> str:
        """overlayfs's mount options; several layers by their short relative names,
        so the mount must run in the `lower` directory beside upper and work."""
        if len(self.layers) == 1:
            options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work}"
        else:
            names = ":".join(str(number) for number in range(len(self.layers)))
            options = f"lowerdir={names},upperdir=../upper,workdir=../work"
        options += ",userxattr" if self.userxattr else ""
        if len(options) >= os.sysconf("SC_PAGE_SIZE"):
            raise RootfsError(f"an image of {len(self.layers)} layers is deeper than "
                              "overlayfs can stack (at most 500, in a page of options)")
        return options

    def mount(self) -> None:
        """Mount the merged view. Called inside the container's own mount namespace,
        so the host never sees this mount; it vanishes with the namespace."""
        options = self.options()
        if len(self.layers) > 1:
            os.chdir(self.upper.parent / "lower")   # relative names: see the docstring
        try:
            mount("overlay", self.merged, "overlay", MS_NODEV if self.nodev else 0, options)
        except OSError as e:     # most often: the upper's filesystem cannot hold a layer
            raise OSError(e.errno, f"overlayfs refused the writable layer in "
                          f"{self.upper.parent} ({e.strerror}): overlayfs cannot write to "
                          "some filesystems (overlayfs itself, NFS, FUSE, vfat); set "
                          "MINICONTAINER_DATA to a directory on ext4, xfs, btrfs or tmpfs"
                          ) from None


@dataclass
class BoundRoot:
    """A directory used as the root as it is, every write landing in it: an OCI
    bundle's root.path, as runc uses it (Overlay's interface, so that layer 2 takes
    either). `nodev`: no device node in it opens."""

    lower: Path          # the directory itself (chroot takes it without a mount namespace)
    nodev: bool = True

    @property
    def merged(self) -> Path:
        """Where the root appears once mounted: the directory itself."""
        return Path(self.lower)

    def mount(self) -> None:
        """Bind the directory onto itself, in the container's own mount namespace:
        pivot_root(2) needs the new root to be a mount point (runc binds it the same
        way, recursively: ours is one mount, so that nothing mounted below it on the
        host comes along with its own flags). The bind keeps its host mount's ro,
        nosuid, noexec and atime flags (in a user namespace they are locked: a
        remount without them fails), and adds nodev."""
        mount(str(self.lower), self.lower, None, MS_BIND)
        host = os.statvfs(self.lower).f_flag
        kept = host & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
        if host & os.ST_RELATIME:              # statvfs's bit is not mount(2)'s
            kept |= MS_RELATIME
        elif not host & MS_NOATIME:
            kept |= MS_STRICTATIME
        mount(None, self.lower, None,
              MS_BIND | MS_REMOUNT | kept | (MS_NODEV if self.nodev else 0))
