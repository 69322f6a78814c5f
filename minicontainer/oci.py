"""The OCI runtime: how Docker and Podman hand a container to the layers below them.

Docker does not build containers itself: its daemon asks containerd, containerd a
shim, and the shim runs a *runtime* (runc, crun) on a *bundle*: a directory holding
`config.json` (the OCI runtime spec: the command, its user, namespaces, limits,
capabilities, mounts) and the root filesystem it names. The runtime's whole contract
is five commands, each run as a short-lived process:

    create --bundle B ID   build the container, all but its command: `created`
    start ID               run the command: `running`, and `stopped` once it exits
    state ID               print the state as JSON (ociVersion, id, status, pid, bundle)
    kill ID [SIGNAL]       signal its first process
    delete ID              remove what create made

So the container must outlive `create`, and its command must wait until `start`,
which is another process. runc makes a FIFO, `exec.fifo`, in the container's state
directory; the container's last step before execve(2) opens it for writing, which
blocks in the kernel until `start` opens it for reading. We do the same
(wait_for_start). Everything else is our layers: config.json becomes a Spec (spec.py),
and container.Container builds it as for `minicontainer run -d`. What our layers
cannot honour is refused by its JSON path, never ignored (read_config).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from . import process, state, syscalls
from .container import Container, make_workdir
from .errors import BadBundle, ContainerNotFound, MinicontainerError, NameInUse, WrongState
from .security import (CAPABILITIES, DENIED_SOCKET_FAMILIES, DENIED_SYSCALLS, MASKED_PATHS,
                       NEW_NAMESPACE_FLAGS, NOT_IMPLEMENTED, READ_ONLY_PATHS, Security,
                       become_user, confine)
from .namespaces import make_mounts_private
from .spec import Spec, describe, from_record
from .syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT, mount

OCI_VERSION = "1.0.2"       # what we write; any 1.x is read
FIFO, EXTRAS = "exec.fifo", "oci.json"   # in the container's record directory
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

# What a probe inside sees differently under runc and under us, on `runc spec`'s bundle
# (tests/test_oci.py prints the rows and checks that these, and only these, differ).
NODE = ("runc makes the node with mknod on its /dev tmpfs; we bind-mount the host's "
        "(namespaces.mount_minimal_dev: mknod is denied in a user namespace)")
MASKED_NODE = ("masked under the host's /dev/null (devtmpfs), runc's under its own node "
               "(tmpfs): the same empty file")
NO_CGROUPFS = "not mounted: the container does not see the cgroup tree (runc mounts it ro)"
DIFFERENCES_FROM_RUNC = {
    "mount /": "runc mounts the bundle's rootfs itself, so writes land in the bundle; ours "
               "is an overlay on it: the bundle is never changed, delete drops the writes",
    **{f"mount /dev/{name}": NODE for name in ("full", "null", "random", "tty", "urandom",
                                               "zero")},
    "mount /dev/mqueue": "not mounted: the ipc namespace has its own queues, no fs shows them",
    "ls /dev": "no /dev/mqueue (above)",
    "mount /proc/interrupts": "masked by us too: Docker's list has it (MASKED_PATHS), runc's not",
    "mount /proc/keys": MASKED_NODE, "mount /proc/timer_list": MASKED_NODE,
    "mount /sys/fs/cgroup": NO_CGROUPFS, "mount /sys/fs/cgroup/*": NO_CGROUPFS,
    "mount /tmp": "a tmpfs of the container's own (namespaces.py), where runc leaves the "
                  "image's /tmp",
}


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


# -- the container's own steps: what runc does that `run` does not ----------------------

class BundleContainer(Container):
    """A Container built from a bundle, whose command waits for `start` (exec.fifo)."""

    bundle: Bundle

    def child_steps(self, steps: list[process.Step],
                    channel: process.Channel) -> list[process.Step]:
        """Our layers' steps, with the bundle's rlimits and oom score first, the root
        made read-only once the working directory exists (runc's order), and the
        wait for `start` last. Runs once the record directory exists: the FIFO is made
        there, and opened here (O_PATH) for the child, who cannot reach this path
        after pivot_root."""
        bundle = self.bundle
        state.write_json(self.directory / EXTRAS, {
            "ociVersion": bundle.oci_version, "bundle": str(bundle.directory),
            "annotations": bundle.annotations})
        os.mkfifo(self.directory / FIFO, 0o600)
        self.fifo = os.open(self.directory / FIFO, os.O_PATH | os.O_CLOEXEC)
        first = [partial(set_rlimits, bundle.rlimits)]
        if bundle.oom_score_adj is not None:
            first.append(partial(set_oom_score_adj, bundle.oom_score_adj))
        after = 1 + next(n for n, step in enumerate(steps)
                         if getattr(step, "func", None) is make_workdir)
        made_readonly = [remount_root_readonly] if bundle.readonly else []
        steps = first + steps[:after] + made_readonly + steps[after:]
        return root_before_confine(steps) + [partial(wait_for_start, self.fifo, channel)]


def root_before_confine(steps: list[process.Step]) -> list[process.Step]:
    """Become root:root (setgroups, setgid, setuid) before confine() drops capabilities,
    not after: a bundle may keep neither SETUID nor SETGID (`runc spec` keeps three
    capabilities), and root loses none by it. runc sets every user so, keeping its
    capabilities across setuid with PR_SET_KEEPCAPS; we do not, and another user needs
    SETUID and SETGID kept (read_config refuses it otherwise)."""
    become = next(step for step in steps if getattr(step, "func", None) is become_user)
    if become.args != (0, 0):
        return steps
    steps = [step for step in steps if step is not become]
    at = next(n for n, step in enumerate(steps) if getattr(step, "func", None) is confine)
    return steps[:at] + [become] + steps[at:]


def set_rlimits(rlimits: tuple[tuple[int, int, int], ...]) -> None:
    """A step: process.rlimits (raising a hard limit needs CAP_SYS_RESOURCE)."""
    for kind, soft, hard in rlimits:
        resource.setrlimit(kind, (soft, hard))


def set_oom_score_adj(score: int) -> None:
    """A step: process.oomScoreAdj, inherited by the command (lowering it needs
    CAP_SYS_RESOURCE)."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(score))


def remount_root_readonly() -> None:
    """A step, after pivot_root: root.readonly. The overlay stays writable below; its
    mount at / becomes read-only, keeping its other flags (nodev...), as runc does."""
    flags = os.statvfs("/").f_flag & 0o16     # ST_NOSUID, ST_NODEV, ST_NOEXEC = MS_*
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)


