"""An OCI bundle: a container written down for any runtime, and read into our Spec.

A *bundle* is a directory: `config.json` (the OCI runtime spec: the command, its
environment and user, the root's path, the namespaces, the limits, capabilities,
mounts, masked paths, seccomp) and the root filesystem it names, usually `rootfs/`.
runc, crun and our own runtime (oci.py) all take the same directory, so a bundle is
how one container is compared under three runtimes.

Reading one (read_config) maps each field onto describe()'s options, so a bundle
becomes the Spec that `minicontainer run` makes from Docker's options (spec.py). A
field our layers cannot honour is refused by its JSON path, never skipped: the
reader takes each field it knows out of its object (Fields), and whatever is left
over is an error. Writing one (export_bundle) goes the other way, from a Spec and
the image's layers merged by overlayfs, whiteouts honoured.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from functools import partial
from pathlib import Path
import dataclasses

from . import process, state, syscalls
from .errors import BadBundle, MinicontainerError
from .namespaces import make_mounts_private
from .security import (CAPABILITIES, DENIED_SOCKET_FAMILIES, DENIED_SYSCALLS, MASKED_PATHS,
                       NEW_NAMESPACE_FLAGS, NOT_IMPLEMENTED, READ_ONLY_PATHS, Security)
from .spec import Spec, describe, from_record
from .syscalls import MS_BIND, MS_RDONLY, mount

OCI_VERSION = "1.0.2"       # what we write; any 1.x is read
# The runtime spec's names of namespaces → ours (namespaces.FLAGS).
NAMESPACES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
              "cgroup": "cgroup"}
# The mounts `runc spec` writes. We make our own equivalents of these (namespaces.py:
# proc, sysfs read-only, a small /dev with devpts and /dev/shm), whatever options the
# file gives; /dev/mqueue and /sys/fs/cgroup are not mounted (a difference from runc).
STANDARD_MOUNTS = {("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"),
                   ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue"), ("/sys", "sysfs"),
                   ("/sys/fs/cgroup", "cgroup")}
DENY_ALL_DEVICES = [{"allow": False, "access": "rwm"}]   # then runc's allow-list, as ours

# -- config.json → a Spec --------------------------------------------------------------

class Fields:
    """A JSON object read field by field: whatever is left unread is refused by name."""

    def __init__(self, value: object, path: str) -> None:
        """The object at `path` (e.g. "process.user"); BadBundle if it is not one."""
        if not isinstance(value, dict):
            raise BadBundle(f"config.json: {path or 'the file'} is not a JSON object")
        self.left, self.path = dict(value), path

    def take(self, key: str, kind: type | tuple, default: object = None) -> object:
        """The field `key` if it has the JSON type `kind`, else `default` if absent."""
        if key not in self.left:
            return default
        value = self.left.pop(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadBundle(f"config.json: {self.name(key)} has the wrong type "
                            f"({type(value).__name__})")
        return value

    def name(self, key: str) -> str:
        """The JSON path of `key`."""
        return f"{self.path}.{key}" if self.path else key

    def refuse(self, key: str, why: str = "") -> BadBundle:
        """The error for a field we cannot honour."""
        return BadBundle(f"config.json: {self.name(key)} is not supported by minicontainer "
                         f"yet{why}")

    def done(self) -> None:
        """Refuse the first field nobody read: nothing is silently ignored."""
        for key in self.left:
            raise self.refuse(key)


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


def read_bundle(directory: str | os.PathLike, container_id: str) -> Bundle:
    """The bundle in `directory`, checked: BadBundle naming the first field we cannot
    honour, or what is wrong with the file."""
    directory = Path(directory).absolute()
    try:
        config = json.loads((directory / "config.json").read_bytes())
    except FileNotFoundError:
        raise BadBundle(f"{directory} has no config.json: is it an OCI bundle?") from None
    except (ValueError, OSError) as e:
        raise BadBundle(f"{directory}/config.json is not valid JSON: {e}") from None
    return read_config(config, directory, container_id)


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
    kinds = namespaces_of(linux)
    hostname = top.take("hostname", str)
    if hostname is not None and "uts" not in kinds:   # as runc refuses it
        raise BadBundle("config.json: hostname needs a uts namespace (linux.namespaces)")
    check_mounts(top.take("mounts", list, []))
    annotations = top.take("annotations", dict, {})
    if top.take("hooks", dict, {}):
        raise top.refuse("hooks")
    options = process_options(proc)
    limits, switches = linux_options(linux)
    linux.done()
    top.done()
    kept = options["security"]["kept"]
    if options["describe"]["user"] != "0:0" and kept and not {"SETUID", "SETGID"} <= set(kept):
        raise BadBundle("config.json: process.user other than root needs CAP_SETUID and "
                        "CAP_SETGID in process.capabilities here (root_before_confine)")
    spec = describe(options["args"], name=container_id, rootfs=rootfs, hostname=hostname,
                    namespaces=kinds, security=Security(**options["security"], **switches),
                    **options["describe"], **limits)
    # runc's environment is exactly process.env, and HOME if it lacks one; ours
    # would add PATH and HOSTNAME (docker run's): take runc's.
    home = "/root" if spec.user[0] == 0 else "/"
    spec = dataclasses.replace(spec, env={"HOME": home, **options["env"]})
    return Bundle(spec, directory, version, annotations, readonly, options["rlimits"],
                  options["oom_score_adj"])


def root_of(root: Fields, directory: Path) -> tuple[str, bool]:
    """root.path (relative to the bundle) and root.readonly."""
    path = root.take("path", str)
    readonly = root.take("readonly", bool, False)
    root.done()
    if not path:
        raise BadBundle("config.json: root.path is missing")
    rootfs = directory / path
    if not rootfs.is_dir():
        raise BadBundle(f"config.json: root.path {rootfs} is not a directory")
    return str(rootfs), readonly


def namespaces_of(linux: Fields) -> set[str]:
    """linux.namespaces as our kinds; joining one by path, and user, are refused."""
    kinds = set()
    for number, entry in enumerate(linux.take("namespaces", list, [])):
        item = Fields(entry, f"linux.namespaces[{number}]")
        kind = item.take("type", str)
        if item.take("path", str):
            raise item.refuse("path", ": joining a namespace (a new one is made instead)")
        if kind not in NAMESPACES:
            raise item.refuse("type", f" ({kind!r}: we make {', '.join(NAMESPACES)})")
        item.done()
        kinds.add(NAMESPACES[kind])
    if "mnt" not in kinds:     # our root is an overlay, mounted in a namespace of its own
        raise BadBundle("config.json: linux.namespaces has no mount namespace, which "
                        "minicontainer needs for the container's root")
    return kinds


def check_mounts(mounts: list) -> None:
    """Only the standard mounts, for which we make our own (STANDARD_MOUNTS)."""
    for number, entry in enumerate(mounts):
        item = Fields(entry, f"mounts[{number}]")
        where = (item.take("destination", str), item.take("type", str))
        if where not in STANDARD_MOUNTS:
            raise BadBundle(f"config.json: mounts[{number}] ({where[0]}, type {where[1]}) is "
                            "not supported by minicontainer yet: only the standard /proc, "
                            "/dev, /dev/pts, /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup")


def process_options(proc: Fields) -> dict:
    """process.*: the command, environment, directory, user, terminal, security."""
    args = proc.take("args", list, [])
    if not args or not all(isinstance(arg, str) for arg in args):
        raise BadBundle("config.json: process.args must be a non-empty list of strings")
    env = {}
    for entry in proc.take("env", list, []):
        if not isinstance(entry, str) or "=" not in entry:
            raise BadBundle(f"config.json: process.env has {entry!r}, not NAME=value")
        name, _, value = entry.partition("=")
        env[name] = value
    user = Fields(proc.take("user", dict, {}), "process.user")
    uid, gid = user.take("uid", int, 0), user.take("gid", int, 0)
    if user.take("additionalGids", list, []):
        raise user.refuse("additionalGids")
    user.done()
    terminal = proc.take("terminal", bool, False)
    proc.take("consoleSize", dict)                 # the console socket's user sets it
    for label in ("apparmorProfile", "selinuxLabel"):
        if proc.take(label, str):
            raise proc.refuse(label)
    kept = capabilities_of(proc.take("capabilities", dict))
    security = {"no_new_privs": proc.take("noNewPrivileges", bool, False),
                "capabilities": kept is not None, "kept": kept or ()}
    rlimits = tuple(rlimit_of(Fields(item, f"process.rlimits[{n}]"))
                    for n, item in enumerate(proc.take("rlimits", list, [])))
    oom_score_adj = proc.take("oomScoreAdj", int)
    cwd = proc.take("cwd", str, "/")
    proc.done()
    return {"args": args, "env": env, "rlimits": rlimits, "oom_score_adj": oom_score_adj,
            "security": security,
            "describe": {"tty": terminal, "workdir": cwd, "user": f"{uid}:{gid}"}}


def capabilities_of(caps: dict | None) -> tuple[str, ...] | None:
    """The capabilities to keep (None: all, as without the field). We keep one set, as
    bounding = effective = permitted; inheritable must be empty, and so ambient has no
    effect (runc's table shows CapAmb 0 for `runc spec`'s ambient set, for that reason)."""
    if caps is None:
        return None
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
    if sets["inheritable"]:
        raise fields.refuse("inheritable")
    for kind in ("effective", "permitted"):
        if sets[kind] != sets["bounding"]:
            raise fields.refuse(kind, " when it differs from the bounding set")
    return None if sets["bounding"] == set(CAPABILITIES) else tuple(sorted(sets["bounding"]))


def rlimit_of(item: Fields) -> tuple[int, int, int]:
    """One process.rlimits entry: (resource number, soft, hard)."""
    kind = item.take("type", str, "")
    number = getattr(resource, kind, None) if kind.startswith("RLIMIT_") else None
    if number is None:
        raise BadBundle(f"config.json: {item.path}.type {kind!r} is not an RLIMIT_ name")
    limits = (number, item.take("soft", int, 0), item.take("hard", int, 0))
    item.done()
    return limits


def linux_options(linux: Fields) -> tuple[dict, dict]:
    """linux.resources as describe()'s limits; maskedPaths, readonlyPaths and seccomp
    as Security's switches."""
    resources = Fields(linux.take("resources", dict, {}), "linux.resources")
    devices = resources.take("devices", list, DENY_ALL_DEVICES)
    if devices not in ([], DENY_ALL_DEVICES):
        raise resources.refuse("devices", ": only deny-all (then our allow-list, as runc's)")
    memory = Fields(resources.take("memory", dict, {}), "linux.resources.memory")
    cpu = Fields(resources.take("cpu", dict, {}), "linux.resources.cpu")
    pids = Fields(resources.take("pids", dict, {}), "linux.resources.pids")
    quota, period = cpu.take("quota", int), cpu.take("period", int, 100_000)
    limit = pids.take("limit", int)
    options = {"memory": memory.take("limit", int),
               # a fraction of CPUs, applied on our own period (cgroups.CPU_PERIOD)
               "cpus": round(quota / period, 6) if quota and quota > 0 else None,
               "pids_limit": "max" if limit is None or limit <= 0 else limit}
    for part in (memory, cpu, pids, resources):
        part.done()
    masked = linux.take("maskedPaths", list, [])
    frozen = linux.take("readonlyPaths", list, [])
    if not set(masked) <= set(MASKED_PATHS):
        raise linux.refuse("maskedPaths", f": {sorted(set(masked) - set(MASKED_PATHS))} are "
                           "not among ours (security.MASKED_PATHS)")
    if not set(frozen) <= set(READ_ONLY_PATHS):
        raise linux.refuse("readonlyPaths", ": only paths of security.READ_ONLY_PATHS")
    seccomp = linux.take("seccomp", dict)
    if seccomp is not None and seccomp != seccomp_profile():
        raise linux.refuse("seccomp", ": only minicontainer's own profile (export-bundle "
                           "writes it)")
    return options, {"system_paths": bool(masked or frozen), "seccomp": seccomp is not None}


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
