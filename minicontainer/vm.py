"""The other side: a virtual machine, booted with QEMU from files we pack ourselves.

A container is host processes with a different view; a virtual machine is a whole
computer made of software. QEMU gives the guest a CPU (KVM: the real one, switched
into a guest mode by the processor's virtualization extensions; TCG: emulated, one
translated block of instructions at a time), RAM carved out of QEMU's own memory,
and devices (a serial port, virtio disks and network cards, ...). On that virtual
hardware runs a *separate kernel*, which boots, finds its devices and starts init —
none of which a container does.

QEMU's direct kernel boot skips the firmware menus and the bootloader: `-kernel`
loads a Linux kernel, `-initrd` its first root filesystem, `-append` its command
line. The first root filesystem, the initramfs, is a cpio archive in the "newc"
format: for each file a 110-byte header of hexadecimal ASCII fields (inode, mode,
owner, size, name length, ...), then the name, then the data, each padded to a
multiple of 4 bytes; an entry named TRAILER!!! ends it. pack_initramfs writes it in
a few lines, from the very image the containers use.

The kernel is the distribution's own package, unpacked (never installed) into the
cache by `make setup`. Its bzImage decompresses itself at boot, which under TCG
costs seconds; the ELF `vmlinux` inside it can be booted directly (PVH entry point).
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import MinicontainerError, Timeout
from .rootfs import cache_dir, default_rootfs

# The 9p filesystem over virtio (to see the host's files), in the order insmod needs.
# Then overlayfs, for containers inside the guest.
GUEST_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                 "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay"]
KEPT_MODULES = GUEST_MODULES + ["virtio_net", "net_failover", "failover", "virtio_blk",
                                "virtio_console"]
KERNEL_LAYOUT_VERSION = "2"  # bump when KEPT_MODULES or the layout changes: unpacks anew


class VMError(MinicontainerError):
    """QEMU or the guest failed; the message says where."""


@dataclass
class Kernel:
    image: Path           # what QEMU boots: a vmlinux (fast) or a bzImage
    modules: Path | None  # a directory of plain .ko files built for this kernel
    release: str


# -- the kernel: the distribution's package, unpacked into the cache ---------------------------

def kernel_dir() -> Path:
    return cache_dir() / "kernel"


def cached_kernel() -> Kernel | None:
    """The kernel `make setup` unpacked, if any."""
    for image in sorted(kernel_dir().glob(f"*-v{KERNEL_LAYOUT_VERSION}/vmlinux")):
        release = image.parent.name.removesuffix(f"-v{KERNEL_LAYOUT_VERSION}")
        return Kernel(image, image.parent / "modules", release)
    return None


def kernel_package() -> str:
    """The distribution's current kernel package for this CPU, e.g. linux-image-6.1.0-56-amd64."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
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
    for old in kernel_dir().iterdir():      # older layouts, interrupted unpacks
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
            found = list(tree.glob(f"lib/modules/{release}/kernel/**/{module}.ko"))
            if found:
                shutil.copy(found[0], target / "modules")
        shutil.copy(bzimage, target / "vmlinuz")
        extract_vmlinux(bzimage, target / "vmlinux")
        target.rename(kernel_dir() / f"{release}-v{KERNEL_LAYOUT_VERSION}")  # whole or not at all
    return cached_kernel()


def unpack(package: str, into: Path) -> None:
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
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    import zlib
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


# -- the initramfs: the container image, as a newc cpio archive ---------------------------------

def pack_initramfs(rootfs: Path, extra: dict[str, bytes | Path]) -> bytes:
    """The tree at `rootfs` plus `extra` files (archive path → content), gzip'd newc cpio."""
    out = bytearray()
    inode = 1
    for path in sorted(rootfs.rglob("*")):
        name = str(path.relative_to(rootfs))
        info = path.lstat()
        data = os.readlink(path).encode() if path.is_symlink() else (
            path.read_bytes() if path.is_file() else b"")
        _cpio_entry(out, inode, name, info.st_mode, data)
        inode += 1
    for name, content in extra.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        mode = 0o100755 if name == "init" or name.endswith(".sh") else 0o100644
        for parent in reversed(Path(name).parents[:-1]):
            _cpio_entry(out, inode := inode + 1, str(parent), stat.S_IFDIR | 0o755, b"")
        _cpio_entry(out, inode := inode + 1, name, mode, data)
    _cpio_entry(out, 0, "TRAILER!!!", 0, b"")
    return gzip.compress(bytes(out), compresslevel=1)


