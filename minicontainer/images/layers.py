"""Layers: tarballs of changes, unpacked once into directories overlayfs can stack.

A layer is a tar archive (plain, gzip or zstd) of what it adds or changes on top of
the layers below it. A deletion cannot be a tar entry, so the OCI format marks it
with aufs's *whiteouts*: an empty file `.wh.NAME` means "NAME from below is gone",
and `.wh..wh..opq` in a directory means "nothing from below shows through here"
(an opaque directory). overlayfs, which stacks the unpacked layers as its lowerdirs,
has its own marks for the same two things, so unpacking converts them:

- `.wh.NAME` becomes a character device numbered 0:0 named NAME. overlayfs shows
  no such entry in the merged tree; the device itself names nothing (major 0 has no
  driver: open(2) fails with ENXIO), the image is mounted nodev and the device
  allow-list (devices.py) lists no 0:0, so it is harmless even where it is seen (a
  layer used as a plain rootfs, chroot alone). Since Linux 5.8 anyone may make one, with
  no CAP_MKNOD, so a rootless user can unpack too. (overlayfs's other form, an xattr
  on an empty file, needs Linux 6.7: Debian 12 runs 6.1.)
- `.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on its directory
  (root's mounts read it), and `user.overlay.opaque=y` (what a mount in a user
  namespace reads, with overlayfs's `userxattr` option).

Unpacking is an attack surface: the archive is someone else's, and root unpacks it.
tarfile only parses here; every entry is made by this module, each check stopping:

- an absolute name or a `..` component is refused: `../../etc/cron.d/job`,
  `/root/.ssh/authorized_keys`;
- every directory on the way is opened relative to the one before with O_NOFOLLOW
  (openat(2)), never by a path: a symlink an earlier entry placed (`lib -> /etc`,
  then `lib/passwd`) is never followed, it is refused. Symlinks themselves are kept
  as written (`/bin/sh -> /bin/busybox` is normal): in the container they resolve
  inside its root, and nothing on the host follows them;
- a hard link must name a regular file or symlink already in this layer, found the
  same way: a link to the host's /etc/shadow would let the container write it;
- device nodes are never made (skipped and counted: the container's /dev is its own
  tmpfs anyway); the only 0:0 nodes are the whiteouts made above. xattrs in the
  archive are not applied (`trusted.overlay.*` would forge overlayfs's own marks);
- files are created with O_EXCL: an existing name is removed first, never written
  through;
- the total size and the number of entries are capped (Limits), checked before
  writing: a small gzip cannot fill the disk;
- setuid bits and owners are kept, as Docker keeps them, when root unpacks: the
  store is root's alone (mode 0700), and inside, no_new_privs makes setuid inert.
  A rootless user cannot chown: their files stay theirs, root in their namespace.

Python's `tarfile.data_filter` (3.11.4 on; this machine's 3.11.2 lacks it) refuses
some of this for extractall, but it checks each name as a string, before earlier
entries changed the tree, and it drops the setuid bits images need: not enough alone.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageError

WHITEOUT = ".wh."                   # .wh.NAME: NAME from the layers below is deleted
OPAQUE = ".wh..wh..opq"             # in a directory: nothing below shows through it
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
GZIP, ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"    # magic numbers: a blob's first bytes


@dataclass(frozen=True)
class Limits:
    """How much one layer may unpack to; past either, the layer is refused."""

    max_bytes: int = 8 * 1024**3    # of file contents, uncompressed
    max_files: int = 1_000_000      # entries of any kind


@dataclass
class Unpacked:
    """What unpacking a layer made: counts, and the device nodes it refused to make."""

    files: int = 0
    bytes: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    squashed_owners: int = 0        # entries not root's that a rootless user made theirs


def decompressed(raw: BinaryIO) -> BinaryIO:
    """The tar stream inside a layer blob, by its magic number: gzip, zstd or plain."""
    head = raw.read(4)
    raw.seek(0)
    if head[:2] == GZIP:
        return gzip.GzipFile(fileobj=raw)
    if head == ZSTD:
        import zstandard                  # loaded for zstd layers only
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


class Hashed:
    """A layer's tar stream read through, its sha256 counted on the way: the digest the
    image config lists for it (rootfs.diff_ids), of the uncompressed bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        """Read `stream` through, from its start."""
        self.stream, self.sha256 = stream, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Read as the stream does, counting what went by."""
        data = self.stream.read(size)
        self.sha256.update(data)
        return data

    def digest(self) -> str:
        """sha256:… of the whole stream; tarfile stops at the end-of-archive blocks,
        so what follows them is read here first (it counts too)."""
        while self.read(1 << 20):
            pass
        return f"sha256:{self.sha256.hexdigest()}"


def unpack(stream: BinaryIO, target: Path, limits: Limits = Limits()) -> Unpacked:
    """Apply the tar archive `stream` to the empty directory `target`, whiteouts turned
    into overlayfs's marks; ImageError, naming the entry, for anything refused."""
    writer = _Writer(target, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                writer.add(member, archive)
        writer.finish()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ImageError(f"the layer is not a whole tar archive: {e}") from None
    finally:
        writer.close()
    return writer.made


def components(name: str, what: str = "entry") -> list[str]:
    """An archive name's parts, `.` dropped; ImageError for an absolute name or `..`."""
    if name.startswith("/"):
        raise ImageError(f"layer {what} {name!r} is an absolute path: refused")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer {what} {name!r} climbs out with '..': refused")
    return parts


class _Writer:
    """Makes one layer's entries below a root it holds open, never following a link."""

    def __init__(self, target: Path, limits: Limits) -> None:
        self.root = os.open(target, DIRECTORY)
        self.limits, self.made = limits, Unpacked()
        self.is_root = os.geteuid() == 0
        self.cached: tuple[tuple[str, ...], int] | None = None   # the last directory
        self.directories: dict[tuple[str, ...], tarfile.TarInfo] = {}   # modes set last

    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        """Make one archive entry (or its whiteout), after the checks."""
        parts = components(member.name)
        if not parts:
            return                   # the layer's own root: ours stays as made
        self.count(member)
        if not self.is_root and (member.uid, member.gid) != (0, 0):
            self.made.squashed_owners += 1
        *dirs, name = parts
        try:
            parent = self.directory(dirs)
            if name.startswith(WHITEOUT):
                self.whiteout(parent, name[len(WHITEOUT):])
            elif member.isdir():
                self.make_directory(parent, name, member, tuple(parts))
            elif member.issym():
                self.clear(parent, name)
                os.symlink(member.linkname, name, dir_fd=parent)
                self.own(name, member, parent)
            elif member.islnk():
                self.hard_link(parent, name, member)
            elif member.isreg():
                self.write_file(parent, name, member, archive)
            elif member.isfifo():
                self.clear(parent, name)
                os.mkfifo(name, 0o600, dir_fd=parent)
                self.own(name, member, parent)
            elif member.ischr() or member.isblk():
                self.made.skipped_devices.append(member.name)
            else:
                raise ImageError(f"layer entry {member.name!r} is of an unknown type")
        except gzip.BadGzipFile:
            raise                    # the archive is broken, not this entry: unpack says so
        except OSError as e:
            raise ImageError(f"layer entry {member.name!r} could not be made: "
                             f"{e.strerror or e}") from None

    def count(self, member: tarfile.TarInfo) -> None:
        """Refuse the layer once it passes either limit, before writing more."""
        self.made.files += 1
        self.made.bytes += member.size if member.isreg() else 0
        if self.made.files > self.limits.max_files:
            raise ImageError(f"the layer has more than {self.limits.max_files:,} entries: "
                             "refused (Limits.max_files)")
        if self.made.bytes > self.limits.max_bytes:
            raise ImageError(f"the layer unpacks to more than {self.limits.max_bytes:,} "
                             "bytes: refused (Limits.max_bytes)")

    def directory(self, parts: list[str], create: bool = True) -> int:
        """An fd of the directory at `parts`, each step opened with O_NOFOLLOW (made
        0755 if missing and `create`); ImageError if a step is a symlink or a file."""
        key = tuple(parts)
        if create and self.cached and self.cached[0] == key:
            return self.cached[1]
        fd = os.dup(self.root)
        try:
            for part in parts:
                try:
                    step = os.open(part, DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    step = os.open(part, DIRECTORY, dir_fd=fd)
                    os.fchmod(step, 0o755)      # whatever our umask: as tar makes them
                os.close(fd)
                fd = step
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ImageError(f"layer path {'/'.join(parts)!r} goes through a symlink or "
                                 "a file: writing through it is refused") from None
            raise
        if create:
            self.forget()
            self.cached = (key, fd)
        return fd

    def forget(self) -> None:
        """Close the cached directory (it may have been removed or replaced)."""
        if self.cached:
            os.close(self.cached[1])
            self.cached = None

    def clear(self, parent: int, name: str, keep_directory: bool = False) -> os.stat_result | None:
        """Remove what this layer already has at `name` (a later entry wins), unless it
        is a directory to keep; return what was there."""
        try:
            found = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(found.st_mode):
            if keep_directory:
                return found
            # The cached directory is `parent` itself (add() just opened it), so it
            # cannot lie inside what is removed here.
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return found

    def whiteout(self, parent: int, name: str) -> None:
        """NAME below is deleted: a 0:0 character device for overlayfs; `.wh..wh..opq`:
        the directory is opaque. A whiteout hides only the layers below, never an entry
        of its own layer (OCI's rule): a directory already here just becomes opaque."""
        if name == OPAQUE[len(WHITEOUT):]:
            make_opaque(parent)
        elif name.startswith(WHITEOUT) or name in ("", ".", ".."):
            return                   # aufs's own bookkeeping (.wh..wh.plnk): ignored
        elif _exists(parent, name):
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                fd = os.open(name, DIRECTORY, dir_fd=parent)
                make_opaque(fd)
                os.close(fd)
        else:
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)

    def make_directory(self, parent: int, name: str, member: tarfile.TarInfo,
                       parts: tuple[str, ...]) -> None:
        """A directory, kept if there (tar repeats them); its mode is set last, so an
        0555 directory can still be filled by a rootless user."""
        found = self.clear(parent, name, keep_directory=True)
        if found is None or not stat.S_ISDIR(found.st_mode):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, DIRECTORY, dir_fd=parent)
        try:
            if found is not None and stat.S_ISCHR(found.st_mode):
                make_opaque(fd)      # it replaces its own whiteout: below stays hidden
            if self.is_root:
                os.fchown(fd, member.uid, member.gid)
        finally:
            os.close(fd)
        self.directories[parts] = member

    def hard_link(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        """A second name for a file this layer already holds, never for anything else."""
        source = components(member.linkname, "hard link target")
        where = f"layer hard link {member.name!r} -> {member.linkname!r}"
        if not source:
            raise ImageError(f"{where}: links to the layer's root")
        try:
            source_dir = self.directory(source[:-1], create=False)
        except FileNotFoundError:
            raise ImageError(f"{where}: the target is not in this layer") from None
        try:
            found = os.stat(source[-1], dir_fd=source_dir, follow_symlinks=False)
            if not (stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)):
                raise ImageError(f"{where}: only files and symlinks may be linked")
            if _exists(parent, name) and os.path.samestat(
                    found, os.stat(name, dir_fd=parent, follow_symlinks=False)):
                return               # already the same file
            self.clear(parent, name)
            os.link(source[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent,
                    follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(f"{where}: the target is not in this layer") from None
        finally:
            os.close(source_dir)

    def write_file(self, parent: int, name: str, member: tarfile.TarInfo,
                   archive: tarfile.TarFile) -> None:
        """A regular file: made new (O_EXCL, never through a link), filled, then owned."""
        self.clear(parent, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            with open(fd, "wb", closefd=False) as out:
                shutil.copyfileobj(archive.extractfile(member), out, 1 << 20)
            self.own(fd, member)
        finally:
            os.close(fd)

    def own(self, target: int | str, member: tarfile.TarInfo, parent: int | None = None) -> None:
        """Owner, then mode (chown(2) clears setuid bits), then time; `target` is an fd,
        or a name in `parent` (a symlink keeps its mode: it has none of its own)."""
        where = {} if parent is None else {"dir_fd": parent, "follow_symlinks": False}
        if self.is_root:
            os.chown(target, member.uid, member.gid, **where)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777, **({} if parent is None else
                                                       {"dir_fd": parent}))
        _set_time(target, member.mtime, where)

    def finish(self) -> None:
        """The directories' modes and times, deepest first (filling one changed its time)."""
        self.forget()
        for parts, member in sorted(self.directories.items(), key=lambda i: -len(i[0])):
            try:
                fd = self.directory(list(parts), create=False)
            except (FileNotFoundError, ImageError):
                continue             # replaced by a later entry
            try:
                os.fchmod(fd, member.mode & 0o7777)
                _set_time(fd, member.mtime, {})
            finally:
                os.close(fd)

    def close(self) -> None:
        """Let go of the layer's directories."""
        self.forget()
        os.close(self.root)


def make_opaque(directory: int) -> None:
    """Mark a directory (an fd) opaque for overlayfs: root's mark, and a user
    namespace's; a rootless user can set only the second."""
    for name in OPAQUE_XATTRS:
        try:
            os.setxattr(directory, name, b"y")
        except OSError as e:
            if name.startswith("trusted.") and os.geteuid() == 0:
                raise ImageError(f"cannot mark an opaque directory ({e.strerror}): the "
                                 "image store's filesystem must hold overlayfs's xattrs "
                                 "(ext4, xfs, btrfs)") from None


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _set_time(target: int | str, mtime: float, where: dict) -> None:
    try:
        os.utime(target, (mtime, mtime), **where)
    except (OverflowError, ValueError):   # a time out of range: keep the present one
        pass


def pack(tree: Path, out: BinaryIO, owner: tuple[int, int] | None = None,
         latest: int | None = None) -> None:
    """Write `tree` as an uncompressed layer tarball to `out`: entries sorted, numeric
    owners (`owner` for all if given), whole-second times (none later than `latest`,
    a SOURCE_DATE_EPOCH, if given), so the same tree always gives the same bytes, and
    so the same digest."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path in _entries(tree):
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            if info is None:
                continue             # a socket: not something a tar holds
            info.uname = info.gname = ""
            info.mtime = int(info.mtime) if latest is None else min(int(info.mtime), latest)
            if owner is not None:
                info.uid, info.gid = owner
            if info.isreg():
                with open(path, "rb") as content:
                    archive.addfile(info, content)
            else:
                archive.addfile(info)


def _entries(directory: Path) -> Iterator[Path]:
    """Every path below `directory`, sorted, depth first, never following a symlink."""
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _entries(Path(entry.path))
