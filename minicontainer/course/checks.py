"""The checks behind grade(): each runs the student's function on the real kernel.

A check takes the student's module and raises Mismatch (what was expected, what
happened, a hint) when something is off. Where the package has a function of the
same job (pivot_into, cpu_max, free_address, cpio_entry), the check puts the
student's in its place and builds a real container or VM with it: this runs in a
child process of its own (see grade.py), so the swap never leaks anywhere.

A failed check shows what the container (or the attack) printed, since a traceback on
its stderr often says more than any hint; and the hint the exercise's TODO gave
(TODO_HINTS) is shown again once the student has replaced the TODO with a wrong answer.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from .. import cgroups, escapes, namespaces, network, process, security, syscalls
from ..chroot import chroot_into, escape_chroot
from ..container import Container, run
from ..rootfs import default_rootfs
from ..vm import VM, initramfs


class Mismatch(Exception):
    """A check failed: what was looked at, what was expected, what came, a hint, and
    what the container or attack printed (stdout and stderr), if one ran."""

    def __init__(self, what: str, expected: object, got: object, hint: str,
                 printed: str = "") -> None:
        """Keep the parts, for grade.py to report; the message is `what`."""
        super().__init__(what)
        self.what, self.expected, self.got, self.hint = what, expected, got, hint
        self.printed = printed


def expect(what: str, expected: object, got: object, hint: str, printed: str = "") -> None:
    """Raise Mismatch unless `got` equals `expected`."""
    if expected != got:
        raise Mismatch(what, expected, got, hint, printed)


def printed_by(result) -> str:
    """What a container printed, stdout then stderr, each labelled when not empty."""
    parts = [(name, getattr(result, name).strip()) for name in ("stdout", "stderr")]
    return "\n".join(f"{name}: {text}" for name, text in parts if text)


# The hint each exercise's TODO gives (its NotImplementedError's text), by function name:
# a student who replaced the TODO with a wrong answer lost it, so a failed check shows it
# again. tests/test_exercises.py keeps these equal to the exercise files.
TODO_HINTS = {
    "chroot_into": "two calls of the os module: change the root, then the working directory",
    "escape_chroot": "chroot again into a subdirectory (/tmp): your working directory is now "
                     "above the root, and '..' will take you higher; then make where you end "
                     "up your root",
    "namespace_flags": "each kind is one bit (see KINDS): combine them with |",
    "pivot_into": "syscalls.pivot_root and syscalls.umount(..., detach=True); see `man 2 "
                  "pivot_root` for the pivot_root('.', '.') idiom",
    "memory_bytes": "split the digits from the unit, multiply by UNITS; refuse anything else "
                    "with ValueError",
    "cpu_max": "in each period of `period` us the group may run cpus * period us",
    "free_address": "ipaddress.ip_network(subnet).hosts() gives the host addresses in order; "
                    "raise ValueError when none is left",
    "capability_bits": "1 << CAPABILITIES[name] for each name, combined with |",
    "see_a_host_process": "every process has a /proc/PID/cmdline; grep exits 0 when it finds "
                          "what it looks for",
    "convert_whiteouts": "os.walk(layer) visits every directory; os.mknod(path, stat.S_IFCHR "
                         "| 0o000, os.makedev(0, 0)) makes a whiteout device; os.setxattr("
                         "directory, 'trusted.overlay.opaque', b'y') marks a directory opaque; "
                         "remove each .wh. file",
    "cpio_entry": "b'%08X' % number gives one field; the header is 110 bytes before the name",
}


@contextmanager
def host_secret() -> Iterator[tuple[str, str]]:
    """A file on the host that no container should be able to read, removed after."""
    with tempfile.TemporaryDirectory(prefix="mc-grade-") as tmp:
        token = f"host-only-{os.urandom(4).hex()}"
        (Path(tmp) / "secret").write_text(token)
        yield str(Path(tmp) / "secret"), token


# -- 01 chroot -------------------------------------------------------------------------------

def chroot_makes_the_image_the_root(student) -> None:
    """student.chroot_into(rootfs) makes the image `/` and leaves the process in it."""
    rootfs = str(default_rootfs())
    steps = [partial(student.chroot_into, rootfs)]
    _, release = process.capture(["/bin/cat", "/etc/os-release"], steps)
    expect("/etc/os-release after chroot_into", True, "minicontainer busybox" in release,
           "os.chroot(rootfs) changes what `/` means for this process")
    _, cwd = process.capture(["/bin/pwd"], [partial(student.chroot_into, rootfs)])
    expect("working directory after chroot_into", "/", cwd.strip(),
           "after chroot, os.chdir('/') so the working directory is inside the new root")


def escape_output(student, host_file: str, **options):
    """The result of the student's escape run as a container's process (its TODO
    re-raised): .stdout is what it read, .stderr its traceback if it raised."""
    result = run(partial(student.escape_chroot, host_file), **options)
    if (raised := process.raised_in(result.stderr)) and raised[0] == "NotImplementedError":
        raise NotImplementedError(raised[1])
    return result


def a_root_process_climbs_out_of_a_chroot(student) -> None:
    """student.escape_chroot reads a host file from a container made by chroot alone."""
    with host_secret() as (path, token):
        escape = escape_output(student, path, namespaces=[])
    expect("what escape_chroot printed from a chroot-only container", token, escape.stdout,
           "it should print the host file's content", printed_by(escape))


def pivot_root_stops_the_same_escape(student) -> None:
    """The same escape finds nothing in a container with a mount namespace and pivot_root."""
    with host_secret() as (path, token):
        first = escape_output(student, path, namespaces=[])
        expect("first, the escape from a chroot-only container", True, first.stdout == token,
               "make the previous check pass first: this one needs a working escape",
               printed_by(first))
        escape = escape_output(student, path)
    expect("the escape in a container with a mount namespace and pivot_root", False,
           token in escape.stdout, "nothing to fix here if the previous check passed",
           printed_by(escape))


# -- 02 namespaces ---------------------------------------------------------------------------

def flags_match_the_kernels(student) -> None:
    """student.namespace_flags(kinds) is the OR of the kernel's CLONE_NEW* bits."""
    cases = [({"uts"}, syscalls.CLONE_NEWUTS), (set(), 0),
             ({"mnt", "pid", "net"}, syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID
              | syscalls.CLONE_NEWNET)]
    for kinds, flags in cases:
        expect(f"namespace_flags({sorted(kinds)})", hex(flags), hex(student.namespace_flags(kinds)),
               "each kind is one bit; combine with |")


