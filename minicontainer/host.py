"""What several layers look up about this machine: its CPU, where files are cached, sizes.

A container runs on the host's kernel, so some of its machinery depends on the CPU:
the numbers of system calls Python has no wrapper for, the QEMU that boots a whole
machine of that kind, the serial console of its guests, Debian's name for it. They are
all here, in one table, and looked up only when needed: every module imports on any
CPU, and only what needs an unknown CPU's facts says that it cannot have them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidArgument, UnsupportedCPU


@dataclass(frozen=True)
class CPU:
    """What differs between the CPUs minicontainer runs on."""

    name: str                 # the kernel's name for it, as os.uname().machine says
    debian: str               # Debian's architecture name: its packages and kernels
    qemu: str                 # the QEMU that emulates a whole machine of this kind
    console: str              # the serial console's device in its guests
    kernel_symbols: str       # the prefix of its system calls' entry points in kallsyms
    syscalls: dict[str, int] = field(default_factory=dict)  # the calls Python lacks
    # QEMU machine types to try, fastest first: name → (arguments, kernel image kind).
    # microvm has no PCI and no firmware tables to set up; q35 and pc are full PCs. An
    # uncompressed vmlinux skips the kernel's self-decompression. On arm64 there is one
    # choice, QEMU's generic `virt` board, booting the distribution's image.
    machines: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    foreign: str = ""         # the other CPU of ours, whose programs binfmt.py runs
    kernel_args: str = ""     # what its guests' kernels always need on the command line


CPUS = {
    "x86_64": CPU("x86_64", "amd64", "qemu-system-x86_64", "ttyS0", "__x64_sys_",
                  {"pivot_root": 155, "bpf": 321},
                  {"microvm": (["-M", "microvm,acpi=off"], "vmlinux"),
                   "q35": (["-M", "q35"], "vmlinux"),
                   "q35-bzimage": (["-M", "q35"], "bzimage"),
                   "pc-bzimage": (["-M", "pc"], "bzimage")}, foreign="aarch64",
                  # A guest's early check that the 8254 timer ticks through the IO-APIC
                  # counts ticks in a few ms of its time: on a busy host under TCG it saw
                  # none and panicked ("IO-APIC + timer doesn't work", a test run with
                  # other work on both cores). Cloud images skip the check the same way.
                  kernel_args="no_timer_check"),
    "aarch64": CPU("aarch64", "arm64", "qemu-system-aarch64", "ttyAMA0", "__arm64_sys_",
                   {"pivot_root": 41, "bpf": 280},
                   {"virt": (["-M", "virt", "-cpu", "max"], "bzimage")}, foreign="x86_64"),
}


def machine() -> str:
    """This machine's CPU, as the kernel names it (x86_64, aarch64...)."""
    return os.uname().machine


def cpu(name: str | None = None) -> CPU:
    """The facts of this machine's CPU (or of CPU `name`); UnsupportedCPU if unknown."""
    name = name or machine()
    if name not in CPUS:
        raise UnsupportedCPU(f"this machine's CPU is {name}; the course runs on "
                             f"{' and '.join(CPUS)}: use the Vagrant VM")
    return CPUS[name]


def cache_dir() -> Path:
    """Where built images live: MINICONTAINER_CACHE, else /var/cache/minicontainer for
    root and ~/.cache/minicontainer for a rootless user (an image the user owns)."""
    if "MINICONTAINER_CACHE" in os.environ:
        return Path(os.environ["MINICONTAINER_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/minicontainer")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minicontainer"


UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str | int, what: str, minimum: int) -> int:
    """"64M", "1g", "512k", "4096b" or an int of bytes → bytes (binary units, as
    Docker), at least `minimum` and at most this machine's memory."""
    # No spaces or newlines anywhere: every input is checked the same strict way.
    match = re.fullmatch(r"(\d{1,15})([bkmgt]?)(?:i?b)?", str(value), re.IGNORECASE)
    if not match:
        raise InvalidArgument(f"invalid {what} {value!r}: use a number with an optional "
                              "unit, like 64M or 1G")
    if isinstance(value, str) and not match[2]:    # "64" is far more often a slip than bytes
        raise InvalidArgument(f"{what} {value!r} has no unit: write {value.strip()}M "
                              "(or G, k, b); a Python int means bytes")
    amount = int(match[1]) * UNITS[match[2].lower()]
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if amount > physical:
        raise InvalidArgument(f"{what} {value!r} is more than this machine's memory "
                              f"({format_bytes(physical)})")
    if amount < minimum:
        raise InvalidArgument(f"{what} {value!r} is too small: use at least "
                              f"{format_bytes(minimum)}")
    return amount


def format_bytes(amount: int | float | None) -> str:
    """1536 → "1.5K": short, binary units, as `docker stats` prints them."""
    if amount is None:
        return "-"
    for unit in ("", "K", "M", "G"):
        if amount < 1024 or unit == "G":
            return f"{amount:.4g}{unit}" if unit else f"{amount}B"
        amount /= 1024
    return str(amount)