def wait_for_start(fifo: int, channel: process.Channel) -> None:
    """The last step: tell `create` we are built (our end of spawn's report pipe
    closes, which spawn reads as end-of-file, as at exec), then open exec.fifo for
    writing through our O_PATH fd. open(2) blocks until `start` opens it for reading;
    the byte we write tells `start` we were still here."""
    channel.stop_telling()
    writer = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(writer, b"0")
    os.close(writer)
    os.close(fifo)


# -- the five operations -------------------------------------------------------------------

def create(container_id: str, bundle_dir: str, pid_file: str | None = None,
           console_socket: str | None = None) -> BundleContainer:
    """Build the container of the bundle, its command waiting for start(). Its stdio
    are ours unless it has a terminal, whose master goes to `console_socket`."""
    bundle = read_bundle(bundle_dir, container_id)
    if bundle.spec.tty and not console_socket:
        raise BadBundle("config.json: process.terminal needs --console-socket")
    if console_socket and not bundle.spec.tty:
        raise BadBundle("--console-socket needs process.terminal true in config.json")
    container = BundleContainer.of(bundle.spec)
    container.bundle = bundle
    try:
        container.start(stdio=(None, None, None))
    except NameInUse:
        raise NameInUse(f"container {container_id} exists already: delete it first, or "
                        "choose another id") from None
    finally:
        if hasattr(container, "fifo"):
            os.close(container.fifo)
    try:
        if console_socket:
            send_console(console_socket, container.console)
        container.detached = True           # it outlives us; `delete` removes it
        container._save()
        if pid_file:
            write_pid_file(Path(pid_file), container.pid)
    except BaseException:
        container.remove(force=True)
        raise
    return container


def run(container_id: str, bundle_dir: str, pid_file: str | None = None,
        console_socket: str | None = None) -> int:
    """create, start, wait for the command, delete: runc run's foreground; its exit code."""
    container = create(container_id, bundle_dir, pid_file, console_socket)
    try:
        start(container_id)
        with process.signals_passed_to(container._require_child()):
            return container.wait().exit_code
    finally:
        container.remove(force=True)


def send_console(path: str, master: int) -> None:
    """The terminal's master to whoever listens at `path` (runc's --console-socket:
    SCM_RIGHTS, as terminal.Pty sends it out of the container)."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        socket.send_fds(client, [b"/dev/console"], [master])
    os.close(master)


def write_pid_file(path: Path, pid: int) -> None:
    """--pid-file: the pid, written whole or not at all (rename)."""
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text(str(pid))
    draft.rename(path)


def status(container_id: str) -> tuple[str, Container | None]:
    """creating, created, running or stopped; and the container (None while creating)."""
    record = state.read(container_id)
    if record["pid"] is None:
        return ("creating" if state.owner_alive(record) else "stopped"), None
    container = Container.load(container_id)
    if not container.running:
        return "stopped", container
    return ("created" if (container.directory / FIFO).exists() else "running"), container


def start(container_id: str, timeout: float = 10) -> None:
    """Let the created container's command run: read exec.fifo (wait_for_start)."""
    now, container = status(container_id)
    if now != "created":
        raise WrongState(f"container {container_id} is {now}: start needs a created one")
    fifo = container.directory / FIFO
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        pidfd = container._require_child().pidfd
        ready, _, _ = select.select([reader, pidfd], [], [], timeout)
        if reader not in ready or os.read(reader, 1) != b"0":
            raise WrongState(f"container {container_id} ended before it was started")
    finally:
        os.close(reader)
        fifo.unlink(missing_ok=True)          # from now on: running


