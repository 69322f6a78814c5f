"""The other side: a virtual machine, booted with QEMU from the containers' own image.

A container is host processes with a different view; a virtual machine is a whole
computer made of software. QEMU gives the guest a CPU (KVM: the real one, switched
into a guest mode by the processor's virtualization extensions; TCG: emulated, one
translated block of instructions at a time), RAM carved out of QEMU's own memory,
and devices (here just a serial port). On that virtual hardware runs a *separate
kernel* (kernel.py finds one), which boots, finds its devices and starts init — none
of which a container does.

QEMU's direct kernel boot skips firmware menus and bootloaders: `-kernel` loads a
Linux kernel, `-initrd` its first root filesystem, `-append` its command line. That
first root filesystem, the initramfs, is a cpio archive in the "newc" format: per file
a 110-byte header of hexadecimal ASCII fields (inode, mode, owner, size, name length,
...), then the name, then the data, each padded to a multiple of 4 bytes; an entry
named TRAILER!!! ends it. pack_initramfs writes the very image the containers use,
plus an /init script, in a few lines: both sides run the same userland.

The guest's console is its serial port, which QEMU connects to its own stdout: the
guest's /init prints when it is ready, runs the command it was packed with, prints
the exit code and powers the machine off. (Typing commands into a serial port under
TCG loses characters; a command baked into the initramfs cannot be lost.)
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import state
from .host import cpu, parse_size
from .errors import InvalidArgument, Timeout
from .kernel import GUEST_MODULES, Kernel, VMError, find_kernel, kernel_dir
from .process import start_time, wait_for_exit
from .rootfs import default_rootfs

__all__ = ["VM", "VMError", "Boot", "accelerator", "pack_initramfs"]
MIN_MEMORY = 48 * 1024**2       # the kernel and the unpacked image must fit


# -- the initramfs: the container image, as a newc cpio archive -------------------------------

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


INIT = """#!/bin/sh
# PID 1 of the guest: say when the kernel handed over, mount the kernel's own
# filesystems, say when ready, run the command, report, power off.
mount -t proc proc /proc
echo "MC-INIT $(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /tmp
@HOST_FILES@
echo "MC-READY $(cut -d' ' -f1 /proc/uptime)"
@ROOT@ /bin/sh -c '@COMMAND@' </dev/null 2>&1
echo "MC-EXIT=$?"
reboot -f
"""
IDLE = "while :; do sleep 3600; done"   # a VM that just stays up, for measuring

HOST_FILES = """# The host's / over 9p (read-only), with fresh /tmp and /run, as the new root.
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
H=/mnt/host; mkdir -p $H /mnt/seen
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $H
mount -o bind $H /mnt/seen                    # the host's /tmp, before a tmpfs hides it
for d in proc sys dev; do mount -o rbind /$d $H/$d; done
grep -q cgroup2 /proc/filesystems && mount -t cgroup2 cgroup2 $H/sys/fs/cgroup
mount -t tmpfs tmpfs $H/tmp; mount -t tmpfs tmpfs $H/run
for p in @KEEP@; do mkdir -p $H$p && mount -o bind /mnt/seen$p $H$p; done"""


# -- the accelerator and the machine --------------------------------------------------------

def qemu_binary() -> str:
    """The QEMU that emulates a whole machine of this host's kind."""
    return cpu().qemu


