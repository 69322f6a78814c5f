"""config.json's mounts and `linux` object: what each field becomes in our layers.

bundles.py reads the process and the root; this module reads what a runtime spec
says about the kernel's side: the namespaces to make or to join by path, the mounts
over the root, the paths to mask or freeze, the sysctls, the seccomp profile. Each
is checked here, in the parent, before anything exists: a field we cannot honour
is refused by its JSON path. What it becomes is one of our layers' own inputs, a
Mount for namespaces.mount_inside, a {kind: path} for namespaces.join_by_path, a
BPF program for security.confine, so that oci.py only hands them to the steps.

Where we refuse what runc accepts, the reason is said where it is refused.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from . import namespaces as ns
from . import cgroups, state, syscalls
from .arguments import check_source, check_target
from .errors import BadBundle, InvalidArgument
from .host import parse_size
from .jsonfields import Fields
from .security import (DENIED_SOCKET_FAMILIES, DENIED_SYSCALLS, NEW_NAMESPACE_FLAGS,
                       NOT_IMPLEMENTED)

# The runtime spec's names of namespaces → ours (namespaces.FLAGS).
NAMESPACES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
              "cgroup": "cgroup", "user": "user"}
ID_MAP_LINES = 340           # the kernel's limit on the lines of a uid_map (5.x on)
# The mounts `runc spec` writes. We make our own equivalents of these (namespaces.py:
# proc, sysfs read-only, a small /dev with devpts and /dev/shm, /dev/mqueue if listed),
# whatever options the file gives; /sys/fs/cgroup is not mounted (a difference from
# runc). proc and sysfs go nowhere else: maskedPaths and readonlyPaths cover /proc and
# /sys only, and a second instance would show kcore and sysrq-trigger bare.
STANDARD_MOUNTS = {("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"),
                   ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue"), ("/sys", "sysfs"),
                   ("/sys/fs/cgroup", "cgroup")}


# -- linux.namespaces: made, or joined by path -------------------------------------------------

def namespaces_of(linux: Fields) -> tuple[set[str], dict[str, str]]:
    """linux.namespaces: the kinds to make, and the ones to join ({kind: path}).

    A path must be a namespace file of the kind named (asked of the kernel,
    namespaces.namespace_kind); the child's setns(2) checks it again, at the moment
    it joins. Without a new mount namespace, absent or joined, the root is entered
    with chroot (layer 1) and nothing is mounted (bundles.refuse_mounts_without_namespace
    says what is refused then). A user namespace must be new, its ids mapped as
    linux.uidMappings and gidMappings say (id_maps_of); runc joins one by path too."""
    kinds, joined = set(), {}
    for number, entry in enumerate(linux.take("namespaces", list, [])):
        item = Fields(entry, f"linux.namespaces[{number}]")
        kind, path = item.take("type", str), item.take("path", str)
        if kind not in NAMESPACES:
            raise item.refuse("type", f" ({kind!r}: we make {', '.join(NAMESPACES)})")
        ours = NAMESPACES[kind]
        if ours in kinds or ours in joined:
            raise item.bad("type", f"names {kind} twice")
        if path and ours == "user":
            raise item.refuse("path", ": joining a user namespace (its ids are another's)")
        if path and ns.namespace_kind(path) != ours:
            raise item.bad("path", f"{path!r} is not a {kind} namespace file "
                                   f"(such as /proc/PID/ns/{ours})")
        item.done()
        if path:
            joined[ours] = path
        else:
            kinds.add(ours)
    return kinds, joined


def id_maps_of(linux: Fields, kinds: set[str]) -> tuple[str, str] | None:
    """linux.uidMappings and gidMappings as the lines of uid_map and gid_map
    ("containerID hostID size" each), None without a user namespace. Both are needed
    with one (runc refuses a user namespace without them too), neither without."""
    maps = []
    for key in ("uidMappings", "gidMappings"):
        entries = linux.take(key, list, [])
        lines = []
        for number, entry in enumerate(entries):
            item = Fields(entry, f"linux.{key}[{number}]")
            ids = [item.take(name, int) for name in ("containerID", "hostID", "size")]
            item.done()
            if None in ids or min(ids) < 0 or ids[2] < 1 or max(ids[:2]) + ids[2] >= 2**32:
                raise item.bad("size", "needs containerID and hostID of 0 or more and a size "
                                       "of 1 or more, within 32-bit ids")
            lines.append("{} {} {}".format(*ids))
        if len(lines) > ID_MAP_LINES:
            raise linux.bad(key, f"has more than {ID_MAP_LINES} entries (the kernel's limit)")
        if lines and "user" not in kinds:
            raise linux.bad(key, "needs a new user namespace (linux.namespaces)")
        if not lines and "user" in kinds:
            raise BadBundle(f"config.json: a user namespace needs linux.{key}")
        maps.append("\n".join(lines) + "\n")
    return tuple(maps) if "user" in kinds else None


# -- linux.cgroupsPath: where in each cgroup tree ----------------------------------------------

def cgroup_path_of(linux: Fields) -> str | None:
    """linux.cgroupsPath as a path for cgroups.Cgroup, or None (ours: mc-<id>).

    An absolute path is taken from the root of each cgroup tree (/sys/fs/cgroup/pids/X
    on v1, /sys/fs/cgroup/X on v2), as runc takes it; the group must be new (runc
    would join an existing one: we refuse it, so that `delete`, which kills what is
    in the group, never kills what it did not start). A relative path is taken
    below our own parent group (minicontainer/), where runc takes it below its own
    process's cgroup: ours is wherever the caller runs, often the root. Each part of
    the path is a plain name: no "..", so the group stays inside the tree."""
    path = linux.take("cgroupsPath", str)
    if path is None:
        return None
    if any(part.startswith("mc-") for part in path.split("/")):
        # Not even below one: inside another container's group, this one would be
        # charged to its budget and block its removal (an attack review did so).
        raise linux.bad("cgroupsPath", f"{path!r}: mc-* groups are minicontainer's own")
    if not cgroups.is_plain_path(path.rstrip("/")):
        raise linux.bad("cgroupsPath", f"{path!r} is not a path of plain names (letters, "
                                       "digits, _ . @ + -; no '..') inside the cgroup tree")
    path = path.rstrip("/")
    return path if path.startswith("/") else f"{cgroups.PARENT}/{path}"


# -- mounts: the standard ones are ours; binds and tmpfs go through mount_inside ----------------

# Options that change nothing here: our mounts are always nosuid, and nodev (the
# image's is, Security.devices).
NO_OPS = {"nosuid", "nodev", "bind", "exec", "rw"}
# Options that are mount(2) flags, as runc's table (libcontainer/specconv) has them.
ATIME_OPTIONS = {"strictatime": syscalls.MS_STRICTATIME, "relatime": syscalls.MS_RELATIME,
                 "noatime": syscalls.MS_NOATIME, "nodiratime": syscalls.MS_NODIRATIME}
# ... and the propagation of the new mount, in the container's mount namespace (r-:
# of the mounts below it too). That namespace is made private from the host's before
# anything is mounted (namespaces.make_mounts_private), so even a shared mount has
# peers only in namespaces copied from it later: nothing reaches the host.
PROPAGATIONS = {"shared": syscalls.MS_SHARED, "slave": syscalls.MS_SLAVE,
                "private": syscalls.MS_PRIVATE, "unbindable": syscalls.MS_UNBINDABLE}
PROPAGATION_OPTIONS = {**PROPAGATIONS, **{f"r{name}": flag | syscalls.MS_REC
                                          for name, flag in PROPAGATIONS.items()}}
MOUNT_OPTIONS = NO_OPS | {"ro", "noexec"} | set(ATIME_OPTIONS) | set(PROPAGATION_OPTIONS)
# size= and mode= are a tmpfs's data: runc hands them to mount(2) for a bind too,
# which ignores data there, so a bind takes them and they do nothing, as under runc.
BIND_OPTIONS = MOUNT_OPTIONS | {"rbind", "size", "mode"}
TMPFS_OPTIONS = MOUNT_OPTIONS - {"bind"} | {"size", "mode"}


def root_propagation_of(linux: Fields) -> int:
    """linux.rootfsPropagation as mount(2) flags for / (0: absent), set once the
    container is in its root (oci.propagate_root). runc makes the root rslave of the
    host's before it mounts anything, so that the host's later mounts show inside;
    ours is private from the start (make_mounts_private), so "slave" has no master
    here and nothing of the host's shows, and "shared" shares / with the namespaces
    copied from the container's own, never with the host's."""
    name = linux.take("rootfsPropagation", str)
    if name is None:
        return 0
    if name not in PROPAGATION_OPTIONS:
        raise linux.bad("rootfsPropagation", f"{name!r} is not one of "
                                             f"{', '.join(PROPAGATION_OPTIONS)}")
    return PROPAGATION_OPTIONS[name]


def mounts_of(mounts: list, bundle: Path) -> tuple[tuple[ns.Mount, ...], bool]:
    """config.json's mounts: the standard ones (STANDARD_MOUNTS) we make ourselves;
    a bind or a tmpfs anywhere else becomes a Mount, in the file's order (the spec's:
    a later mount goes over an earlier one). And whether /dev/mqueue is listed."""
    made, mqueue = [], False
    for number, entry in enumerate(mounts):
        item = Fields(entry, f"mounts[{number}]")
        target, kind = item.take("destination", str), item.take("type", str)
        options = item.take("options", list, [])
        source = item.take("source", str)
        if not all(isinstance(option, str) for option in options):
            raise item.bad("options", "must be a list of strings")
        if (target, kind) in STANDARD_MOUNTS:
            mqueue = mqueue or kind == "mqueue"
            continue                    # ours, from namespaces.mount_kernel_filesystems
        item.done()
        where = f"mounts[{number}] ({target}, type {kind})"
        if kind == "bind" or (kind in (None, "none") and {"bind", "rbind"} & set(options)):
            made.append(bind_of(where, source, target, options, bundle))
        elif kind == "tmpfs":
            made.append(tmpfs_of(where, target, options))
        else:
            raise BadBundle(f"config.json: {where} is not supported by minicontainer yet: "
                            "a bind or a tmpfs anywhere, other kinds only at their "
                            "standard place (/proc, /sys, /dev/pts, /dev/mqueue)")
    return tuple(made), mqueue


def refuse_options(where: str, options: list[str], allowed: set[str]) -> None:
    """BadBundle naming the first option not `allowed` (not honoured: never ignored)."""
    for option in options:
        if option.partition("=")[0] not in allowed:
            why = ": our mounts are always nosuid and nodev" if option in ("suid", "dev") else ""
            raise BadBundle(f"config.json: {where}: option {option!r} is not supported by "
                            f"minicontainer{why}")
    if len(set(options) & set(PROPAGATION_OPTIONS)) > 1:
        raise BadBundle(f"config.json: {where}: more than one propagation option")


def mount_flags(options: list[str]) -> dict[str, int]:
    """The Mount fields of the options that are flags: atime ones and propagation."""
    return {"flags": sum({ATIME_OPTIONS[o] for o in options if o in ATIME_OPTIONS}),
            "propagation": sum({PROPAGATION_OPTIONS[o] for o in options
                                if o in PROPAGATION_OPTIONS})}


def bind_of(where: str, source: str | None, target: str, options: list[str],
            bundle: Path) -> ns.Mount:
    """A bind mount: a host path (relative: to the bundle, as runc takes it), checked
    as a volume's is (arguments.check_source: never / nor our own state)."""
    refuse_options(where, options, BIND_OPTIONS)
    if not source:
        raise BadBundle(f"config.json: {where} has no source")
    path = os.path.join(bundle, source)
    try:
        real, clean = check_source(path, state.roots()), check_target(target, target)
    except InvalidArgument as e:
        raise BadBundle(f"config.json: {where}: {e}") from None
    if not os.path.exists(real):
        raise BadBundle(f"config.json: {where}: the source {path} does not exist")
    if "rbind" in options and mounts_below(real):
        # A recursive bind brings the mounts below the source, each keeping its own
        # flags: `ro` would make the top read-only and leave them writable (runc 1.1
        # does the same; newer runc uses mount_setattr's recursive flags).
        raise BadBundle(f"config.json: {where}: rbind of {real}, which has mounts below "
                        "it, is not supported by minicontainer: bind a directory without them")
    return ns.Mount(clean, real, read_only="ro" in options, noexec="noexec" in options,
                    **mount_flags(options))


