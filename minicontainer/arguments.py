"""Bad input stops here, before anything exists on the host.

Every argument a user gives (through the CLI, `Container(...)` or a notebook cell) is
checked first and refused with one line that says what is wrong and what to do:
a container that fails half-built is the very thing a classroom machine must not
collect. The budget (cgroups.Limits.parse), the image (rootfs.check_rootfs) and the
VM (vm.VM) check their own arguments the same way.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from . import namespaces as ns
from .errors import InvalidArgument, NotLinuxError, NotRootError

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")            # as Docker's names
HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62}[a-zA-Z0-9])?$")


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
    if not NAME.match(name):
        raise InvalidArgument(f"invalid container name {name!r}: use letters, digits and "
                              "_ . - (up to 63), starting with a letter or digit")
    return name


def check_hostname(hostname: str) -> str:
    if not HOSTNAME.match(hostname):
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
        published.append((host_ip or "0.0.0.0", *numbers))
    return published


def check_namespaces(kinds: Iterable[str]) -> frozenset[str]:
    kinds = frozenset(kinds)
    unknown = kinds - set(ns.FLAGS)
    if unknown:
        raise InvalidArgument(f"unknown namespace(s) {sorted(unknown)}: choose from "
                              f"{sorted(ns.FLAGS)}")
    return kinds
