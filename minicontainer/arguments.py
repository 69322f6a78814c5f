"""Bad input stops here, before anything exists on the host.

Every argument a user gives (through the CLI, `Container(...)` or a notebook cell) is
checked first and refused with one line that says what is wrong and what to do:
a container that fails half-built is the very thing a classroom machine must not
collect. Volumes (`-v`, `--tmpfs`) are checked here too, before a path on the host
is ever touched. The budget (cgroups.Limits.parse) and the image (rootfs.check_rootfs) check
their own arguments the same way; a VM's are checked here too (check_vm_options).

A record read back from disk is input too. The host wrote it, but `rm -f` acts on
what it names (a cgroup to empty, an interface to delete, processes to kill), so a
record that was altered or planted must not be able to name anything of the host's:
check_record() confines every such field to what a container of ours could own.
"""
from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from . import namespaces as ns
from . import syscalls
from .cgroups import PARENT, check_cpu_details, is_plain_path
from .security import Security
from .errors import BadRecord, InvalidArgument, NotLinuxError, NotRootError
from .host import cpu, parse_size

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")   # as Docker's; 64: an OCI id (Podman's)
HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62}[a-zA-Z0-9])?$")
ID = re.compile(r"^[0-9a-f]{12}$")
NETWORK_NAME = re.compile(r"^mc-[a-z0-9-]{1,12}$")  # a network's is its bridge's: <= 15 chars
MIN_VM_MEMORY = 48 * 1024**2       # the guest's kernel and the unpacked image must fit


def check_host(rootless: bool = False) -> None:
    """Linux, and root (or a rootless container where user namespaces are allowed)."""
    if os.uname().sysname != "Linux":
        raise NotLinuxError("containers need a Linux kernel: use the course's Vagrant VM "
                            "(`vagrant up`, see the README)")
    if rootless and os.geteuid() != 0 and (why := ns.user_namespaces_refused()):
        raise NotRootError(f"a rootless container needs a user namespace, and {why}")
    if not rootless and os.geteuid() != 0:
        raise NotRootError("namespaces and mounts need root: run with sudo, or ask for a "
                           "rootless container (--rootless: no limits, no bridged network)")


def check_rootless(cgroup: bool, limits: tuple, network: str | None) -> None:
    """What a user namespace cannot give: said before anything is made."""
    if cgroup or limits != (None, None, None):
        raise InvalidArgument("a rootless container has no cgroup, so no memory, cpus or "
                              "pids limits: creating cgroups needs root (or a cgroup "
                              "delegated to you by systemd, which the course does not set up)")
    if network is not None:
        raise InvalidArgument("a rootless container cannot join a bridge network: a veth "
                              "into a host bridge needs root (rootless Podman uses "
                              "slirp4netns or pasta instead); it still has its own loopback")


def as_argv(command: str | Sequence[str]) -> list[str]:
    """A list is the program and its arguments; a string is a shell command line."""
    if isinstance(command, str):
        argv = ["/bin/sh", "-c", command] if command.strip() else []
    else:
        argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv) or not "".join(argv).strip():
        raise InvalidArgument(f"the command must be a non-empty list of strings, got {command!r}")
    return argv


def check_name(name: str) -> str:
    """A container's name as Docker allows it (it names a directory: never a path)."""
    if not NAME.fullmatch(name):
        raise InvalidArgument(f"invalid container name {name!r}: use letters, digits and "
                              "_ . - (up to 64), starting with a letter or digit")
    return name


def check_hostname(hostname: str) -> str:
    """A hostname as RFC 1123 allows it, up to 64 characters."""
    if not HOSTNAME.fullmatch(hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}: use letters, digits, - and ."
                              " (up to 64), starting and ending with a letter or digit")
    return hostname


