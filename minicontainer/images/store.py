"""The image store: blobs by digest, each layer unpacked once, tags naming manifests.

Everything an image is arrives as a *blob*, a file named by the sha256 of its bytes
(content addressing, as git stores objects): so two images sharing a layer share its
blob, a blob is checked by hashing it, and one never changes under its name. The
store, /var/lib/minicontainer/images (a rootless user's own under
~/.local/share/minicontainer), holds:

    blobs/sha256/<hex>   manifests, configs and layer tarballs, verified on the way in
    layers/<hex>/        each layer blob unpacked once (layers.py), shared by every
                         image and container using it: overlayfs's lowerdirs
    tags.json            names → manifest digests ("docker.io/library/busybox:latest")
    tmp/                 blobs being written; what a killed process left, prune() removes

A blob is written to tmp/ while its hash and size are checked, then renamed into
blobs/ (rename(2) is atomic): a blob under its name is whole and right, or absent. A
layer is unpacked into layers/.unpacking-* and renamed the same way. A tag is written
last, once everything it names is there, so the store is consistent wherever a pull
or a load is killed. prune() removes what no tag (and no container) names; it holds
an exclusive lock (flock(2) on gc.lock) that every writer holds shared, so it never
removes what a pull is still adding. The store's directory is root's alone (0700):
images carry setuid programs, which no user of the host may reach.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .. import state
from ..errors import DigestMismatch, ImageError, ImageNotFound, MinicontainerError
from ..rootfs import default_rootfs
from . import archives, layers
from .archives import INDEX_TYPES, LAYER_TYPES, Contents
from .layers import Limits
from .reference import DIGEST, parse


@dataclass
class Image:
    """An image in the store: its manifest and config (JSON, as published), and its
    layers unpacked, bottom first (overlayfs wants them top first: reverse them)."""

    name: str                  # as the store knows it, e.g. docker.io/library/busybox:latest
    digest: str                # the manifest's
    manifest: dict
    config: dict               # the image config: Cmd, Entrypoint, Env, WorkingDir, User...
    layers: list[Path]


class Summary(NamedTuple):
    """One line of `images`: a tag, its manifest, bytes of its blobs, when it was built."""

    name: str
    digest: str
    size: int
    created: str


def default_root() -> Path:
    """/var/lib/minicontainer/images for root; a rootless user's own; beside the
    containers' data (state.data_dir), so MINICONTAINER_DATA moves both."""
    return state.data_dir().parent / "images"