@functools.cache                       # the machine does not change while we run
def accelerator() -> tuple[str, str]:
    """("kvm" or "tcg", why): KVM only if the CPU can virtualize, /dev/kvm opens and
    QEMU really starts a KVM guest (on some machines /dev/kvm exists and cannot)."""
    if not Path("/dev/kvm").exists():
        return "tcg", "no /dev/kvm"
    if cpu().name == "x86_64":
        if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", Path("/proc/cpuinfo").read_text(), re.M):
            return "tcg", "/dev/kvm exists, but the CPU shows no vmx/svm flag"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return "tcg", f"/dev/kvm cannot be opened: {e.strerror}"
    qemu = shutil.which(qemu_binary())
    if qemu is None:
        return "tcg", "QEMU is missing"
    probe = subprocess.run([qemu, "-accel", "kvm", "-M", "none", "-nodefaults", "-display",
                            "none", "-monitor", "stdio"], input="quit\n", capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        return "tcg", f"QEMU could not start a KVM guest: {probe.stderr.strip()[:100]}"
    return "kvm", "hardware virtualization works"




@functools.cache
def qemu_version() -> str:
    return subprocess.run([qemu_binary(), "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]


def choose_machine(kernel: Kernel, accel: str) -> str:
    """The fastest machine type that boots here, measured once and remembered: the
    median of three boots for each vmlinux machine; the bzImage ones only if no
    vmlinux machine boots at all."""
    record = kernel_dir() / "machine.json"
    key = f"{kernel.release} {accel} {qemu_version()}"
    known = json.loads(record.read_text()) if record.exists() else {}
    if key in known:
        return known[key]
    timings = {}
    for name, (_, image) in cpu().machines.items():
        if timings and image == "bzimage":
            break
        try:
            boots = []
            for _ in range(3):
                with VM(memory="128M", accel=accel, machine=name, kernel=kernel) as vm:
                    boots.append(vm.boot(timeout=60).total)
            timings[name] = sorted(boots)[1]
        except (VMError, Timeout):
            continue
    if not timings:
        raise VMError("no machine type could boot the kernel: see `minicontainer doctor`")
    known[key] = min(timings, key=timings.get)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(known))
    return known[key]


# -- a VM ---------------------------------------------------------------------------------

@dataclass
class Boot:
    """Where the boot time went, in seconds (host's wall clock and guest's uptime)."""

    total: float          # from starting QEMU to the guest's "ready"
    qemu_start: float     # QEMU and firmware, before the guest kernel's clock starts
    kernel: float         # the guest kernel, until it runs /init
    init: float           # /init, until ready


class VM:
    """A QEMU virtual machine booted from the containers' image.

        with VM(memory="128M") as vm:
            code, output = vm.run("uname -r")     # boot, run, power off

        with VM() as vm:
            vm.boot()                             # up and idle, until stop()

    host_files=True boots the guest into the host's own files instead (read-only,
    over 9p): the host's programs on the guest's kernel.
    """

    def __init__(self, *, memory: str = "128M", cpus: int = 1, accel: str = "auto",
                 machine: str = "auto", kernel_args: str = "", host_files: bool = False,
                 keep: tuple[str, ...] = (), kernel: Kernel | None = None) -> None:
        self.memory = parse_size(memory, "VM memory", 1)
        if self.memory < MIN_MEMORY:
            raise InvalidArgument(f"memory {memory!r} is too small for a VM: give it at least 48M")
        if not isinstance(cpus, int) or not 1 <= cpus <= 64:
            raise InvalidArgument(f"invalid cpus {cpus!r} for a VM: a whole number from 1 to 64")
        if accel not in ("auto", "kvm", "tcg"):
            raise InvalidArgument(f"invalid accel {accel!r}: choose auto, kvm or tcg")
        machines = list(cpu().machines)
        if machine != "auto" and machine not in machines:
            raise InvalidArgument(f"invalid machine {machine!r}: choose from {machines}")
        self.qemu = shutil.which(qemu_binary())
        if self.qemu is None:
            raise VMError(f"{qemu_binary()} not found: run `make setup`")
        self.kernel = kernel or find_kernel(need_modules=host_files)
        usable, self.accel_reason = accelerator() if accel != "tcg" else ("tcg", "asked for")
        if accel == "kvm" and usable != "kvm":
            raise VMError(f"KVM is not usable here: {self.accel_reason} (use accel='tcg')")
        self.accel = usable
        if host_files and "q35" in cpu().machines:    # 9p needs PCI devices; microvm has none
            machine = "q35" if machine == "auto" else machine
        self.machine = machine
        self.cpus, self.kernel_args, self.host_files = cpus, kernel_args, host_files
        self.keep = tuple(str(Path(p).resolve()) for p in keep)   # host dirs in /tmp or /run
        self.process: subprocess.Popen | None = None
        self.console: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.id = os.urandom(6).hex()

    # -- life cycle ---------------------------------------------------------------------

    def boot(self, command: str = IDLE, timeout: float = 120) -> Boot:
        """Start QEMU and wait until the guest's init says it is ready; the guest
        then runs `command` (by default: nothing, until stop())."""
        self.start(command)
        return self.ready(timeout)

    def start(self, command: str = IDLE) -> VM:
        """Start QEMU and return at once (boot several VMs side by side, then ready())."""
        if self.machine == "auto":
            self.machine = choose_machine(self.kernel, self.accel)
        # Written down before anything exists, so `minicontainer cleanup` can find
        # QEMU and its files if this process dies without stop().
        record = {"owner": os.getpid(), "owner_started": start_time(os.getpid()),
                  "tmp": str(self.scratch), "qemu": None}
        state.write_vm(self.id, record)
        self.scratch.mkdir(mode=0o700)
        initrd = self.scratch / "initramfs.gz"
        initrd.write_bytes(self.initramfs(command))
        self._started = time.monotonic()
        self.process = subprocess.Popen(self.qemu_argv(initrd), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        state.write_vm(self.id, {**record, "qemu": [self.process.pid,
                                                    start_time(self.process.pid)]})
        threading.Thread(target=self._read_console, daemon=True).start()
        return self

    def ready(self, timeout: float = 120) -> Boot:
        """Wait for the guest's "ready", and say where the time went."""
        at_init = float(self._wait_for(r"MC-INIT (\S+)", timeout, self._started)[1])
        at_ready = float(self._wait_for(r"MC-READY (\S+)", timeout, self._started)[1])
        total = time.monotonic() - self._started
        return Boot(total, total - at_ready, at_init, at_ready - at_init)

    def wait(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the guest's command to finish: its exit code and its output."""
        start = len(self.console)
        match = self._wait_for(r"^MC-EXIT=(\d+)$", timeout, time.monotonic())
        output = self.console[start:-1]
        self.process.wait(timeout=30)      # the guest powers off, and QEMU exits
        return int(match[1]), "".join(line + "\n" for line in output)

    def run(self, command: str, timeout: float = 600) -> tuple[int, str]:
        """Boot, run `command` in the guest, power off: (exit code, output)."""
        self.boot(command, timeout)
        return self.wait(timeout)

    def stop(self) -> None:
        """Switch the machine off (SIGTERM: QEMU exits at once) and tidy up."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait()
            self.process.stdout.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        state.release_vm(self.id)

    @property
    def scratch(self) -> Path:
        """This VM's temporary files (the initramfs), removed by stop() or cleanup."""
        return Path(tempfile.gettempdir()) / f"mc-vm-{self.id}"

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the pieces -----------------------------------------------------------------------

    def initramfs(self, command: str) -> bytes:
        return _initramfs(command, self.kernel.modules if self.host_files else None, self.keep)

    def qemu_argv(self, initrd: Path) -> list[str]:
        machine_args, image_kind = cpu().machines[self.machine]
        if self.accel == "kvm" and "-cpu" in machine_args:     # arm64: the real CPU's model
            machine_args = [a if a != "max" else "host" for a in machine_args]
        image = getattr(self.kernel, image_kind) or self.kernel.bzimage or self.kernel.vmlinux
        argv = [self.qemu, *machine_args, "-accel", self.accel, "-m", f"{self.memory // 2**20}M",
                "-smp", str(self.cpus), "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-no-reboot", "-kernel", str(image), "-initrd", str(initrd),
                "-append", f"console={cpu().console} panic=-1 quiet reboot=t "
                f"{self.kernel_args}".strip()]
        if self.host_files:
            argv += ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                                "multidevs=remap"]
        return argv

    def _read_console(self) -> None:
        for raw in self.process.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._lines.put(None)          # QEMU has exited

    def _wait_for(self, pattern: str, timeout: float, since: float) -> re.Match:
        """Read console lines until one matches; fail clearly on exit or time-out."""
        while True:
            left = timeout - (time.monotonic() - since)
            try:
                line = self._lines.get(timeout=max(left, 0))
            except queue.Empty:
                self.process.kill()
                raise Timeout(f"the VM did not answer within {timeout} s; its console ended "
                              f"with:\n{self.tail()}") from None
            if line is None:
                self._lines.put(None)
                raise VMError(f"QEMU exited (status {self.process.wait()}) before the guest "
                              f"answered; its console ended with:\n{self.tail()}")
            self.console.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def poll_console(self) -> None:
        """Move what the guest printed so far into .console, without waiting."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._lines.put(None)
                raise VMError(f"QEMU exited unexpectedly; its console ended with:\n{self.tail()}")
            self.console.append(line)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.console[-lines:])


@functools.lru_cache(maxsize=16)
def _initramfs(command: str, modules_dir: Path | None, keep: tuple[str, ...] = ()) -> bytes:
    """The image plus an /init that runs `command` (and mounts the host's files when
    given the kernel's modules for 9p, keeping `keep` visible even under the guest's
    own /tmp and /run). Packed once per command: VMs are booted often."""
    modules = GUEST_MODULES if modules_dir else []
    host_files = HOST_FILES.replace("@MODULES@", " ".join(modules)).replace(
        "@KEEP@", " ".join(p for p in keep if p.startswith(("/tmp/", "/run/"))))
    init = INIT.replace("@HOST_FILES@", host_files if modules_dir else "").replace(
        "@ROOT@", "chroot $H" if modules_dir else "").replace(
        "@COMMAND@", command.replace("'", "'\"'\"'"))
    files = {f"lib/modules/{m}.ko": modules_dir / f"{m}.ko" for m in modules}
    return pack_initramfs(default_rootfs(), {"init": init.encode(), **files})


def run_on_host_files(command: str, *, kernel_args: str = "", memory: str = "512M",
                      cpus: int = 2, timeout: float = 600,
                      keep: tuple[str, ...] = ()) -> tuple[int, str]:
    """Boot a VM with its own kernel (and `kernel_args`, e.g. cgroup_no_v1=all for a
    pure cgroup v2 machine) that runs `command` in the host's files, read-only: a way
    to run the host's tests on another kernel. Returns (exit code, output)."""
    with VM(memory=memory, cpus=cpus, kernel_args=kernel_args, host_files=True,
            keep=keep) as vm:
        return vm.run(command, timeout)


def cleanup() -> list[str]:
    """Stop the QEMUs whose owner died without stop(), and remove their files."""
    removed = []
    for vm_id, record in state.vm_records().items():
        if state.owner_alive(record):
            continue
        if record["qemu"]:
            pids = [record["qemu"][0]] if start_time(record["qemu"][0]) == record["qemu"][1] else []
        else:                          # died between starting QEMU and writing its pid:
            pids = _running_with(record["tmp"])   # it is the one booting our initramfs
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, 10)
        shutil.rmtree(record["tmp"], ignore_errors=True)
        state.release_vm(vm_id)
        removed.append(f"vm {vm_id}")
    return removed


def _running_with(path: str) -> list[int]:
    """The processes whose command line mentions `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and path.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:                # gone meanwhile
            pass
    return found