def a_new_uts_namespace_has_its_own_hostname(student) -> None:
    """A child unshared with student.namespace_flags({"uts"}) renames itself, not the host."""
    steps = [lambda: syscalls.unshare(student.namespace_flags({"uts"})),
             lambda: socket.sethostname("graded"), partial(chroot_into, default_rootfs())]
    _, inside = process.capture(["/bin/hostname"], steps)
    expect("hostname inside a new uts namespace", "graded", inside.strip(),
           "namespace_flags({'uts'}) must be CLONE_NEWUTS")
    expect("the host's hostname afterwards", False, socket.gethostname() == "graded",
           "only the child may change it")


def host_root_mount() -> tuple[str, str]:
    """(source, type) of the host's `/` as this process sees it: how the old root is
    recognised in a container's mount table."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, point, kind = line.split()[:3]
        if point == "/":
            found = (source, kind)          # the last mount on / is the one in use
    return found


def pivot_into_hides_the_host(student) -> None:
    """A container built with student.pivot_into has the overlay as `/`, no mount of the
    host's root anywhere, and no way back out."""
    namespaces.pivot_into = student.pivot_into          # ours replaced, in this process only
    listing = run("cat /proc/self/mounts")
    mounts = [line.split()[:3] for line in listing.stdout.splitlines() if len(line.split()) > 2]
    on_root = [kind for _, point, kind in mounts if point == "/"]
    expect("the types of the mounts on `/` in the container", ["overlay"], on_root,
           "after os.chdir(new_root), pivot_root('.', '.') makes the overlay (new_root) `/`"
           " and stacks the host's old root on top of it, at `/` too: umount('.', "
           "detach=True) then takes the old root away" if "overlay" in on_root else
           "the container still runs on the host's root: os.chdir(new_root), then "
           "syscalls.pivot_root('.', '.')", printed_by(listing))
    host = host_root_mount()
    left = [point for source, point, kind in mounts if (source, kind) == host]
    expect("where the host's root filesystem is mounted in the container", [], left,
           "pivot_root(new, put_old) leaves the old root mounted at put_old: umount it "
           "with detach=True (it is busy)", printed_by(listing))
    with host_secret() as (path, token):
        escape = run(partial(escape_chroot, path))
    expect("the chroot escape after your pivot_into", False, token in escape.stdout,
           "detach the old root after pivot_root: umount it with detach=True",
           printed_by(escape))


