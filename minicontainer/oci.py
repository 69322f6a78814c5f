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
(wait_for_start). Everything else is our layers: config.json becomes a Spec
(bundles.py, which refuses by its JSON path what our layers cannot honour), and
container.Container builds it as for `minicontainer run -d`, but on the bundle's root
itself (rootfs.BoundRoot: the spec wants the command's writes there), where `run`
puts an overlay on the image; this module hands our
layers' steps only what a bundle asks beyond `run` (with_bundle): rlimits, an oom
score, a umask, namespaces joined by path, /dev/mqueue, sysctls, device nodes and
their allow rules, a read-only root and its propagation, its own masked and
read-only paths, its seccomp profile, inheritable and ambient capabilities,
additional groups, and a user namespace whose ids we, the parent, map.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import resource
import select
import signal
import sys
import time
from functools import partial
from pathlib import Path

from . import devices, process, state, syscalls
from .arguments import check_name
from .bundle_linux import make_device_nodes, write_sysctls
from .bundles import Bundle, read_bundle
from .container import Container, make_workdir
from .errors import BadBundle, ContainerNotFound, MinicontainerError, NameInUse, WrongState
from .namespaces import enter_user_namespace_mapped_by_parent, isolate, write_id_maps
from .rootfs import BoundRoot
from .security import (CAPABILITIES, become_user, confine, inherit_capabilities,
                       protect_system_paths)
from .syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT, mount

FIFO, EXTRAS = "exec.fifo", "oci.json"   # in the container's record directory

# What a probe inside sees differently under runc and under us, on `runc spec`'s bundle
# (tests/test_oci.py prints the rows and checks that these, and only these, differ; and
# tests/test_oci_conformance.py, on it, on one umoci unpacked and on one we exported).
NODE = ("runc makes the node with mknod on its /dev tmpfs; we bind-mount the host's "
        "(namespaces.mount_minimal_dev: mknod is denied in a user namespace)")
MASKED_NODE = ("masked under the host's /dev/null (devtmpfs), runc's under its own node "
               "(tmpfs): the same empty file")
NO_CGROUPFS = "not mounted: the container does not see the cgroup tree (runc mounts it ro)"
DIFFERENCES_FROM_RUNC = {
    **{f"mount /dev/{name}": NODE for name in ("full", "null", "random", "tty", "urandom",
                                               "zero")},
    "mount /proc/keys": MASKED_NODE, "mount /proc/timer_list": MASKED_NODE,
    "mount /sys/fs/cgroup": NO_CGROUPFS, "mount /sys/fs/cgroup/*": NO_CGROUPFS,
}

# ... and on the bundles we export (bundles.export_bundle), which mask Docker's list.
DIFFERENCES_ON_OUR_BUNDLES = {"mount /proc/interrupts": MASKED_NODE}

# crun masks a file under /dev/null as we do (those rows agree with ours), and adds
# Docker's /dev/core link to /proc/kcore (masked anyway); runc and we do not.
DIFFERENCES_FROM_CRUN = {
    **{row: why for row, why in DIFFERENCES_FROM_RUNC.items()
       if row not in ("mount /proc/keys", "mount /proc/timer_list")},
    "ls /dev": "no /dev/core: crun adds that link to /proc/kcore, as Docker once did",
}

# The runtime-tools validation files runc 1.1.5 passes cleanly on this machine that we
# do not pass yet, each with its reason (shared/notes/oci-conformance.md). None is left:
# all 28 pass for us too (config_updates_without_affect, create, default,
# delete_only_create_resources, delete_resources, hostname, kill, kill_no_effect,
# killsig, linux_cgroups_cpus, linux_cgroups_pids, linux_cgroups_relative_cpus,
# linux_cgroups_relative_pids, linux_devices, linux_masked_paths, linux_ns_itype,
# linux_ns_nopath, linux_ns_path, linux_ns_path_type, linux_readonly_paths,
# linux_sysctl, linux_uid_mappings, mounts, process, process_oom_score_adj,
# process_user, root_readonly_true, state). A row goes here, with its reason, when one
# stops passing for a reason we keep.
CONFORMANCE_GAPS: dict[str, str] = {}

# -- the container's own steps: what runc does that `run` does not ----------------------

class BundleContainer(Container):
    """A Container built from a bundle, whose command waits for `start` (exec.fifo)."""

    bundle: Bundle

    def child_steps(self, steps: list[process.Step],
                    channel: process.Channel) -> list[process.Step]:
        """Our layers' steps, given what the bundle asks beyond `run` (with_bundle),
        with the wait for `start` last. Runs once the record directory exists: the
        FIFO is made there, and opened here (O_PATH) for the child, who cannot reach
        this path after pivot_root."""
        bundle = self.bundle
        state.write_json(self.directory / EXTRAS, {
            "ociVersion": bundle.oci_version, "bundle": str(bundle.directory),
            "annotations": bundle.annotations})
        # Writable by all, as runc's: the command's user opens it, through our fd (its
        # directory is root's alone, 0700, so nobody else reaches it by its path).
        os.mkfifo(self.directory / FIFO)
        os.chmod(self.directory / FIFO, 0o622)
        self.fifo = os.open(self.directory / FIFO, os.O_PATH | os.O_CLOEXEC)
        # And the host's /proc, through which the child reopens it: without a mount
        # namespace of its own, the container has no /proc to do it with.
        self.proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if (bundle.device_nodes or bundle.device_rules) and not (
                self.cgroup and devices.can_list(self.cgroup)):
            raise BadBundle("config.json: linux.devices and linux.resources.devices need "
                            "the device cgroup (v1 devices, or v2), which this host lacks")
        command = partial(look_up_command, self.spec.command[0],
                          self.spec.env.get("PATH", os.defpath))
        if not any(getattr(step, "func", None) is become_user for step in steps):
            # security.user_steps leaves it out in our own user namespace, which maps
            # root alone; a bundle's maps its users: become the one it names.
            at = next(n for n, step in enumerate(steps) if getattr(step, "func", None) is os.chdir)
            steps.insert(at, partial(become_user, *self.spec.user))
        steps = with_bundle(root_before_confine(steps), bundle, channel)
        # The umask last: our own mkdir()s (/dev/pts...) keep their modes (runc's 022
        # else, where ours would be whatever the caller had).
        umask = 0o022 if bundle.umask is None else bundle.umask
        last = [partial(os.umask, umask), command,
                partial(wait_for_start, self.fifo, self.proc, channel)]
        if bundle.seccomp is not None and self.spec.security.no_new_privs:
            # runc's order: with no_new_privs the filter goes in last, right before
            # exec, so a strict profile cannot refuse the runtime's own last calls.
            last.append(partial(syscalls.load_seccomp,
                                syscalls.seccomp_program(bundle.seccomp)))
        elif bundle.seccomp is not None and self.spec.user == (0, 0):
            # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it goes
            # in with confine(), before the capabilities go: runc does that before
            # the wait for `start`, its last calls being few and in any profile; ours
            # are Python's, which an old profile refuses (faccessat2...). So root's
            # confine() comes last here, after the wait, holding its capabilities
            # while it waits (blocked in open(2): nothing runs in it yet). Another
            # user must confine before setuid: its own steps then run under the filter.
            confined = [step for step in steps
                        if getattr(step, "func", None) in (confine, inherit_capabilities)]
            steps = [step for step in steps if step not in confined]
            last += confined
        return steps + last

    def root_layer(self) -> BoundRoot:
        """root.path as it is, as the runtime spec wants and runc does: the command's
        writes land in the bundle (namespaces.isolate binds it and pivots into it, or,
        without a mount namespace of its own, enters it with chroot)."""
        return BoundRoot(Path(self.spec.rootfs), nodev=self.spec.security.devices)

    def allowed_devices(self) -> tuple:
        """Ours (devices.ALLOWED) and the ones linux.resources.devices allows."""
        return devices.ALLOWED + self.bundle.device_rules

    def child_ready(self, pid: int) -> None:
        """The child waits in its new user namespace: write its id maps
        (namespaces.enter_user_namespace_mapped_by_parent)."""
        if self.bundle.id_maps:
            write_id_maps(pid, *self.bundle.id_maps)
        super().child_ready(pid)


def with_bundle(steps: list[process.Step], bundle: Bundle,
                channel: process.Channel) -> list[process.Step]:
    """Our layers' steps given the bundle's own inputs, each where its layer takes it:
    rlimits and the oom score first; the namespaces to join, /dev/mqueue and the user
    namespace mapped by us, the parent, over `channel` (isolate); the root's
    propagation, the sysctls and the device nodes right after pivot_root, before
    /proc/sys goes read-only; the root made read-only once the working directory
    exists (runc's order); the masked and read-only paths; the seccomp program
    (confine, or last: child_steps); the inheritable and ambient
    capabilities (after confine, or after become_user for another user than root);
    additionalGids (become_user)."""
    security = bundle.spec.security
    kept = security.kept if security.capabilities else tuple(CAPABILITIES)
    first = [partial(set_rlimits, bundle.rlimits)]
    if bundle.oom_score_adj is not None:
        first.append(partial(set_oom_score_adj, bundle.oom_score_adj))
    changed = []
    for step in steps:
        func = getattr(step, "func", step)
        if func is isolate:
            step = partial(step, joined=bundle.joined, mqueue=bundle.mqueue, tmp=False)
            if bundle.id_maps:
                step = partial(step, enter_user=partial(
                    enter_user_namespace_mapped_by_parent, channel))
        elif func is protect_system_paths:
            step = partial(protect_system_paths, bundle.masked or (), bundle.read_only or ())
        elif func is confine and bundle.seccomp is not None:
            if security.no_new_privs:        # loaded last instead (child_steps)
                step = partial(confine, dataclasses.replace(security, seccomp=False))
            else:
                step = partial(confine, security, syscalls.seccomp_program(bundle.seccomp))
        elif func is become_user:            # another user keeps its capabilities, as runc's
            step = partial(become_user, *step.args[:2], bundle.additional_gids,
                           keep_capabilities=step.args[0] != 0)
        changed.append(step)
        if (func is confine and bundle.inheritable) or (
                func is become_user and step.args[0] != 0):
            changed.append(partial(inherit_capabilities, kept, bundle.inheritable,
                                   bundle.ambient))
        if func is isolate and bundle.root_propagation:
            changed.append(partial(propagate_root, bundle.root_propagation))
        if func is isolate and bundle.sysctl:
            changed.append(partial(write_sysctls, bundle.sysctl))
        if func is isolate and bundle.device_nodes:
            changed.append(partial(make_device_nodes, bundle.device_nodes))
        if func is make_workdir and bundle.readonly:
            changed.append(remount_root_readonly)
    return first + changed


def root_before_confine(steps: list[process.Step]) -> list[process.Step]:
    """Become root:root (setgroups, setgid, setuid) before confine() drops capabilities,
    not after: a bundle may keep neither SETUID nor SETGID (`runc spec` keeps three
    capabilities), and root loses none by it. Another user becomes itself after
    confine(), keeping its capabilities across setuid with PR_SET_KEEPCAPS as runc
    does (with_bundle); it needs SETUID and SETGID kept (read_config refuses it
    otherwise), where runc sets the user before dropping the bounding set."""
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


def propagate_root(propagation: int) -> None:
    """A step, after pivot_root: linux.rootfsPropagation for / (MS_SHARED...), in the
    container's own mount namespace, cut from the host's before anything was mounted
    (namespaces.make_mounts_private): a mount the container makes reaches the copies
    of its own namespace, never the host's. runc sets it at the same point."""
    mount(None, "/", None, propagation)


def remount_root_readonly() -> None:
    """A step, after pivot_root: root.readonly. Our bind of root.path at / becomes
    read-only (the directory stays writable on the host), keeping its other flags
    (nodev...), as runc does."""
    flags = os.statvfs("/").f_flag & 0o16     # ST_NOSUID, ST_NODEV, ST_NOEXEC = MS_*
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)