def mounts_below(path: str) -> bool:
    """Is anything mounted below `path` (in our mount table)?"""
    below = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4].startswith(below) for line in table)


def tmpfs_of(where: str, target: str, options: list[str]) -> ns.Mount:
    """A tmpfs with its size= and mode= (exec unless noexec, as runc mounts it)."""
    refuse_options(where, options, TMPFS_OPTIONS)
    values = dict(option.partition("=")[::2] for option in options if "=" in option)
    try:
        # Any size, as runc takes it: the kernel rounds it up to a page (--tmpfs: 4K).
        size = parse_size(values["size"], "tmpfs size", 1) if "size" in values else None
        clean = check_target(target, target)
    except InvalidArgument as e:
        raise BadBundle(f"config.json: {where}: {e}") from None
    mode = values.get("mode")
    if mode is not None and not re.fullmatch(r"[0-7]{3,4}", mode):
        raise BadBundle(f"config.json: {where}: mode={mode} is not an octal mode")
    return ns.Mount(clean, None, read_only="ro" in options, noexec="noexec" in options,
                    size=size, mode=None if mode is None else int(mode, 8),
                    **mount_flags(options))


# -- linux.devices and linux.resources.devices -------------------------------------------------

NODE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
OUR_DEV = set(ns.DEVICES) | {"stdin", "stdout", "stderr", "fd", "ptmx", "pts", "shm",
                             "mqueue", "console"}


