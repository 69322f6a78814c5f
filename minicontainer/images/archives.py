"""Images as files: `docker save` tarballs, OCI image layouts, and a directory imported.

Offline, an image travels as one of two layouts of the same parts. An *OCI image
layout* is a directory (or a tar of one) with an `oci-layout` file, an `index.json`
listing manifests by digest (each tagged by the annotation
`org.opencontainers.image.ref.name`) and every blob at `blobs/sha256/<hex>`: what
skopeo and umoci write. A *`docker save`* tarball has a `manifest.json` listing, for
each image, its config file, its layer tarballs in order and its tags (`RepoTags`);
it holds no manifest of the registry's kind, so one is written here, naming the same
blobs. Either way nothing is trusted: each blob is named by the digest it must have
(its path says it, the config's `rootfs.diff_ids` say it for an uncompressed layer, or
a descriptor does), and the store checks every byte against it on the way in.

Since Docker 25, `docker save` writes both at once: an OCI layout whose index.json
names each image (`io.containerd.image.name` the whole reference,
`org.opencontainers.image.ref.name` its tag), with `manifest.json` (and the legacy
`repositories`: name → tag → top layer) beside it, pointing into the same blobs/:

    blobs/sha256/<hex>   manifests, configs, layers   (the OCI layout's)
    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           a descriptor of each image's manifest, with its name
    manifest.json        [{"Config": "blobs/sha256/…", "RepoTags": ["busybox:latest"],
                           "Layers": ["blobs/sha256/…", …]}]          (docker save's)
    repositories         {"busybox": {"latest": "<top layer hex>"}}   (docker save's)

write() makes either (`--format oci` leaves out docker's two files); reading one back
finds the manifest it wrote in index.json, so the round trip keeps its digest.

Reading only describes (Contents: blobs to ingest, names to tag); the store
(store.py) does the writing into itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageError
from ..host import cpu
from ..rootfs import PATH
from .layers import GZIP, ZSTD, components, pack
from .manifests import (INDEXES, LAYERS, NONDISTRIBUTABLE, OCI_CONFIG, OCI_INDEX, OCI_LAYER,
                        OCI_MANIFEST, entry_for, this_platform)
from .reference import TAG, Reference, familiar, parse

LAYER_TYPES = {*LAYERS, *NONDISTRIBUTABLE}
INDEX_TYPES = set(INDEXES)
REF_NAME = "org.opencontainers.image.ref.name"   # an OCI layout's tag (or whole reference)
FULL_NAME = "io.containerd.image.name"           # Docker's and containerd's whole reference
CHUNK = 1 << 20
MOST_JSON = 4 * 1024**2        # bytes of an index, manifest.json or config we will read
DIGEST_IN_PATH = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'    # the layout's version, in its own file


@dataclass
class Blob:
    """Bytes for the store: the digest and size they must have, and how to read them."""

    digest: str
    size: int | None
    read: Callable[[], Iterator[bytes]]


@dataclass
class Contents:
    """What an archive holds: blobs to ingest, and images as (name or None, manifest
    digest); the store ingests and tags them (Store.add)."""

    blobs: list[Blob]
    images: list[tuple[str | None, str]]


def json_bytes(document: dict) -> bytes:
    """A manifest or config as bytes: its digest is the hash of exactly these."""
    return json.dumps(document, separators=(",", ":")).encode()


def digest_of(data: bytes) -> str:
    """sha256:<hex> of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bytes_blob(data: bytes) -> Blob:
    """A blob made here, from bytes in memory."""
    return Blob(digest_of(data), len(data), lambda: iter([data]))


# -- reading an archive ------------------------------------------------------------------

@contextmanager
def opened(path: str | os.PathLike, repository: str | None = None) -> Iterator[Contents]:
    """The images in a `docker save` tarball or an OCI layout (a directory, or a tar of
    one), readable while the block runs. A layout tagging an image only `3.19` puts it
    in `repository` (default: the file's name, `alpine.tar` → alpine)."""
    path = Path(path)
    source = _Folder(path) if path.is_dir() else _Tarball(path)
    try:
        if source.exists("manifest.json"):
            yield _docker_save(source)
        elif source.exists("index.json"):
            yield _oci_layout(source, repository or path.name.split(".")[0].lower())
        else:
            raise ImageError(f"{path} is neither a `docker save` tarball (manifest.json) nor "
                             "an OCI image layout (oci-layout, index.json)")
    finally:
        source.close()