def state_of(container_id: str) -> dict:
    """The runtime spec's state: ociVersion, id, status, pid, bundle, annotations."""
    now, container = status(container_id)
    extras = read_extras(container_id)
    pid = container.pid if container is not None and now != "stopped" else 0
    return {"ociVersion": extras["ociVersion"], "id": container_id, "status": now,
            "pid": pid, "bundle": extras["bundle"], "annotations": extras["annotations"]}


def read_extras(container_id: str) -> dict:
    """What create wrote beside the record (oci.json), checked: a record is untrusted."""
    try:
        extras = json.loads((state.containers_dir() / container_id / EXTRAS).read_text())
    except (OSError, ValueError):
        extras = None
    if not (isinstance(extras, dict) and isinstance(extras.get("ociVersion"), str)
            and isinstance(extras.get("bundle"), str)
            and isinstance(extras.get("annotations"), dict)):
        raise ContainerNotFound(f"container {container_id} was not made by `oci create`")
    return extras


def kill(container_id: str, sig: int = signal.SIGTERM) -> None:
    """Signal the first process of a created or running container."""
    now, container = status(container_id)
    if now not in ("created", "running"):
        raise WrongState(f"container {container_id} is {now}: kill needs a created or "
                         "running one")
    container.kill(sig)


def delete(container_id: str, force: bool = False) -> None:
    """Remove a stopped container (a created one too, as runc does; force: any)."""
    now, container = status(container_id)
    read_extras(container_id)               # an `oci` container, not a `run` one
    if now == "running" and not force:
        raise WrongState(f"container {container_id} is running: kill it first, or "
                         "delete --force")
    if now == "creating":
        raise WrongState(f"container {container_id} is being created")
    (container or Container.load(container_id)).remove(force=True)


def parse_signal(text: str) -> int:
    """A signal as runc takes it: 9, KILL or SIGKILL."""
    name = text.upper()
    if name.isdigit() and int(name) in set(signal.Signals):
        return int(name)
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise MinicontainerError(f"unknown signal {text!r}: use e.g. TERM, KILL or 9") from None


# -- the command line: runc's -----------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """runc's global options and commands, with its argument names."""
    p = argparse.ArgumentParser(prog="minicontainer oci", description=(
        "An OCI runtime: the commands runc takes, on our layers."))
    p.add_argument("--root", help="where the containers' records live (MINICONTAINER_RUN)")
    p.add_argument("--log", help="append errors to this file (for conmon, containerd)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true", help="accepted, as runc's")
    p.add_argument("--systemd-cgroup", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="operation", required=True, metavar="COMMAND")
    for name in ("create", "run"):
        made = sub.add_parser(name, help={"create": "build a container from a bundle",
                                          "run": "create, then start"}[name])
        made.add_argument("--bundle", "-b", default=".", help="the bundle (default: .)")
        made.add_argument("--pid-file", help="write the container's pid here")
        made.add_argument("--console-socket", help="send the terminal's master here")
        made.add_argument("id")
    for name, text in (("start", "run a created container's command"),
                       ("state", "print a container's state as JSON")):
        sub.add_parser(name, help=text).add_argument("id")
    killing = sub.add_parser("kill", help="signal a container's first process")
    killing.add_argument("--all", "-a", action="store_true", help=argparse.SUPPRESS)
    killing.add_argument("id")
    killing.add_argument("signal", nargs="?", default="TERM")
    deleting = sub.add_parser("delete", help="remove a container")
    deleting.add_argument("--force", "-f", action="store_true")
    deleting.add_argument("id")
    return p


def main(argv: list[str]) -> int:
    """`minicontainer oci ...`: one operation; an error is one line on stderr (and in
    --log), exit code 1 as runc's."""
    args = parser().parse_args(argv)
    if args.root:
        os.environ["MINICONTAINER_RUN"] = str(Path(args.root).absolute())
    try:
        return operate(args)
    except (MinicontainerError, OSError) as e:
        message = str(e) if isinstance(e, MinicontainerError) else (
            f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        print(f"minicontainer: {message}", file=sys.stderr)
        if args.log:
            log_error(Path(args.log), args.log_format, message)
        return 1


def operate(args: argparse.Namespace) -> int:
    """Do what `args` asks; the exit code (`run`: the command's, as runc's)."""
    if args.operation == "create":
        create(args.id, args.bundle, args.pid_file, args.console_socket)
    elif args.operation == "run":
        return run(args.id, args.bundle, args.pid_file, args.console_socket)
    elif args.operation == "start":
        start(args.id)
    elif args.operation == "state":
        print(json.dumps(state_of(args.id), indent=2))
    elif args.operation == "kill":
        kill(args.id, parse_signal(args.signal))
    elif args.operation == "delete":
        delete(args.id, args.force)
    return 0


def log_error(path: Path, form: str, message: str) -> None:
    """One error line in runc's log formats (containerd and conmon read the json one)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = (json.dumps({"level": "error", "msg": message, "time": when}) if form == "json"
            else f'time="{when}" level=error msg={json.dumps(message)}')
    with open(path, "a") as f:
        f.write(line + "\n")


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