def device_nodes_of(linux: Fields) -> tuple[tuple[str, int, int, int, int], ...]:
    """linux.devices: the nodes to make in the container's /dev, each (path, mode with
    its type, device number, uid, gid). As runc: mode 0666 unless fileMode. A node
    only names a device; whether it opens is the cgroup's allow-list (device_rules_of).
    We make them under /dev only (our tmpfs, never the image's files: it is nodev),
    and never over a node of ours (namespaces.DEVICES): runc takes any path."""
    nodes = []
    for number, entry in enumerate(linux.take("devices", list, [])):
        item = Fields(entry, f"linux.devices[{number}]")
        path, kind = item.take("path", str, ""), item.take("type", str)
        major, minor = item.take("major", int, 0), item.take("minor", int, 0)
        mode, uid, gid = (item.take("fileMode", int, 0o666), item.take("uid", int, 0),
                          item.take("gid", int, 0))
        item.done()
        clean = os.path.normpath(path)
        if (clean != path or not path.startswith("/dev/") or
                path.split("/")[2] in OUR_DEV):
            raise item.bad("path", f"{path!r} is not a clean path under /dev, apart from "
                                   f"ours ({', '.join(sorted(OUR_DEV))})")
        if kind not in NODE_TYPES:
            raise item.bad("type", f"{kind!r} is not one of c, u, b, p")
        if (min(major, minor, uid, gid) < 0 or major >= 1 << 12 or minor >= 1 << 20
                or max(uid, gid) >= 2**32 - 1):
            raise item.bad("major", "and minor, uid and gid must be device numbers and ids")
        nodes.append((path, NODE_TYPES[kind] | (mode & 0o7777 & ~0o6000),
                      os.makedev(major, minor), uid, gid))
    return tuple(nodes)