def _docker_save(source: _Source) -> Contents:
    """manifest.json's images, each given a manifest naming its config and layers."""
    blobs, images = [], []
    for entry in _listed(source.json("manifest.json"), "manifest.json"):
        entry = _mapping(entry, "an entry of manifest.json")
        config_path = _string(entry.get("Config"), "manifest.json's Config")
        config_digest = _digest_in_path(config_path)
        rootfs = _mapping(_mapping(source.json(config_path), config_path).get("rootfs"),
                          "the config's rootfs")
        diff_ids = _listed(rootfs.get("diff_ids"), "the config's diff_ids")
        paths = _listed(entry.get("Layers"), "manifest.json's Layers")
        if len(paths) != len(diff_ids):
            raise ImageError(f"{config_path} lists {len(diff_ids)} layers, manifest.json "
                             f"{len(paths)}: not one image")
        layers = []
        for layer_path, diff_id in zip(paths, diff_ids, strict=True):
            # A layer.tar is the uncompressed layer, whose digest is its diff_id.
            found = DIGEST_IN_PATH.fullmatch("/".join(components(layer_path)))
            digest = f"sha256:{found[1]}" if found else _string(diff_id, "a diff_id")
            layers.append({"mediaType": _layer_type(source.head(layer_path)),
                           "digest": digest, "size": source.size(layer_path)})
            blobs.append(source.blob(layer_path, digest))
        blobs.append(source.blob(config_path, config_digest))
        manifest = _recorded_manifest(source, config_digest, layers) or bytes_blob(json_bytes({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                       "size": source.size(config_path)},
            "layers": layers}))
        blobs.append(manifest)
        tags = _listed(entry.get("RepoTags") or [None], "RepoTags")
        images += [(tag if tag is None else _string(tag, "a RepoTag"), manifest.digest)
                   for tag in tags]
    return Contents(blobs, images)


def _recorded_manifest(source: _Source, config_digest: str, layers: list[dict]) -> Blob | None:
    """The manifest a save since Docker 25 (or ours) wrote in index.json for this
    config and these layers, so a round trip keeps the image's digest; None if there is
    none (an older save; Docker 25.0's, which listed no layers there)."""
    if not source.exists("index.json"):
        return None
    index = _mapping(source.json("index.json"), "index.json")
    for descriptor in _listed(index.get("manifests") or [], "index.json's manifests"):
        if not isinstance(descriptor, dict) or descriptor.get("mediaType") in INDEX_TYPES:
            continue
        path = _blob_path(descriptor)
        if not source.exists(path):
            continue
        manifest = source.json(path)
        if (isinstance(manifest, dict) and isinstance(manifest.get("config"), dict)
                and manifest["config"].get("digest") == config_digest
                and isinstance(manifest.get("layers"), list)
                and [layer.get("digest") if isinstance(layer, dict) else None
                     for layer in manifest["layers"]] == [layer["digest"] for layer in layers]):
            return source.blob(path, descriptor["digest"], descriptor.get("size"))
    return None


def _oci_layout(source: _Source, repository: str) -> Contents:
    """index.json's images (from an index of platforms: this machine's), each with
    its manifest, config and layers, from blobs/sha256/."""
    blobs, images = [], []
    index = _mapping(source.json("index.json"), "index.json")
    for descriptor in _listed(index.get("manifests"), "index.json's manifests"):
        tagged = descriptor = _mapping(descriptor, "a descriptor in index.json")
        if descriptor.get("mediaType") in INDEX_TYPES:
            platforms = _mapping(source.json(_blob_path(descriptor)), "an index")
            descriptor = for_this_machine(_listed(platforms.get("manifests"), "an index"))
        manifest = _mapping(source.json(_blob_path(descriptor)), "a manifest")
        config = _mapping(manifest.get("config"), "a manifest's config")
        for part in [descriptor, config,
                     *_listed(manifest.get("layers"), "the manifest's layers")]:
            part = _mapping(part, "a descriptor")
            blobs.append(source.blob(_blob_path(part), part["digest"], part.get("size")))
        images.append((_name_of(tagged, repository), descriptor["digest"]))
    return Contents(blobs, images)


def for_this_machine(manifests: list[dict]) -> dict:
    """From an image index (a manifest list), the entry for linux on this machine's
    CPU; ImageError listing the platforms there are."""
    manifests = [_mapping(entry, "an entry of an index") for entry in manifests]
    for entry in manifests:
        _mapping(entry.get("platform") or {}, "a platform")
    entry, offered = entry_for(manifests, this_platform())
    if entry is None:
        raise ImageError(f"the image has no {this_platform()} variant (it has: {offered})")
    return entry


