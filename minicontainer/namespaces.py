"""Layer 2: namespaces — give a process its own view of the machine.

A namespace wraps one kind of global resource so that the processes inside see their
own copy: `mnt` the mount table, `pid` the process ids, `uts` the hostname, `ipc`
shared memory and message queues, `net` the network devices and ports, `user` the
user ids. unshare(2) moves the caller into fresh namespaces of the kinds it names
(CLONE_NEW* flags); setns(2) joins existing ones through their /proc/PID/ns/* files,
and the inode number of such a file is the namespace's identity.

Nothing is copied or emulated: the process still runs on the host's kernel, which
checks the namespace at every system call. That is why a container is not a virtual
machine: it virtualizes the operating system's names, not the hardware.

With a mount namespace, the new root is entered with pivot_root(2) instead of
chroot: the old root is moved aside and then detached, so unlike layer 1 there is
nothing left to climb back to. Before that, while the host's paths still resolve,
the new root gets its mounts (`Mount`): host files and directories bound into it
(volumes, `-v`, and the network's /etc/hosts) and tmpfs (`--tmpfs`), each placed by
resolving its path *inside* the new root, as the container will see it (openat2).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import syscalls
from .chroot import chroot_into
from .errors import ImageError, InvalidArgument
from .process import PLAIN_WAITER, Channel, Waiter, fork_and_wait, wait_for_parent
from .rootfs import BoundRoot, Overlay
from .syscalls import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
                       MS_REMOUNT, mount)

# /proc/PID/ns/<name> → the unshare/setns flag for that kind of namespace.
FLAGS = {
    "user": syscalls.CLONE_NEWUSER, "cgroup": syscalls.CLONE_NEWCGROUP,
    "ipc": syscalls.CLONE_NEWIPC, "uts": syscalls.CLONE_NEWUTS, "net": syscalls.CLONE_NEWNET,
    "pid": syscalls.CLONE_NEWPID, "mnt": syscalls.CLONE_NEWNS,
}  # in the order setns must join them: user first, mnt last (as nsenter does)
DEFAULT = frozenset({"mnt", "pid", "uts", "ipc", "net"})  # what `docker run` unshares
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
PTYS = 256                # terminals a container may open (kernel.pty.max counts all)
SHM_SIZE = 64 * 1024**2   # Docker's default /dev/shm: shared memory is memory, so bounded
KERNEL_PATHS = ("/proc", "/sys", "/dev")   # the kernel's own views: never a mount's place


@dataclass(frozen=True)
class Mount:
    """What the container sees at `target`, over its image: the host's `source` bound
    there (a volume, `-v`), or, without a source, a new tmpfs (`--tmpfs`)."""

    target: str                  # absolute, inside the container
    source: str | None = None    # a host path, symlinks resolved; None: a tmpfs
    read_only: bool = False
    noexec: bool = False         # Docker's default for --tmpfs
    size: int | None = None      # a tmpfs's bytes (None: the kernel's, half the RAM)
    mode: int | None = None      # a tmpfs's mode (None: the target's, or 1777)
    flags: int = 0               # more of mount(2)'s MS_* flags: the atime ones (a bundle's)
    propagation: int = 0         # MS_SHARED, MS_SLAVE...: its propagation in our namespace


def ns_ids(pid: int | str = "self") -> dict[str, int]:
    """The identity (inode number) of each namespace process `pid` is in."""
    return {kind: os.stat(f"/proc/{pid}/ns/{kind}").st_ino for kind in FLAGS}


def isolate(rootfs: Overlay | BoundRoot, namespaces: Iterable[str], hostname: str, channel: Channel,
            waiter: Waiter = PLAIN_WAITER, mounts: Sequence[Mount] = (),
            shm_size: int = SHM_SIZE, joined: Mapping[str, str] | None = None,
            mqueue: bool = False, tmp: bool = True,
            enter_user: Callable[[], None] | None = None) -> None:
    """Everything a container's first process does to itself, in the kernel's order.

    Runs in the child, between fork and exec; `channel` is spawn's, on which a new pid
    namespace's first process is reported. `waiter` is what the process left waiting
    outside the pid namespace holds (process.Waiter: where the command's wait status
    goes, and the program it becomes, monitor.c). `mounts` go over the image in their
    order (/etc/hosts, volumes, tmpfs: see mount_inside). `shm_size` bounds /dev/shm,
    in bytes. `joined` names existing namespaces to enter first, by their files
    ({kind: path}: an OCI bundle's), before any is made; `mqueue` adds /dev/mqueue
    (a bundle's); `tmp`: a tmpfs of its own at /tmp (a bundle's root keeps its own,
    as under runc). `enter_user` makes the user namespace: by default ours, which maps
    only ourselves; a bundle's has its maps written by the parent
    (enter_user_namespace_mapped_by_parent).
    """
    namespaces, joined = set(namespaces), dict(joined or {})
    join_by_path(joined)                  # first, as runc's nsexec: the new ones go below
    if "user" in namespaces:              # first: it owns the namespaces made after it
        (enter_user or enter_user_namespace)()
    if "pid" in namespaces:               # a new pid namespace is for our children only:
        syscalls.unshare(syscalls.CLONE_NEWPID)
    if "pid" in namespaces or "pid" in joined:   # so is one joined
        fork_and_wait(channel, waiter)    # the child goes on as PID 1; we wait outside
    # cgroup: not here. Its root is the group the process is in when it is made, so
    # the caller makes it once the process has joined its own (container.setup_steps).
    syscalls.unshare(sum(FLAGS[kind] for kind in namespaces - {"user", "pid", "cgroup"}))
    if "net" in namespaces:               # while /proc/sys still answers for our netns:
        refuse_router_advertisements()    # eth0, made later, takes no RA from a neighbour
    if "mnt" in namespaces:
        make_mounts_private()             # nothing we mount may leak back to the host
        rootfs.mount()                    # the image, plus a writable layer of our own
        # sysfs shows network devices: a user namespace may mount it only with its own.
        sysfs = "net" in namespaces or "user" not in namespaces
        mount_kernel_filesystems(rootfs.merged, sysfs, shm_size, "user" not in namespaces,
                                 mqueue, tmp)
        for wanted in mounts:             # nodev as the image is (Security.devices)
            mount_inside(rootfs.merged, wanted, rootfs.nodev)
        pivot_into(rootfs.merged)
    else:
        chroot_into(rootfs.lower)         # layer 1: all there is without a mount namespace
    if "uts" in namespaces or "uts" in joined:   # runc names a joined one too
        socket.sethostname(hostname)
    if "net" in namespaces:
        bring_up_loopback()               # a new network namespace starts with lo down


def join_by_path(paths: Mapping[str, str]) -> None:
    """Enter the namespaces whose files `paths` names ({kind: path}), in setns's order.
    setns(2) is given the kind: the kernel refuses (EINVAL) a file that is not a
    namespace of that kind, whatever was checked before (namespace_kind)."""
    for kind in (kind for kind in FLAGS if kind in paths):
        fd = os.open(paths[kind], os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, FLAGS[kind])
        finally:
            os.close(fd)


NS_GET_NSTYPE = 0xB703       # <linux/nsfs.h>: _IO(0xb7, 0x3)


def namespace_kind(path: str) -> str | None:
    """The kind of namespace the file at `path` is (None: it is not a namespace file),
    asked of the kernel with the NS_GET_NSTYPE ioctl on nsfs. Only a regular file is
    opened (an nsfs file is one): opening a device or a FIFO could act or block."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        flag = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:            # ENOTTY: an ordinary file, a device, a directory...
        return None
    finally:
        os.close(fd)
    return next((kind for kind, value in FLAGS.items() if value == flag), None)


def make_mounts_private() -> None:
    """Stop mount events from propagating between our mount namespace and the host's."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_kernel_filesystems(root: Path, sysfs: bool = True, shm_size: int = SHM_SIZE,
                             tty_group: bool = True, mqueue: bool = False,
                             tmp: bool = True) -> None:
    """Give the new root its own /proc (our pid namespace's), /dev, /sys and /tmp
    (`tty_group`: its terminals belong to group 5, which a user namespace lacks;
    `mqueue`: /dev/mqueue too; not `tmp`: no /tmp), in the order `runc spec` lists them."""
    mount("proc", kernel_mount_point(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount_minimal_dev(kernel_mount_point(root, "dev"), shm_size, tty_group)
    if mqueue:
        mount_message_queues(root / "dev")
    if sysfs:
        mount("sysfs", kernel_mount_point(root, "sys"), "sysfs",
              MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # /tmp is no kernel's: an image's `tmp -> var/tmp` is followed inside the image, as a
    # --tmpfs would be.
    if tmp:
        mount_inside(root, Mount("/tmp", mode=0o1777))


def kernel_mount_point(root: Path, name: str) -> Path:
    """root/name, a directory of the image's to mount a kernel filesystem on: made if
    the image lacks it, ImageError if the image put a symlink or a file there.

    These mounts happen before pivot_root, while paths still resolve on the host:
    mount(2) would follow an image's `proc -> /srv/data` there, and a volume of
    /srv/data would then show the container a procfs that no mask covers
    (/proc/sys/kernel/core_pattern writable). runc refuses the same ("must be
    mounted on ordinary directory", CVE-2019-19921). Checking, then mounting by the
    path, is safe here: the overlay is mounted in this mount namespace alone, and
    nothing of the container runs yet.
    """
    path = root / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)            # mkdir(2) never follows a symlink in its place
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise ImageError(f"the image's /{name} is a symlink or a file, not a directory: "
                         f"refused (/{name} is where the kernel's own filesystem goes)")
    return path


def mount_minimal_dev(dev: Path, shm_size: int = SHM_SIZE, tty_group: bool = True) -> None:
    """A /dev with a few harmless devices borrowed from the host, not all of them, and a
    /dev/shm of `shm_size` bytes (a tmpfs lives in memory: unbounded, it could take half
    the host's, the kernel's default for tmpfs)."""
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        (dev / name).touch()
        mount(f"/dev/{name}", dev / name, None, MS_BIND)  # the host's node, bind-mounted
    (dev / "pts").mkdir()
    # Its own instance: its ptys only, numbered from 0, at most PTYS of them, so it
    # cannot use up the host's; as Docker's, a pty is group tty (5) with mode 620 -
    # where group 5 exists (a user namespace maps only our own group).
    group = ",mode=0620,gid=5" if tty_group else ""
    mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC,
          f"newinstance,ptmxmode=0666,max={PTYS}{group}")
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    mount("shm", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,   # Docker's name
          f"mode=1777,size={shm_size}")
    for fd, name in enumerate(["stdin", "stdout", "stderr"]):
        (dev / name).symlink_to(f"/proc/self/fd/{fd}")
    (dev / "fd").symlink_to("/proc/self/fd")


def mount_message_queues(dev: Path) -> None:
    """The ipc namespace's POSIX message queues as files in `dev`/mqueue (an OCI bundle
    asks for it, as runc mounts it): an mqueue filesystem shows the queues of the
    ipc namespace of whoever mounts it, which the caller can reach anyway."""
    (dev / "mqueue").mkdir(0o755)
    mount("mqueue", dev / "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_inside(root: Path, wanted: Mount, nodev: bool = True) -> None:
    """Mount `wanted` at its target in `root`, nosuid and `nodev` (a host's setuid
    program or device node in a volume does nothing), the target found as the
    container will see it (open_in_root). A bind is one mount, not Docker's `rbind`:
    mounts below the host directory do not come along with their own flags.

    The mount goes through /proc/self/fd/N, the fds we resolved, never through a path
    the kernel would walk again (as runc's mountViaFds). A bind mount takes its
    source's flags; MS_REMOUNT then sets ours, where the new mount is: on top of the
    mount point, so reopened from `root` (runc's reopenAfterMount). Docker's `-v`
    binds are `rbind` plus `ro`, without nosuid or nodev: Docker counts on its device
    cgroup alone; we add nodev as we mount the image nodev.
    """
    flags = MS_NOSUID | (MS_NODEV if nodev else 0) | (MS_NOEXEC if wanted.noexec else 0) | (
        MS_RDONLY if wanted.read_only else 0) | wanted.flags
    if wanted.source is None:
        target, made = open_in_root(root, wanted.target, directory=True)
        mode = wanted.mode if wanted.mode is not None else (
            0o1777 if made else stat.S_IMODE(os.fstat(target).st_mode))  # as runc copies it
        size = f",size={wanted.size}" if wanted.size else ""
        mount("tmpfs", _fd_path(target), "tmpfs", flags, f"mode={mode:o}{size}")
        set_propagation(root, target, wanted.propagation)
        os.close(target)
        return
    # The host side was resolved when the container was described; a symlink put on
    # its way since then is refused, not followed.
    source = syscalls.openat2(AT_FDCWD, wanted.source, os.O_PATH, syscalls.RESOLVE_NO_SYMLINKS)
    is_directory = stat.S_ISDIR(os.fstat(source).st_mode)
    target, _ = open_in_root(root, wanted.target, is_directory)
    if stat.S_ISDIR(os.fstat(target).st_mode) != is_directory:   # else mount(2): ENOTDIR
        for fd in (source, target):
            os.close(fd)
        kinds = ("a directory", "a file") if is_directory else ("a file", "a directory")
        raise InvalidArgument(f"volume {wanted.source}:{wanted.target}: the host path is "
                              f"{kinds[0]}, {wanted.target} in the image is {kinds[1]}: "
                              "bind a directory on a directory, a file on a file")
    mount(_fd_path(source), _fd_path(target), None, MS_BIND)
    top = reopen(root, target)
    # In a user namespace, the host mount's flags (ro, nosuid, nodev, noexec, atime) are
    # locked: a remount must keep them, or EPERM. Root keeps them too: a volume never
    # gets more than the host's mount allows.
    host = locked_flags(source)
    if wanted.flags & ATIME_FLAGS:        # the atime asked for, instead of the host's
        host &= ~ATIME_FLAGS
    mount(None, _fd_path(top), None, MS_BIND | MS_REMOUNT | flags | host)
    set_propagation(root, target, wanted.propagation)
    for fd in (source, target, top):
        os.close(fd)


ATIME_FLAGS = (syscalls.MS_NOATIME | syscalls.MS_NODIRATIME | syscalls.MS_RELATIME
               | syscalls.MS_STRICTATIME)


def set_propagation(root: Path, target: int, propagation: int) -> None:
    """Make the mount just put on `target` shared, slave, private or unbindable, in
    our mount namespace (make_mounts_private cut its ties to the host's first: a
    shared mount here has peers only in namespaces copied from ours, never the host)."""
    if propagation:
        top = reopen(root, target)
        try:
            mount(None, _fd_path(top), None, propagation)
        finally:
            os.close(top)


AT_FDCWD = -100
IN_ROOT = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS


def open_in_root(root: Path, path: str, directory: bool) -> tuple[int, bool]:
    """An O_PATH fd of `path` in `root`, resolved as if `root` were `/`, and whether it
    was made (a directory, or an empty file if not `directory`, parents 0755).

    An image is untrusted: its `data -> /etc` must lead to the image's /etc, never the
    host's, and a `data -> /proc/sys` is refused. openat2(RESOLVE_IN_ROOT) resolves
    `..` and absolute symlinks within `root`; what is missing is made one name at a
    time below the last fd, with O_NOFOLLOW. runc does the same with
    securejoin's OpenInRoot and MkdirAllInRoot (libcontainer/rootfs_linux.go,
    createOpenMountpoint), then checks the resolved path against /proc (checkProcMount).
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = path.strip("/").split("/")
        found = len(parts)
        while True:                      # the longest part of the path that exists
            try:
                fd = syscalls.openat2(root_fd, "/".join(parts[:found]) or ".", os.O_PATH,
                                      IN_ROOT)
                break
            except FileNotFoundError:
                found -= 1
        for i, name in enumerate(parts[found:], start=found + 1):
            try:
                if i == len(parts) and not directory:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
                step = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:       # e.g. a symlink to nowhere: we make nothing through it
                raise InvalidArgument(f"mount target {path}: cannot make {name!r} in the "
                                      f"image: {e.strerror}") from None
            finally:
                os.close(fd)
            fd = step
    finally:
        os.close(root_fd)
    _refuse_kernel_paths(root, fd, path)
    return fd, found < len(parts)


def _refuse_kernel_paths(root: Path, fd: int, path: str) -> None:
    """InvalidArgument (fd closed) unless `fd` is below `root`, and not at its top or
    in /proc, /sys or /dev there: what `path` led to after the image's symlinks."""
    reached, root = os.readlink(_fd_path(fd)), os.path.realpath(root)
    inside = "/" + os.path.relpath(reached, root)
    if os.path.commonpath([reached, root]) != root or inside == "/." or any(
            inside == kernel or inside.startswith(kernel + "/") for kernel in KERNEL_PATHS):
        os.close(fd)
        raise InvalidArgument(f"mount target {path} leads to {inside} in the image (through "
                              "a symlink): refused, that is not a place for a volume")


def reopen(root: Path, fd: int) -> int:
    """The path of `fd` opened again from `root`: it now finds what was just mounted on
    top of it. A rename in between would show as another path: refused."""
    reached = os.readlink(_fd_path(fd))
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        again = syscalls.openat2(root_fd, os.path.relpath(reached, os.path.realpath(root)),
                                 os.O_PATH, IN_ROOT)
    finally:
        os.close(root_fd)
    if os.readlink(_fd_path(again)) != reached:
        os.close(again)
        raise InvalidArgument(f"the mount point {reached} moved while it was mounted on")
    return again


def locked_flags(fd: int) -> int:
    """The mount flags of the mount `fd` is on, as mount(2) spells them (statfs's
    ST_* bits are MS_* bits, but for the atime ones)."""
    st_flags = os.statvfs(fd).f_flag
    flags = st_flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | syscalls.MS_NOATIME
                        | syscalls.MS_NODIRATIME)
    if st_flags & os.ST_RELATIME:
        flags |= syscalls.MS_RELATIME
    elif not st_flags & syscalls.MS_NOATIME:
        flags |= syscalls.MS_STRICTATIME     # no atime flag in statfs: strictatime
    return flags


def _fd_path(fd: int) -> str:
    """The path through which the kernel reaches the very file `fd` is open on."""
    return f"/proc/self/fd/{fd}"


def pivot_into(new_root: Path) -> None:
    """Swap / for new_root so the old root cannot be reached again (unlike chroot).

    pivot_root(".", ".") stacks the old root on top of the new one, at the same
    place; unmounting "." then detaches the old root, and the host's / is gone from
    this mount namespace for good (the idiom from pivot_root(2), as runc uses it).
    """
    os.chdir(new_root)
    syscalls.pivot_root(".", ".")       # new_root must be a mount point: the overlay is
    syscalls.umount(".", detach=True)   # the host's / disappears from view
    os.chdir("/")


def bring_up_loopback() -> None:
    """Set the IFF_UP flag of `lo` with the classic SIOCSIFFLAGS ioctl."""
    SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags))  # struct ifreq