def make_device_nodes(nodes: tuple[tuple[str, int, int, int, int], ...]) -> None:
    """A step, after pivot_root: linux.devices made in our /dev (a tmpfs of ours, so
    no symlink of the image's is on the way), owned and moded as asked."""
    for path, mode, device, uid, gid in nodes:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.mknod(path, mode, device)
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(mode))      # mknod's mode went through the umask


def device_rules_of(resources: Fields) -> tuple[tuple, ...]:
    """linux.resources.devices as rules added to our allow-list (devices.ALLOWED, which
    runc appends too): deny-all first, then allow rules of c or b devices. runc takes
    any list, emulating the v1 controller's order; an allow-all, a deny after an allow,
    or allows without deny-all first (all devices open) are refused here by name."""
    rules = resources.take("devices", list, [])
    if not rules:
        return ()
    first = Fields(rules[0], f"{resources.path}.devices[0]")
    if (first.take("allow", bool), first.take("type", str, "a"), first.take("major", int),
            first.take("minor", int), first.take("access", str)) != (
            False, "a", None, None, "rwm"):
        raise resources.refuse("devices", ": the list must start with deny-all "
                                          '({"allow": false, "access": "rwm"})')
    first.done()
    added = []
    for number, entry in enumerate(rules[1:], start=1):
        rule = Fields(entry, f"{resources.path}.devices[{number}]")
        allow, kind = rule.take("allow", bool), rule.take("type", str)
        major, minor = rule.take("major", int), rule.take("minor", int)
        access = rule.take("access", str, "")
        rule.done()
        if allow is not True or kind not in ("c", "b"):
            raise rule.refuse("allow", ": after deny-all, only allow rules of c or b "
                                       "devices (our allow-list grows, never shrinks)")
        if not access or set(access) - set("rwm") or len(set(access)) != len(access):
            raise rule.bad("access", f"{access!r} is not made of r, w and m")
        added.append((kind, major, minor, access))
    return tuple(added)


