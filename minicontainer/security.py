"""Layer 5: security — take from root inside the container what it does not need.

Namespaces change what a process can *see*; they do not change what root may *do*.
Root in a container still holds every capability, may make every system call the
kernel has, and finds files in /proc that reach into the host's kernel (kcore is its
memory, sysrq-trigger reboots it). Docker closes those doors four ways, and so does
this layer, each part switchable for the lesson:

- capabilities: root's power is split into ~40 capabilities (CAP_SYS_ADMIN mounts,
  CAP_SYS_MODULE loads modules, CAP_SYS_PTRACE traces any process...).
  prctl(PR_CAPBSET_DROP) removes one from the bounding set for good, capset(2)
  from the sets held now; we keep Docker's default set, minus MKNOD: Docker lets
  root make device nodes (and refuses to open them); we do not let it make them.
- devices (devices.py): a node the *image* brings still names a host device, so the
  image is mounted nodev, and the cgroup allows only a few harmless devices to open
  (Docker's allow-list: the devices cgroup on v1, a BPF program on v2).
- no_new_privs: prctl(PR_SET_NO_NEW_PRIVS) — no setuid program or file capability
  can hand them back.
- seccomp: a small BPF program the kernel runs at every system call (seccomp(2)).
  Ours answers EPERM to what Docker's default profile refuses: mount, unshare,
  setns, module loading, reboot, kexec, the clock, keyrings... libseccomp writes the
  BPF, once, through pyseccomp (pure Python over the system's libseccomp.so.2, the
  same API as libseccomp's own binding, and on PyPI, which that one is not); the
  child hands the program to the kernel with prctl(PR_SET_SECCOMP).
- system paths: /proc/kcore and friends are hidden under /dev/null or an empty
  tmpfs; /proc/sys, /proc/sysrq-trigger and a few more become read-only (a
  read-only bind mount of each over itself). /sys is read-only from layer 2 on.

The mounts need the container's own mount namespace (without one they would land on
the host, so they are skipped); everything else works in any container, including
`exec`, which gets the same confinement as the command.
"""
from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import asdict, dataclass, fields
from collections.abc import Iterable, Sequence
from functools import cache, partial
from pathlib import Path

from . import syscalls
from .errors import InvalidArgument
from .host import cache_dir, machine
from .namespaces import FLAGS
from .syscalls import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, mount

# <linux/capability.h>: the numbers behind the names.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
    "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28,
    "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
    "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "NET_RAW",  # no MKNOD
                        "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE",
                        "SYS_CHROOT", "KILL", "AUDIT_WRITE")

