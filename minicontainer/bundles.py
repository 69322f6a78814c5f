"""An OCI bundle: a container written down for any runtime, and read into our Spec.

A *bundle* is a directory: `config.json` (the OCI runtime spec: the command, its
environment and user, the root's path, the namespaces, the limits, capabilities,
mounts, masked paths, seccomp) and the root filesystem it names, usually `rootfs/`.
runc, crun and our own runtime (oci.py) all take the same directory, so a bundle is
how one container is compared under three runtimes.

Reading one (read_config) maps each field onto describe()'s options, so a bundle
becomes the Spec that `minicontainer run` makes from Docker's options (spec.py). A
field our layers cannot honour is refused by its JSON path, never skipped: the
reader takes each field it knows out of its object (jsonfields.Fields), and
whatever is left over is an error. This module reads the process, the root and the
resources; bundle_linux.py the namespaces, mounts, devices, paths, sysctls and
seccomp. Writing one (export_bundle) goes the other way, from a Spec and the
image's layers merged by overlayfs, whiteouts honoured.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import stat
import tempfile
from functools import partial
from pathlib import Path
import dataclasses

from . import process, state, syscalls
from .arguments import check_source
from .bundle_linux import (NAMESPACES, cgroup_path_of, device_nodes_of, device_rules_of, id_maps_of,
                           mounts_of,
                           namespaces_of, paths_of, root_propagation_of, seccomp_of,
                           seccomp_profile, sysctl_of)
from .cgroups import CPU_PERIOD, check_cpu_details
from .errors import BadBundle, InvalidArgument, MinicontainerError
from .jsonfields import Fields
from .namespaces import make_mounts_private
from .security import CAPABILITIES, MASKED_PATHS, READ_ONLY_PATHS, Security
from .spec import Spec, describe, from_record
from .syscalls import MS_BIND, MS_RDONLY, mount

OCI_VERSION = "1.0.2"       # what we write; any 1.x is read
CONFIG_LIMIT = 4 * 2**20    # a config.json with Docker's whole seccomp profile is ~30 KiB
DENY_ALL_DEVICES = [{"allow": False, "access": "rwm"}]   # then runc's allow-list, as ours

# -- config.json → a Spec --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bundle:
    """A config.json read: the Spec of our layers, and what only the runtime applies."""

    spec: Spec
    directory: Path
    oci_version: str
    annotations: dict[str, str]
    readonly: bool = False
    rlimits: tuple[tuple[int, int, int], ...] = ()    # (resource, soft, hard)
    oom_score_adj: int | None = None
    additional_gids: tuple[int, ...] = ()       # process.user.additionalGids
    joined: dict[str, str] = dataclasses.field(default_factory=dict)  # {kind: ns file}
    mqueue: bool = False                        # /dev/mqueue among the mounts
    inheritable: tuple[str, ...] = ()           # process.capabilities.inheritable
    ambient: tuple[str, ...] = ()               # process.capabilities.ambient
    umask: int | None = None                    # process.user.umask (None: runc's 022)
    masked: tuple[str, ...] | None = None       # linux.maskedPaths (None: ours)
    read_only: tuple[str, ...] | None = None    # linux.readonlyPaths (None: ours)
    sysctl: dict[str, str] = dataclasses.field(default_factory=dict)
    seccomp: bytes | None = None                # linux.seccomp compiled: BPF
    device_nodes: tuple[tuple, ...] = ()        # linux.devices: (path, mode, rdev, uid, gid)
    device_rules: tuple[tuple, ...] = ()        # allowed beyond ours: (type, major, minor, access)
    root_propagation: int = 0                   # linux.rootfsPropagation: MS_SHARED...
    id_maps: tuple[str, str] | None = None      # uid_map, gid_map of its user namespace


def read_bundle(directory: str | os.PathLike, container_id: str) -> Bundle:
    """The bundle in `directory`, checked: BadBundle naming the first field we cannot
    honour, or what is wrong with the file."""
    directory = Path(directory).absolute()
    try:
        config = json.loads(read_config_file(directory / "config.json"))
    except ValueError as e:
        raise BadBundle(f"{directory}/config.json is not valid JSON: {e}") from None
    return read_config(config, directory, container_id)


def read_config_file(path: Path) -> bytes:
    """config.json's bytes, read as untrusted input: a regular file, not a symbolic link
    (runc follows one), not a FIFO (open would wait for a writer), and at most
    CONFIG_LIMIT bytes (runc reads any size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadBundle(f"{path.parent} has no config.json: is it an OCI bundle?") from None
    except OSError as e:
        why = "is a symbolic link: give the file itself" if e.errno == errno.ELOOP else e.strerror
        raise BadBundle(f"{path} {why}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadBundle(f"{path} is not a regular file")
        data = f.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise BadBundle(f"{path} is larger than {CONFIG_LIMIT // 2**20} MiB: not a config")
    return data


def read_config(config: object, directory: Path, container_id: str) -> Bundle:
    """config.json's fields mapped onto describe()'s options, the order of the spec."""
    top = Fields(config, "")
    version = top.take("ociVersion", str)
    if version is None or version.split(".")[0] != "1":
        raise BadBundle(f"config.json: ociVersion {version!r} is not one we know (1.x)")
    rootfs, readonly = root_of(Fields(top.take("root", dict, {}), "root"), directory)
    proc = Fields(top.take("process", dict), "process") if "process" in top.left else None
    if proc is None:
        raise BadBundle("config.json: process is missing: there is nothing to run")
    linux = Fields(top.take("linux", dict, {}), "linux")
    kinds, joined = namespaces_of(linux)
    id_maps = id_maps_of(linux, kinds)
    hostname = top.take("hostname", str)
    if hostname is not None and "uts" not in kinds | set(joined):   # as runc refuses it
        raise BadBundle("config.json: hostname needs a uts namespace (linux.namespaces)")
    mounts, mqueue = mounts_of(top.take("mounts", list, []), directory)
    annotations = top.take("annotations", dict, {})
    if top.take("hooks", dict, {}):
        raise top.refuse("hooks")
    options = process_options(proc)
    cgroup = cgroup_path_of(linux)
    limits, switches, extras = linux_options(linux, kinds)
    cpu_details = limits.pop("cpu_details")
    linux.done()
    top.done()
    kept = options["security"]["kept"]
    if options["describe"]["user"] != "0:0" and kept and not {"SETUID", "SETGID"} <= set(kept):
        raise BadBundle("config.json: process.user other than root needs CAP_SETUID and "
                        "CAP_SETGID in process.capabilities here (root_before_confine)")
    # describe() knows our own user namespace only, which maps root alone: a bundle's
    # maps its users (id_maps_of), so it is added once described.
    spec = describe(options["args"], name=container_id, rootfs=rootfs, hostname=hostname,
                    namespaces=kinds - {"user"},
                    security=Security(**options["security"], **switches),
                    **options["describe"], **limits)
    # runc's environment is exactly process.env, and HOME if it lacks one; ours
    # would add PATH and HOSTNAME (docker run's): take runc's.
    home = "/root" if spec.user[0] == 0 else "/"
    spec = dataclasses.replace(spec, env={"HOME": home, **options["env"]}, mounts=mounts,
                               namespaces=frozenset(kinds),
                               cgroup=spec.cgroup if cgroup is None else cgroup,
                               limits=dataclasses.replace(spec.limits, **cpu_details))
    bundle = Bundle(spec, directory, version, annotations, readonly, options["rlimits"],
                    options["oom_score_adj"], options["additional_gids"], joined, mqueue,
                    *options["inherited"], options["umask"], **extras, id_maps=id_maps)
    if id_maps and bundle.device_nodes:
        raise BadBundle("config.json: linux.devices in a user namespace: mknod(2) is "
                        "denied there (runc binds the host's nodes instead; we do not yet)")
    if "mnt" not in kinds:
        refuse_mounts_without_namespace(bundle)
    return bundle


def refuse_mounts_without_namespace(bundle: Bundle) -> None:
    """BadBundle naming the first field that needs a mount, in a bundle without a
    mount namespace of its own (none, or one joined by path). Its root is entered
    with chroot (layer 1) and nothing is mounted: the standard mounts (/proc, /dev,
    /sys) are not made, the container sees root.path's own directories there. runc
    makes them, and binds its root, in whatever mount namespace it is in: the host's,
    or the one joined; we never change a mount table that is not the container's."""
    needs = {"mounts (a bind or a tmpfs)": bundle.spec.mounts, "root.readonly": bundle.readonly,
             "linux.maskedPaths": bundle.masked, "linux.readonlyPaths": bundle.read_only,
             "linux.sysctl": bundle.sysctl, "linux.devices": bundle.device_nodes,
             "process.terminal": bundle.spec.tty,
             "linux.rootfsPropagation": bundle.root_propagation}
    for field, value in needs.items():
        if value:
            raise BadBundle(f"config.json: {field} needs a new mount namespace here "
                            "(linux.namespaces: a mount one, without a path)")


def root_of(root: Fields, directory: Path) -> tuple[str, bool]:
    """root.path (relative to the bundle) and root.readonly."""
    path = root.take("path", str)
    readonly = root.take("readonly", bool, False)
    root.done()
    if not path:
        raise BadBundle("config.json: root.path is missing")
    rootfs = directory / path
    # A relative path stays in the bundle: a rootfs that is a symbolic link to / would
    # show the host's files (runc follows it). An absolute one is the caller's choice, as
    # Podman's (its storage's overlay).
    if not os.path.isabs(path) and not rootfs.resolve().is_relative_to(directory.resolve()):
        raise BadBundle(f"config.json: root.path {path!r} leads out of the bundle")
    if not rootfs.is_dir():
        raise BadBundle(f"config.json: root.path {rootfs} is not a directory")
    # The container writes into its root (the OCI way, BoundRoot): never the host's /,
    # nor what holds our own state, as for a volume (an attack review ran a bundle on
    # root.path "/" and read /etc/shadow). runc takes any path its caller gives.
    try:
        check_source(str(rootfs), state.roots())
    except InvalidArgument as e:
        raise BadBundle(f"config.json: root.path {path!r}: {e}") from None
    return str(rootfs), readonly


def process_options(proc: Fields) -> dict:
    """process.*: the command, environment, directory, user, terminal, security."""
    args = proc.take("args", list, [])
    if not args or not all(isinstance(arg, str) for arg in args):
        raise BadBundle("config.json: process.args must be a non-empty list of strings")
    if any("\0" in arg for arg in args):
        raise BadBundle("config.json: process.args has a NUL byte")
    env = {}
    for entry in proc.take("env", list, []):
        if not isinstance(entry, str) or "=" not in entry or "\0" in entry:
            raise BadBundle(f"config.json: process.env has {entry!r}, not NAME=value")
        name, _, value = entry.partition("=")
        env[name] = value
    user = Fields(proc.take("user", dict, {}), "process.user")
    uid, gid = user.take("uid", int, 0), user.take("gid", int, 0)
    groups = user.take("additionalGids", list, [])
    umask = user.take("umask", int)
    if umask is not None and not 0 <= umask <= 0o777:
        raise user.bad("umask", f"{umask} is not a umask (0 to 0777)")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**32 - 1
               for n in groups):
        raise user.bad("additionalGids", "must be a list of group ids")
    user.done()
    terminal = proc.take("terminal", bool, False)
    proc.take("consoleSize", dict)                 # the console socket's user sets it
    for label in ("apparmorProfile", "selinuxLabel"):
        if proc.take(label, str):
            raise proc.refuse(label)
    kept, inheritable, ambient = capabilities_of(proc.take("capabilities", dict))
    security = {"no_new_privs": proc.take("noNewPrivileges", bool, False),
                "capabilities": kept is not None, "kept": kept or ()}
    rlimits = tuple(rlimit_of(Fields(item, f"process.rlimits[{n}]"))
                    for n, item in enumerate(proc.take("rlimits", list, [])))
    oom_score_adj = proc.take("oomScoreAdj", int)
    if oom_score_adj is not None and not -1000 <= oom_score_adj <= 1000:
        raise proc.bad("oomScoreAdj", f"{oom_score_adj} is not from -1000 to 1000")
    cwd = proc.take("cwd", str, "/")
    proc.done()
    return {"args": args, "env": env, "rlimits": rlimits, "oom_score_adj": oom_score_adj,
            "security": security, "additional_gids": tuple(groups),
            "inherited": (inheritable, ambient), "umask": umask,
            "describe": {"tty": terminal, "workdir": cwd, "user": f"{uid}:{gid}"}}


def capabilities_of(caps: dict | None) -> tuple[tuple[str, ...] | None, tuple, tuple]:
    """The capabilities to keep (None: all, as without the field), the inheritable and
    the ambient ones. We keep one set, as bounding = effective = permitted; inheritable
    within it; ambient takes effect only where inheritable too (runc's table shows CapAmb
    0 for `runc spec`'s ambient set, which has no inheritable one, for that reason)."""
    if caps is None:
        return None, (), ()
    fields = Fields(caps, "process.capabilities")
    sets = {}
    for kind in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        names = fields.take(kind, list, [])
        if not all(isinstance(n, str) and n.removeprefix("CAP_") in CAPABILITIES
                   for n in names):
            raise BadBundle(f"config.json: process.capabilities.{kind} names an unknown "
                            f"capability: {names}")
        sets[kind] = {n.removeprefix("CAP_") for n in names}
    fields.done()
    if not sets["inheritable"] <= sets["bounding"]:
        raise fields.refuse("inheritable", " beyond the bounding set")
    for kind in ("effective", "permitted"):
        if sets[kind] != sets["bounding"]:
            raise fields.refuse(kind, " when it differs from the bounding set")
    kept = None if sets["bounding"] == set(CAPABILITIES) else tuple(sorted(sets["bounding"]))
    return kept, tuple(sorted(sets["inheritable"])), tuple(sorted(sets["ambient"]))


def rlimit_of(item: Fields) -> tuple[int, int, int]:
    """One process.rlimits entry: (resource number, soft, hard)."""
    kind = item.take("type", str, "")
    number = getattr(resource, kind, None) if kind.startswith("RLIMIT_") else None
    if number is None:
        raise BadBundle(f"config.json: {item.path}.type {kind!r} is not an RLIMIT_ name")
    soft, hard = item.take("soft", int, 0), item.take("hard", int, 0)
    item.done()
    if not 0 <= soft <= hard < 2**64:
        raise BadBundle(f"config.json: {item.path}: soft {soft} and hard {hard} must be "
                        "0 <= soft <= hard < 2**64")
    return number, soft, hard


def linux_options(linux: Fields, made: set[str]) -> tuple[dict, dict, dict]:
    """linux.resources as describe()'s limits; maskedPaths, readonlyPaths and seccomp
    as Security's switches; and what only the runtime applies (bundle_linux.py reads
    it: the paths' lists, the sysctls, the seccomp program)."""
    resources = Fields(linux.take("resources", dict, {}), "linux.resources")
    device_rules = device_rules_of(resources)
    memory = Fields(resources.take("memory", dict, {}), "linux.resources.memory")
    cpu = Fields(resources.take("cpu", dict, {}), "linux.resources.cpu")
    pids = Fields(resources.take("pids", dict, {}), "linux.resources.pids")
    quota, period = cpu.take("quota", int), cpu.take("period", int)
    limit = pids.take("limit", int)
    options = {"memory": memory.take("limit", int),
               # a fraction of CPUs, counted in the bundle's period (-1: no quota)
               "cpus": round(quota / (period or CPU_PERIOD), 6) if quota and quota > 0 else None,
               "pids_limit": "max" if limit is None or limit <= 0 else limit}
    details = {"cpu_period": period, "cpu_shares": cpu.take("shares", int),
               "cpuset_cpus": cpu.take("cpus", str) or None,
               "cpuset_mems": cpu.take("mems", str) or None}
    try:
        check_cpu_details(*details.values())
    except InvalidArgument as e:
        raise BadBundle(f"config.json: linux.resources.cpu: {e}") from None
    options["cpu_details"] = details
    for part in (memory, cpu, pids, resources):
        part.done()           # realtimeRuntime, realtimePeriod, idle... are refused here
    extras = {"masked": paths_of(linux, "maskedPaths"),
              "read_only": paths_of(linux, "readonlyPaths"),
              "sysctl": sysctl_of(linux, made), "seccomp": seccomp_of(linux),
              "device_nodes": device_nodes_of(linux), "device_rules": device_rules,
              "root_propagation": root_propagation_of(linux)}
    return options, {"system_paths": bool(extras["masked"] or extras["read_only"]),
                     "seccomp": extras["seccomp"] is not None}, extras


# -- the other way: a bundle from one of our containers or images ---------------------------

def export_bundle(source: str, directory: str | os.PathLike, store=None) -> Path:
    """Write `directory`/config.json and rootfs/ for the container `source`, or else
    the image `source` in the store: a bundle `runc run` runs as it is. The root is
    the image's layers (and a container's writable layer) merged by overlayfs, so
    its whiteouts hide what they hide, copied out with `cp -a`."""
    from .images.store import Store
    directory = Path(directory).absolute()
    if source in state.names():
        spec = from_record(state.read(source))
        lower = [state.data_dir() / source / "upper", *map(Path, spec.lower)]
    else:
        spec = describe(image=(store or Store()).image(source))
        lower = [Path(layer) for layer in spec.lower]
    config = config_of(spec)                     # refuses what a bundle cannot say
    if directory.exists() and any(directory.iterdir()):
        raise MinicontainerError(f"{directory} is not empty: give a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        copy_merged([p for p in lower if p.is_dir()], directory / "rootfs")
        (directory / "config.json").write_text(json.dumps(config, indent=1))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def config_of(spec: Spec) -> dict:
    """A Spec as config.json (read_config's inverse, for what a bundle can say)."""
    if spec.network or spec.rootless or spec.init or not spec.security.devices:
        raise MinicontainerError("a bundle cannot say its network, user namespace, --init "
                                 "or --privileged devices: export a container without them")
    security, limits = spec.security, spec.limits
    kept = security.kept if security.capabilities else tuple(CAPABILITIES)
    names = [f"CAP_{name}" for name in kept]
    resources = {"devices": DENY_ALL_DEVICES}
    if limits.memory:
        resources["memory"] = {"limit": limits.memory}
    if limits.cpus:
        resources["cpu"] = {"quota": round(limits.cpus * 100_000), "period": 100_000}
    if limits.pids:
        resources["pids"] = {"limit": limits.pids}
    ours = {kind: name for name, kind in NAMESPACES.items()}
    linux = {"namespaces": [{"type": ours[kind]} for kind in sorted(spec.namespaces)],
             "resources": resources}
    if security.system_paths:
        linux.update(maskedPaths=list(MASKED_PATHS), readonlyPaths=list(READ_ONLY_PATHS))
    if security.seccomp:
        linux["seccomp"] = seccomp_profile()
    return {"ociVersion": OCI_VERSION,
            "process": {"terminal": spec.tty, "user": {"uid": spec.user[0], "gid": spec.user[1]},
                        "args": list(spec.command), "cwd": spec.workdir,
                        "env": [f"{name}={value}" for name, value in spec.env.items()],
                        "capabilities": {kind: names for kind in
                                         ("bounding", "effective", "permitted")},
                        "noNewPrivileges": security.no_new_privs},
            "root": {"path": "rootfs", "readonly": False}, "hostname": spec.hostname,
            "mounts": BUNDLE_MOUNTS, "linux": linux}


BUNDLE_MOUNTS = [   # as `runc spec` writes them (we make our own equivalents)
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
]


def copy_merged(layers: list[Path], target: Path) -> None:
    """`cp -a` the layers (top first) as overlayfs merges them into `target`. The
    overlay is mounted read-only by a child in a mount namespace of its own, never
    here: the host never sees it, and it goes with the child."""
    view = Path(tempfile.mkdtemp(prefix="mc-export-"))
    if len(layers) == 1:         # overlayfs needs two lower layers without an upper
        how = partial(mount, str(layers[0]), view, None, MS_BIND)
    else:
        how = partial(mount, "overlay", view, "overlay", MS_RDONLY,
                      "lowerdir=" + ":".join(map(str, layers)))
    try:
        code, _ = process.capture(
            ["cp", "-a", f"{view}/.", str(target)],
            [partial(syscalls.unshare, syscalls.CLONE_NEWNS), make_mounts_private, how],
            timeout=600)
        if code != 0:
            raise MinicontainerError(f"copying the image's files into {target} failed "
                                     f"(cp exit code {code})")
    finally:
        view.rmdir()