# -- 03 cgroups ------------------------------------------------------------------------------

SI = {"k": 1000, "m": 1000**2, "g": 1000**3}   # what k, M, G mean elsewhere: powers of 1000


def memory_sizes_are_read_as_docker_does(student) -> None:
    """student.memory_bytes reads "64M", "64MB", "1g", "512k", "1024" as Docker does
    (binary units, a trailing B allowed); refuses "64Q"."""
    for text, number, unit in (("64M", 64, "m"), ("1g", 1, "g"), ("512k", 512, "k"),
                               ("1024", 1024, ""), (" 32m ", 32, "m"), ("64MB", 64, "m"),
                               ("2gb", 2, "g"), ("64MiB", 64, "m")):
        value = number * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]
        try:
            got = student.memory_bytes(text)
        except ValueError as e:          # refusing a size Docker takes is a wrong answer too
            got = f"ValueError: {e}"
        hint = ("binary units: k = 1024, m = 1024**2, g = 1024**3; no unit means bytes; "
                "a B after the unit changes nothing (Docker's -m 64MB is 64M: docker/go-units"
                " RAMInBytes)")
        if unit and got == number * SI[unit]:
            hint = (f"that is {number} {unit.upper()}B in SI units (powers of 1000): the "
                    f"kernel and Docker count memory in 1024s, so {text.strip()} is {value} "
                    f"bytes, {value - got} more than yours")
        expect(f"memory_bytes({text!r})", value, got, hint)
    try:
        got = student.memory_bytes("64Q")
    except ValueError:
        got = "ValueError"
    expect("memory_bytes('64Q')", "ValueError", got, "refuse an unknown unit: raise ValueError")


def cpu_max_is_quota_and_period(student) -> None:
    """student.cpu_max(cpus, period) is the line cgroup v2's cpu.max takes: "quota period",
    whole microseconds, the quota rounded (not truncated) from cpus * period."""
    for cpus, period, value in ((0.5, None, "50000 100000"), (0.25, None, "25000 100000"),
                                (1.5, 200_000, "300000 200000"), (0.29, None, "29000 100000"),
                                (0.57, None, "57000 100000")):
        args = (cpus,) if period is None else (cpus, period)
        got, exact = student.cpu_max(*args), cpus * (period or 100_000)
        hint = "f'{quota} {period}'"
        if "." in str(got):
            hint = "the kernel reads whole microseconds: make the quota an int"
        elif str(got).split()[:1] == [str(int(exact))] and got != value:
            hint = (f"{cpus} * {period or 100_000} is {exact!r} in floating point, and int() "
                    "truncates it: one microsecond short. round() it (Docker reads --cpus "
                    "as an exact fraction, a big.Rat, so its quota comes out whole)")
        expect(f"cpu_max{args}", value, got, hint)