# What Docker's default seccomp profile refuses to a container without CAP_SYS_ADMIN.
# moby's profiles/seccomp/default.json is an allow-list: everything it does not name is
# refused. Ours names what is refused instead (easier to read in a lesson), so
# tests/test_security.py checks it call by call against a pinned copy of Docker's.
MOUNT = "mounts a filesystem, or moves one: the way back to the host's files"
NEW_MOUNT_API = "the new mount API (Linux 5.2): " + MOUNT
ANCIENT = "removed from Linux long ago: nothing legitimate calls it"
NEVER_BUILT = "reserved, never implemented: refused so a future kernel's cannot surprise us"
NUMA = "places memory on NUMA nodes: the host's scheduling (Docker: needs CAP_SYS_NICE)"
DENIED_SYSCALLS = {   # name → why a container may not make it
    "mount": MOUNT, "umount2": MOUNT, "pivot_root": MOUNT,
    "fsopen": NEW_MOUNT_API, "fsconfig": NEW_MOUNT_API, "fsmount": NEW_MOUNT_API,
    "fspick": NEW_MOUNT_API, "move_mount": NEW_MOUNT_API, "open_tree": NEW_MOUNT_API,
    "mount_setattr": NEW_MOUNT_API, "open_tree_attr": NEW_MOUNT_API,
    "unshare": "makes new namespaces: a fresh user namespace hands out every capability",
    "setns": "joins other namespaces, the host's among them if it can name them",
    "init_module": "loads code into the host's kernel",
    "finit_module": "loads code into the host's kernel, from a file",
    "delete_module": "unloads a module the host depends on",
    "create_module": ANCIENT, "get_kernel_syms": ANCIENT, "query_module": ANCIENT,
    "uselib": ANCIENT, "ustat": ANCIENT, "sysfs": ANCIENT, "nfsservctl": ANCIENT,
    "_sysctl": ANCIENT,
    "kexec_load": "boots another kernel in place of the host's",
    "kexec_file_load": "boots another kernel in place of the host's, from a file",
    "reboot": "restarts or halts the host (in a pid namespace: kills the namespace)",
    "swapon": "gives the host's memory a swap device", "swapoff": "takes the host's swap away",
    "acct": "switches the host's process accounting on or off",
    "bpf": "loads programs into the host's kernel (a long line of verifier bugs)",
    "perf_event_open": "watches the CPU and the kernel: leaks other processes' secrets",
    "userfaultfd": "stalls the kernel at a chosen page fault: what many kernel exploits use",
    "lookup_dcookie": "names files by kernel cookies (profiling): outside any namespace",
    "quotactl": "changes the host filesystems' quotas",
    "quotactl_fd": "changes the host filesystems' quotas, by fd",
    "fanotify_init": "watches every file access of a whole mount, the host's too",
    "add_key": "the kernel's keyrings have no namespace: other containers' keys",
    "keyctl": "the kernel's keyrings have no namespace: other containers' keys",
    "request_key": "the kernel's keyrings have no namespace: other containers' keys",
    "clock_settime": "sets the host's clock (there is no time namespace for it)",
    "clock_adjtime": "adjusts the host's clock", "settimeofday": "sets the host's clock",
    "open_by_handle_at": "opens any file of a mount by its handle: the 2014 'shocker' escape",
    "name_to_handle_at": "makes the handles open_by_handle_at takes",
    "process_vm_readv": "reads another process's memory",
    "process_vm_writev": "writes another process's memory",
    "kcmp": "compares two processes' kernel objects: tells what they share",
    "pidfd_getfd": "takes a copy of another process's file descriptor",
    "process_madvise": "advises on another process's memory",
    "iopl": "raw access to the machine's I/O ports", "ioperm": "raw access to I/O ports",
    "syslog": "reads or clears the host kernel's log (addresses in it help exploits)",
    "sethostname": "the hostname is the UTS namespace's: Docker sets it, not the container",
    "setdomainname": "the NIS domain is the UTS namespace's: Docker sets it",
    "vhangup": "hangs up the terminal, for every process that has it",
    "io_uring_setup": "io_uring bypasses seccomp's view of calls, and has had many bugs",
    "io_uring_enter": "io_uring bypasses seccomp's view of calls, and has had many bugs",
    "io_uring_register": "io_uring bypasses seccomp's view of calls, and has had many bugs",
    "mbind": NUMA, "set_mempolicy": NUMA, "get_mempolicy": NUMA,
    "set_mempolicy_home_node": NUMA, "migrate_pages": NUMA, "move_pages": NUMA,
    "personality": "switches execution domains, e.g. to turn address randomization off",
    "file_getattr": "too new for Docker's list (Linux 6.17; the ioctls it replaces work)",
    "file_setattr": "too new for Docker's list (Linux 6.17; the ioctls it replaces work)",
    "afs_syscall": NEVER_BUILT, "getpmsg": NEVER_BUILT, "putpmsg": NEVER_BUILT,
    "security": NEVER_BUILT, "tuxcall": NEVER_BUILT, "vserver": NEVER_BUILT,
}
NEW_NAMESPACE_FLAGS = tuple(sorted(FLAGS.values()))   # clone() making any namespace
# Newer than the libseccomp most machines have (2.5 knows calls up to 456), so known
# here by number: since Linux 5.1 a new call has one number on every architecture.
NEWER_SYSCALLS = {"open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469}
NOT_IMPLEMENTED = ("clone3",)   # answered ENOSYS, as Docker does (see build_seccomp_filter)
# socket(2)'s first argument (<linux/socket.h>). Docker refuses two families: AF_VSOCK
# talks to the hypervisor under a VM (or to VMs on the host), out of every network
# namespace; AF_ALG is the kernel's crypto API, a long line of kernel bugs.
SOCKET_FAMILY_NUMBERS = {"AF_ALG": 38, "AF_VSOCK": 40}
DENIED_SOCKET_FAMILIES = SOCKET_FAMILY_NUMBERS
# Calls (or socket families) Docker refuses that we allow, each with its reason. Empty
# today: every one is refused. The parity test fails on any other gap.
ALLOWED_ON_PURPOSE: dict[str, str] = {}

# Docker's defaults (moby oci/defaults.go): hidden, and read-only.
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class Security:
    """Which defences a container gets; all on by default, as in `docker run`."""

    capabilities: bool = True    # keep only `kept` (Docker's DEFAULT_CAPABILITIES)
    no_new_privs: bool = True
    seccomp: bool = True         # refuse DENIED_SYSCALLS
    system_paths: bool = True    # hide MASKED_PATHS, make READ_ONLY_PATHS read-only
    devices: bool = True         # the image mounted nodev; devices.ALLOWED only
    kept: tuple[str, ...] = DEFAULT_CAPABILITIES   # an OCI config names its own (oci.py)

    def __post_init__(self) -> None:
        """`kept` as a tuple of known names (a record on disk holds a list)."""
        object.__setattr__(self, "kept", tuple(self.kept))
        unknown = set(self.kept) - set(CAPABILITIES)
        if unknown:
            raise InvalidArgument(f"unknown capabilities {sorted(unknown)}: use names such "
                                  "as NET_BIND_SERVICE (without CAP_)")

    @classmethod
    def switches(cls) -> tuple[str, ...]:
        """The names of the defences that switch on and off (all but `kept`)."""
        return tuple(f.name for f in fields(cls) if f.type in (bool, "bool"))

    @classmethod
    def off(cls) -> Security:
        """Every defence switched off (roughly `docker run --privileged`)."""
        return cls(capabilities=False, no_new_privs=False, seccomp=False, system_paths=False,
                   devices=False)

    def as_dict(self) -> dict[str, bool | list[str]]:
        """The switches by name (and the kept capabilities), for the container's record."""
        return {**asdict(self), "kept": list(self.kept)}


def from_options(options: Iterable[str] = (), privileged: bool = False,
                 cap_add: Iterable[str] = ()) -> Security:
    """Docker's spellings: --privileged; --security-opt seccomp=unconfined,
    systempaths=unconfined, no-new-privileges=false; --cap-add ALL."""
    if privileged:
        return Security.off()
    switches = Security().as_dict()
    for option in options:
        key, _, value = option.partition("=")
        if (key, value) in (("seccomp", "unconfined"), ("systempaths", "unconfined")):
            switches[{"seccomp": "seccomp", "systempaths": "system_paths"}[key]] = False
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            switches["no_new_privs"] = value != "false"
        else:
            raise InvalidArgument(f"unknown security option {option!r}: use seccomp=unconfined,"
                                  " systempaths=unconfined or no-new-privileges=false")
    for name in cap_add:
        if name.upper() != "ALL":
            raise InvalidArgument(f"--cap-add {name}: only ALL is supported (keep every "
                                  "capability)")
        switches["capabilities"] = False
    return Security(**switches)


def protect_system_paths(masked: Iterable[str] = MASKED_PATHS,
                         read_only: Iterable[str] = READ_ONLY_PATHS) -> None:
    """Hide the `masked` paths and freeze the `read_only` ones: the /proc and /sys files
    that reach into the host's kernel (an OCI bundle names its own lists; a path the
    container lacks is skipped, as runc skips it).

    Runs in the child after pivot_root, so the paths are the container's own: an
    image's symlink on the way resolves inside the container, never on the host.
    """
    for path in map(Path, masked):
        if path.is_dir():
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        elif path.exists():
            mount("/dev/null", path, None, MS_BIND)     # reads as empty, writes vanish
    for path in filter(Path.exists, map(Path, read_only)):
        mount(str(path), path, None, MS_BIND | MS_REC)
        # A bind mount starts writable; remounting it read-only must keep the flags of
        # the /proc it came from (a user namespace may not drop them).
        mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
              | MS_NOEXEC)