def check_ports(ports: dict[int, int] | Iterable[str], network_name: str | None,
                namespaces: frozenset[str]) -> list[tuple[str, int, int]]:
    """{8080: 80} or ["8080:80", "127.0.0.1:8080:80"] → [(host ip, host port, port)]."""
    if network_name is not None and "net" not in namespaces:
        raise InvalidArgument("a network needs the net namespace")
    if ports and network_name is None:
        raise InvalidArgument("publishing ports needs a network (--network mc-br0)")
    pairs = ports.items() if isinstance(ports, dict) else [p.rsplit(":", 1) for p in ports]
    published = []
    for host, inside in pairs:
        host_ip, _, host_port = str(host).rpartition(":")
        try:
            numbers = int(host_port), int(inside)
        except ValueError:
            numbers = (0, 0)
        if not all(1 <= n <= 65535 for n in numbers):
            raise InvalidArgument(f"invalid port mapping {host}:{inside}: use HOST:CONTAINER "
                                  "with ports from 1 to 65535")
        try:                        # it goes into firewall rules: an address, nothing else
            host_ip = str(ipaddress.IPv4Address(host_ip or "0.0.0.0"))
        except ValueError:
            raise InvalidArgument(f"invalid address {host_ip!r} in port mapping {host}:{inside}:"
                                  " give an IPv4 address such as 127.0.0.1, or none for all"
                                  ) from None
        published.append((host_ip, *numbers))
    return published


def check_count(value: int | str, what: str, minimum: int = 1) -> int:
    """A whole number of something: 3 or "3", not 3.5, True, "3\\n", "" or a negative."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < minimum:
        raise InvalidArgument(f"invalid {what} {value!r}: give a whole number, at least {minimum}")
    return int(text)


def check_namespaces(kinds: Iterable[str]) -> frozenset[str]:
    """Namespace kinds we know, with what each needs (pid needs mnt for its /proc)."""
    kinds = frozenset(kinds)
    unknown = kinds - set(ns.FLAGS)
    if unknown:
        raise InvalidArgument(f"unknown namespace(s) {sorted(unknown)}: choose from "
                              f"{sorted(ns.FLAGS)}")
    return kinds


# -- volumes and tmpfs ----------------------------------------------------------------------

TMPFS_FLAGS = {"ro", "rw", "exec", "noexec"}


def check_mounts(volumes: str | Iterable[str], tmpfs: str | Iterable[str],
                 namespaces: frozenset[str], ours: Iterable[Path]) -> tuple[ns.Mount, ...]:
    """`-v HOST:CONTAINER[:ro|rw]` and `--tmpfs PATH[:OPTIONS]` as Mounts, the
    shallowest target first (as Docker orders them: /data before /data/logs); `ours`
    are the directories of our own state (state.roots()), which no volume may reach."""
    mounts = ([volume_of(text, ours) for text in _as_list(volumes)]
              + [tmpfs_of(text) for text in _as_list(tmpfs)])
    if mounts and "mnt" not in namespaces:
        raise InvalidArgument("volumes and tmpfs need a mount namespace (keep 'mnt'): "
                              "without one they would be mounted on the host")
    targets = [mount.target for mount in mounts]
    if duplicate := next((t for t in targets if targets.count(t) > 1), None):
        raise InvalidArgument(f"duplicate mount point: {duplicate}")     # Docker's words
    return tuple(sorted(mounts, key=lambda mount: mount.target.count("/")))


def volume_of(text: str, ours: Iterable[Path]) -> ns.Mount:
    """`HOST:CONTAINER[:ro|rw]`, Docker's -v, for a host path that exists.

    Docker's `-v` makes a missing host directory (as root, wherever a typo points);
    its `--mount` refuses, and so do we: bad input changes nothing on the host."""
    host, target, *options = _split(text, "volume", "HOST:CONTAINER[:ro]")
    flags = options[0].split(",") if options else []
    for flag in flags:
        if flag not in ("ro", "rw"):
            raise InvalidArgument(f"volume option {flag!r} is not supported: use ro or rw")
    if not host.startswith("/"):
        raise InvalidArgument(f"volume {text!r}: the host side {host!r} is not an absolute "
                              "path (named volumes are not supported): give /path/on/host")
    source = check_source(host, ours)
    if not os.path.exists(source):
        raise InvalidArgument(f"volume {text!r}: the host path {host} does not exist: make "
                              "it first (like docker's --mount, we make nothing on the host)")
    return ns.Mount(check_target(target, text), source, read_only="ro" in flags)


def tmpfs_of(text: str) -> ns.Mount:
    """`PATH[:size=64m,mode=1777,ro,exec]`, Docker's --tmpfs: noexec unless exec."""
    target, _, options = text.partition(":") if isinstance(text, str) else ("", "", "")
    values = {"noexec": True, "read_only": False, "size": None, "mode": None}
    for option in filter(None, options.split(",")):
        name, equals, value = option.partition("=")
        if option in TMPFS_FLAGS:
            values["read_only" if option in ("ro", "rw") else "noexec"] = option in ("ro", "noexec")
        elif name == "size" and equals:
            values["size"] = parse_size(value, "tmpfs size", 4096)
        elif name == "mode" and re.fullmatch(r"[0-7]{3,4}", value):
            values["mode"] = int(value, 8)
        else:
            raise InvalidArgument(f"tmpfs option {option!r} is not supported: use size=64m, "
                                  "mode=1777 (octal), ro, rw, exec or noexec")
    return ns.Mount(check_target(target, text), **values)