def your_cpu_budget_holds_a_busy_loop(student) -> None:
    """A busy loop under cpus=0.25, written with student.cpu_max, gets about a quarter CPU."""
    cgroups.cpu_max = student.cpu_max
    with Container(["sh", "-c", "while :; do :; done"], cpus=0.25) as c:
        c.start()
        time.sleep(1.5)
        used = round(c.stats()["cpu_seconds"], 2)
    expect("CPU seconds used in 1.5 s under cpus=0.25 (about 0.37)", True, 0.15 < used < 0.6,
           f"got {used}: is the quota cpus * period?")


def your_memory_budget_stops_a_hog(student) -> None:
    """A 64M dd under the limit student.memory_bytes("32M") is killed for memory."""
    result = run(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                 memory=student.memory_bytes("32M"))
    expect("a 64M dd under memory_bytes('32M')", "killed: out of memory",
           "killed: out of memory" if result.oom_killed else f"exit {result.exit_code}",
           "32M must come out as 33554432 bytes", printed_by(result))


# -- 04 networking ---------------------------------------------------------------------------

def addresses_come_in_order(student) -> None:
    """student.free_address gives the first untaken host address, ValueError when full."""
    expect("free_address('10.213.0.0/24', {'10.213.0.1'})", "10.213.0.2",
           student.free_address("10.213.0.0/24", {"10.213.0.1"}), "the first host not taken")
    expect("free_address with .1 .2 .3 taken", "10.213.0.4",
           student.free_address("10.213.0.0/24", {"10.213.0.1", "10.213.0.2", "10.213.0.3"}),
           "skip every taken address")
    try:
        got = student.free_address("10.213.0.0/30", {"10.213.0.1", "10.213.0.2"})
    except ValueError:
        got = "ValueError"
    expect("free_address of a full /30", "ValueError", got, "no address left: ValueError")


def two_containers_talk_with_your_addresses(student) -> None:
    """Two containers addressed by student.free_address get distinct addresses and ping."""
    network.free_address = student.free_address
    # The default network: made for the first container, removed with the last one
    # (and by `minicontainer cleanup`, should this check be killed half-way).
    with Container(["sleep", "30"], name="mc-grade-a", network="mc-br0") as a, \
         Container(["sleep", "30"], name="mc-grade-b", network="mc-br0") as b:
        a.start()
        b.start()
        gateway, addresses = a.attachment.gateway, {a.attachment.address, b.attachment.address}
        expect("two distinct addresses, neither the gateway", (2, False),
               (len(addresses), gateway in addresses), "skip every address in `taken`")
        ping = a.exec("ping -c 1 -W 2 mc-grade-b")
        expect("ping from one container to the other", 0, ping.exit_code,
               "is each address inside the subnet, and not the gateway's?", printed_by(ping))


# -- 07 initramfs ----------------------------------------------------------------------------

def one_record_is_byte_for_byte_right(student) -> None:
    """student.cpio_entry produces the same bytes as vm.cpio_entry for three records."""
    for args in ((1, "init", 0o100755, b"#!/bin/sh\n"), (7, "bin", 0o40755, b""),
                 (0, "TRAILER!!!", 0, b"")):
        expected, got = initramfs.cpio_entry(*args), student.cpio_entry(*args)
        where = next((i for i, (x, y) in enumerate(zip(expected, got, strict=False)) if x != y),
                     min(len(expected), len(got)))
        expect(f"cpio_entry{args[:3]}", expected, got,
               f"first difference at byte {where} (the header is 110 bytes, then the name)")


def busybox_cpio_reads_your_archive(student) -> None:
    """An initramfs packed with student.cpio_entry lists init and bin/sh under busybox cpio."""
    initramfs.cpio_entry = student.cpio_entry
    archive = initramfs.pack_initramfs(default_rootfs(), {"init": b"#!/bin/sh\n"})
    listing = subprocess.run("zcat | busybox cpio -t", shell=True, input=archive,
                             capture_output=True).stdout.decode().split()
    expect("busybox cpio -t finds init and bin/sh", True,
           {"init", "bin/sh"} <= set(listing), f"it listed {listing[:5]}…",
           f"stdout: {' '.join(listing)[:300]}")


