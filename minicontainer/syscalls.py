"""The few Linux system calls Python 3.11 does not wrap, called through ctypes.

Python's `os` module already has fork, execve, chroot, kill and waitpid, and `socket`
has sethostname. What it lacks (before 3.12) are the calls containers are made of:

- unshare(2)    leave some namespaces and enter fresh ones
- setns(2)      join the namespace behind a /proc/PID/ns/* file
- mount(2)      attach a filesystem (or change how a mount propagates)
- umount2(2)    detach one
- pivot_root(2) make another directory the root of the mount namespace
- openat2(2)    open a path as if a directory were `/` (a volume's place in an image)
- prctl(2)      a signal when our parent dies; no new privileges; the bounding set;
                a seccomp filter
- capset(2)     the capabilities a process holds now
- ptrace(2)     only for the escape lab: try to trace a process

ctypes loads the C library and calls them directly. Each wrapper turns C's convention
(return -1 and set errno) into a Python OSError that names the call and its arguments,
so a failure reads like a sentence. This is the only module with ctypes in it.
"""
from __future__ import annotations

import ctypes
import errno
import os

from .host import cpu

_libc = ctypes.CDLL(None, use_errno=True)

# One bit per namespace type, for unshare(2) and setns(2) (from <linux/sched.h>).
CLONE_NEWNS = 0x00020000      # mount points ("mnt")
CLONE_NEWCGROUP = 0x02000000  # the cgroup tree seen as /
CLONE_NEWUTS = 0x04000000     # hostname
CLONE_NEWIPC = 0x08000000     # System V IPC, POSIX message queues
CLONE_NEWUSER = 0x10000000    # user and group ids
CLONE_NEWPID = 0x20000000     # process ids
CLONE_NEWNET = 0x40000000     # network devices, addresses, routes, ports

# Flags for mount(2) (from <linux/mount.h>).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2  # umount2(2): detach now, free when no longer busy ("lazy")

# pivot_root has no wrapper in the C library: we call it by its number, which
# differs between CPU architectures (the generic table is used by arm64 and riscv64).
_HINTS = {
    errno.EPERM: "this needs CAP_SYS_ADMIN: are you root?",
    errno.EACCES: "permission denied: are you root?",
}


def _check(result: int, call: str, *args: object, hint: bool = True) -> None:
    """Raise an OSError naming `call(args)` if a C call returned -1."""
    if result != -1:
        return
    code = ctypes.get_errno()
    shown = ", ".join(repr(a) for a in args)
    hint = f" ({_HINTS[code]})" if hint and code in _HINTS else ""
    raise OSError(code, f"{call}({shown}): {os.strerror(code)}{hint}")


def _bytes(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in `flags`."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that the open /proc/PID/ns/* file `fd` refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", fd)


def mount(source: str | None, target: str | os.PathLike, fstype: str | None,
          flags: int = 0, data: str | None = None) -> None:
    """Attach filesystem `source` of type `fstype` at `target` (see mount(2))."""
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype),
                         ctypes.c_ulong(flags), _bytes(data))
    _check(result, "mount", source, os.fspath(target), fstype)


def umount(target: str | os.PathLike, detach: bool = False) -> None:
    """Detach the filesystem at `target`; with detach=True even if it is busy."""
    flags = MNT_DETACH if detach else 0
    _check(_libc.umount2(_bytes(target), ctypes.c_int(flags)), "umount2", os.fspath(target))


def pivot_root(new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
    """Make `new_root` the root of this mount namespace; the old root moves to `put_old`."""
    number = ctypes.c_long(cpu().syscalls["pivot_root"])   # glibc has no wrapper
    result = _libc.syscall(number, _bytes(new_root), _bytes(put_old))
    _check(result, "pivot_root", os.fspath(new_root), os.fspath(put_old))


# openat2(2)'s `resolve` bits (from <linux/openat2.h>).
RESOLVE_NO_MAGICLINKS = 0x02  # no /proc/PID/fd/N-style jumps
RESOLVE_NO_SYMLINKS = 0x04    # no symlink at all on the way
RESOLVE_BENEATH = 0x08        # never above the directory fd (`..`, absolute paths refused)
RESOLVE_IN_ROOT = 0x10        # `/`, `..` and absolute symlinks stop at the directory fd


class _OpenHow(ctypes.Structure):
    """struct open_how: open(2)'s flags and mode, and how to resolve the path."""
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str | os.PathLike, flags: int, resolve: int) -> int:
    """An fd of `path` opened relative to `dir_fd`, resolved as `resolve` says
    (Linux 5.6 on; 437 is its number on every architecture)."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(437), ctypes.c_int(dir_fd), _bytes(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    _check(fd, "openat2", dir_fd, os.fspath(path), hint=False)
    return fd


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send us `sig` when our parent dies (prctl PR_SET_PDEATHSIG)."""
    PR_SET_PDEATHSIG = 1
    _check(_libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig)), "prctl", sig)