@cache
def seccomp_program() -> syscalls._SockFprog:
    """The filter as the kernel takes it: BPF instructions, built in the parent (the
    child only hands them over). libseccomp writes them once; they are kept in the
    image cache, so later runs read 8 bytes per instruction instead of loading it."""
    rules = (sorted(DENIED_SYSCALLS), NEWER_SYSCALLS, DENIED_SOCKET_FAMILIES, NEW_NAMESPACE_FLAGS)
    digest = hashlib.sha256(repr(rules).encode()).hexdigest()
    path = cache_dir() / f"seccomp-{machine()}-{digest[:12]}.bpf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        with open(draft, "wb") as f:
            build_seccomp_filter().export_bpf(f)
        draft.rename(path)                  # atomic: a reader sees all of it or nothing
    return syscalls.seccomp_program(path.read_bytes())


def build_seccomp_filter():
    """Calls it does not name are allowed; named ones answer EPERM."""
    import pyseccomp as seccomp
    refuse = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(refuse, NEWER_SYSCALLS.get(name, name))   # by number if too new
        except (OSError, RuntimeError):   # not a system call on this architecture
            pass
    for family in DENIED_SOCKET_FAMILIES.values():
        f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
    for flag in NEW_NAMESPACE_FLAGS:      # clone() may make processes, not namespaces
        f.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of reach: the
    return f                                           # C library falls back to clone()