def a_vm_boots_from_your_archive(student) -> None:
    """A VM boots from an initramfs packed with student.cpio_entry and runs a command."""
    initramfs.cpio_entry = student.cpio_entry
    with VM() as machine:
        expect("a VM booted from your initramfs", (0, "booted\n"),
               machine.run("echo booted", timeout=120), "the previous checks must pass first")


# -- 05 security -----------------------------------------------------------------------------

def capability_masks_are_the_kernels(student) -> None:
    """student.capability_bits(names) sets bit N for capability number N."""
    expect('capability_bits(["CHOWN", "KILL"])', 0x21, student.capability_bits(["CHOWN", "KILL"]),
           "CHOWN is number 0, KILL number 5: bits 0 and 5")
    expect("capability_bits([])", 0, student.capability_bits([]), "no names, no bits")


def your_mask_is_what_a_default_container_holds(student) -> None:
    """student.capability_bits of the default set equals a default container's CapEff."""
    status = run("grep CapEff /proc/self/status").stdout.split()
    expect("CapEff of a default container, against your mask of Docker's set minus MKNOD",
           int(status[1], 16), student.capability_bits(list(security.DEFAULT_CAPABILITIES)),
           "the kernel prints the mask in hexadecimal: int(text, 16)")


def your_attack_is_stopped_by_the_pid_namespace_alone(student) -> None:
    """student.see_a_host_process() fails in a default container, works without a pid ns."""
    attack = escapes.Attack("yours", student.see_a_host_process(), "pid namespace")
    with escapes.target() as bait:
        inside = escapes.attempt(attack, bait)
        without = escapes.attempt(attack, bait, namespaces=escapes.NOT_PID)
    expect("(blocked in a default container, gets through without a pid namespace)",
           (True, True), (not inside.escaped, without.escaped),
           "exit 0 only when /proc/$PID/cmdline mentions mc-escape-target",
           f"in a default container: {inside.evidence.strip() or '(nothing)'}\n"
           f"without a pid namespace: {without.evidence.strip() or '(nothing)'}")


# -- 06 images -------------------------------------------------------------------------------

def unpacked_layer(files: dict[str, bytes]) -> Path:
    """A layer as a plain `tar x` leaves it: these files (whiteouts are empty ones), in a
    new temporary directory (the grader's own, removed after the check)."""
    layer = Path(tempfile.mkdtemp(prefix="layer-"))
    for name, content in files.items():
        (layer / name).parent.mkdir(parents=True, exist_ok=True)
        (layer / name).write_bytes(content)
    return layer