def refuse_router_advertisements(interface: str = "default") -> None:
    """accept_ra=0 and autoconf=0 for `interface` in the caller's network namespace
    ("default": for the interfaces made after this). Nothing to do without IPv6.

    Layer 4 calls it for its bridges; a container calls it right after
    unshare(CLONE_NEWNET), when /proc/sys/net already shows the new namespace's settings
    and is still writable. The kernel already ignores advertisements on an interface
    that forwards IPv6 (forwarding=1, unless accept_ra=2), but our bridges route only
    IPv4: their IPv6 forwarding is the host's, 0 on most machines, so accept_ra=1 holds.
    """
    conf = Path("/proc/sys/net/ipv6/conf") / interface
    if conf.is_dir():
        (conf / "accept_ra").write_text("0")   # no routers, prefixes or routes from it
        (conf / "autoconf").write_text("0")    # no addresses made up from a prefix


def enter_user_namespace() -> None:
    """A new user namespace in which we are root: uid/gid 0 inside is ours outside."""
    uid, gid = os.geteuid(), os.getegid()   # read first: once inside, unmapped ids read 65534
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    # A non-dumpable process's /proc/self files belong to root (process._child makes us
    # so): a user who is not root could not write its own maps. Dumpable for these
    # three writes only, before anything of the container's exists to look at us.
    syscalls.set_dumpable(True)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    syscalls.set_dumpable(False)