# -- linux.maskedPaths, readonlyPaths, sysctl ------------------------------------------------

def paths_of(linux: Fields, key: str) -> tuple[str, ...] | None:
    """linux.maskedPaths or readonlyPaths: absolute paths (None: the field is absent)."""
    paths = linux.take(key, list)
    if paths is None:
        return None
    if not all(isinstance(path, str) and path.startswith("/") and "\0" not in path
               for path in paths):
        raise linux.bad(key, "must be a list of absolute paths")
    return tuple(paths)


# Namespaced sysctls, as runc's validator lists them: each → the namespace it is of.
IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
               "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
SYSCTL_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_@:+-]+)*")


def sysctl_of(linux: Fields, made: set[str]) -> dict[str, str]:
    """linux.sysctl, each key one of a namespace the container makes new (`made`).

    runc (libcontainer/configs/validate) takes the ipc ones (and fs.mqueue.*) with an
    ipc namespace, net.* with a network namespace that is not the host's, and
    kernel.domainname with a uts one; kernel.hostname never (the hostname field
    says it). We take the same, but only in a namespace made new: runc also writes
    into a joined one, which is another container's, changing it under its feet."""
    settings = linux.take("sysctl", dict, {})
    for key, value in settings.items():
        name = key.replace("/", ".")
        kind = ("ipc" if name in IPC_SYSCTLS or name.startswith("fs.mqueue.") else
                "net" if name.startswith("net.") else
                "uts" if name == "kernel.domainname" else None)
        if not isinstance(value, str):
            raise linux.bad(f"sysctl.{key}", "must be a string")
        if kind is None or not SYSCTL_NAME.fullmatch(name):
            raise linux.bad(f"sysctl.{key}", "is not a namespaced sysctl (net.*, the ipc "
                                             "ones, kernel.domainname): it would change the host")
        if kind not in made:
            raise linux.bad(f"sysctl.{key}", f"needs a new {kind} namespace "
                                             "(linux.namespaces, without a path)")
    return {key.replace("/", "."): value for key, value in settings.items()}


def write_sysctls(settings: dict[str, str]) -> None:
    """A step, after pivot_root and before /proc/sys is made read-only: each setting
    written into the container's /proc/sys, where it lands in its own namespaces.
    The path is resolved beneath /proc/sys, never through a symlink."""
    directory = os.open("/proc/sys", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, value in settings.items():
            fd = syscalls.openat2(directory, name.replace(".", "/"), os.O_WRONLY,
                                  syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
    finally:
        os.close(directory)


# -- linux.seccomp: the spec's JSON, compiled by libseccomp ---------------------------------------

def seccomp_profile() -> dict:
    """Our filter (security.py) in the runtime spec's words: every call allowed but the
    ones we refuse, with EPERM (clone3: ENOSYS). runc and crun compile it with libseccomp."""
    def refuse(names: list[str], errno_ret: int = 1, args: list | None = None) -> dict:
        """One rule of the profile."""
        rule = {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno_ret}
        return {**rule, "args": args} if args else rule
    rules = [refuse(sorted(DENIED_SYSCALLS))]
    rules += [refuse(["socket"], args=[{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}])
              for family in DENIED_SOCKET_FAMILIES.values()]
    rules += [refuse(["clone"], args=[{"index": 0, "value": flag, "valueTwo": flag,
                                       "op": "SCMP_CMP_MASKED_EQ"}])
              for flag in NEW_NAMESPACE_FLAGS]
    rules.append(refuse(list(NOT_IMPLEMENTED), 38))         # ENOSYS
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}


ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
           "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG")