def kind_of(path: Path) -> str:
    """What is at `path`, in words a hint can use: missing, a file, a 0:0 device..."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return "nothing"
    if stat.S_ISCHR(found.st_mode):
        return f"a character device {os.major(found.st_rdev)}:{os.minor(found.st_rdev)}"
    return "a directory" if stat.S_ISDIR(found.st_mode) else "a file"


def whiteout_files_become_0_0_devices(student) -> None:
    """student.convert_whiteouts turns `.wh.NAME` into a 0:0 character device NAME, at
    any depth, and removes the `.wh.` file."""
    layer = unpacked_layer({"etc/.wh.hostname": b"", "etc/motd": b"kept\n", ".wh.home": b""})
    student.convert_whiteouts(layer)
    expect("etc/.wh.hostname after converting", "nothing", kind_of(layer / "etc/.wh.hostname"),
           "remove each .wh. file: overlayfs would show it as an ordinary file")
    expect("etc/hostname after converting", "a character device 0:0",
           kind_of(layer / "etc/hostname"),
           "os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0)), named without the .wh.")
    expect("home (from .wh.home, at the layer's top)", "a character device 0:0",
           kind_of(layer / "home"), "whiteouts can be anywhere: walk every directory")
    expect("etc/motd, not a whiteout", "a file", kind_of(layer / "etc/motd"),
           "leave every other file as it is")


def an_opaque_marker_becomes_an_xattr(student) -> None:
    """student.convert_whiteouts turns `.wh..wh..opq` into trusted.overlay.opaque=y on
    its directory, keeping the directory's other files."""
    layer = unpacked_layer({"srv/.wh..wh..opq": b"", "srv/new": b"new\n"})
    student.convert_whiteouts(layer)
    expect("srv/.wh..opq", "nothing", kind_of(layer / "srv/.wh..opq"),
           ".wh..wh..opq is no whiteout of a file named .wh..opq: test for it first")
    expect("srv/.wh..wh..opq after converting", "nothing",
           kind_of(layer / "srv/.wh..wh..opq"), "remove the marker file too")
    try:
        mark = os.getxattr(layer / "srv", "trusted.overlay.opaque")
    except OSError:
        mark = None
    expect("the xattr trusted.overlay.opaque of srv", b"y", mark,
           "os.setxattr(directory, 'trusted.overlay.opaque', b'y') on the marker's directory")
    expect("srv/new, the layer's own file", "a file", kind_of(layer / "srv/new"),
           "an opaque directory hides the layers below, never its own files")


def a_container_sees_your_layer_as_docker_would(student) -> None:
    """Layers busybox, then one with /srv/old and /etc/motd, then one converted by
    student.convert_whiteouts (deleting /etc/hostname, /srv made opaque, /srv/new):
    overlayfs, mounted for a real container, shows what `docker run` would."""
    from ..images.store import Image, Store, busybox_image
    busybox = busybox_image(Store(Path(tempfile.mkdtemp(prefix="images-")))).layers[0]
    middle = unpacked_layer({"srv/old": b"old\n", "srv/sub/deep": b"deep\n",
                             "etc/motd": b"from the middle layer\n"})
    top = unpacked_layer({"etc/.wh.hostname": b"", "srv/.wh..wh..opq": b"", "srv/new": b"new\n"})
    student.convert_whiteouts(top)
    image = Image("graded", "sha256:" + "0" * 64, {}, {}, [busybox, middle, top])
    seen = run("ls -A /srv; echo --; ls -A /etc", image=image)
    srv, _, etc = seen.stdout.partition("--")
    expect("ls -A /srv in the container", ["new"], srv.split(),
           "the files of the layer below must not show through an opaque /srv",
           printed_by(seen))
    expected_etc = sorted({*os.listdir(busybox / "etc"), "motd"} - {"hostname"})
    expect("ls -A /etc in the container", expected_etc, sorted(etc.split()),
           "busybox's /etc, with the middle layer's motd, without the deleted hostname",
           printed_by(seen))


CHECKS = {
    "01": [chroot_makes_the_image_the_root, a_root_process_climbs_out_of_a_chroot,
           pivot_root_stops_the_same_escape],
    "02": [flags_match_the_kernels, a_new_uts_namespace_has_its_own_hostname,
           pivot_into_hides_the_host],
    "03": [memory_sizes_are_read_as_docker_does, cpu_max_is_quota_and_period,
           your_cpu_budget_holds_a_busy_loop, your_memory_budget_stops_a_hog],
    "04": [addresses_come_in_order, two_containers_talk_with_your_addresses],
    "07": [one_record_is_byte_for_byte_right, busybox_cpio_reads_your_archive,
           a_vm_boots_from_your_archive],
    "06": [whiteout_files_become_0_0_devices, an_opaque_marker_becomes_an_xattr,
           a_container_sees_your_layer_as_docker_would],
    "05": [capability_masks_are_the_kernels, your_mask_is_what_a_default_container_holds,
           your_attack_is_stopped_by_the_pid_namespace_alone],
}