def _cpio_entry(out: bytearray, inode: int, name: str, mode: int, data: bytes) -> None:
    """One newc record: "070701", 13 fields of 8 hex digits, name, data, 4-byte padding."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    out += b"\0" * (-len(out) % 4) + data
    out += b"\0" * (-len(out) % 4)


# -- booting -----------------------------------------------------------------------------------

def accelerator() -> tuple[str, str]:
    """("kvm" or "tcg", why): KVM only where the CPU can virtualize and /dev/kvm opens."""
    if not Path("/dev/kvm").exists():
        return "tcg", "no /dev/kvm"
    if os.uname().machine == "x86_64":
        cpuinfo = Path("/proc/cpuinfo").read_text()
        if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.M):
            return "tcg", "/dev/kvm exists, but the CPU shows no vmx/svm flag"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return "tcg", f"/dev/kvm cannot be opened: {e.strerror}"
    return "kvm", "hardware virtualization available"


def qemu_binary() -> str:
    return {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}[os.uname().machine]


class VM:
    """A QEMU virtual machine that boots, runs one shell command, and powers off.

        with VM("uname -r", memory="128M") as vm:
            vm.start()
            code, console = vm.wait(timeout=60)

    The guest's root is the container image, packed as its initramfs; with
    host_files=True its init instead mounts the host's / read-only (9p) and runs the
    command there, on the guest's own kernel.
    """

    def __init__(self, command: str, *, memory: str = "128M", cpus: int = 1,
                 kernel_args: str = "", host_files: bool = False) -> None:
        self.kernel = cached_kernel()
        if self.kernel is None:
            raise VMError("no VM kernel in the cache: run `make setup`")
        self.qemu = shutil.which(qemu_binary())
        if self.qemu is None:
            raise VMError(f"{qemu_binary()} not found: run `make setup`")
        self.command, self.memory, self.cpus = command, memory, cpus
        self.kernel_args, self.host_files = kernel_args, host_files
        self.accel, self.accel_reason = accelerator()
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> VM:
        """Pack the initramfs and start QEMU; the guest boots in the background."""
        self._tmp = tempfile.TemporaryDirectory(prefix="mc-vm-")
        initrd = Path(self._tmp.name) / "initramfs.gz"
        initrd.write_bytes(self.initramfs())
        self.process = subprocess.Popen(self.qemu_argv(initrd), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def initramfs(self) -> bytes:
        template = HOST_FILES_INIT if self.host_files else IMAGE_INIT
        modules = GUEST_MODULES if self.host_files else []
        init = template.replace("@MODULES@", " ".join(modules)).replace(
            "@COMMAND@", self.command.replace("'", "'\"'\"'"))
        files = {f"lib/modules/{m}.ko": self.kernel.modules / f"{m}.ko" for m in modules}
        return pack_initramfs(default_rootfs(), {"init": init.encode(), **files})

    def qemu_argv(self, initrd: Path) -> list[str]:
        argv = [self.qemu, "-M", "q35", "-accel", self.accel, "-m", self.memory,
                "-smp", str(self.cpus), "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-no-reboot", "-kernel", str(self.kernel.image),
                "-initrd", str(initrd), "-append",
                f"console=ttyS0 panic=-1 quiet reboot=t {self.kernel_args}".strip()]
        if self.host_files:
            argv += ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                                "multidevs=remap"]
        return argv

    def wait(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the guest to power off: (the command's exit code, the console)."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.process.communicate()
            tail = out.decode(errors="replace")[-2000:]
            raise Timeout(f"the VM did not finish in {timeout} s; its console ended with:\n"
                          f"{tail}") from None
        console = out.decode(errors="replace").replace("\r\n", "\n")
        match = re.search(r"^MC-EXIT=(\d+)$", console, re.M)
        if match is None:
            raise VMError(f"the guest stopped without reporting (QEMU exit "
                          f"{self.process.returncode}): {err.decode(errors='replace')[-500:]}"
                          f"{console[-2000:]}")
        return int(match[1]), console[:match.start()]

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        if self.process:
            for pipe in (self.process.stdout, self.process.stderr):
                pipe.close()
        if self._tmp:
            self._tmp.cleanup()


def run_on_host_files(command: str, *, kernel_args: str = "", memory: str = "512M",
                      cpus: int = 2, timeout: float = 600) -> tuple[int, str]:
    """Boot a VM with its own kernel (and `kernel_args`, e.g. cgroup_no_v1=all for a
    pure cgroup v2 machine) that runs `command` in the host's files, read-only: a way
    to run the host's tests on another kernel. Returns (exit code, console output)."""
    with VM(command, memory=memory, cpus=cpus, kernel_args=kernel_args,
            host_files=True) as vm:
        return vm.start().wait(timeout)


IMAGE_INIT = """#!/bin/sh
# PID 1 of the guest: mount the kernel's filesystems, say when ready, run the command.
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /tmp
echo "MC-READY $(cut -d' ' -f1 /proc/uptime)"
sh -c '@COMMAND@'
echo "MC-EXIT=$?"
reboot -f
"""

HOST_FILES_INIT = """#!/bin/sh
# PID 1 of the guest: mount the kernel's filesystems, load the drivers, and run the
# command in the host's files (read-only), with fresh /tmp and /run of its own.
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
H=/mnt/host; mkdir -p $H
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $H
for d in proc sys dev; do mount -o rbind /$d $H/$d; done
grep -q cgroup2 /proc/filesystems && mount -t cgroup2 cgroup2 $H/sys/fs/cgroup
mount -t tmpfs tmpfs $H/tmp; mount -t tmpfs tmpfs $H/run
chroot $H /bin/sh -c '@COMMAND@'
echo "MC-EXIT=$?"
reboot -f
"""