def check_source(host: str, ours: Iterable[Path], exists: bool = True) -> str:
    """The host side of a volume, symlinks resolved (if it `exists`): never `/`, nor
    what holds or is inside `ours`, our own state (records, layers, images), which
    the host acts on."""
    real = os.path.realpath(host) if exists else posixpath.normpath(host)
    if real == "/" or (exists and _identity(real) == _identity("/")):
        raise InvalidArgument("the host's / cannot be a volume: bind a directory below it")
    for directory in map(os.path.realpath, ours):
        # By path, and by identity: a bind mount shows one directory at a second path.
        # (A bind of a directory inside ours, seen elsewhere, still passes: telling
        # would take the mount table's roots, /proc/self/mountinfo. Not done.)
        if os.path.commonpath([real, directory]) in (real, directory) or (exists and (
                _identity(directory) & _lineage(real) or _identity(real) & _lineage(directory))):
            raise InvalidArgument(f"the host path {host} is or holds minicontainer's own "
                                  f"state ({directory}): a container must never reach it")
    return real


def _identity(path: str) -> set[tuple[int, int]]:
    """The (device, inode) that is `path`, in a set (empty if it does not exist)."""
    try:
        info = os.stat(path)
    except OSError:
        return set()
    return {(info.st_dev, info.st_ino)}


def _lineage(path: str) -> set[tuple[int, int]]:
    """The identities of `path` and of every directory above it, up to /."""
    found = set()
    while True:
        found |= _identity(path)
        if path == "/":
            return found
        path = os.path.dirname(path)


def check_target(target: str, text: str) -> str:
    """The container side of a mount, cleaned: absolute, not / and not in the kernel's
    own /proc, /sys or /dev (where it is after the image's symlinks is checked again,
    inside: namespaces.open_in_root)."""
    if not target.startswith("/") or re.search(r"[\0\n]", target):
        raise InvalidArgument(f"mount {text!r}: the container side {target!r} must be an "
                              "absolute path")
    clean = "/" + posixpath.normpath(target).lstrip("/")
    if clean == "/" or any(clean == kernel or clean.startswith(kernel + "/")
                           for kernel in ns.KERNEL_PATHS):
        raise InvalidArgument(f"mount {text!r}: {clean} is not a place for a volume (not /, "
                              "nor under /proc, /sys or /dev)")
    return clean


def _split(text: str, what: str, form: str) -> list[str]:
    """`text` at its colons: 2 or 3 parts, the first without NUL or newline."""
    parts = text.split(":") if isinstance(text, str) else []
    if not 2 <= len(parts) <= 3 or not all(parts[:2]) or re.search(r"[\0\n]", parts[0]):
        raise InvalidArgument(f"invalid {what} {text!r}: use {form}")
    return parts


def _as_list(values: str | Iterable[str]) -> list:
    """One string is one value, not its characters."""
    return [values] if isinstance(values, str) else list(values or ())


# -- a VM -----------------------------------------------------------------------------------

def check_vm_options(memory: str | int, cpus: int, accel: str, machine: str) -> int:
    """A VM's memory (returned in bytes), CPUs, accelerator and machine type, refused
    unless a VM can boot with them (whether KVM is usable here is asked later)."""
    size = parse_size(memory, "VM memory", 1)
    if size < MIN_VM_MEMORY:
        raise InvalidArgument(f"memory {memory!r} is too small for a VM: give it at least 48M")
    if not isinstance(cpus, int) or not 1 <= cpus <= 64:
        raise InvalidArgument(f"invalid cpus {cpus!r} for a VM: a whole number from 1 to 64")
    if accel not in ("auto", "kvm", "tcg"):
        raise InvalidArgument(f"invalid accel {accel!r}: choose auto, kvm or tcg")
    machines = list(cpu().machines)
    if machine != "auto" and machine not in machines:
        raise InvalidArgument(f"invalid machine {machine!r}: choose from {machines}")
    return size


# -- records read back from disk ------------------------------------------------------------