def _name_of(descriptor: dict, repository: str) -> str | None:
    """The name a layout gives an image: a whole reference, or a tag in `repository`."""
    annotations = descriptor.get("annotations") or {}
    name = annotations.get(FULL_NAME) or annotations.get(REF_NAME)
    if isinstance(name, str) and TAG.fullmatch(name):
        return str(parse(f"{repository}:{name}"))
    return name


def _layer_type(head: bytes) -> str:
    """A layer's media type, from its first bytes (a docker save does not say)."""
    return OCI_LAYER + ("+gzip" if head[:2] == GZIP else "+zstd" if head == ZSTD else "")


def _blob_path(descriptor: dict) -> str:
    digest = _string(descriptor.get("digest"), "a descriptor's digest")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ImageError(f"{digest!r} is not a sha256 digest")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _digest_in_path(path: str) -> str:
    found = DIGEST_IN_PATH.fullmatch("/".join(components(path)))
    if not found:
        raise ImageError(f"{path!r} does not name its digest (<hex>.json or blobs/sha256/<hex>)")
    return f"sha256:{found[1]}"


def _listed(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise ImageError(f"{what} is not a list")
    return value


def _mapping(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ImageError(f"{what} is not a string")
    return value


class _Source:
    """Files of an archive by their names inside it; never a name that climbs out."""

    def open(self, name: str):
        """The file `name`, opened for reading (binary)."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        """Is there a file `name`?"""
        raise NotImplementedError

    def size(self, name: str) -> int:
        """The size of file `name`."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the archive."""

    def json(self, name: str) -> dict | list:
        """File `name`, parsed as JSON; ImageError if it is missing or not JSON."""
        try:
            with self.open(name) as f:
                text = f.read(MOST_JSON + 1)
            if len(text) > MOST_JSON:
                raise ImageError(f"{name} is over {MOST_JSON // 1024**2} MiB: not an "
                                 "image's index or manifest")
            return json.loads(text)
        except (KeyError, FileNotFoundError, ValueError) as e:
            raise ImageError(f"{name} is missing or not JSON: {e}") from None

    def head(self, name: str) -> bytes:
        """The first four bytes of `name` (where compression says what it is)."""
        with self.open(name) as f:
            return f.read(4)

    def blob(self, name: str, digest: str, size: int | None = None) -> Blob:
        """File `name` as a blob that must have `digest`."""
        if not self.exists(name):
            raise ImageError(f"the archive has no {name}")
        def chunks() -> Iterator[bytes]:
            with self.open(name) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        return Blob(digest, size, chunks)


class _Folder(_Source):
    """A layout unpacked in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, name: str) -> Path:
        """Where `name` is, refused if it (or a symlink on the way) leads outside."""
        path = (self.root / "/".join(components(name, "file name"))).resolve()
        if not path.is_relative_to(self.root):
            raise ImageError(f"{name!r} leads out of {self.root}: refused")
        return path

    def open(self, name: str):
        """The file `name`, opened for reading."""
        return open(self.path(name), "rb")

    def exists(self, name: str) -> bool:
        """Is there a file `name`?"""
        return self.path(name).is_file()

    def size(self, name: str) -> int:
        """The size of file `name`."""
        return self.path(name).stat().st_size


class _Tarball(_Source):
    """A tar of a layout (compressed or not), read in place."""

    def __init__(self, path: Path) -> None:
        try:
            self.archive = tarfile.open(path, "r:*")
        except (OSError, tarfile.TarError) as e:
            raise ImageError(f"{path} is not a directory or a tar archive: {e}") from None
        self.members = {"/".join(components(m.name, "file name")): m
                        for m in self.archive.getmembers() if m.isreg()}

    def member(self, name: str) -> tarfile.TarInfo:
        """The archive's regular file `name`; ImageError if there is none."""
        try:
            return self.members["/".join(components(name, "file name"))]
        except KeyError:
            raise ImageError(f"the archive has no file {name!r}") from None

    def open(self, name: str):
        """The file `name`, opened for reading."""
        return self.archive.extractfile(self.member(name))

    def exists(self, name: str) -> bool:
        """Is there a file `name`?"""
        return "/".join(components(name, "file name")) in self.members

    def size(self, name: str) -> int:
        """The size of file `name`."""
        return self.member(name).size

    def close(self) -> None:
        """Let go of the archive."""
        self.archive.close()


# -- a directory as an image -------------------------------------------------------------

@contextmanager
def from_tree(tree: Path, name: str, cmd: list[str] | None, comment: str,
              owner: tuple[int, int] | None = (0, 0),
              created: datetime | None = None) -> Iterator[Contents]:
    """A one-layer image of directory `tree`, tagged `name`, running `cmd` by default
    (None: no command), its files owned by `owner` (None: as they are in the tree),
    made at `created` (default: the tree's mtime, so the same tree makes the same
    image): what `docker import` makes of a rootfs tarball."""
    with tempfile.TemporaryFile() as layer:
        pack(tree, layer, owner=owner)
        size = layer.tell()
        layer.seek(0)
        layer_digest = "sha256:" + hashlib.file_digest(layer, "sha256").hexdigest()
        created = created or datetime.fromtimestamp(tree.stat().st_mtime, UTC)
        created = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        settings = {"Env": [f"PATH={PATH}"], **({"Cmd": cmd} if cmd is not None else {})}
        config = json_bytes({
            "created": created, "architecture": cpu().debian, "os": "linux",
            "config": settings,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": created, "created_by": comment}]})
        manifest = json_bytes({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config),
                       "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": size}]})

        def chunks() -> Iterator[bytes]:
            layer.seek(0)
            while chunk := layer.read(CHUNK):
                yield chunk
        yield Contents([Blob(layer_digest, size, chunks), bytes_blob(config),
                        bytes_blob(manifest)], [(name, digest_of(manifest))])


# -- writing an archive ------------------------------------------------------------------

@dataclass
class Saved:
    """An image to write: its manifest (digest and document) and the tags to give it."""

    digest: str
    manifest: dict
    names: list[Reference] = field(default_factory=list)   # tagged: name:tag


def write(out: BinaryIO, images: list[Saved], blob_path: Callable[[str], Path],
          docker: bool = True) -> None:
    """Write `images` to `out` as a tar: an OCI image layout, and with `docker` also
    docker save's manifest.json and repositories, as Docker 25 and later write it. Every
    blob comes from blob_path(digest); entries are sorted and dated 1970, so the same
    images always make the same bytes."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("blobs", "blobs/sha256"):
            archive.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        written = set()
        for image in images:
            for digest in [image.digest, *_parts(image.manifest)]:
                if digest not in written:
                    written.add(digest)
                    _add_file(archive, _blob_path({"digest": digest}), blob_path(digest))
        _add_bytes(archive, "oci-layout", OCI_LAYOUT)
        _add_bytes(archive, "index.json", json_bytes(_index(images, blob_path)))
        if docker:
            _add_bytes(archive, "manifest.json", json_bytes(_docker_manifest(images)))
            repositories = _repositories(images)
            if repositories:
                _add_bytes(archive, "repositories", json_bytes(repositories))


def _parts(manifest: dict) -> list[str]:
    """The digests of a manifest's config and layers, in the manifest's order."""
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def _index(images: list[Saved], blob_path: Callable[[str], Path]) -> dict:
    """index.json: one descriptor of a manifest for each name it has (none: one, unnamed)."""
    descriptors = []
    for image in images:
        descriptor = {"mediaType": image.manifest.get("mediaType", OCI_MANIFEST),
                      "digest": image.digest, "size": blob_path(image.digest).stat().st_size}
        descriptors += [{**descriptor, "annotations": {FULL_NAME: str(name),
                                                       REF_NAME: name.tag}}
                        for name in image.names] or [descriptor]
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}


def _docker_manifest(images: list[Saved]) -> list[dict]:
    """manifest.json: each image's config and layers as paths, and its tags as Docker
    shows them (busybox:latest); Docker writes null for no tags."""
    return [{"Config": _blob_path(image.manifest["config"]),
             "RepoTags": [familiar(name) for name in image.names] or None,
             "Layers": [_blob_path(layer) for layer in image.manifest["layers"]]}
            for image in images]


def _repositories(images: list[Saved]) -> dict:
    """repositories, kept for loaders older than manifest.json: name → tag → top layer."""
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        top = image.manifest["layers"][-1]["digest"].removeprefix("sha256:")
        for name in image.names:
            short = familiar(Reference(name.registry, name.repository, None))
            repositories.setdefault(short, {})[name.tag] = top
    return repositories


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
           size: int = 0) -> tarfile.TarInfo:
    """A tar entry owned by root, dated 1970 (as Docker's), so the bytes never vary."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    archive.addfile(_entry(name, size=len(data)), BytesIO(data))


def _add_file(archive: tarfile.TarFile, name: str, path: Path) -> None:
    with open(path, "rb") as content:
        archive.addfile(_entry(name, size=os.fstat(content.fileno()).st_size), content)