class Store:
    """The images on this machine (or below `root`): nothing is made until written."""

    def __init__(self, root: Path | None = None, limits: Limits | None = None) -> None:
        """The store at `root` (default_root()), unpacking within `limits`."""
        self.root = Path(root) if root is not None else default_root()
        self.limits = limits or Limits()     # what one layer may unpack to

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob `digest` lives (blobs/sha256/<hex>); ImageError for a digest
        that is not sha256 and 64 hex digits (it names a file: never a path)."""
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ImageError(f"{digest!r} is not a sha256 digest (sha256:<64 hex digits>)")
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Is the blob `digest` in the store (whole: only whole ones have its name)?"""
        return self.blob_path(digest).is_file()

    def ingest(self, digest: str, size: int | None, chunks: Iterable[bytes]) -> Path:
        """Store the bytes `chunks`, which must hash to `digest` (and be `size` long),
        and return their path; DigestMismatch, keeping nothing, if they do not. A blob
        already here is not read again."""
        target = self.blob_path(digest)
        if target.is_file():
            return target
        if size is not None and (type(size) is not int or size < 0):
            raise ImageError(f"blob {digest}: size {size!r} is not a number of bytes")
        with self.adding():
            fd, temporary = tempfile.mkstemp(prefix="blob-", dir=self._made("tmp"))
            try:
                with open(fd, "wb") as out:
                    _write_checked(out, digest, size, chunks)
                self._made("blobs/sha256")
                os.rename(temporary, target)     # atomic: whole under its name, or absent
            except BaseException:
                os.unlink(temporary)
                raise
        return target

    def read_json(self, digest: str) -> dict:
        """The blob `digest` parsed as a JSON object (a manifest, a config)."""
        try:
            document = json.loads(self.blob_path(digest).read_bytes())
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is not in the store: pull or load the image "
                             "again") from None
        except ValueError:
            raise ImageError(f"blob {digest} is not JSON") from None
        if not isinstance(document, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return document

    # -- layers -----------------------------------------------------------------------------

    def unpacked(self, layer_digest: str, media_type: str, diff_id: str | None = None) -> Path:
        """The layer blob `layer_digest` as a directory (layers/<hex>), unpacked the first
        time it is asked for (layers.unpack: whiteouts converted, escapes refused), and
        kept only if its tar stream is the `diff_id` the image config names for it."""
        target = self.root / "layers" / self.blob_path(layer_digest).name
        known = self.root / "diff_ids" / target.name    # the diff_id its tar was, checked
        if target.is_dir():
            if diff_id is not None and known.is_file():  # another image's word for it
                _check_diff_id(layer_digest, json.loads(known.read_text())["diff_id"], diff_id)
            return target
        if media_type not in LAYER_TYPES:
            raise ImageError(f"layer {layer_digest} is of type {media_type!r}, not a layer "
                             "tarball minicontainer can unpack")
        with self.adding():
            staging = Path(tempfile.mkdtemp(prefix=f".unpacking-{target.name[:12]}-",
                                            dir=self._made("layers")))
            try:
                with open(self.blob_path(layer_digest), "rb") as blob:
                    stream = layers.Hashed(layers.decompressed(blob))
                    made = layers.unpack(stream, staging, self.limits)
                    _check_diff_id(layer_digest, stream.digest(), diff_id)
                    state.write_json(self._made("diff_ids") / target.name,
                                     {"diff_id": stream.digest()})
                if made.squashed_owners:
                    _warn_squashed(layer_digest, made.squashed_owners)
                staging.chmod(0o755)
                staging.rename(target)           # atomic; fails if another was first
            except FileNotFoundError:
                _remove_tree(staging)
                raise ImageError(f"layer {layer_digest} is not in the store: pull or load "
                                 "the image again") from None
            except OSError:
                _remove_tree(staging)
                if not target.is_dir():
                    raise
            except BaseException:
                _remove_tree(staging)
                raise
        return target

    # -- images and tags --------------------------------------------------------------------

    def add_image(self, name: str, manifest_digest: str) -> None:
        """Tag the image whose manifest is `manifest_digest` as `name` (Docker's form:
        busybox → docker.io/library/busybox:latest); ImageError unless every blob it
        names is here already, so a tag never names half an image."""
        reference = parse(name)       # name@sha256:… too: a pull by digest keeps it
        with self.adding():
            manifest = self.manifest(manifest_digest)
            missing = [d for d in blobs_of(manifest) if not self.has_blob(d)]
            if missing:
                raise ImageError(f"image {reference} is not whole: blobs {missing} are missing")
            with self._lock("tags.lock", fcntl.LOCK_EX):
                tags = self.tags()
                tags[str(reference)] = manifest_digest
                state.write_json(self.root / "tags.json", tags)

    def tags(self) -> dict[str, str]:
        """Every name in the store, and the manifest digest it names."""
        try:
            tags = json.loads((self.root / "tags.json").read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            tags = None
        if not isinstance(tags, dict):
            raise ImageError(f"{self.root / 'tags.json'} is damaged: remove it, then load "
                             "or pull the images again")
        return {name: digest for name, digest in tags.items() if isinstance(digest, str)}

    def manifest(self, digest: str) -> dict:
        """The image manifest `digest`, checked to be one (schema 2 or OCI, with a config
        and layers); an index of platforms is refused: pick one of its manifests."""
        manifest = self.read_json(digest)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            raise ImageError(f"{digest} is an index of images for several platforms: the "
                             "store keeps the one for this machine (pull picks it)")
        if manifest.get("schemaVersion") != 2:
            raise ImageError(f"manifest {digest} is not schema 2 (schema 1 is long retired)")
        config, image_layers = manifest.get("config"), manifest.get("layers")
        if not (isinstance(image_layers, list) and image_layers and all(
                isinstance(d, dict) and isinstance(d.get("digest"), str)
                and isinstance(d.get("mediaType", ""), str) for d in [config, *image_layers])):
            raise ImageError(f"manifest {digest} does not name a config and one layer or more")
        return manifest

    def image(self, ref: str) -> Image:
        """The image `ref` names (a tag, or @sha256:… for a manifest), its layers
        unpacked; ImageError if the store does not have it."""
        reference = parse(ref)
        digest = self.tags().get(str(reference)) or reference.digest
        if digest is None:
            raise ImageNotFound(f"no image {reference} in the store: pull or load it first")
        manifest = self.manifest(digest)
        config = self.read_json(manifest["config"]["digest"])
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest["layers"]):
            raise ImageError(f"image {reference}: its config's rootfs.diff_ids do not list "
                             "one digest per layer of its manifest")
        return Image(str(reference), digest, manifest, config, stacked(
            [self.unpacked(layer["digest"], layer.get("mediaType", ""), diff_id)
             for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True)]))

    def images(self) -> list[Summary]:
        """Every tagged image: name, manifest digest, size of its blobs, created."""
        found = []
        for name, digest in sorted(self.tags().items()):
            try:
                manifest = self.manifest(digest)
                config = self.read_json(manifest["config"]["digest"])
            except ImageError:
                continue                        # half removed by hand: prune's business
            size = sum(self.blob_path(d).stat().st_size for d in blobs_of(manifest)
                       if self.has_blob(d))
            found.append(Summary(name, digest, size, str(config.get("created", ""))))
        return found

    def remove(self, name: str) -> None:
        """Untag `name` (its blobs go at the next prune, if nothing else names them)."""
        reference = str(parse(name))
        with self._lock("tags.lock", fcntl.LOCK_EX):
            tags = self.tags()
            if reference not in tags:
                raise ImageError(f"no image {reference} in the store")
            del tags[reference]
            state.write_json(self.root / "tags.json", tags)

    def add(self, contents: Contents) -> list[str]:
        """Ingest an archive's blobs (each checked) and tag its images; return their
        names (an untagged image: its digest)."""
        with self.adding():
            for blob in contents.blobs:
                if not self.has_blob(blob.digest):
                    self.ingest(blob.digest, blob.size, blob.read())
            for name, digest in contents.images:
                if name is not None:
                    self.add_image(name, digest)
        return [str(parse(name)) if name else digest for name, digest in contents.images]

    def load(self, path: str | os.PathLike, repository: str | None = None) -> list[str]:
        """Load a `docker save` tarball or an OCI layout (directory or tar): every blob
        verified, every image tagged (archives.opened tells how)."""
        with archives.opened(path, repository) as contents:
            return self.add(contents)

    # -- garbage collection -----------------------------------------------------------------

    def prune(self) -> list[str]:
        """Remove the blobs and unpacked layers no tag names (nor any container's record
        here), and what killed writers left; return what went, as paths in the store."""
        if not self.root.is_dir():
            return []
        with self._lock("gc.lock", fcntl.LOCK_EX):   # no writer is adding meanwhile
            wanted = set()
            for digest in set(self.tags().values()):
                wanted.add(digest)
                with contextlib.suppress(ImageError):
                    wanted |= set(blobs_of(self.manifest(digest)))
            wanted_hex = {digest.removeprefix("sha256:") for digest in wanted}
            removed = []
            for path in self._entries("blobs/sha256"):
                if path.name not in wanted_hex:
                    path.unlink()
                    removed.append(path)
            in_use = layers_in_use(self.root / "layers")
            for path in self._entries("layers"):
                if path.name not in wanted_hex | in_use:
                    _remove_tree(path)           # and .unpacking-* left by a kill
                    removed.append(path)
            for path in self._entries("diff_ids"):     # and .new ones a kill left
                if not (self.root / "layers" / path.name).is_dir():
                    path.unlink()
                    removed.append(path)
            for path in self._entries("tmp"):
                path.unlink()
                removed.append(path)
        return [str(path.relative_to(self.root)) for path in removed]

    @contextlib.contextmanager
    def adding(self) -> Iterator[None]:
        """Hold off prune() while the block adds to the store (a pull holds it from its
        first blob until its tag is written; calling prune() inside would wait forever)."""
        with self._lock("gc.lock", fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty directory inside the store (root's alone: a tarball being imported
        may hold setuid files), removed when the block ends; prune() removes one a killed
        process left, as it removes a half-unpacked layer."""
        with self.adding():
            staging = Path(tempfile.mkdtemp(prefix=".unpacking-import-",
                                            dir=self._made("layers")))
            try:
                yield staging
            finally:
                _remove_tree(staging)

    # -- the details ------------------------------------------------------------------------

    def _made(self, below: str = "") -> Path:
        """The store's directory (0700: root's alone), and `below` in it, made if missing."""
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = self.root / below
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    @contextlib.contextmanager
    def _lock(self, name: str, kind: int) -> Iterator[None]:
        """flock(2) on the lock file `name`: shared or exclusive, released on the way out."""
        fd = os.open(self._made() / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, kind)
            yield
        finally:
            os.close(fd)

    def _entries(self, below: str) -> list[Path]:
        directory = self.root / below
        return sorted(directory.iterdir()) if directory.is_dir() else []


def blobs_of(manifest: dict) -> list[str]:
    """The digests of the blobs a (checked) manifest names: its config, then its layers."""
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def stacked(layers: list[Path]) -> list[Path]:
    """An image's layers, bottom first, each once, at its topmost place: overlayfs
    refuses a directory twice among its lowerdirs (ELOOP), and images do repeat a
    layer (an empty one, the same COPY twice). Dropping the lower copies changes
    nothing seen: whatever they hold, whiteouts too, the top copy holds above them.
    (Docker's overlay2 keeps one directory per layer *and* what is below it, so a
    repeated layer is two directories there.)"""
    return list(reversed(dict.fromkeys(reversed(layers))))


def layers_in_use(directory: Path) -> set[str]:
    """The names of the layers in `directory` that a container's record names (a record
    is not trusted, but it can only keep a layer here, never remove one)."""
    used = set()
    for name in state.names():
        try:
            record = state.read_unchecked(name)
        except MinicontainerError:
            continue
        for layer in record.get("layers") or []:
            if isinstance(layer, str) and Path(layer).parent == directory:
                used.add(Path(layer).name)
    return used


def busybox_image(store: Store | None = None) -> Image:
    """The busybox image (rootfs.default_rootfs) in the store as busybox:latest, added
    the first time, and again only when the tree changes (same tree, same digests)."""
    store = store or Store()
    tree = default_rootfs()
    with archives.from_tree(tree, "busybox:latest", ["sh"],
                            f"minicontainer: {tree.name}, the host's busybox-static") as made:
        store.add(made)
    return store.image("busybox:latest")


def _warn_squashed(layer_digest: str, count: int) -> None:
    """Say that a rootless unpack gave other users' files to the caller: inside, they
    are all root's. Podman maps a range of subordinate uids (/etc/subuid, through the
    setuid newuidmap) so each keeps its owner; we map the caller's uid alone."""
    warnings.warn(f"layer {layer_digest[7:19]}: {count} entries owned by other users in the "
                  "image are yours here, root's inside (a rootless container maps one uid; "
                  "programs that check owners, like sshd, may refuse them)", stacklevel=4)


