"""An image's config: what `docker run IMAGE` runs, as whom, where, with which variables.

Beside its layers an image carries a config, a JSON document (the OCI image spec's
`config` object; Docker writes the same fields): Entrypoint and Cmd, Env, WorkingDir,
User, ExposedPorts. `docker run` combines it with its own command line by fixed rules,
and so does run_config():

- the command is Entrypoint + Cmd. `run IMAGE ARG...` replaces Cmd; `--entrypoint X`
  replaces Entrypoint and drops the image's Cmd (ARG... still follow it);
- the environment is the image's Env ("NAME=value" strings), then each `-e` over it;
- the working directory is `-w`, else the image's WorkingDir, else /;
- the user is `-u`, else the image's User, else root: "name", "uid", "name:group" or
  "uid:gid", names looked up in the image's own /etc/passwd and /etc/group.

Those two files come from whoever built the image, so they are read as untrusted
input: only as regular files inside the image's layers, never through a symlink (a
/etc/passwd linking to the host's would read the host's), and only the first MiB.
The config is the image author's JSON too: settings_of() checks each field's type
before it is used, and a uid or gid must be 0 to 2147483647, as runc requires.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, InvalidArgument

MOST_READ = 1024 * 1024          # bytes of /etc/passwd or /etc/group we look at
MAX_ID = 2**31 - 1               # the largest uid or gid runc (so Docker) takes
NUMBER = re.compile(r"[0-9]+")   # str.isdigit() takes "²" too, which int() refuses
ReadFile = Callable[[str], bytes | None]   # an image's file by its path inside, or None


@dataclass(frozen=True)
class RunConfig:
    """What a container of an image runs, resolved: argv, environment, directory, user."""

    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    uid: int = 0
    gid: int = 0
    exposed_ports: tuple[str, ...] = ()     # "80/tcp": shown, published only with -p


def run_config(config: dict, read: ReadFile, command: Sequence[str] = (),
               entrypoint: str | None = None, env: dict[str, str] | None = None,
               workdir: str | None = None, user: str | None = None) -> RunConfig:
    """The image config combined with `docker run`'s options, as Docker combines them;
    `read` gives the image's files (for the user's name). InvalidArgument if there is
    no command, or the user is unknown to the image."""
    settings = settings_of(config)             # the image config's runtime part
    uid, gid = user_of(user or settings.get("User") or "", read)
    return RunConfig(
        argv=command_of(settings, command, entrypoint),
        env={**environment_of(settings.get("Env") or []), **(env or {})},
        workdir=check_workdir(workdir or settings.get("WorkingDir") or "/"),
        uid=uid, gid=gid, exposed_ports=tuple(sorted(settings.get("ExposedPorts") or {})))


def settings_of(config: dict) -> dict:
    """The image config's runtime part (`config`), each field docker run reads checked
    for its type; ImageError naming the first that is wrong. A string Entrypoint or
    Cmd is one word, as Docker reads it (its strslice type)."""
    settings = config.get("config") or {}
    if not isinstance(settings, dict):
        raise ImageError("the image config's `config` is not a JSON object: refused")
    checked = dict(settings)
    for key in ("Entrypoint", "Cmd", "Env"):
        value = settings.get(key)
        if isinstance(value, str) and key != "Env":
            checked[key] = value = [value]
        if value is not None and not (isinstance(value, list) and all(
                isinstance(word, str) and "\0" not in word for word in value)):
            raise ImageError(f"the image config's {key} is not a list of strings: refused")
    for key, kind in (("WorkingDir", str), ("User", str), ("ExposedPorts", dict)):
        if settings.get(key) is not None and not isinstance(settings[key], kind):
            raise ImageError(f"the image config's {key} is not a JSON "
                             f"{'string' if kind is str else 'object'}: refused")
    return checked


def command_of(settings: dict, command: Sequence[str], entrypoint: str | None) -> tuple[str, ...]:
    """Entrypoint + Cmd, with `run IMAGE ARG...` and `--entrypoint` applied."""
    if entrypoint is not None:                 # --entrypoint: the image's Cmd goes too
        first, default = ([entrypoint] if entrypoint else []), []
    else:
        first, default = settings.get("Entrypoint") or [], settings.get("Cmd") or []
    argv = tuple(first) + tuple(command or default)
    if not argv:
        raise InvalidArgument("the image names no command (no Entrypoint or Cmd): give one "
                              "after the image, e.g. `run IMAGE sh`")
    return argv


def environment_of(entries: Iterable[str]) -> dict[str, str]:
    """An image's Env ("NAME=value" strings) as a dict; entries without "=" are skipped."""
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def check_workdir(path: str) -> str:
    """A working directory must be absolute (the image's or -w's)."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"working directory {path!r} is not an absolute path")
    return path


def user_of(user: str, read: ReadFile) -> tuple[int, int]:
    """(uid, gid) for Docker's user forms; a name is looked up in the image's
    /etc/passwd, a group name in its /etc/group; a bare uid takes its passwd gid, or 0."""
    name, _, group = user.partition(":")
    if not name:
        return 0, 0
    by_number = bool(NUMBER.fullmatch(name))
    entry = _entry(read, "/etc/passwd", name, by_number)
    if entry is None and not by_number:
        raise InvalidArgument(f"user {name[:64]!r} is not in the image's /etc/passwd: use "
                              "a number (e.g. -u 1000) or a user the image has")
    uid = _id(name if by_number else entry[2])
    if not group:
        return uid, _id(entry[3]) if entry else 0
    if NUMBER.fullmatch(group):
        return uid, _id(group)
    found = _entry(read, "/etc/group", group, by_number=False)
    if found is None:
        raise InvalidArgument(f"group {group[:64]!r} is not in the image's /etc/group")
    return uid, _id(found[2])


def _id(number: str) -> int:
    """A uid or gid (digits already checked); InvalidArgument past runc's range."""
    if int(number) > MAX_ID:
        raise InvalidArgument(f"uids and gids must be in range 0-{MAX_ID}, not {number[:20]}")
    return int(number)


