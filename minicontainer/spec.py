"""What a container is, before anything runs: one frozen description, checked once.

A container is its command, its image (a directory, or an image's layers from the
store: images/), the host paths and tmpfs mounted over it (volumes), the namespaces
it gets, its budget, its network, its defences and whether it has a terminal. That is
written down once, here, as a Spec: the CLI's options and Container(...)'s arguments
become one (describe()), its record on disk holds one (record_of, from_record), and an
OCI bundle's config.json or an image's config will map onto the same fields. Every
value is checked on the way in by arguments.py, where bad input stops, so a Spec is
always one we can build.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import cgroups, state
from . import namespaces as ns
from .arguments import (as_argv, check_count, check_host, check_hostname, check_mounts,
                        check_name, check_namespaces, check_ports, check_rootless)
from .cgroups import Cgroup, Limits
from .errors import InvalidArgument
from .host import parse_size
from .rootfs import PATH, check_rootfs, default_rootfs
from .security import Security
from .terminal import check_tty

if TYPE_CHECKING:
    from .images.config import RunConfig
    from .images.store import Image

# A fork bomb must hit a wall, not the host: with a cgroup there is always a pids
# limit (Podman's default is 2048; Docker has none). pids_limit="max" lifts it.
DEFAULT_PIDS_LIMIT = 1024


@dataclass(frozen=True)
class Spec:
    """A container's checked description: all it takes to build it, nothing running."""

    command: tuple[str, ...]           # argv (for a Python function: its repr, for show)
    id: str                            # 12 hex digits: its cgroup's, veth's and data's name
    name: str
    hostname: str
    rootfs: str                        # the image: a directory (an image's: its top layer)
    namespaces: frozenset[str]
    env: dict[str, str] = field(hash=False)
    limits: Limits = Limits()
    cgroup: str | None = None          # its cgroup's path below each hierarchy; None: none
    network: str | None = None         # the bridge network it joins
    ports: tuple[tuple[str, int, int], ...] = ()   # (host ip, host port, container port)
    security: Security = Security()    # all defences on, as in `docker run`
    init: bool = False                 # a tiny init as PID 1 (--init)
    rootless: bool = False             # in a user namespace, as an ordinary user
    shm_size: int = ns.SHM_SIZE        # bytes of /dev/shm (--shm-size)
    preserve_fds: int = 0              # fds 3.. passed on (podman's --preserve-fds)
    tty: bool = False                  # a terminal of its own (terminal.py, `run -t`)
    image: str | None = None           # the image's name in the store (images/), if from it
    layers: tuple[str, ...] = ()       # that image's unpacked layers, top first
    workdir: str = "/"                 # where the command starts (-w, the image's WorkingDir)
    user: tuple[int, int] = (0, 0)     # uid and gid it runs as (-u, the image's User)
    mounts: tuple[ns.Mount, ...] = ()  # volumes (-v) and tmpfs (--tmpfs), over the image

    @property
    def lower(self) -> tuple[str, ...]:
        """The overlay's lower directories, top first: an image's layers, or the rootfs."""
        return self.layers or (self.rootfs,)


def describe(command: str | Sequence[str] | Callable[[], None] = (), *,
             name: str | None = None, rootfs: str | os.PathLike | None = None,
             hostname: str | None = None, namespaces: Iterable[str] = ns.DEFAULT,
             init: bool = False, env: dict[str, str] | None = None,
             memory: str | int | None = None, cpus: str | float | None = None,
             pids_limit: str | int | None = None, cgroup: bool | None = None,
             cgroup_parent: Cgroup | None = None, network: str | None = None,
             ports: dict[int, int] | Iterable[str] | None = None,
             security: Security | None = None, rootless: bool = False,
             shm_size: str | int = ns.SHM_SIZE, preserve_fds: int = 0,
             tty: bool = False, image: str | Image | None = None,
             entrypoint: str | None = None, workdir: str | None = None,
             user: str | None = None, volumes: str | Iterable[str] = (),
             tmpfs: str | Iterable[str] = ()) -> Spec:
    """The Spec of a container from Docker's options (`docker run`'s names), every one
    checked: InvalidArgument, saying what to write instead, for the first that is wrong.
    With an `image`, its config gives what the options leave out, as `docker run IMAGE
    [COMMAND]` combines them (images/config.py)."""
    check_host(rootless)
    container_id = os.urandom(6).hex()
    name = check_name(name or f"mc-{container_id}")
    hostname = check_hostname(hostname or name)
    kinds = check_namespaces(set(namespaces) | ({"user"} if rootless else set()))
    cgroup = not rootless if cgroup is None else cgroup
    if rootless:
        check_rootless(cgroup, (memory, cpus, pids_limit), network)
    if tty:
        check_tty(kinds)
    if not cgroup and (memory, cpus, pids_limit) != (None, None, None):
        raise InvalidArgument("memory, cpus and pids_limit need a cgroup (cgroup=True)")
    limits = Limits.parse(memory, cpus, DEFAULT_PIDS_LIMIT if cgroup and pids_limit is None
                          else pids_limit)
    parent = cgroup_parent.path if cgroup_parent else cgroups.PARENT   # docker --cgroup-parent
    if image is not None:
        image, layers = image_layers(image, rootfs, kinds)
        rootfs = layers[0]                # its top layer; the overlay stacks them all
    else:
        layers, rootfs = (), str(check_rootfs(Path(rootfs)) if rootfs else default_rootfs())
    run = how_to_run(command, image, layers or (rootfs,), entrypoint, env, workdir, user)
    if "user" in kinds and (run.uid, run.gid) != (0, 0):
        raise InvalidArgument("a user namespace here maps only root (uid 0), to you: "
                              "leave out -u, or run without --rootless")
    return Spec(
        command=run.argv,
        id=container_id, name=name, hostname=hostname,
        rootfs=rootfs, namespaces=kinds,
        env={"PATH": PATH, "HOME": "/root" if run.uid == 0 else "/", "HOSTNAME": hostname,
             **run.env},
        limits=limits, cgroup=f"{parent}/mc-{container_id}" if cgroup else None,
        network=network,
        ports=tuple(tuple(port) for port in check_ports(ports or {}, network, kinds)),
        security=security or Security(), init=bool(init), rootless=bool(rootless),
        shm_size=parse_size(shm_size, "shm size", 1),
        preserve_fds=check_count(preserve_fds, "preserve_fds", 0), tty=bool(tty),
        image=image.name if image is not None else None, layers=layers,
        workdir=run.workdir, user=(run.uid, run.gid),
        mounts=check_mounts(volumes, tmpfs, kinds, state.roots()))