Int, Str, Bool, Null = int, str, bool, type(None)
RECORD = {   # field: the types it may have
    "name": (Str,), "id": (Str,), "command": (list,), "rootfs": (Str,), "hostname": (Str,),
    "namespaces": (list,), "init": (Bool,), "env": (dict,), "rootless": (Bool,),
    "detached": (Bool,), "cgroup": (Str, Null), "limits": (dict,), "network": (dict, Null),
    "ports": (list,), "security": (dict,), "created": (float, Int),
    "owner": (Int,), "owner_started": (Int, Null), "pid": (Int, Null),
    "main_pid": (Int, Null), "pid_started": (Int, Null), "tty": (Bool,), "console": (list, Null),
    "shm_size": (Int,), "preserve_fds": (Int,), "workdir": (Str,), "user": (list,)}
SECURITY_SWITCHES = tuple(switch.name for switch in fields(Security))


def check_record(name: str, record: object, ours: Iterable[Path]) -> dict:
    """A container's record from disk, refused (BadRecord) unless it has a record's
    shape and everything the host acts on is one of ours: its cgroup below ours and
    named after it, its interface its own veth `mc-<id>` on a network of ours. (Its
    processes are checked against the kernel when they are looked up: Container.load.)
    Its mounts are ones check_mounts could have made, outside `ours` (state.roots())."""
    def refuse(why: str) -> BadRecord:
        """The error for this record, and why."""
        return BadRecord(f"the record of container {name!r} is refused, nothing was done: {why}")
    if isinstance(record, dict):    # written before containers had terminals and a Spec
        record = {"tty": False, "console": None, "shm_size": ns.SHM_SIZE, "preserve_fds": 0,
                  "workdir": "/", "user": [0, 0], **record}
    _check_shape(record, refuse)
    if record["name"] != name or not ID.fullmatch(record["id"]):
        raise refuse(f"it is named {record['name']!r}, id {record['id']!r}")
    cgroup = record["cgroup"]
    if cgroup is not None and not (_our_group(cgroup, record["id"]) or (
            is_plain_path(cgroup) and not cgroup.rsplit("/", 1)[-1].startswith("mc-"))):
        # A plain path elsewhere is a bundle's linux.cgroupsPath (bundle_linux.py):
        # Cgroup.remove never kills in such a group, it only removes it once empty. So a
        # forged record can at worst rmdir an empty group of the host's (an attack review
        # showed it), and forging one takes write access to our 0700 state directory:
        # root already. runc trusts the cgroup paths in its state.json the same way.
        raise refuse(f"its cgroup {cgroup!r} is not {PARENT}/…/mc-{record['id']}, nor a "
                     "plain path")
    if record["network"] is not None:
        check_attachment(record["network"], record["id"], refuse)
    mounts = record.get("mounts", [])           # not in records older than volumes
    if not isinstance(mounts, list):
        raise refuse("its mounts are not a list")
    for mount in mounts:
        _check_mount(mount, ours, refuse)
    return record


def _check_shape(record: object, refuse: Callable[[str], BadRecord]) -> None:
    """Every field we read, with its type (a bool is not a pid); others are ignored."""
    if not isinstance(record, dict) or not set(RECORD) <= set(record):
        raise refuse("its fields are not a container record's")
    for field, types in RECORD.items():
        if type(record[field]) not in types:
            raise refuse(f"{field} is a {type(record[field]).__name__}")
    strings = record["command"] + list(record["env"]) + list(record["env"].values())
    if not all(isinstance(text, str) for text in strings + record["namespaces"]):
        raise refuse("its command, environment or namespaces hold more than strings")
    if not set(record["namespaces"]) <= set(ns.FLAGS):
        raise refuse(f"it lists unknown namespaces {record['namespaces']}")
    if not {"memory", "cpus", "pids"} <= set(record["limits"]) <= set(LIMITS) or not set(
            record["security"]) <= set(SECURITY_SWITCHES):
        raise refuse("its limits or security switches are not ours")
    details = [record["limits"].get(key) for key in CPU_DETAILS]
    try:
        if not all(type(value) in LIMITS[key] for key, value in record["limits"].items()):
            raise InvalidArgument("its limits are not numbers and lists")
        check_cpu_details(*details)
    except InvalidArgument as e:
        raise refuse(str(e)) from None
    pids = [record[key] for key in ("pid", "main_pid", "pid_started", "owner") if
            record[key] is not None]
    if not record["workdir"].startswith("/") or [type(n) for n in record["user"]] != [
            int, int] or min(record["user"]) < 0:
        raise refuse("its working directory or user is not a path and a uid and gid")
    if any(n <= 0 for n in pids) or (record["pid"] is None) != (record["pid_started"] is None):
        raise refuse("its pids are not positive, or a pid comes without its start time")
    if record["console"] is not None and [type(n) for n in record["console"]] != [int, int]:
        raise refuse("its console is not a pid and a start time")
    layers = record.get("layers", [])           # not in records older than images
    if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers) or not (
            isinstance(record.get("image"), (str, type(None)))):
        raise refuse("its image or layers are not a name and a list of paths")