def enter_user_namespace_mapped_by_parent(channel: Channel) -> None:
    """A new user namespace whose ids the parent maps (write_id_maps), then become its
    root (uid and gid 0 inside). Only a process outside, with CAP_SETUID there, may map
    more ids than its own, so the child waits for the parent, as runc's does."""
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    wait_for_parent(channel)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def write_id_maps(pid: int, uid_map: str, gid_map: str) -> None:
    """In the parent: write the user namespace's maps of process `pid` (lines of
    "inside outside count"). setgroups stays allowed: root outside may map groups."""
    Path(f"/proc/{pid}/uid_map").write_text(uid_map)
    Path(f"/proc/{pid}/gid_map").write_text(gid_map)


def user_namespaces_refused() -> str | None:
    """Why an unprivileged user may not make a user namespace here (None: they may).

    Three switches can forbid it: a zero namespace budget, Debian's old
    unprivileged_userns_clone, and Ubuntu's AppArmor restriction (24.04 on), which lets
    unshare succeed but leaves the process without capabilities inside.
    """
    def value(path: str) -> str | None:
        """A /proc/sys switch's value; None where this kernel has no such switch."""
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    if value("/proc/sys/user/max_user_namespaces") == "0":
        return "user.max_user_namespaces is 0: `sudo sysctl user.max_user_namespaces=15000`"
    if value("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are off: "
                "`sudo sysctl kernel.unprivileged_userns_clone=1`")
    if value("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces (Ubuntu 24.04): "
                "`sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0` for the lab")
    return None


def join(pid: int, namespaces: Iterable[str], channel: Channel) -> None:
    """Enter the namespaces and root of running process `pid` (what `exec` does);
    `channel` is spawn's, told the joined command's pid in a pid namespace."""
    files = [(FLAGS[kind], os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY))
             for kind in FLAGS if kind in set(namespaces)]
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)  # before /proc changes
    for flag, fd in files:
        syscalls.setns(fd, flag)
        os.close(fd)
    os.fchdir(root)
    chroot_into(".")
    os.close(root)
    if "pid" in set(namespaces):
        fork_and_wait(channel)
