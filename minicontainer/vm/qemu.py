"""QEMU: a whole computer made of software, and how fast it can run.

qemu-system-<cpu> builds a machine out of its options: `-M` the machine type (which
board, so which buses and devices exist), `-accel` how the guest's instructions run,
`-m` and `-smp` its RAM and CPUs. Two accelerators matter here. KVM runs the guest on
the real CPU, switched into a guest mode by the processor's virtualization extensions
(Intel VT-x "vmx", AMD-V "svm"), through the host kernel's /dev/kvm; TCG, QEMU's Tiny
Code Generator, emulates it instead, one translated block of instructions at a time:
correct everywhere, and much slower. accelerator() finds out which one works here.

Direct kernel boot skips firmware menus and bootloaders: `-kernel` loads a Linux
kernel, `-initrd` its first root filesystem, `-append` its command line. The guest's
console is its serial port, which `-serial stdio` connects to QEMU's own stdout.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import VMError
from ..host import cpu

# No default devices, no configuration files, no window: the machine has only what we
# give it, and its serial port is QEMU's stdout. A reboot ends QEMU (-no-reboot), so the
# guest's `reboot -f` is how it powers off.
SERIAL_CONSOLE_ONLY = ["-nodefaults", "-no-user-config", "-display", "none",
                       "-serial", "stdio", "-no-reboot"]

# The host's / as a read-only 9p share over virtio, tagged "host": the guest's /init
# mounts it by that tag (initramfs.HOST_FILES).
HOST_ROOT_SHARE = ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                              "multidevs=remap"]


def network_card_options(tap: str, mac: str) -> list[str]:
    """A virtio network card on the PCI bus whose cable is the host's tap device `tap`
    (network.Attachment.plug_tap made it): QEMU opens it by name and runs no script
    (QEMU's default /etc/qemu-ifup would wire it its own way). Every card on one
    bridge needs its own MAC address: QEMU would give each the same, 52:54:00:12:34:56.
    romfile= leaves out the card's boot ROM, which a direct kernel boot never runs."""
    return ["-netdev", f"tap,id=eth0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=eth0,mac={mac},romfile="]


def qemu_binary() -> str:
    """The QEMU that emulates a whole machine of this host's kind."""
    return cpu().qemu


def find_qemu() -> str:
    """The path of that QEMU; VMError if it is not installed."""
    qemu = shutil.which(qemu_binary())
    if qemu is None:
        raise VMError(f"{qemu_binary()} not found: run `make setup`")
    return qemu


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
    """The first line of QEMU's `--version`, e.g. "QEMU emulator version 7.2.0"."""
    return subprocess.run([qemu_binary(), "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]


def machine_options(machine: str, accel: str) -> tuple[list[str], str]:
    """QEMU's options for machine type `machine` under `accel`, and the kind of kernel
    image it boots ("vmlinux" or "bzimage")."""
    options, image_kind = cpu().machines[machine]
    if accel == "kvm" and "-cpu" in options:     # arm64: the real CPU's model, not an emulated one
        options = [a if a != "max" else "host" for a in options]
    return options, image_kind


def hardware_options(accel: str, memory: int, cpus: int) -> list[str]:
    """The accelerator, `memory` bytes of RAM (in whole MiB) and `cpus` CPUs."""
    return ["-accel", accel, "-m", f"{memory // 2**20}M", "-smp", str(cpus)]


def direct_boot_options(image: Path, initrd: Path, kernel_args: str = "") -> list[str]:
    """Boot `image` with `initrd` as its first filesystem and its console on the serial
    port; a panic reboots at once, which -no-reboot turns into QEMU exiting."""
    command_line = (f"console={cpu().console} panic=-1 quiet reboot=t {cpu().kernel_args} "
                    f"{kernel_args}").strip()
    return ["-kernel", str(image), "-initrd", str(initrd), "-append", command_line]


def device_models(machine: str) -> tuple[list[str], int]:
    """The device models machine type `machine` builds (QEMU's `info qtree`), and how many
    empty virtio-mmio slots it has besides: a slot is a place where a virtio device
    could be plugged (microvm makes 8); with nothing plugged in, it is not a device."""
    options, _ = cpu().machines[machine]
    tree = subprocess.run([find_qemu(), *options, "-accel", "tcg", "-nodefaults",
                           "-no-user-config", "-display", "none", "-serial", "null", "-S",
                           "-monitor", "stdio"], input="info qtree\nquit\n",
                          capture_output=True, text=True, timeout=60).stdout
    return split_device_tree(tree)


def split_device_tree(tree: str) -> tuple[list[str], int]:
    """`info qtree`'s text as (device models, empty virtio-mmio slots). A device's block
    is the lines indented deeper than its "dev:" line; an empty slot's holds no "dev:"."""
    lines = [(len(line) - len(line.lstrip()), line.strip()) for line in tree.splitlines()]
    models, empty_slots = [], 0
    for i, (indent, text) in enumerate(lines):
        if not text.startswith("dev: "):
            continue
        name = text.split()[1].rstrip(",")
        block = []
        for deeper, inner in lines[i + 1:]:
            if deeper <= indent:
                break
            block.append(inner)
        if name == "virtio-mmio" and not any(inner.startswith("dev: ") for inner in block):
            empty_slots += 1
        else:
            models.append(name)
    return models, empty_slots