def _entry(read: ReadFile, path: str, key: str, by_number: bool) -> list[str] | None:
    """The line of /etc/passwd or /etc/group whose name (or, by_number, its id) is `key`."""
    text = (read(path) or b"")[:MOST_READ].decode(errors="replace")
    for line in text.splitlines():
        fields = line.split(":")
        ids = fields[2:4] if path == "/etc/passwd" else fields[2:3]   # uid, gid; or gid
        if len(fields) >= 4 and all(NUMBER.fullmatch(n) for n in ids) and (
                fields[2] == key if by_number else fields[0] == key):
            return fields
    return None


def layer_reader(layers: Sequence[Path]) -> ReadFile:
    """Read an image's file from its unpacked layers (top first) as overlayfs would
    show it, without following any symlink: a path with a symlink on the way, or that
    is not a regular file, reads as absent. A whiteout (a 0:0 character device, or the
    xattr trusted.overlay.whiteout) in a higher layer hides the file below."""
    def read(path: str) -> bytes | None:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            return None
        for layer in layers:
            found = _lookup(layer, parts)
            if found is not None:
                return found or None
        return None
    return read


def _lookup(layer: Path, parts: list[str]) -> bytes | None:
    """A file's bytes in one layer; b"" if this layer hides it; None: not here."""
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if _is_whiteout(part, fd, info):
                return b""
            last = i == len(parts) - 1
            wanted = stat.S_ISREG if last else stat.S_ISDIR
            if not wanted(info.st_mode):        # a symlink, a device, a fifo: refused
                return b""
            flags = os.O_RDONLY | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.read(fd, MOST_READ)
    finally:
        os.close(fd)


def _is_whiteout(name: str, directory: int, info: os.stat_result) -> bool:
    """overlayfs's two forms of "deleted here": a 0:0 char device, or an xattr."""
    if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
        return True
    try:
        return os.getxattr(f"/proc/self/fd/{directory}/{name}", "trusted.overlay.whiteout",
                           follow_symlinks=False) is not None
    except OSError:
        return False
