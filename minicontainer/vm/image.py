"""An image from the store as the VM's first filesystem: its layers merged, packed once.

A container's root is the image's layers stacked by overlayfs (rootfs.Overlay). A VM
boots its own kernel, which cannot see the host's store, so its initramfs must hold
the tree already merged. We let the host's overlayfs do the merging, exactly as for
a container: a child process enters a mount namespace of its own (propagation made
private first, so the host never sees the mount), mounts the layers there and makes
the mount read-only, then packs what it sees (initramfs.write_tree); the mount ends
with the child. Applying the layers one by one into a temporary tree would work
too, but it would be a second implementation of whiteouts and opaque directories
beside the kernel's, free to disagree with what the container shows, and it would
copy the whole image on disk first.

The archive depends on the layers alone, and the manifest's digest names every layer
by its digest, so the archive is cached under that digest:
<cache>/initramfs/<hex>-v1.cpio.gz. The second boot copies it instead of packing.
It is written into a file without a name (open(2) with O_TMPFILE) and linked under
its name only once whole: a pack killed at any point leaves nothing behind. Each boot
appends the small archive of our init (initramfs.image_init_archive); the kernel
unpacks concatenated archives one after the other.

Kata Containers, which runs Docker's images in VMs for real, does it differently: its
guest boots an OS image of Kata's own (an initrd or a disk) with its agent, and the
container's merged root, mounted on the host, is shared into the guest over virtio-fs
(9p before) or a block device, so nothing is copied, and the workload runs in
namespaces inside the guest, apart from the agent. Here the image *is* the guest's
root, copied into its RAM, with our init beside it in /.minicontainer (the command
can see it and, as the guest's root, change it: only its own VM is harmed). Simpler
to read, and the copy leaves the host's files out of the guest's reach.

An initramfs lives in the guest's RAM, in a tmpfs the kernel allows half of the RAM,
so an image boots this way only up to MAX_IMAGE_BYTES of files, in a VM with memory
for twice its tree. A bigger image gets one clear error: a disk image or virtio-fs
would lift the limit, and is not built yet.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .. import process, state
from ..errors import MinicontainerError, VMError
from ..host import cache_dir
from ..namespaces import make_mounts_private
from ..rootfs import Overlay
from ..syscalls import (CLONE_NEWNS, MS_BIND, MS_NODEV, MS_RDONLY, MS_REMOUNT, mount,
                        set_parent_death_signal, unshare)
from .initramfs import PRIVATE, Packed, trailer, write_tree

if TYPE_CHECKING:
    from ..images.store import Image

MAX_IMAGE_BYTES = 256 * 2**20     # of file contents: more would not fit a VM's RAM well
PACK_VERSION = "1"                # bump when write_tree's output changes: packs anew
# What the guest's kernel keeps for itself, measured with Debian 12's: a 192M VM shows
# 142M MemTotal. With the archive and twice a 43 MiB tree, 176M failed ("Initramfs
# unpacking failed: write error") and 192M booted; the rule below asks for 191M.
KERNEL_RESERVE = 64 * 2**20


@dataclass
class PackedImage:
    """An image's merged tree as an archive in the cache, and what it holds."""

    archive: Path
    packed: Packed

    def memory_needed(self) -> int:
        """Bytes of RAM a VM needs to boot it: the tree in a tmpfs that may use half of
        what is left once the kernel and the compressed archive (held until it is
        unpacked) have their share."""
        return 2 * self.packed.ram_bytes + self.archive.stat().st_size + KERNEL_RESERVE


def initramfs_dir() -> Path:
    """Where packed images are cached, by manifest digest."""
    return cache_dir() / "initramfs"


