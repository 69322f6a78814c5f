"""Docker's image commands over the store: images, tag, rmi, inspect, prune, save, import.

Each function here does what its `docker` command does and returns what that command
prints (cli.py only prints it). An image is named as Docker names it: by a tag
(`busybox` means docker.io/library/busybox:latest: reference.py), by name@digest, or
by its *ID*: the digest of its manifest, which `images` shows cut to 12 hex digits
and of which any unique start names it (`rmi 3f57d9401f8d`). That is the ID of
Docker's containerd image store (its default since Docker 29); its older store used
the config's digest instead.

Removing follows Docker's rules (moby: daemon/images/image_delete.go). `rmi NAME`
untags; the image goes with its last tag, but not while a container created from it
has a record, running or stopped, unless `-f`; and never while one runs, even with
`-f` (Docker then untags and keeps the image; we change nothing: one line, as for any
refused input). A container was created from an image if its record names that
image's layers, top first, in this store: records are read with state.read, and one
it refuses names nothing. Once untagged, an image's blobs go at once (Store.prune);
its unpacked layers stay while a container stands on them. Docker also keeps images
without a name (`<none>` in `images`); this store keeps tagged images only, so `import`
needs a REPOSITORY, and an unnamed image a `load` brings goes at the next prune.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from .. import state
from ..errors import ImageError, ImageNotFound, InvalidArgument, MinicontainerError
from . import archives, layers
from .reference import Reference, familiar, parse
from .store import Image, Store, blobs_of, busybox_image, stacked

ID_START = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
SHORT_ID = 12                   # hex digits of an ID that `images` shows, as Docker


@dataclass(frozen=True)
class Found:
    """An image a name on the command line found: its ID (the manifest's digest), and
    the tags that name acts on (a tag: itself; an ID: every tag of the image)."""

    digest: str
    names: list[str] = field(default_factory=list)
    by_id: bool = False

    @property
    def short(self) -> str:
        """The ID as `images` shows it: 12 hex digits."""
        return self.digest.removeprefix("sha256:")[:SHORT_ID]


def find(store: Store, text: str) -> Found:
    """The image `text` names: a tag or name@digest in the store, else an ID or the
    start of one; ImageError if there is none, or more than one."""
    try:
        reference = parse(text)
    except InvalidArgument:
        if not ID_START.fullmatch(text):
            raise
        reference = None
    tags = store.tags()
    if reference is not None and str(reference) in tags:
        return Found(tags[str(reference)], [str(reference)])
    start = ID_START.fullmatch(text)
    if start:
        ids = {digest for digest in tags.values() if digest[7:].startswith(start[1])}
        if len(ids) > 1:
            raise ImageError(f"{text!r} starts {len(ids)} image IDs: give more of it")
        if ids:
            digest = ids.pop()
            return Found(digest, sorted(n for n, d in tags.items() if d == digest), True)
    raise ImageNotFound(f"no such image: {text}: pull or load it first "
                        "(see `minicontainer images`)")


def image(store: Store, text: str) -> Image:
    """The image `text` names (as find() reads it: a tag, name@digest, or an ID), its
    layers unpacked: what `run IMAGE` and Container(image=...) start from. busybox:latest
    is made from this machine's busybox if the store lacks it (any user's store, offline:
    `run busybox` works first time; it stands in for Docker Hub's, which is much alike)."""
    try:
        return store.image(find(store, text).names[0])
    except ImageNotFound:
        if _is_busybox(text):
            return busybox_image(store)
        raise


def _is_busybox(text: str) -> bool:
    """Does `text` name busybox:latest, the image this machine makes itself?"""
    try:
        return str(parse(text)) == "docker.io/library/busybox:latest"
    except InvalidArgument:
        return False


def containers_of(store: Store, digest: str) -> list[tuple[str, bool]]:
    """The containers created from image `digest` (their records name its layers, top
    first, in this store), each with whether it is running."""
    try:
        manifest = store.manifest(digest)
    except ImageError:
        return []       # its blobs removed by hand: nothing can be made from it, prune keeps
                        # the layers a record names all the same (store.layers_in_use)
    wanted = [os.path.abspath(layer) for layer in reversed(stacked(
        [store.root / "layers" / layer["digest"].removeprefix("sha256:")
         for layer in manifest["layers"]]))]
    found = []
    for name in state.names():
        try:
            record = state.describe(name)     # state.read: a record checked, or refused
        except MinicontainerError:
            continue                          # refused, or removed meanwhile: names nothing
        if [os.path.abspath(str(layer)) for layer in record.get("layers") or []] == wanted:
            found.append((name, record["status"] == "running"))
    return found


# -- images, tag, inspect ---------------------------------------------------------------------

def listing(store: Store, only: str | None = None, full: bool = False) -> list[list[str]]:
    """`images`: a row per tag, newest first: REPOSITORY TAG IMAGE ID CREATED SIZE.
    SIZE is the bytes of the image's blobs as stored (Docker's classic store shows
    them unpacked; its containerd store shows both)."""
    wanted = _repository_filter(only)
    rows = []
    by_name = sorted(store.images(), key=lambda summary: summary.name)
    for summary in sorted(by_name, key=lambda summary: summary.created, reverse=True):
        reference = parse(summary.name)
        if wanted and not wanted(reference):
            continue
        rows.append([familiar(Reference(reference.registry, reference.repository, None)),
                     reference.tag or "<none>",
                     summary.digest if full else summary.digest[7:7 + SHORT_ID],
                     _ago(summary.created), docker_size(summary.size)])
    return rows


def tag(store: Store, source: str, target: str) -> None:
    """`tag`: name the image `source` names `target` too."""
    reference = parse(target)
    if reference.tag is None:
        raise InvalidArgument(f"cannot tag {target}: a tag is name:tag, not name@digest")
    store.add_image(str(reference), find(store, source).digest)


def inspect(store: Store, texts: list[str]) -> list[dict]:
    """`image inspect`: each image as Docker describes it (Id, RepoTags, RepoDigests,
    Created, Config, Architecture, Os, Size, RootFS ...); ImageError before any output
    if one is missing."""
    return [_described(store, found.digest) for found in [find(store, t) for t in texts]]


def _described(store: Store, digest: str) -> dict:
    manifest = store.manifest(digest)
    config = store.read_json(manifest["config"]["digest"])
    names = [parse(name) for name, d in sorted(store.tags().items()) if d == digest]
    repositories = sorted({Reference(n.registry, n.repository, None, digest) for n in names},
                          key=str)
    rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
    return {
        "Id": digest,
        "RepoTags": [familiar(n) for n in names if n.tag],
        "RepoDigests": [familiar(r) for r in repositories],
        "Parent": "", "Comment": config.get("comment", ""),
        "Created": config.get("created", ""),
        "DockerVersion": config.get("docker_version", ""), "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        **({"Variant": config["variant"]} if config.get("variant") else {}),
        "Os": config.get("os", ""),
        "Size": sum(store.blob_path(d).stat().st_size for d in blobs_of(manifest)),
        "RootFS": {"Type": rootfs.get("type", "layers"), "Layers": rootfs.get("diff_ids", [])},
        "Descriptor": {"mediaType": manifest.get("mediaType", archives.OCI_MANIFEST),
                       "digest": digest, "size": store.blob_path(digest).stat().st_size}}


# -- rmi, prune -------------------------------------------------------------------------------

def remove(store: Store, texts: list[str], force: bool = False) -> list[str]:
    """`rmi`: untag what `texts` name, and remove the images left without a tag;
    every name is found and every conflict checked before anything changes. Returns
    Docker's lines: Untagged: NAME, Deleted: ID."""
    found = [find(store, text) for text in texts]
    going = {name for f in found for name in f.names}
    for text, image in zip(texts, found, strict=True):
        _check_removable(store, text, image, going, force)
    lines, untagged, deleted = [], set(), set()
    for image in found:
        for name in image.names:
            if name not in untagged:
                store.remove(name)
                untagged.add(name)
                lines.append(f"Untagged: {familiar(parse(name))}")
        if image.digest not in store.tags().values() and image.digest not in deleted:
            deleted.add(image.digest)
            lines.append(f"Deleted: {image.digest}")
    store.prune()
    return lines


def _check_removable(store: Store, text: str, image: Found, going: set[str],
                     force: bool) -> None:
    """ImageError with Docker's words if removing `image` as `text` names it conflicts."""
    if any(d == image.digest and n not in going for n, d in store.tags().items()):
        return                     # another tag keeps the image: only a name goes
    if image.by_id and not force and len({parse(n).name for n in image.names}) > 1:
        raise ImageError(f"conflict: unable to delete {image.short} (must be forced) - "
                         "image is referenced in multiple repositories")
    for container, running in containers_of(store, image.digest):
        if not force and not image.by_id:
            raise ImageError(f'conflict: unable to remove repository reference "{text}" '
                             f"(must force) - container {container} is using its "
                             f"referenced image {image.short}")
        if running:
            raise ImageError(f"conflict: unable to delete {image.short} (cannot be forced) - "
                             f"image is being used by running container {container}")
        if not force:
            raise ImageError(f"conflict: unable to delete {image.short} (must be forced) - "
                             f"image is being used by stopped container {container}")


def prune(store: Store, unused: bool = False) -> tuple[list[str], int]:
    """`image prune`: remove the blobs and layers no tag names (with `unused`, `-a`:
    first untag every image no container was created from); Docker's lines, and the
    bytes reclaimed."""
    lines = []
    if unused:
        for name, digest in sorted(store.tags().items()):
            if not containers_of(store, digest):
                store.remove(name)
                lines.append(f"untagged: {familiar(parse(name))}")
    before = _disk_usage(store.root)
    removed = store.prune()
    lines += [f"deleted: sha256:{Path(path).name}" for path in removed
              if path.startswith("blobs/")]
    return lines, before - _disk_usage(store.root)


# -- save, import -------------------------------------------------------------------------------

def save(store: Store, texts: list[str], out: BinaryIO, docker: bool = True) -> None:
    """`save`: the images `texts` name, as one tar on `out` (docker: with manifest.json,
    as `docker save`; else an OCI layout). A name without a tag saves every tag of its
    repository, as Docker's; an ID saves the image without a name."""
    chosen: dict[str, list[Reference]] = {}
    for text in texts:
        for digest, names in _to_save(store, text):
            listed = chosen.setdefault(digest, [])
            listed += [name for name in names if name not in listed]
    archives.write(out, [archives.Saved(digest, store.manifest(digest), names)
                         for digest, names in chosen.items()], store.blob_path, docker)


def save_to_file(store: Store, texts: list[str], path: Path, docker: bool = True) -> None:
    """save() into the file `path`, written beside it and renamed over it when whole:
    a failed save leaves no half archive, and an existing file as it was. (Docker's CLI
    opens FILE and writes through it, a symlink there too; rename(2) replaces the name.)"""
    path = Path(path)
    for text in texts:
        _to_save(store, text)               # every name found before the file is made
    if not path.parent.is_dir():
        raise InvalidArgument(f"cannot save to {path}: {path.parent} is not a directory")
    if path.is_dir():
        raise InvalidArgument(f"cannot save to {path}: it is a directory; name a file in it")
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.mc-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)       # as a new file would be
        with open(fd, "wb") as out:
            save(store, texts, out, docker)
            out.flush()
            os.fsync(out.fileno())
        os.rename(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def _to_save(store: Store, text: str) -> list[tuple[str, list[Reference]]]:
    """The images `text` names for save, each with the tags to write for it."""
    if _repository_only(text):
        wanted = parse(text).name
        named = [(digest, [parse(name)]) for name, digest in sorted(store.tags().items())
                 if parse(name).name == wanted and parse(name).tag]
        if named:
            return named
    found = find(store, text)
    return [(found.digest, [] if found.by_id else
             [name for name in map(parse, found.names) if name.tag])]


def import_rootfs(store: Store, tarball: Path, name: str, message: str = "") -> str:
    """`import`: a plain rootfs tarball (plain, gzip or zstd) as a one-layer image
    named `name`; its ID. The tarball is unpacked with every check of layers.py (no
    escapes, no devices, size limits), then packed again: owners kept, as Docker's."""
    reference = parse(name)
    if reference.tag is None:
        raise InvalidArgument(f"cannot import as {name}: give a tag, not a digest")
    with open(tarball, "rb") as raw, store.staging() as tree:
        layers.unpack(layers.decompressed(raw), tree, store.limits)
        with archives.from_tree(tree, str(reference), None, message or
                                f"Imported from {Path(tarball).name}", owner=None,
                                created=datetime.now(UTC)) as contents:
            store.add(contents)
    return store.tags()[str(reference)]


# -- the details ------------------------------------------------------------------------------

def _repository_only(text: str) -> bool:
    """Does `text` name a repository with neither tag nor digest (`busybox`)?"""
    return "@" not in text and ":" not in text.rpartition("/")[2]


def _repository_filter(only: str | None):
    """`images busybox`: a test keeping that repository's tags (or that one tag)."""
    if not only:
        return None
    wanted = parse(only)
    if _repository_only(only):
        return lambda reference: reference.name == wanted.name
    return lambda reference: str(reference) == str(wanted)


def _ago(created: str) -> str:
    """An RFC 3339 time as Docker's CREATED column says it: "3 weeks ago"."""
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "N/A"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - then).total_seconds()) + " ago"


def human_duration(seconds: float) -> str:
    """A duration in Docker's words (go-units HumanDuration): 'About an hour', '3 weeks'."""
    hours = round(seconds / 3600)
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    if seconds < 3600:
        minutes = int(seconds // 60)
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    if hours == 1:
        return "About an hour"
    for limit, divisor, unit in ((48, 1, "hours"), (24 * 14, 24, "days"),
                                 (24 * 60, 24 * 7, "weeks"), (24 * 730, 24 * 30, "months")):
        if hours < limit:
            return f"{hours // divisor} {unit}"
    return f"{int(seconds // 3600) // 24 // 365} years"


def docker_size(amount: int) -> str:
    """Bytes as Docker's image sizes: decimal units, three digits ("4.26MB")."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.3g}{unit}"
        amount /= 1000
    return str(amount)


def _disk_usage(root: Path) -> int:
    """Bytes of the files below `root` (never following a symlink)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total