def confine(security: Security, program: syscalls._SockFprog | None = None) -> None:
    """The last step before exec: no new privileges, the filter, fewer capabilities.

    The filter goes in while we still hold CAP_SYS_ADMIN (needed to load one without
    no_new_privs); capset and prctl stay allowed by it.
    """
    if security.no_new_privs:
        syscalls.set_no_new_privs()
    if security.seccomp:
        syscalls.load_seccomp(program)
    if security.capabilities:
        keep = {CAPABILITIES[name] for name in security.kept}
        syscalls.drop_capabilities(keep)


def inherit_capabilities(kept: Iterable[str], inheritable: Iterable[str],
                         ambient: Iterable[str]) -> None:
    """A step after confine() (or after become_user kept them): effective = permitted
    = `kept`, the inheritable set, and the `ambient` capabilities raised, those an OCI
    bundle lists (the kernel takes only ones both permitted and inheritable: runc
    warns about the others and goes on; we skip them)."""
    kept, inheritable = set(kept), set(inheritable)
    syscalls.set_capabilities({CAPABILITIES[name] for name in kept},
                              {CAPABILITIES[name] for name in inheritable})
    for name in sorted(set(ambient) & kept & inheritable):
        syscalls.raise_ambient(CAPABILITIES[name])


def become_user(uid: int, gid: int, groups: Sequence[int] = (),
                keep_capabilities: bool = False) -> None:
    """Run as `uid`:`gid` from here on (the image's User, or -u), in the supplementary
    `groups` only (an OCI bundle's additionalGids), groups first.

    setgroups, setgid, setuid, in that order: each needs the privilege the next one
    gives up. The host caller's supplementary groups are dropped, for root too. Docker
    (runc's setupUser) also adds the groups /etc/group lists the user in, before the
    additional ones; we do not. `keep_capabilities` keeps the permitted set across
    setuid (PR_SET_KEEPCAPS, as runc does for an OCI bundle's user; the effective set
    is still cleared: inherit_capabilities raises it again).
    For a uid other than 0 the kernel then clears the permitted and effective
    capabilities, as Docker gives a non-root user none (the bounding set stays).
    """
    os.setgroups(list(groups))
    os.setgid(gid)
    if keep_capabilities:
        syscalls.set_keep_capabilities(True)
    os.setuid(uid)
    if keep_capabilities:
        syscalls.set_keep_capabilities(False)    # for good: a later setuid clears them


def user_steps(user: tuple[int, int], workdir: str, user_namespace: bool) -> list:
    """The steps after confine(): become `user` (uid, gid), then enter `workdir` as
    that user (runc's order: a directory the user may not enter fails the start). In
    a user namespace only root is mapped, and setgroups is denied: nothing to become."""
    become = [] if user_namespace else [partial(become_user, *user)]
    return become + [partial(os.chdir, workdir)]


def steps(security: Security, mount_namespace: bool) -> list:
    """The child's steps for `security`: the mounts (with a mount namespace), then confine."""
    chosen = [protect_system_paths] if security.system_paths and mount_namespace else []
    program = seccomp_program() if security.seccomp else None
    return chosen + [partial(confine, security, program)]

