"""The command line, with Docker's names: run (-it, -d), exec, attach, ps, stop, rm,
stats, logs, network, pull, login, images, rmi, tag, load, save, import and `image ...`;
plus compare, doctor and cleanup. Every user error is
one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

DETACH_KEYS = "ctrl-p,ctrl-q"   # Docker's: they leave a -it container running


def main(argv: list[str] | None = None) -> int:
    """Run one command line; its exit code (a user's error: one line on stderr, 125)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["oci"]:              # runc's command line, parsed by oci.py
        from .oci import main as oci_main
        return oci_main(argv[1:])
    args = parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    from .errors import MinicontainerError
    try:
        return args.handler(args)
    except MinicontainerError as e:
        print(f"minicontainer: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"minicontainer: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 125
    except KeyboardInterrupt:            # Ctrl-C before the command ran: no traceback
        print("minicontainer: interrupted", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)   # die of it, so a calling shell stops too
        return 130


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand and option, with Docker's names; given `command`, the options
    of that subcommand only (the others are named, not built: a start pays for one)."""
    p = argparse.ArgumentParser(prog="minicontainer", description=(
        "Build a container layer by layer, and a VM beside it. As root."))
    sub = OnlyOne(p.add_subparsers(required=True, metavar="COMMAND"), command)

    run = sub.add_parser("run", help="run a command in a new container")
    run.add_argument("--name", help="the container's name (default: mc-<id>)")
    run.add_argument("--hostname", help="hostname inside (default: the name)")
    run.add_argument("--rootfs", help="a root directory instead of an image "
                     "(then every word after the options is the command)")
    run.add_argument("--pull", choices=["missing", "never"], default="missing",
                     help="pull the image if the store lacks it (default), or refuse")
    run.add_argument("--entrypoint", help="the program to run instead of the image's "
                     "(its Cmd goes too; ARGs still follow)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                     help="set a variable (NAME alone: this shell's value)")
    run.add_argument("-w", "--workdir", help="working directory inside (absolute)")
    run.add_argument("-u", "--user", help="NAME|UID[:GROUP|GID] inside (default: the image's)")
    run.add_argument("--init", action="store_true", help="run a tiny init as PID 1")
    run.add_argument("--namespaces", help="comma-separated, e.g. mnt,pid (default: "
                     "mnt,pid,uts,ipc,net)")
    run.add_argument("-m", "--memory", help="memory limit, e.g. 64M or 1G (swap off)")
    run.add_argument("--cpus", help="CPU time limit in CPUs, e.g. 0.5")
    run.add_argument("--pids-limit", help="at most this many processes")
    run.add_argument("--shm-size", default="64M", help="size of /dev/shm (default: 64M)")
    run.add_argument("--network", help="attach to this bridge network (e.g. mc-br0)")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                     help="bind a host file or directory (it must exist) into the container")
    run.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:size=64m,mode=1777]",
                     help="a new tmpfs at PATH (nosuid, nodev, noexec unless exec)")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:PORT",
                     help="publish a container port on the host (needs --network)")
    run.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                     help="seccomp=unconfined, systempaths=unconfined, no-new-privileges=false")
    run.add_argument("--cap-add", action="append", default=[], metavar="ALL",
                     help="keep every capability (only ALL)")
    run.add_argument("--privileged", action="store_true",
                     help="switch every defence of layer 5 off (for the lesson)")
    run.add_argument("--rootless", action="store_true",
                     help="as an ordinary user: a user namespace, no cgroup, no bridge")
    run.add_argument("--no-cgroup", dest="cgroup", action="store_false", default=None,
                     help="no cgroup at all (layers 1-2 only)")
    run.add_argument("--preserve-fds", default=0, metavar="N",
                     help="pass on the caller's fds 3 to 3+N-1 (podman's option; default none)")
    run.add_argument("-d", "--detach", action="store_true",
                     help="run in the background and print the name")
    run.add_argument("--rm", action="store_true", help="remove it when it exits (here a "
                     "foreground container always is; with -d: not yet, `rm` it)")
    terminal_options(run, detach=True)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="IMAGE [COMMAND [ARG...]]",
                     help="an image and what to run in it; or -- COMMAND [ARG...] in the "
                     "default busybox directory")
    run.set_defaults(handler=cmd_run)

    exe = sub.add_parser("exec", help="run a command in a running container")
    terminal_options(exe, detach=False)
    exe.add_argument("name")
    exe.add_argument("command", nargs=argparse.REMAINDER, help="[--] COMMAND [ARG...]")
    exe.set_defaults(handler=cmd_exec)

    attach = sub.add_parser("attach", help="back to the terminal of a container run with -t")
    attach.add_argument("--detach-keys", default=DETACH_KEYS, metavar="KEYS",
                        help="keys that leave it running again (default: ctrl-p,ctrl-q)")
    attach.add_argument("name")
    attach.set_defaults(handler=cmd_attach)

    ps = sub.add_parser("ps", help="list running containers (-a: all)")
    ps.add_argument("-a", "--all", action="store_true", help="exited ones too, as docker ps -a")
    ps.set_defaults(handler=cmd_ps)

    stop = sub.add_parser("stop", help="SIGTERM, then SIGKILL after the grace period")
    stop.add_argument("-t", "--time", type=float, default=10, help="grace period (s)")
    stop.add_argument("names", nargs="+")
    stop.set_defaults(handler=cmd_stop)

    rm = sub.add_parser("rm", help="remove stopped containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(handler=cmd_rm)

    stats = sub.add_parser("stats", help="memory, CPU and processes used by containers")
    stats.add_argument("names", nargs="*", help="(default: all running)")
    stats.set_defaults(handler=cmd_stats)

    logs = sub.add_parser("logs", help="what a detached container wrote")
    logs.add_argument("name")
    logs.set_defaults(handler=cmd_logs)

    net = sub.add_parser("network", help="create, list and remove bridge networks")
    net_sub = net.add_subparsers(required=True, metavar="ACTION")
    create = net_sub.add_parser("create", help="a new bridge network")
    create.add_argument("--subnet", help="e.g. 10.213.7.0/24 (default: a free /24)")
    create.add_argument("name", help="mc-… (it names the bridge)")
    create.set_defaults(handler=cmd_network_create)
    net_sub.add_parser("ls", help="list networks").set_defaults(handler=cmd_network_ls)
    remove = net_sub.add_parser("rm", help="remove a network without containers")
    remove.add_argument("names", nargs="+")
    remove.set_defaults(handler=cmd_network_rm)

    pull = sub.add_parser("pull", help="download an image from a registry")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="another platform's image, e.g. linux/arm64 (default: this machine's)")
    pull.add_argument("ref", metavar="REF", help="[REGISTRY/]NAME[:TAG|@sha256:DIGEST], "
                      "e.g. alpine or 127.0.0.1:5000/app:1")
    pull.set_defaults(handler=cmd_pull)

    login = sub.add_parser("login", help="save a registry login for pull (readable by you only)")
    login.add_argument("-u", "--username", required=True)
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin (else it is asked for)")
    login.add_argument("registry", nargs="?", default="docker.io",
                       help="host[:port] (default: docker.io)")
    login.set_defaults(handler=cmd_login)
    image_commands(sub)

    compare = sub.add_parser("compare", help="measure containers against VMs, write plots")
    compare.add_argument("--quick", action="store_true", help="fewer runs (about 30 s)")
    compare.add_argument("--out", default="results", help="where to write (default: results/)")
    compare.set_defaults(handler=cmd_compare)

    doctor = sub.add_parser("doctor", help="is this machine ready for the course?")
    doctor.set_defaults(handler=cmd_doctor)

    bundle = sub.add_parser("export-bundle", help="an OCI bundle (config.json, rootfs/) of "
                            "a container or an image, for runc or `minicontainer oci`")
    bundle.add_argument("source", metavar="NAME|IMAGE")
    bundle.add_argument("directory", metavar="DIR")
    bundle.set_defaults(handler=cmd_export_bundle)
    sub.add_parser("oci", add_help=False, help="the OCI runtime (runc's commands: create, "
                   "start, state, kill, delete; `oci --help`)")
    cleanup = sub.add_parser("cleanup", help="remove what crashed runs left behind")
    cleanup.add_argument("--all", action="store_true", help="also stop running containers")
    cleanup.set_defaults(handler=cmd_cleanup)
    if command is not None and command not in sub.subparsers.choices:
        return parser()             # not a command: argparse's message lists them all
    return p


class OnlyOne:
    """The subcommands of parser(), where only `command`'s parser is built (all of
    them when `command` is None); each other one is an Unbuilt that drops its options."""

    def __init__(self, subparsers, command: str | None) -> None:
        """Wrap argparse's subparsers action."""
        self.subparsers, self.command = subparsers, command

    def add_parser(self, name: str, **options):
        """A real parser for the command being run; an Unbuilt for the others."""
        if self.command in (None, name):
            return self.subparsers.add_parser(name, **options)
        return Unbuilt()


class Unbuilt:
    """A subcommand parser that is never used in this run: every call builds nothing."""

    def __getattr__(self, name: str):
        """Any method of ArgumentParser: does nothing, returns this (for chained calls)."""
        return lambda *args, **kwargs: self


def terminal_options(p: argparse.ArgumentParser, detach: bool) -> None:
    """-i, -t and their companions, as `docker run` and `docker exec` have them."""
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep stdin open: what you type goes in (else it reads nothing)")
    p.add_argument("-t", "--tty", action="store_true",
                   help="a terminal of the container's own (a pty): -it for a shell" + (
                       "" if detach else " (no detach keys: Ctrl-P goes in)"))
    if detach:        # `run` only: an exec's terminal has no keeper to go to
        p.add_argument("--detach-keys", default=DETACH_KEYS, metavar="KEYS",
                       help="with -it: keys that leave the container running "
                       "(default: ctrl-p,ctrl-q; `attach` to return)")
        p.add_argument("--sig-proxy", default="true", choices=["true", "false"],
                       help="pass SIGINT, SIGTERM, SIGHUP to the command (default: true; "
                       "false: they stop it). PID 1 ignores a signal it has no handler "
                       "for: --init")


def check_terminal(args: argparse.Namespace) -> None:
    """-it in the foreground reads keys from a terminal: refuse at once without one,
    as Docker does."""
    from .errors import InvalidArgument
    if args.tty and args.interactive and not getattr(args, "detach", False) and not os.isatty(0):
        raise InvalidArgument("the input device is not a TTY: drop -t, or run it in a "
                              "terminal")


def command_of(args: argparse.Namespace) -> list[str]:
    """The COMMAND, after an optional `--` (InvalidArgument if there is none)."""
    from .errors import InvalidArgument
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise InvalidArgument("no command given: name the program to run (and its arguments)")
    return command


def image_and_command(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`run`'s words in Docker's form: IMAGE [COMMAND...]; with `--` or --rootfs, no
    image (the default busybox directory, or --rootfs's) and all of them the command."""
    from .errors import InvalidArgument
    words = args.command
    if args.rootfs or words[:1] == ["--"]:
        return None, command_of(args)
    if not words:
        raise InvalidArgument("no image given: minicontainer run [OPTIONS] IMAGE [COMMAND "
                              "[ARG...]], or run -- COMMAND in the default busybox directory")
    return words[0], words[1:]


def environment_of(pairs: list[str]) -> dict[str, str]:
    """-e's NAME=VALUE words as Docker reads them: NAME alone takes our own value, and
    is left out if we have none."""
    from .errors import InvalidArgument
    env = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not name or "\0" in pair:
            raise InvalidArgument(f"invalid environment variable {pair!r}: use NAME=VALUE")
        if equals:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def image_in_store(name: str, pull: str):
    """The image `name`, pulled first if the store lacks it (Docker's --pull missing);
    an image the store has but refuses (a layer that escapes, a damaged blob) is
    said as it is, not pulled over."""
    from .errors import ImageNotFound
    from .images.commands import image
    from .images.store import Store
    try:
        return image(Store(), name)
    except ImageNotFound:
        if pull == "never":
            raise
    print(f"Unable to find image '{name}' locally", file=sys.stderr)
    pull_with_progress(name, None)
    return image(Store(), name)


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: a new container, in the foreground (with pipes or a terminal) or detached."""
    from .container import Container
    from .errors import InvalidArgument
    from .security import from_options
    from .terminal import parse_detach_keys, window_size
    options = {"security": from_options(args.security_opt, args.privileged, args.cap_add),
               "name": args.name, "hostname": args.hostname, "rootfs": args.rootfs,
               "init": args.init, "memory": args.memory, "cpus": args.cpus,
               "pids_limit": args.pids_limit, "cgroup": args.cgroup, "shm_size": args.shm_size,
               "preserve_fds": args.preserve_fds, "tty": args.tty,
               "network": args.network, "ports": args.publish, "rootless": args.rootless,
               "env": environment_of(args.env), "workdir": args.workdir, "user": args.user,
               "entrypoint": args.entrypoint,
               "volumes": args.volume, "tmpfs": args.tmpfs}
    if args.namespaces is not None:
        options["namespaces"] = [n for n in args.namespaces.split(",") if n]
    keys = parse_detach_keys(args.detach_keys)
    check_terminal(args)
    if args.rm and args.detach:      # nothing of ours outlives `run -d` to remove it yet
        raise InvalidArgument("--rm with -d is not supported yet: `minicontainer rm NAME` "
                              "once it has exited")
    image, command = image_and_command(args)
    if image is not None:
        options["image"] = image_in_store(image, args.pull)
    if args.network:                 # a short-lived process: pyroute2 stays in the helper
        from .network import use_helper
        use_helper()
    container = Container(command, **options)
    if args.detach:
        container.start(detach=True, window=window_size(1))
        print(container.name)
        return 0
    if args.tty:
        return run_with_terminal(container, args, keys)
    return run_with_pipes(container, args)


def run_with_pipes(container, args: argparse.Namespace) -> int:
    """`run` in the foreground without -t: the command gets our files, or pipes where
    ours are a terminal (terminal.stdio_for), and we wait for it."""
    from .terminal import finish, stdio_for
    stdio, relays = stdio_for(args.interactive)
    try:
        try:
            container.start(stdio=stdio)
        finally:
            for fd in stdio:
                os.close(fd)
        for relay in relays:
            relay.start()
        result = wait_in_foreground(container, args.sig_proxy == "true")
        finish(relays)
        if result.oom_killed:
            from .host import format_bytes
            print(f"minicontainer: killed: out of memory, limit "
                  f"{format_bytes(container.spec.limits.memory)}", file=sys.stderr)
        return result.exit_code
    finally:
        container.remove(force=True)


def run_with_terminal(container, args: argparse.Namespace, keys: bytes) -> int:
    """`run -t` in the foreground: relay between our terminal and the container's
    until it exits, or until the detach keys leave it running (a keeper then holds
    its terminal: console.py)."""
    from .terminal import window_size
    detached = False
    try:
        container.start(window=window_size(1))
        code = relay_terminal(container.console, container.child(), args,
                              container.wait, keys)
        detached = code is None
        if detached:
            container.keep_console()
            print(f"minicontainer: detached from {container.name}, which runs on: "
                  f"`minicontainer attach {container.name}` to return", file=sys.stderr)
            return 0
        return code
    finally:
        if not detached:
            container.remove(force=True)


def relay_terminal(master: int, child, args: argparse.Namespace, collect,
                   keys: bytes = b"") -> int | None:
    """Our terminal and a container's (its pty's `master`) joined until `child` ends:
    its exit code, from collect() (a Result); None if the detach keys were typed. With
    -i our terminal is in raw mode and every key, Ctrl-C too, goes in; SIGTERM, SIGHUP
    or SIGQUIT here stop the command. Without -i, Ctrl-C is ours, and --sig-proxy says
    where it goes."""
    from contextlib import nullcontext

    from .errors import Ended
    from .process import ending_on, signals_passed_to
    from .terminal import Master, attach, raw_mode
    if args.interactive:
        signals, keyboard = ending_on([signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]), 0
    elif getattr(args, "sig_proxy", "true") == "true":
        signals, keyboard = signals_passed_to(child), None
    else:
        signals, keyboard = ending_on([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]), None
    try:
        with raw_mode(0) if args.interactive else nullcontext(), signals:
            if attach(Master(master), keyboard, 1, keys, ended=child.pidfd):
                return None
            return collect().exit_code
    except (Ended, KeyboardInterrupt) as e:
        why = str(e) if isinstance(e, Ended) else "Ctrl-C twice"
        print(f"\nminicontainer: {why}: stopping the command", file=sys.stderr)
        child.send_signal(signal.SIGKILL)
        return collect().exit_code


def wait_in_foreground(container, sig_proxy: bool = True):
    """Wait as `docker run` does: SIGTERM, SIGHUP and Ctrl-C go to the container's
    PID 1 (a trap there sees them) and we go on waiting for its exit code. PID 1
    ignores a signal it has no handler for, so a second Ctrl-C stops the container.
    Without sig_proxy, the first of them stops it."""
    from .errors import Ended
    from .process import ending_on, signals_passed_to
    child = container.child()
    try:
        with signals_passed_to(child) if sig_proxy else ending_on(
                [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]):
            return container.wait()
    except (KeyboardInterrupt, Ended) as e:
        why = "Ctrl-C twice" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"\nminicontainer: stopping {container.name} ({why})", file=sys.stderr)
        return container.stop(timeout=3)


def cmd_exec(args: argparse.Namespace) -> int:
    """`exec`: another command in a running container."""
    from .arguments import check_host
    from .container import Container
    from .terminal import window_size
    check_host(rootless=os.geteuid() != 0)   # an ordinary user: their rootless ones
    check_terminal(args)
    container = Container.load(args.name)
    if not args.tty:
        return container.exec(command_of(args), timeout=None, attach=True,
                              interactive=args.interactive).exit_code
    running = container.exec_start(command_of(args), tty=True, window=window_size(1))
    try:
        return relay_terminal(running.console, running.child, args, running.wait)
    finally:
        running.close()


def cmd_attach(args: argparse.Namespace) -> int:
    """`attach`: back to the terminal of a container run with -t."""
    from contextlib import nullcontext

    from .arguments import check_host
    from .console import Client
    from .container import Container
    from .errors import MinicontainerError
    from .errors import Ended
    from .process import ending_on
    from .terminal import attach, parse_detach_keys, raw_mode
    check_host(rootless=os.geteuid() != 0)
    keys = parse_detach_keys(args.detach_keys)
    container = Container.load(args.name)
    if not container.spec.tty:
        raise MinicontainerError(f"container {args.name} has no terminal (it ran without -t): "
                                 f"`minicontainer logs {args.name}` shows its output")
    if not container.running:
        raise MinicontainerError(f"container {args.name} is not running")
    client = Client(container.directory, args.name)
    try:
        with raw_mode(0) if os.isatty(0) else nullcontext(), ending_on(
                [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]):
            detached = attach(client, 0, 1, keys)
    except Ended as e:
        print(f"\nminicontainer: {e}: detached from {args.name}", file=sys.stderr)
        return 128 + e.signal
    finally:
        client.close()
    if detached:
        print(f"minicontainer: detached from {args.name}, which runs on", file=sys.stderr)
        return 0
    return container.wait(timeout=10).exit_code


def cmd_ps(args: argparse.Namespace) -> int:
    """`ps`: the running containers (with -a, every container with a record), and their
    status; a refused record is always shown."""
    from . import state
    from .errors import BadRecord, ContainerNotFound
    rows = []
    for name in state.names():
        try:
            row = state.describe(name)
            if args.all or row["status"] == "running":
                rows.append(row)
        except ContainerNotFound:     # being created or removed right now
            pass
        except BadRecord:             # shown, never acted on (see SECURITY.md)
            rows.append({"name": name, "status": "bad record", "created": time.time(),
                         "command": ["-"], "orphaned": False})
    print(f"{'NAME':20} {'STATUS':12} {'PID':>7}  {'CREATED':9} COMMAND")
    for r in rows:
        age = f"{time.time() - r['created']:.0f}s ago"
        status = r["status"] + (" orphaned" if r["orphaned"] else "")
        print(f"{r['name']:20} {status:12} {r.get('main_pid') or '-':>7}  {age:9} "
              f"{' '.join(r['command'])[:60]}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """`stop`: SIGTERM, then SIGKILL after the grace period."""
    from .arguments import check_host
    from .container import Container
    check_host(rootless=os.geteuid() != 0)   # an ordinary user: their rootless ones
    for name in args.names:
        container = Container.load(name)
        if container.running:
            container.stop(timeout=args.time)
        print(name)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """`rm`: remove stopped containers (-f: running ones too)."""
    from .arguments import check_host
    from .container import Container
    from .network import use_helper
    check_host(rootless=os.geteuid() != 0)   # an ordinary user: their rootless ones
    use_helper()                             # a veth still there: deleted by the helper
    for name in args.names:
        Container.load(name).remove(force=args.force)
        print(name)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """`stats`: what containers use, from their cgroups; and HOST+, what the host
    spends on each besides (PSS of its monitor and terminal keeper)."""
    from . import state
    from .host import format_bytes
    from .arguments import check_host
    from .container import Container
    check_host()
    names = args.names or [n for n in state.names() if state.describe(n)["status"] == "running"]
    print(f"{'NAME':20} {'MEM USAGE / LIMIT':>20} {'MEM PEAK':>9} {'CPU (s)':>8} "
          f"{'THROTTLED':>9} {'PIDS':>5} {'OOM':>4} {'HOST+':>7}")
    for name in names:
        s = Container.load(name).stats()
        usage = f"{format_bytes(s['memory'])} / {format_bytes(s['memory_limit'])}"
        print(f"{name:20} {usage:>20} {format_bytes(s['memory_peak']):>9} "
              f"{s['cpu_seconds']:8.2f} {s['throttled_seconds']:9.2f} {s['pids']:>5} "
              f"{s['oom_kills']:>4} {format_bytes(s['host_pss']):>7}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """`logs`: what a container wrote to its log files."""
    from .container import Container
    out, err = Container.load(args.name).logs()
    sys.stdout.write(out)
    sys.stderr.write(err)
    return 0


def cmd_network_create(args: argparse.Namespace) -> int:
    """`network create`: a bridge network."""
    from . import network
    from .arguments import check_host
    check_host()
    record = network.create(args.name, args.subnet, keep=True)
    print(f"{record['name']} {record['subnet']}")
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    """`network ls`: the networks and who is on them."""
    from . import network
    print(f"{'NAME':16} {'SUBNET':18} {'GATEWAY':15} CONTAINERS")
    for name in network.names():
        record = network.load(name)
        members = ", ".join(lease["container"] for lease in record["leases"].values())
        print(f"{name:16} {record['subnet']:18} {record['gateway']:15} {members or '-'}")
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    """`network rm`: remove networks no container uses."""
    from . import network
    from .arguments import check_host
    check_host()
    for name in args.names:
        network.remove(name)
        print(name)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`compare`: containers against VMs, measured, with plots."""
    import json
    from pathlib import Path

    from tqdm import tqdm

    from .course import measure, plots
    from .arguments import check_host
    check_host()
    bars = []

    def progress(total: int, name: str):
        """A progress bar for the next `total` runs of `name`; its tick."""
        for bar in bars:
            bar.close()                     # one bar at a time, each left on screen
        bars.append(tqdm(total=total, desc=f"{name:12}", unit="run", leave=True))
        return lambda: bars[-1].update()

    results = measure.compare(quick=args.quick, progress_factory=progress)
    for bar in bars:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(results, indent=1))
    plots.start_time_figure(results["start_time"]).savefig(out / "start_time.png", dpi=120)
    plots.memory_figure(results["scaling"], results["memory"]).savefig(out / "memory.png", dpi=120)
    plots.overprovision_figure(results["overprovision"]).savefig(out / "overprovision.png",
                                                                dpi=120)
    print(measure.summary(results))
    # 50 web servers as containers, and the VMs that fit the same budget (servers.py);
    # saved on their own, so that notebook 08 can read them without running them again.
    from .course import servers
    served = servers.servers(containers=5 if args.quick else 50, vms=1 if args.quick else 6,
                             progress_factory=progress)
    for bar in bars:
        bar.close()
    (out / "servers.json").write_text(json.dumps(served, indent=1))
    plots.servers_figure(served).savefig(out / "servers.png", dpi=120)
    print(servers.summary(served))
    print(f"\nwritten: {out}/compare.json, servers.json, start_time.png, memory.png, "
          "overprovision.png, servers.png")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """`pull`: an image from a registry into the image store."""
    print(f"Digest: {pull_with_progress(args.ref, args.platform)}")
    return 0


def pull_with_progress(ref: str, platform: str | None) -> str:
    """Pull `ref` into the store with a progress bar per layer; its manifest's digest."""
    from tqdm import tqdm

    from .images.registry import pull
    from .images.store import Store
    bars = []

    def progress(digest: str, size: int):
        for bar in bars:
            bar.close()                     # one layer at a time, each left on screen
        bars.append(tqdm(total=size, desc=digest[7:19], unit="B", unit_scale=True,
                         unit_divisor=1024, leave=True))
        return bars[-1].update

    try:
        return pull(ref, Store(), platform=platform, progress=progress)
    finally:
        for bar in bars:
            bar.close()


def cmd_login(args: argparse.Namespace) -> int:
    """`login`: try a registry login and save it for pulls (0600, as Docker's)."""
    import getpass

    from .images.registry import login
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
    path = login(args.registry, args.username, password)
    print(f"Login Succeeded (saved in {path})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`doctor`: is this machine ready for the course?"""
    from .doctor import main as doctor
    return doctor()


def cmd_export_bundle(args: argparse.Namespace) -> int:
    """Write the bundle; print its directory."""
    from .bundles import export_bundle
    print(export_bundle(args.source, args.directory))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """`cleanup`: remove what dead owners left (--all: everything)."""
    from .cleanup import cleanup, left_alone, refused_records
    from .arguments import check_host
    check_host(rootless=os.geteuid() != 0)   # an ordinary user: their rootless ones
    removed = cleanup(everything=args.all)
    print(f"removed {len(removed)} leftover(s)" + (": " + ", ".join(removed) if removed else ""))
    left = [] if args.all else left_alone()
    if left:
        print(f"minicontainer: left {len(left)} object(s) no record of ours names (their "
              f"owner may be alive, recorded elsewhere): {', '.join(left)}; use "
              "`minicontainer cleanup --all` to remove them", file=sys.stderr)
    for why in refused_records().values():
        print(f"minicontainer: left alone: {why}", file=sys.stderr)
    from .escapes import unproven_lab_devices
    for device, backing in unproven_lab_devices().items():
        print(f"minicontainer: left alone: loop device {device} over {backing}; if an "
              f"escape lab of yours made it: losetup --detach {device}", file=sys.stderr)
    return 0


# -- images --------------------------------------------------------------------------------
# `images`, `rmi`, `tag`, `load`, `save`, `import`, and `image ls|rm|inspect|prune|...`: the
# work is in images/commands.py; here, Docker's options and what they print.

def image_commands(sub) -> None:
    """The image commands, each where Docker has it: at the top (images, rmi, ...) and
    under `image` (ls, rm, inspect, prune, ...)."""
    image = sub.add_parser("image", help="manage images: ls, rm, inspect, prune, load, save, "
                           "import, tag")
    actions = image.add_subparsers(required=True, metavar="ACTION")

    def both(top: str | None, nested: str, help: str) -> list[argparse.ArgumentParser]:
        made = [actions.add_parser(nested, help=help)]
        return made + [sub.add_parser(top, help=help)] if top else made

    for p in both("images", "ls", "list images"):
        p.add_argument("-q", "--quiet", action="store_true", help="only the image IDs")
        p.add_argument("--no-trunc", action="store_true", help="whole IDs")
        p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
        p.set_defaults(handler=cmd_images)
    for p in both("rmi", "rm", "untag images; remove those no tag names any more"):
        p.add_argument("-f", "--force", action="store_true",
                       help="also an image a stopped container was created from")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.set_defaults(handler=cmd_rmi)
    for p in both(None, "inspect", "images described in JSON, as docker image inspect"):
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.set_defaults(handler=cmd_image_inspect)
    for p in both(None, "prune", "remove the blobs and layers no tag names"):
        p.add_argument("-a", "--all", action="store_true",
                       help="also every image no container was created from")
        p.add_argument("-f", "--force", action="store_true", help="do not ask first")
        p.set_defaults(handler=cmd_image_prune)
    for p in both("load", "load", "load images from a docker save tarball or an OCI layout"):
        p.add_argument("-i", "--input", metavar="FILE",
                       help="a tar archive or an OCI layout directory (default: stdin)")
        p.add_argument("-q", "--quiet", action="store_true", help="(no progress is shown anyway)")
        p.set_defaults(handler=cmd_load)
    for p in both("save", "save", "write images to a tar archive (default: stdout)"):
        p.add_argument("-o", "--output", metavar="FILE", help="write to FILE")
        p.add_argument("--format", choices=["docker", "oci"], default="docker",
                       help="docker: docker save's tarball (default); oci: an OCI image layout")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.set_defaults(handler=cmd_save)
    for p in both("import", "import", "a rootfs tarball as a one-layer image"):
        p.add_argument("-m", "--message", default="", help="the image's comment")
        p.add_argument("file", metavar="FILE", help="a tar archive (plain, gzip or zstd) or -")
        p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
        p.set_defaults(handler=cmd_import)
    for p in both("tag", "tag", "name an image TARGET too"):
        p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
        p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
        p.set_defaults(handler=cmd_tag)


def cmd_images(args: argparse.Namespace) -> int:
    """`images`: REPOSITORY TAG IMAGE ID CREATED SIZE, as docker's."""
    from .images import commands
    from .images.store import Store
    rows = commands.listing(Store(), args.reference, full=args.no_trunc)
    if args.quiet:
        for image_id in dict.fromkeys(row[2] for row in rows):   # each image once
            print(image_id)
        return 0
    rows.insert(0, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("   ".join(cells) + "   " + row[4])      # docker's tabwriter: 3 spaces
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    """`rmi`: untag, and remove what no tag names any more."""
    from .images import commands
    from .images.store import Store
    print("\n".join(commands.remove(Store(), args.images, force=args.force)))
    return 0


def cmd_image_inspect(args: argparse.Namespace) -> int:
    """`image inspect`: a JSON list, indented as docker's."""
    import json

    from .images import commands
    from .images.store import Store
    print(json.dumps(commands.inspect(Store(), args.images), indent=4))
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    """`image prune`: ask (unless -f), remove, and say how much space came back."""
    from .errors import MinicontainerError
    from .images import commands
    from .images.store import Store
    if not args.force:
        what = "every image without a container" if args.all else "every unnamed blob"
        print(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ",
              end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise MinicontainerError("image prune has been cancelled")
    lines, reclaimed = commands.prune(Store(), unused=args.all)
    if lines:
        print("Deleted Images:\n" + "\n".join(lines) + "\n")
    print(f"Total reclaimed space: {commands.docker_size(reclaimed)}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """`load`: "Loaded image: NAME" for each image, as docker's."""
    import shutil
    import tempfile

    from .errors import MinicontainerError
    from .images.reference import familiar, parse
    from .images.store import Store
    if args.input is not None:
        loaded = Store().load(args.input)
    elif os.isatty(0):
        raise MinicontainerError("requested load from stdin, but stdin is empty: "
                                 "minicontainer load -i FILE, or < FILE")
    else:
        with tempfile.NamedTemporaryFile(prefix="mc-load-") as spooled:   # tar needs to seek
            shutil.copyfileobj(sys.stdin.buffer, spooled)
            spooled.flush()
            loaded = Store().load(spooled.name)
    for name in loaded:
        print(f"Loaded image ID: {name}" if name.startswith("sha256:")
              else f"Loaded image: {familiar(parse(name))}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    """`save`: images into a tar archive, to -o FILE or to stdout (never a terminal)."""
    from .errors import MinicontainerError
    from .images import commands
    from .images.store import Store
    docker = args.format == "docker"
    if args.output is not None:
        commands.save_to_file(Store(), args.images, args.output, docker)
    elif os.isatty(1):
        raise MinicontainerError("cowardly refusing to save to a terminal: use the -o flag "
                                 "or redirect")
    else:
        commands.save(Store(), args.images, sys.stdout.buffer, docker)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`import`: a rootfs tarball as a one-layer image; prints its ID."""
    import shutil
    import tempfile

    from .errors import InvalidArgument
    from .images import commands
    from .images.reference import parse
    from .images.store import Store
    if args.reference is None:
        raise InvalidArgument("name the image: minicontainer import FILE REPOSITORY[:TAG] "
                              "(the store keeps named images only)")
    parse(args.reference)                        # a bad name is refused before reading
    if args.file != "-":
        print(commands.import_rootfs(Store(), args.file, args.reference, args.message))
        return 0
    with tempfile.NamedTemporaryFile(prefix="mc-import-") as spooled:
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.flush()
        print(commands.import_rootfs(Store(), spooled.name, args.reference,
                                     args.message or "Imported from -"))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """`tag`: another name for an image."""
    from .images import commands
    from .images.store import Store
    commands.tag(Store(), args.source, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