LIMITS = {"memory": (Int, Null), "cpus": (float, Int, Null), "pids": (Int, Null),
          "cpu_period": (Int, Null), "cpu_shares": (Int, Null), "cpuset_cpus": (Str, Null),
          "cpuset_mems": (Str, Null)}
CPU_DETAILS = ("cpu_period", "cpu_shares", "cpuset_cpus", "cpuset_mems")   # older: none
MOUNT = {"target": (Str,), "source": (Str, Null), "read_only": (Bool,), "noexec": (Bool,),
         "size": (Int, Null), "mode": (Int, Null), "flags": (Int,), "propagation": (Int,)}
NEWER_MOUNT_FIELDS = {"flags", "propagation"}     # a record older than them lacks them
PROPAGATIONS = {0} | {kind | rec for kind in (syscalls.MS_SHARED, syscalls.MS_SLAVE,
                                              syscalls.MS_PRIVATE, syscalls.MS_UNBINDABLE)
                      for rec in (0, syscalls.MS_REC)}


def _check_mount(mount: object, ours: Iterable[Path],
                 refuse: Callable[[str], BadRecord]) -> None:
    """A mount as check_mounts makes them: its target a clean one, its source a clean
    absolute path outside our state, a size and mode only for a tmpfs."""
    if not isinstance(mount, dict) or not set(MOUNT) - NEWER_MOUNT_FIELDS <= set(mount) <= set(
            MOUNT) or any(type(mount[key]) not in MOUNT[key] for key in mount):
        raise refuse("a mount of its has other fields or types")
    if mount.get("flags", 0) & ~ns.ATIME_FLAGS or mount.get("propagation", 0) not in PROPAGATIONS:
        raise refuse("a mount of its has flags other than atime and propagation ones")
    target, source, size, mode = (mount[key] for key in ("target", "source", "size", "mode"))
    try:
        if check_target(target, target) != target:
            raise InvalidArgument(f"its target {target!r} is not a clean path")
        if source is not None and (not source.startswith("/") or "\0" in source
                                   or posixpath.normpath(source) != source):
            raise InvalidArgument(f"its source {source!r} is not a clean absolute path")
        if source is not None:
            check_source(source, ours, exists=False)
    except InvalidArgument as e:
        raise refuse(f"a mount: {e}") from None
    if (source is not None and (size, mode) != (None, None)) or (size is not None and size <= 0) \
            or (mode is not None and not 0 <= mode <= 0o7777):
        raise refuse(f"its mount at {target!r} has a size or mode it cannot have")


def _our_group(path: str, container_id: str) -> bool:
    *parents, last = path.split("/")
    return (parents[:1] == [PARENT] and all(NAME.fullmatch(p) for p in parents[1:])
            and last == f"mc-{container_id}")


def check_attachment(attachment: dict, container_id: str,
                     refuse: Callable[[str], BadRecord]) -> None:
    """Only our veth or a VM's tap (`mc-<id>`) on a network of ours (mc-…) is ever
    deleted; detach() also refuses to delete a bridge of ours."""
    if set(attachment) != {"network", "address", "gateway", "prefix", "host_end"}:
        raise refuse("its network attachment has other fields")   # Attachment(**it) follows
    name, veth = attachment["network"], attachment["host_end"]
    if not (isinstance(attachment["address"], str) and isinstance(attachment["gateway"], str)
            and type(attachment["prefix"]) is int):    # the lease is looked up by address
        raise refuse("its network attachment's address, gateway or prefix is malformed")
    if not (isinstance(name, str) and NETWORK_NAME.fullmatch(name)):
        raise refuse(f"its network {name!r} is not one of ours (mc-…)")
    if veth != f"mc-{container_id}":
        raise refuse(f"its interface {veth!r} is not its own mc-{container_id}")