def _check_diff_id(layer_digest: str, found: str, promised: str | None) -> None:
    """A layer is its compressed blob's digest outside and its config's diff_id inside:
    both are checked, as Docker checks both (a blob may be right, its tar not)."""
    if promised is not None and found != promised:
        raise DigestMismatch(f"layer {layer_digest} unpacks to {found}, but the image "
                             f"config says {promised} (rootfs.diff_ids): refused, not kept")


def _write_checked(out, digest: str, size: int | None, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `out`, hashing as they come; DigestMismatch at the first byte
    past `size`, or at the end if the hash or the size is not the promised one."""
    hasher, written = hashlib.sha256(), 0
    for chunk in chunks:
        written += len(chunk)
        if size is not None and written > size:
            raise DigestMismatch(f"blob {digest} is longer than the {size} bytes promised")
        hasher.update(chunk)
        out.write(chunk)
    if size is not None and written != size:
        raise DigestMismatch(f"blob {digest} has {written} bytes, not the {size} promised")
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise DigestMismatch(f"blob {digest} hashes to sha256:{hasher.hexdigest()}: "
                             "refused, nothing kept")
    out.flush()
    os.fsync(out.fileno())                       # on disk before it gets its name


def _remove_tree(path: Path) -> None:
    """Remove an unpacked layer; a rootless owner first lets themselves into its
    directories (a layer may hold 0555 ones)."""
    if os.geteuid() != 0:
        for directory, _, _ in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