def look_up_command(program: str, path: str) -> None:
    """A step: fail `create` now if the command cannot be found, as runc does (its
    exec comes after `start`, when no one would hear the error)."""
    places = [program] if "/" in program else [f"{d}/{program}" for d in path.split(":") if d]
    if not any(os.access(place, os.X_OK) for place in places):
        raise FileNotFoundError(errno.ENOENT, "command not found in the container "
                                f"(PATH={path})", program)


def wait_for_start(fifo: int, proc: int, channel: process.Channel) -> None:
    """The last step: tell `create` we are built (our end of spawn's report pipe
    closes, which spawn reads as end-of-file, as at exec), then open exec.fifo for
    writing through our O_PATH fd, reached in the host's /proc (`proc`, opened by
    create: a container without a mount namespace has no /proc of its own). open(2)
    blocks until `start` opens it for reading; the byte we write tells `start` we
    were still here."""
    channel.stop_telling()
    writer = os.open(f"self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
    os.write(writer, b"0")
    process.close_all([writer, fifo, proc])   # nothing of the host's reaches the command


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
    # Our stdio are the command's (runc's pass-through), unless it has a terminal: then
    # nothing of ours stays open in it (its waiter would hold our pipes for its life).
    null = os.open(os.devnull, os.O_RDWR) if bundle.spec.tty else None
    try:
        container.start(stdio=(null, null, null))
    except NameInUse:
        raise NameInUse(f"container {container_id} exists already: delete it first, or "
                        "choose another id") from None
    finally:
        process.close_all([getattr(container, "fifo", None), getattr(container, "proc", None),
                           null])
    try:
        if console_socket:
            send_console(console_socket, container.console)
        container.detached = True           # it outlives us; `delete` removes it
        container.save()
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
        with process.signals_passed_to(container.child()):
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
    # A new file of ours, never one planted there (a symbolic link would be followed).
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError as e:
        raise MinicontainerError(f"--pid-file {path}: cannot write beside it ({draft.name}: "
                                 f"{e.strerror})") from None
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
    try:
        draft.rename(path)
    except BaseException:
        draft.unlink(missing_ok=True)
        raise


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
        pidfd = container.child().pidfd
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
    """Remove a stopped container (a created one too, as runc does; force: any, and
    an unknown one is no error, as runc's: Podman deletes after a failed create)."""
    try:
        now, container = status(container_id)
    except ContainerNotFound:
        if force:
            return
        raise
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
        check_name(args.id)     # it names a directory: never "..", never a path
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