def close_on_exec_from(first: int) -> None:
    """Mark every fd from `first` up close-on-exec: execve(2) will close them all.

    close_range(2) with CLOSE_RANGE_CLOEXEC (Linux 5.11) does it in one call, however
    many fds the caller had; the fds stay usable until the exec itself.
    A seccomp profile may refuse close_range (an OCI bundle's, older than the call):
    then each open fd, as /proc/self/fd lists them, is marked with fcntl(2).
    """
    CLOSE_RANGE_CLOEXEC, NR_CLOSE_RANGE = 1 << 2, 436   # 436 on every architecture
    if _libc.syscall(ctypes.c_long(NR_CLOSE_RANGE), ctypes.c_uint(first),
                     ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) == 0:
        return
    if ctypes.get_errno() not in (errno.EPERM, errno.ENOSYS, errno.EACCES):
        _check(-1, "close_range", first)
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:                  # the listing's own fd, closed by now
                pass


def set_dumpable(dumpable: bool) -> None:
    """prctl(PR_SET_DUMPABLE): a non-dumpable process's /proc/PID/{exe,fd,cwd,root,mem}
    open only for a process holding CAP_SYS_PTRACE. execve(2) makes it dumpable again."""
    PR_SET_DUMPABLE = 4
    _check(_libc.prctl(ctypes.c_int(PR_SET_DUMPABLE), ctypes.c_ulong(int(dumpable)), 0, 0, 0),
           "prctl", "PR_SET_DUMPABLE")


PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24


def set_no_new_privs() -> None:
    """From now on, execve never grants privileges (setuid bits, file capabilities)."""
    _check(_libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), 0, 0, 0),
           "prctl", "PR_SET_NO_NEW_PRIVS")


def drop_capabilities(keep: set[int]) -> None:
    """Keep only the capabilities numbered in `keep`: drop the others from the bounding
    set (for good, across execve), then set effective = permitted = keep (capset(2))."""
    for cap in range(64):
        if cap not in keep and _libc.prctl(ctypes.c_int(PR_CAPBSET_DROP), ctypes.c_ulong(cap),
                                           0, 0, 0) == -1:
            if ctypes.get_errno() == errno.EINVAL:   # past the last capability this kernel has
                break
            _check(-1, "prctl", "PR_CAPBSET_DROP", cap)
    set_capabilities(keep)


def set_capabilities(keep: set[int], inheritable: set[int] = frozenset()) -> None:
    """effective = permitted = `keep`, and the `inheritable` set (capset(2))."""
    bits, passed = sum(1 << cap for cap in keep), sum(1 << cap for cap in inheritable)
    low, high = bits & 0xFFFFFFFF, bits >> 32
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)     # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)(low, low, passed & 0xFFFFFFFF,   # effective, permitted,
                                 high, high, passed >> 32)        # inheritable
    _check(_libc.capset(header, data), "capset", hex(bits))


def set_keep_capabilities(keep: bool) -> None:
    """prctl(PR_SET_KEEPCAPS): whether a setuid away from 0 keeps the permitted set."""
    PR_SET_KEEPCAPS = 8
    _check(_libc.prctl(ctypes.c_int(PR_SET_KEEPCAPS), ctypes.c_ulong(int(keep)), 0, 0, 0),
           "prctl", "PR_SET_KEEPCAPS")


def raise_ambient(cap: int) -> None:
    """Add `cap` to the ambient set: kept across execve of a program without file
    capabilities (prctl PR_CAP_AMBIENT_RAISE; it must be permitted and inheritable)."""
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
    _check(_libc.prctl(ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(PR_CAP_AMBIENT_RAISE),
                       ctypes.c_ulong(cap), 0, 0), "prctl", "PR_CAP_AMBIENT_RAISE", cap)


def ptrace_attach(pid: int) -> None:
    """Become `pid`'s tracer (it stops), then let it go again (PTRACE_ATTACH, _DETACH)."""
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    _check(_libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None),
           "ptrace", "PTRACE_ATTACH", pid, hint=False)
    os.waitpid(pid, 0)   # the tracee stops: wait for that before letting go
    _libc.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: how many BPF instructions, and where they are."""
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_program(bpf: bytes) -> _SockFprog:
    """Wrap BPF instructions (8 bytes each) for the kernel; keep the result alive."""
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    program = _SockFprog(len(bpf) // 8, ctypes.addressof(buffer))
    program._buffer = buffer
    return program


def load_seccomp(program: _SockFprog) -> None:
    """From now on the kernel runs `program` at each of our system calls, and our
    children's, for good (prctl PR_SET_SECCOMP, SECCOMP_MODE_FILTER)."""
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                       ctypes.byref(program), 0, 0), "prctl", "PR_SET_SECCOMP")
