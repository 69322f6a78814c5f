"""Layer 5, devices: which device nodes a container may open, whatever its image holds.

A device node is a file with no content, only a type (char or block) and two numbers,
major:minor, that name a driver and one of its devices; opening it reaches that
device — the host's disk (block 8:0), its kernel log (char 1:11), a loop device. The
node is just a name: a copy made anywhere opens the same device. An image is files
from somebody else, so it may bring such nodes along. Docker stops them three ways,
and so do we:

1. No CAP_MKNOD (security.py): root in the container cannot make a node. That does
   not stop a node the image brings, which is why there is more.
2. nodev (rootfs.Overlay, namespaces.py): the kernel opens no node on a nodev mount;
   the image is mounted nodev, and /dev is our own tmpfs holding bind mounts of a few
   harmless host nodes. It needs a mount namespace: without one the container is only
   chroot'ed into the image directory (layer 1), on the host's own mount.
3. The allow-list (this module): the cgroup says which major:minor may be opened at
   all, on any mount. cgroup v1 has a `devices` controller: "a" into devices.deny,
   then one line per allowed device into devices.allow. cgroup v2 has no such files:
   a small BPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the group with bpf(2)
   is asked at every open and mknod of a node, and answers 1 (allow) or 0 (deny).

Without a cgroup and without a mount namespace (the last two layers both off), an
image holding device nodes is refused: nothing would stand between it and the host.
"""
from __future__ import annotations

import ctypes
import os
import stat
import struct
from pathlib import Path

from .cgroups import Cgroup, write
from .errors import InvalidArgument
from .host import cpu

# runc's default allow-list (libcontainer's AllowedDevices), minus /dev/net/tun, which
# our /dev does not have: (type, major, minor, access); None is any number.
ALLOWED = (
    ("c", None, None, "m"), ("b", None, None, "m"),   # mknod of any node (no MKNOD cap:
    ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"),           # only with capabilities off), but
    ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"),           # no opening it: null zero full
    ("c", 1, 9, "rwm"), ("c", 5, 0, "rwm"),           # random urandom tty
    ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"),           # console ptmx
    ("c", 136, None, "rwm"),                          # /dev/pts/*
)


def can_list(cgroup: Cgroup) -> bool:
    """Can an allow-list be set for `cgroup` (the v1 devices controller, or v2)?"""
    return cgroup.version.get("devices") == "v1" or cgroup.version["memory"] == "v2"


def allow_only(cgroup: Cgroup, rules=ALLOWED) -> bool:
    """Let the processes in `cgroup` open (and make) only the devices in `rules`; False
    where this cannot be done (a v1 machine without the devices controller mounted):
    then only nodev holds, and the caller must know it."""
    if cgroup.version.get("devices") == "v1":
        directory = cgroup.dirs["devices"]
        write(directory / "devices.deny", "a")          # start from nothing
        for kind, major, minor, access in rules:
            write(directory / "devices.allow", f"{kind} {_star(major)}:{_star(minor)} {access}")
        return True
    if cgroup.version["memory"] == "v2":
        attach_device_program(cgroup.dirs["memory"], rules)
        return True
    return False


def _star(number: int | None) -> str:
    return "*" if number is None else str(number)


# -- cgroup v2: the allow-list as a BPF program --------------------------------------------

BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8                 # bpf(2) commands
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE = 15, 6
# What the program is shown, struct bpf_cgroup_dev_ctx: access_type (the access in the
# high 16 bits, the type in the low), major, minor. <linux/bpf.h> numbers:
TYPES, ACCESS = {"b": 1, "c": 2}, {"m": 1, "r": 2, "w": 4}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction: opcode, two registers, a jump offset, a constant."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


LOAD_WORD, AND, SHIFT_RIGHT, MOVE, MOVE_REG = 0x61, 0x54, 0x74, 0xb7, 0xbf
JUMP_IF_NOT_EQUAL, EXIT = 0x55, 0x95


def device_program(rules=ALLOWED) -> bytes:
    """The allow-list as eBPF: one block per rule, each jumping to the next rule on the
    first field that does not match, else returning 1; after the last, return 0."""
    program = [_insn(LOAD_WORD, 2, 1, 0), _insn(AND, 2, imm=0xFFFF),   # r2 = type
               _insn(LOAD_WORD, 3, 1, 0), _insn(SHIFT_RIGHT, 3, imm=16),  # r3 = access
               _insn(LOAD_WORD, 4, 1, 4), _insn(LOAD_WORD, 5, 1, 8)]  # r4, r5 = major, minor
    for kind, major, minor, access in rules:
        tests = [(2, TYPES[kind])] + [(register, number) for register, number in
                                      ((4, major), (5, minor)) if number is not None]
        block = [("next?", register, number) for register, number in tests]
        bits = sum(ACCESS[letter] for letter in access)
        if bits != 7:                                 # asked for more than allowed: next
            block += [_insn(MOVE_REG, 6, 3), _insn(AND, 6, imm=~bits & 0xFFFF),
                      ("next?", 6, 0)]
        block += [_insn(MOVE, 0, imm=1), _insn(EXIT)]  # every field matched: allow
        program += [_insn(JUMP_IF_NOT_EQUAL, item[1], off=len(block) - i - 1, imm=item[2])
                    if isinstance(item, tuple) else item for i, item in enumerate(block)]
    program += [_insn(MOVE, 0, imm=0), _insn(EXIT)]    # no rule matched: deny
    return b"".join(program)


def attach_device_program(group: Path, rules=ALLOWED) -> None:
    """Load the program (BPF_PROG_LOAD) and attach it to the v2 group (BPF_PROG_ATTACH).

    The group keeps the program alive; it goes when the group is removed.
    """
    code = ctypes.create_string_buffer(device_program(rules))
    license, log = ctypes.create_string_buffer(b"GPL"), ctypes.create_string_buffer(65536)
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, len(code.raw) // 8,
                       ctypes.addressof(code), ctypes.addressof(license), 1, len(log),
                       ctypes.addressof(log))
    program = _bpf(BPF_PROG_LOAD, attr, "loading the device program", log)
    target = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", target, program, BPF_CGROUP_DEVICE, 0),
             f"attaching the device program to {group}")
    finally:
        os.close(target)
        os.close(program)


def _bpf(command: int, attr: bytes, doing: str, log=None) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(attr, 128)    # union bpf_attr, zero-padded
    result = libc.syscall(ctypes.c_long(cpu().syscalls["bpf"]), ctypes.c_int(command),
                          buffer, ctypes.c_uint(128))
    if result < 0:
        number = ctypes.get_errno()
        said = log.value.decode(errors="replace")[-500:] if log is not None else ""
        raise OSError(number, f"bpf: {doing}: {os.strerror(number)} {said}".strip())
    return result


# -- no cgroup and no mount namespace: refuse the nodes ------------------------------------

def refuse_device_nodes(image: Path) -> None:
    """InvalidArgument if the image holds any device node (checked when neither nodev
    nor an allow-list would stop one from opening)."""
    for directory, _, files in os.walk(image):
        for name in files:
            path = Path(directory) / name
            found = path.lstat()
            if stat.S_ISCHR(found.st_mode) and found.st_rdev == 0:
                continue    # 0:0, overlayfs's whiteout (images/layers.py): no device at all
            if stat.S_ISCHR(found.st_mode) or stat.S_ISBLK(found.st_mode):
                raise InvalidArgument(
                    f"the image holds a device node, {path}: without a mount namespace "
                    "(nodev) or a cgroup (device allow-list) it would open the host's "
                    "device; keep one of them, or remove the node")