def packed_image(image: Image, scratch: Path, max_bytes: int = MAX_IMAGE_BYTES) -> PackedImage:
    """The image's merged tree as a gzip'd newc cpio: from the cache, or packed now (its
    overlay's directories in `scratch`) and cached whole; VMError past `max_bytes`."""
    archive = initramfs_dir() / f"{image.digest.removeprefix('sha256:')}-v{PACK_VERSION}.cpio.gz"
    sizes = archive.with_name(archive.name.removesuffix(".cpio.gz") + ".json")
    if archive.is_file():
        return PackedImage(archive, _read_sizes(sizes))
    archive.parent.mkdir(parents=True, exist_ok=True)
    unnamed = os.open(archive.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    try:
        packed = pack_merged(image, scratch / "image", unnamed, max_bytes)
        os.fsync(unnamed)
        state.write_json(sizes, asdict(packed))        # first: an archive has its sizes
        give_name(unnamed, archive)
    finally:
        os.close(unnamed)
    return PackedImage(archive, packed)


def give_name(unnamed: int, path: Path) -> None:
    """Link the O_TMPFILE file `unnamed` as `path`, unless another boot did first.

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N names the file itself;
    os.link calls linkat only when given a directory fd, hence `dst_dir_fd`."""
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{unnamed}", path.name, dst_dir_fd=directory,
                follow_symlinks=True)
    except FileExistsError:
        pass                                  # the same image, packed by another boot
    finally:
        os.close(directory)


def pack_merged(image: Image, under: Path, out: int, max_bytes: int) -> Packed:
    """Stack the image's layers by overlayfs, read-only, in the mount namespace of a
    child process, and write the merged tree from there to the file `out`."""
    if os.geteuid() != 0:
        raise VMError("booting an image in a VM needs root: its layers are stacked by "
                      "overlayfs in a mount namespace of its own")
    under.mkdir()
    layer = Overlay.create(list(reversed(image.layers)), under)   # top first
    steps = [partial(set_parent_death_signal, signal.SIGKILL),   # dies with its packer
             partial(unshare, CLONE_NEWNS),
             make_mounts_private,              # before any mount: the host sees none
             layer.mount,
             partial(mount, None, layer.merged, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV)]
    sizes, errors = os.memfd_create("sizes"), os.memfd_create("errors")
    try:
        child = process.spawn([*process.HELPER_PYTHON, "minicontainer.vm.image",
                               str(layer.merged), str(max_bytes), str(sizes)], steps,
                              stdio=(None, out, errors), pass_fds=(sizes,))
        code = process.exit_code(child.wait())
        child.close()
        if code != 0:
            said = process.read_all(errors).strip().splitlines() or [f"exit code {code}"]
            raise VMError(f"image {image.name} could not be packed for a VM: {said[-1]}")
        return Packed(**json.loads(process.read_all(sizes)))
    finally:
        process.close_all([sizes, errors])
        Overlay.make_removable(under)
        shutil.rmtree(under, ignore_errors=True)


def _read_sizes(path: Path) -> Packed:
    """The sizes recorded beside a cached archive (our own file, still checked)."""
    try:
        recorded = json.loads(path.read_text())
        return Packed(**{field: int(recorded[field]) for field in ("entries", "data_bytes",
                                                                   "ram_bytes")})
    except (OSError, ValueError, TypeError, KeyError):
        raise VMError(f"{path} is damaged: remove it and the archive beside it") from None


def main(argv: list[str]) -> int:
    """The packing child, in the overlay's mount namespace: the tree argv[0] as a gzip'd
    newc cpio on stdout (at most argv[1] bytes of files), its sizes as JSON to the fd
    argv[2]; on failure, one line on stderr and exit code 1."""
    tree, max_bytes, sizes = Path(argv[0]), int(argv[1]), int(argv[2])
    try:
        with open(1, "wb", closefd=False) as stdout, gzip.GzipFile(
                fileobj=stdout, mode="wb", compresslevel=1, mtime=0) as archive:
            packed = write_tree(archive, tree, skip=frozenset({PRIVATE}), max_bytes=max_bytes,
                                keep_owners=True)
            archive.write(trailer())
    except (MinicontainerError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    os.write(sizes, json.dumps(asdict(packed)).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
