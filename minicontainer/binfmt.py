"""Another CPU's programs: why a container cannot run them, and the trick that can.

A container runs its programs on the host's CPU, through the host's kernel: an arm64
binary on an x86-64 host fails at execve(2) with "Exec format error", exactly as it
would outside any container. (A VM could emulate the whole other machine instead.)

The kernel's binfmt_misc lets an administrator name an interpreter for files whose
first bytes match a pattern — here the ELF header of the other architecture — and
qemu-user is such an interpreter: it translates one program's instructions and passes
its system calls to the host kernel. With the F flag the interpreter is opened once,
at registration, so it works inside containers whose root does not contain it.

The registration is global to the host, so it is tagged mc-… and removed right after
use; binfmt_misc is mounted only if it was not, and unmounted again. The foreign
busybox and the static qemu-user are unpacked from the distribution's packages by
`make setup` (apt-get download + dpkg -x: nothing is installed, nothing registered).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CommandNotExecutable, MinicontainerError
from .host import cache_dir, cpu
from .host import machine as host_machine
from .rootfs import build_busybox_rootfs, find_busybox

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# The other architecture, as Debian and as the kernel (uname -m) name it.
# ELF header of an executable for that machine (e_machine at byte 18), and which bytes count.
ELF_MAGIC = {
    "aarch64": ("7f454c460201010000000000000000000200b700",
                "ffffffffffffff00fffffffffffffffffeffffff"),
    "x86_64": ("7f454c4602010100000000000000000002003e00",
               "fffffffffffefe00fffffffffffffffffeffffff"),
}


def foreign_dir() -> Path:
    """Where the other CPU's busybox and qemu-user are unpacked."""
    return cache_dir() / "foreign"


def foreign_machine() -> str:
    """The other CPU of ours, whose programs this machine runs through qemu-user."""
    return cpu().foreign


def fetch_foreign() -> Path:
    """Unpack the other architecture's static busybox and our qemu-user, once."""
    machine = cpu().foreign
    debian_arch = cpu(machine).debian
    target = foreign_dir() / f"{machine}-v1"
    if target.is_dir():
        return target
    foreign_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=foreign_dir(), prefix=".unpacking-") as tmp:
        work = Path(tmp)
        lists = work / "lists"
        (lists / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        # A private copy of apt's package lists for the other architecture, so the
        # host's dpkg never learns about it.
        apt = ["apt-get", "-q", f"-o=Dir::State::Lists={lists}", f"-o=Dir::Cache={work}/cache",
               f"-o=APT::Architecture={debian_arch}", f"-o=APT::Architectures={debian_arch}"]
        for argv in ([*apt, "update"], [*apt, "download", f"busybox-static:{debian_arch}"],
                     ["apt-get", "-q", "download", "qemu-user-static"]):
            subprocess.run(argv, cwd=work, check=True, capture_output=True)
        for deb in work.glob("*.deb"):
            subprocess.run(["dpkg", "-x", deb, work / "tree"], check=True)
        out = work / "out"
        out.mkdir()
        shutil.copy(work / "tree/bin/busybox", out / "busybox")
        shutil.copy(work / f"tree/usr/bin/qemu-{machine}-static", out / "qemu-user")
        out.rename(target)
    return target


def foreign_rootfs() -> Path:
    """The busybox image again, with the other architecture's busybox inside."""
    files = fetch_foreign()
    target = files / "rootfs"
    if not target.is_dir():
        build_busybox_rootfs(target, files / "busybox", applets_from=find_busybox())
    return target


def existing_handler(machine: str) -> str | None:
    """The name of a handler already registered for `machine`'s binaries, if any."""
    if not (BINFMT / "status").exists():
        return None
    magic = ELF_MAGIC[machine][0]
    for entry in BINFMT.iterdir():
        if entry.name in ("status", "register"):
            continue
        text = entry.read_text()
        if "enabled" in text and f"magic {magic}" in text:
            return entry.name
    return None


@contextmanager
def qemu_user_registered(machine: str) -> Iterator[str]:
    """Register qemu-user for `machine`'s binaries as mc-qemu-<machine>, then remove it."""
    interpreter = fetch_foreign() / "qemu-user"
    mounted_here = not (BINFMT / "status").exists()
    if mounted_here:
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    name = f"mc-qemu-{machine}"
    magic, mask = (bytes.fromhex(h) for h in ELF_MAGIC[machine])
    escaped = ["".join(f"\\x{b:02x}" for b in data) for data in (magic, mask)]
    try:
        (BINFMT / "register").write_text(f":{name}:M::{escaped[0]}:{escaped[1]}:{interpreter}:F")
        yield name
    finally:
        if (BINFMT / name).exists():
            (BINFMT / name).write_text("-1")           # unregister
        if mounted_here:
            subprocess.run(["umount", str(BINFMT)], check=True)


def foreign_binary_demo() -> dict:
    """The other architecture's `uname -m` in a container: refused, then emulated."""
    from .container import run
    machine = foreign_machine()
    rootfs = foreign_rootfs()
    result = {"host": host_machine(), "foreign": machine}
    existing = existing_handler(machine)
    if existing:
        result["without"] = f"not shown: this host already runs {machine} programs ({existing})"
    else:
        try:
            run(["/bin/busybox", "uname", "-m"], rootfs=rootfs)
            raise MinicontainerError(f"a {machine} binary ran without an interpreter?")
        except CommandNotExecutable as e:
            result["without"] = str(e)
    with qemu_user_registered(machine):
        emulated = run(["/bin/busybox", "uname", "-m"], rootfs=rootfs)
        result["with_qemu_user"] = emulated.stdout.strip()
    return result
