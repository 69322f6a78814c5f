"""The VM's kernel: the distribution's own, found or unpacked, never installed.

A virtual machine boots a kernel of its own. We look, in this order, at
MINICONTAINER_KERNEL (a bzImage or vmlinux of your choice), the host's
/boot/vmlinuz-$(uname -r), and the distribution's kernel package, which `make setup`
downloads and unpacks into the cache (apt-get download + dpkg -x: nothing goes into
/boot). Only the package comes with the 9p and overlay modules that the cgroup v2
tests need inside a guest.

A bzImage decompresses itself when it boots, which costs seconds under TCG. The ELF
`vmlinux` inside it can be booted directly through its PVH entry point, so we extract
it once (as the kernel's own scripts/extract-vmlinux does) and keep both.
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import VMError
from ..host import cache_dir, cpu

# The 9p filesystem over virtio (to see the host's files), in the order insmod needs,
# then overlayfs, for containers inside the guest.
GUEST_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                 "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay"]
# A network card: virtio over PCI, and virtio_net (which needs net_failover).
NETWORK_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                   "virtio_pci", "failover", "net_failover", "virtio_net"]
KEPT_MODULES = GUEST_MODULES + ["virtio_net", "net_failover", "failover", "virtio_blk",
                                "virtio_console"]
KERNEL_LAYOUT_VERSION = "2"  # bump when KEPT_MODULES or the layout changes: unpacks anew


@dataclass
class Kernel:
    """A kernel the VM can boot: its images, its modules, and where it was found."""

    vmlinux: Path | None  # boots fastest (PVH), if the kernel has that entry point
    bzimage: Path | None  # boots everywhere, decompressing itself first
    modules: Path | None  # a directory of plain .ko files built for this kernel
    release: str
    source: str           # where it was found, said by doctor and the notebooks


def find_kernel(need_modules: bool = False) -> Kernel:
    """The kernel to boot: MINICONTAINER_KERNEL, the host's, or the unpacked package."""
    chosen = os.environ.get("MINICONTAINER_KERNEL")
    if chosen and not need_modules:
        path = Path(chosen)
        if not path.is_file():
            raise VMError(f"MINICONTAINER_KERNEL={chosen} is not a file")
        is_elf = path.read_bytes()[:4] == b"\x7fELF"
        return Kernel(path if is_elf else None, None if is_elf else path, None, path.name,
                      "MINICONTAINER_KERNEL")
    host = Path(f"/boot/vmlinuz-{os.uname().release}")
    if host.is_file() and os.access(host, os.R_OK) and not need_modules:
        return host_kernel(host)
    kernel = cached_kernel()
    if kernel is None:
        raise VMError("no kernel for the VM: run `make setup` (it unpacks the distribution's "
                      "kernel package), or set MINICONTAINER_KERNEL to a bzImage")
    return kernel


def host_kernel(bzimage: Path) -> Kernel:
    """The host's own kernel image, with its vmlinux extracted once into the cache."""
    release = bzimage.name.removeprefix("vmlinuz-")
    vmlinux = kernel_dir() / f"host-{release}" / "vmlinux"
    if not vmlinux.exists():
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        try:
            extract_vmlinux(bzimage, vmlinux)
        except VMError:
            vmlinux = None
    return Kernel(vmlinux, bzimage, None, release, f"the host's {bzimage}")


def kernel_dir() -> Path:
    """Where unpacked kernels (and the machine type measured for them) are cached."""
    return cache_dir() / "kernel"


def cached_kernel() -> Kernel | None:
    """The kernel `make setup` unpacked, if any."""
    for image in sorted(kernel_dir().glob(f"*-v{KERNEL_LAYOUT_VERSION}/vmlinux")):
        release = image.parent.name.removesuffix(f"-v{KERNEL_LAYOUT_VERSION}")
        return Kernel(image, image.parent / "vmlinuz", image.parent / "modules", release,
                      "the distribution's package, unpacked by `make setup`")
    return None


def kernel_package() -> str:
    """The distribution's kernel package for this CPU, e.g. linux-image-6.1.0-56-amd64."""
    arch = cpu().debian
    ids = Path("/etc/os-release").read_text()
    meta = "linux-image-generic" if re.search(r"^ID=ubuntu", ids, re.M) else f"linux-image-{arch}"
    depends = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True).stdout
    match = re.search(r"Depends: (linux-image-\S+)", depends)
    if not match:
        raise VMError(f"no kernel package found behind {meta}: run `apt-get update` first")
    return match[1]


def fetch_kernel() -> Kernel:
    """Download and unpack the kernel package once (apt-get download, dpkg -x)."""
    kernel = cached_kernel()
    if kernel:
        return kernel
    package = kernel_package()
    kernel_dir().mkdir(parents=True, exist_ok=True)
    for old in kernel_dir().iterdir():       # older layouts, interrupted unpacks
        if not old.name.startswith("host-"):
            shutil.rmtree(old)
    with tempfile.TemporaryDirectory(dir=kernel_dir(), prefix=".unpacking-") as tmp:
        tree = Path(tmp)
        unpack(package, tree)
        release = next((tree / "lib" / "modules").iterdir()).name if (
            tree / "lib" / "modules").is_dir() else package.removeprefix("linux-image-")
        if not list(tree.glob(f"lib/modules/{release}/kernel")):     # Ubuntu splits them out
            unpack(f"linux-modules-{release}", tree)
        target = tree / "out"
        (target / "modules").mkdir(parents=True)
        bzimage = next((tree / "boot").glob("vmlinuz-*"))
        for module in KEPT_MODULES:
            found = list(tree.glob(f"lib/modules/{release}/kernel/**/{module}.ko*"))
            if found:
                (target / "modules" / f"{module}.ko").write_bytes(plain_module(found[0]))
        shutil.copy(bzimage, target / "vmlinuz")
        extract_vmlinux(bzimage, target / "vmlinux")
        target.rename(kernel_dir() / f"{release}-v{KERNEL_LAYOUT_VERSION}")  # whole or not at all
    return cached_kernel()


def plain_module(path: Path) -> bytes:
    """A module as insmod in busybox wants it: uncompressed (Ubuntu ships .ko.zst,
    newer Debian .ko.xz)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        import gzip
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                              check=True).stdout
    return data


def unpack(package: str, into: Path) -> None:
    """Download the Debian package `package` and unpack its files into `into`."""
    subprocess.run(["apt-get", "download", "-q", package], cwd=into, check=True,
                   capture_output=True)
    deb = next(into.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", deb, into], check=True)
    deb.unlink()


def extract_vmlinux(bzimage: Path, target: Path) -> None:
    """Find the compressed kernel inside a bzImage and decompress it (as the kernel's
    own scripts/extract-vmlinux does), so the guest need not decompress itself."""
    data = bzimage.read_bytes()
    for magic, decompress in ((b"\xfd7zXZ\x00", _xz), (b"\x1f\x8b\x08", _gzip)):
        offset = data.find(magic)
        while offset != -1:
            try:
                elf = decompress(data[offset:])
            except (lzma.LZMAError, OSError, EOFError):
                elf = b""
            if elf[:4] == b"\x7fELF":
                target.write_bytes(elf)
                return
            offset = data.find(magic, offset + 1)
    raise VMError(f"no compressed ELF kernel found in {bzimage}")


def _xz(data: bytes) -> bytes:
    """Decompress the xz stream at the start of `data`, ignoring what follows it."""
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    """Decompress the gzip stream at the start of `data`, ignoring what follows it."""
    import zlib
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