def how_to_run(command: str | Sequence[str] | Callable[[], None], image: Image | None,
               lower: Sequence[str], entrypoint: str | None, env: dict[str, str] | None,
               workdir: str | None, user: str | None) -> RunConfig:
    """The command, environment, directory and user: the image's config with the
    options over it (a plain directory is an image with an empty config); its
    /etc/passwd is read from `lower`, top first, never through a symlink."""
    from .images.config import layer_reader, run_config
    if image is None and entrypoint is not None:
        raise InvalidArgument("--entrypoint needs an image: give the whole command instead")
    if callable(command):              # a Python function: shown by its repr
        argv = [repr(command)]
    else:                              # without an image, a command is a must
        argv = as_argv(command) if command or image is None else []
    return run_config(image.config if image else {}, layer_reader([Path(d) for d in lower]),
                      argv, entrypoint, env, workdir, None if user is None else str(user))


def image_layers(image: str | Image, rootfs: object, namespaces: frozenset[str]
                 ) -> tuple[Image, tuple[str, ...]]:
    """The image (a name in the store, or an Image) and its layers, top first, as
    overlayfs stacks them; InvalidArgument if they cannot make a root here."""
    from .images.commands import image as named
    from .images.store import Image, Store     # only when asked: `--help` starts fast
    if rootfs is not None:
        raise InvalidArgument("give an image or a rootfs directory, not both")
    if not isinstance(image, Image):
        image = named(Store(), image)          # a tag, name@digest, or an image ID
    if "mnt" not in namespaces:      # chroot alone would write into the shared layers
        raise InvalidArgument(f"image {image.name} runs on an overlay, in a mount namespace "
                              "(keep 'mnt'): its layers are shared by every container of it, "
                              "and only the overlay's writable layer may take changes")
    return image, tuple(str(layer) for layer in reversed(image.layers))


def record_of(spec: Spec) -> dict:
    """The Spec as its record on disk holds it (JSON; read back with from_record)."""
    return {"name": spec.name, "id": spec.id, "command": list(spec.command),
            "rootfs": spec.rootfs, "hostname": spec.hostname,
            "namespaces": sorted(spec.namespaces), "init": spec.init, "env": spec.env,
            "rootless": spec.rootless, "cgroup": spec.cgroup,
            "limits": asdict(spec.limits),
            "ports": [list(port) for port in spec.ports],
            "security": spec.security.as_dict(), "tty": spec.tty,
            "shm_size": spec.shm_size, "preserve_fds": spec.preserve_fds,
            "image": spec.image, "layers": list(spec.layers), "workdir": spec.workdir,
            "user": list(spec.user),
            "mounts": [asdict(mount) for mount in spec.mounts]}


def from_record(record: dict) -> Spec:
    """The Spec a record holds (checked already by state.read: arguments.check_record)."""
    attachment = record.get("network")
    return Spec(command=tuple(record["command"]), id=record["id"], name=record["name"],
                hostname=record["hostname"], rootfs=record["rootfs"],
                namespaces=frozenset(record["namespaces"]), env=record["env"],
                limits=Limits(**record["limits"]), cgroup=record["cgroup"],
                network=attachment["network"] if attachment else None,
                ports=tuple(tuple(port) for port in record["ports"]),
                security=Security(**record["security"]), init=record["init"],
                rootless=record["rootless"], shm_size=record.get("shm_size", ns.SHM_SIZE),
                preserve_fds=record.get("preserve_fds", 0), tty=record["tty"],
                image=record.get("image"), layers=tuple(record.get("layers", ())),
                workdir=record["workdir"], user=tuple(record["user"]),
                mounts=tuple(ns.Mount(**mount) for mount in record.get("mounts", ())))