OPERATORS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE",
             "SCMP_CMP_EQ": "EQ", "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT",
             "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
ARCHITECTURES = {"SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
                 "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64",
                 "SCMP_ARCH_RISCV64": "RISCV64", "SCMP_ARCH_PPC64LE": "PPC64LE",
                 "SCMP_ARCH_S390X": "S390X"}


def seccomp_of(linux: Fields) -> bytes | None:
    """linux.seccomp compiled into BPF by libseccomp (pyseccomp, as security.py builds
    ours); None without the field. Refused by name: SCMP_ACT_TRACE and SCMP_ACT_NOTIFY
    (nobody here traces or listens), flags, listenerPath."""
    import pyseccomp as seccomp
    profile = linux.take("seccomp", dict)
    if profile is None:
        return None
    fields = Fields(profile, "linux.seccomp")
    default_errno = fields.take("defaultErrnoRet", int, errno.EPERM)
    default = action_of(fields, "defaultAction", default_errno, required=True)
    compiled = seccomp.SyscallFilter(default)
    for name in fields.take("architectures", list, []):
        if name not in ARCHITECTURES:
            raise fields.bad("architectures", f"names {name!r}: we know {sorted(ARCHITECTURES)}")
        arch = getattr(seccomp.Arch, ARCHITECTURES[name])
        if not compiled.exist_arch(arch) and arch != seccomp.system_arch():
            compiled.add_arch(arch)
    for number, entry in enumerate(fields.take("syscalls", list, [])):
        add_rules(compiled, Fields(entry, f"linux.seccomp.syscalls[{number}]"), default_errno)
    if fields.take("flags", list, []):
        raise fields.refuse("flags")
    fields.done()
    with tempfile.TemporaryFile() as bpf:
        compiled.export_bpf(bpf)
        bpf.seek(0)
        return bpf.read()


def action_of(fields: Fields, key: str, errno_ret: int, required: bool = False) -> int:
    """An SCMP_ACT_* as libseccomp's number (ERRNO with `errno_ret`)."""
    import pyseccomp as seccomp
    name = fields.take(key, str)
    if name is None and required:
        raise fields.bad(key, "is missing")
    if name not in ACTIONS:
        raise fields.refuse(key, f" ({name!r}: we take {', '.join(ACTIONS)})")
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret)
    return getattr(seccomp, name.removeprefix("SCMP_ACT_"))


def add_rules(compiled, rule: Fields, default_errno: int) -> None:
    """One entry of linux.seccomp.syscalls. As runc: names libseccomp does not know
    are skipped (a profile lists calls of many kernels); arguments on one index
    each make a rule of their own (any may match), else one rule takes them all."""
    import pyseccomp as seccomp
    names = rule.take("names", list, [])
    errno_ret = rule.take("errnoRet", int, default_errno)
    action = action_of(rule, "action", errno_ret, required=True)
    comparisons, indexes = [], []
    for number, entry in enumerate(rule.take("args", list, [])):
        arg = Fields(entry, f"{rule.path}.args[{number}]")
        index, op = arg.take("index", int), arg.take("op", str)
        value, value_two = arg.take("value", int, 0), arg.take("valueTwo", int, 0)
        arg.done()
        if op not in OPERATORS or index is None or not 0 <= index < 6 or min(
                value, value_two) < 0:
            raise BadBundle(f"config.json: {arg.path} needs an index 0-5, values of 0 or "
                            f"more and an op of {', '.join(OPERATORS)}")
        comparisons.append(seccomp.Arg(index, getattr(seccomp, OPERATORS[op]), value,
                                       value_two))
        indexes.append(index)
    rule.done()
    groups = ([[c] for c in comparisons] if len(set(indexes)) < len(indexes)
              else [comparisons])
    for name in names:
        if not isinstance(name, str):
            raise BadBundle(f"config.json: {rule.path}.names must be strings")
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
            continue                          # not a call libseccomp knows here
        for group in groups:
            try:
                compiled.add_rule(action, name, *group)
            except PermissionError:           # the default action already: nothing to add
                pass
            except OSError as e:
                raise BadBundle(f"config.json: {rule.path} ({name}): libseccomp refuses "
                                f"the rule: {e.strerror}") from None
