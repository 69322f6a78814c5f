"""What an image is made of: the JSON documents that name its parts, and their kinds.

Every part of an image is a *blob* named by a *descriptor*: `{"mediaType": …, "digest":
"sha256:…", "size": …}` — what kind of file it is, the sha256 of its bytes, how many
bytes. Three kinds of documents hold descriptors:

- a **manifest** names one image: its `config` (JSON: command, environment, the
  os/architecture it runs on) and its `layers` (tarballs, applied in order);
- an **index** (Docker: a *manifest list*) names one manifest per platform, each
  descriptor with a `platform` such as `{"os": "linux", "architecture": "arm64",
  "variant": "v8"}`: `alpine:latest` is an index, and each machine takes its own;
- Docker's older names for the same things are read too: schema 2 is OCI's ancestor,
  field for field. Schema 1 (before 2017: signed, no config, no digests of layers'
  contents) is refused, as Docker refuses it now.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .. import host
from ..errors import InvalidArgument, RegistryError
from .reference import DIGEST

# The media types of an image's documents: OCI's, and Docker's older twins of them.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"       # +gzip, +zstd when compressed
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
SCHEMA_1 = ("application/vnd.docker.distribution.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws")
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
LAYERS = (OCI_LAYER, OCI_LAYER + "+gzip", OCI_LAYER + "+zstd", DOCKER_LAYER)
# Layers a registry need not hold (they name URLs elsewhere): an archive may carry them.
NONDISTRIBUTABLE = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "application/vnd.oci.image.layer.nondistributable.v1.tar",
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
# The kernel's names for our CPUs → OCI's (which are Debian's): both spellings accepted.
ARCHITECTURES = {name: facts.debian for name, facts in host.CPUS.items()}


@dataclass(frozen=True)
class Manifest:
    """A manifest or an index as it was received: its bytes, their digest, its kind."""

    body: bytes
    digest: str            # sha256 of body: computed here, never taken on trust
    media_type: str
    document: dict


@dataclass(frozen=True)
class Platform:
    """What an image is built for: os/architecture[/variant], as linux/arm64/v8."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        """The platform as Docker writes it: os/arch[/variant]."""
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def matches(self, other: Platform) -> bool:
        """Whether `other` is this, or this leaves its variant open (arm64's v8 may be unsaid)."""
        def variant(p: Platform) -> str | None:
            return p.variant or ("v8" if p.architecture == "arm64" else None)
        return (other.os, other.architecture) == (self.os, self.architecture) and (
            self.variant is None or variant(other) == variant(self))


def parse_platform(text: str) -> Platform:
    """"linux/arm64" or "linux/arm/v7" → Platform; InvalidArgument for anything else."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: write OS/ARCH[/VARIANT], "
                              "like linux/arm64")
    return Platform(parts[0], ARCHITECTURES.get(parts[1], parts[1]), *parts[2:])


def this_platform() -> Platform:
    """This machine's platform: linux/amd64 or linux/arm64 (Debian's names are OCI's)."""
    return Platform("linux", host.cpu().debian)


def platform_of(document: dict) -> Platform:
    """The platform an index entry's `platform`, or an image config, names."""
    return Platform(str(document.get("os")), str(document.get("architecture")),
                    document.get("variant"))


def parse_json(body: bytes, what: str) -> dict:
    """The JSON object in `body`; RegistryError if it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RegistryError(f"{what}: not a JSON object")
    return document


def is_descriptor(blob: object) -> bool:
    """Whether `blob` names a blob as we need: a media type, a sha256 digest, a size."""
    return (isinstance(blob, dict) and isinstance(blob.get("mediaType"), str)
            and isinstance(blob.get("digest"), str) and bool(DIGEST.fullmatch(blob["digest"]))
            and isinstance(blob.get("size"), int) and blob["size"] >= 0)


def entry_for(entries: list[dict], wanted: Platform) -> tuple[dict | None, str]:
    """An index's entry for platform `wanted` (None if it has none), and the
    platforms it offers, for the message that says so."""
    for entry in entries:
        if wanted.matches(platform_of(entry.get("platform") or {})):
            return entry, ""
    return None, ", ".join(str(platform_of(e.get("platform") or {})) for e in entries)


def choose(index: Manifest, wanted: Platform, name: str) -> dict:
    """The index's descriptor for platform `wanted`; RegistryError naming those it has."""
    entries = index.document.get("manifests")
    entries = [e for e in entries if is_descriptor(e)] if isinstance(entries, list) else []
    entry, offered = entry_for(entries, wanted)
    if entry is None:
        raise RegistryError(f"{name} has no {wanted} image (only {offered or 'none'}): "
                            "choose one with --platform")
    return entry


def image_parts(manifest: Manifest, name: str) -> tuple[dict, list[dict]]:
    """The config's and the layers' descriptors, once the manifest is one we can use."""
    document, kind = manifest.document, manifest.media_type
    if kind in SCHEMA_1 or document.get("schemaVersion") == 1:
        raise RegistryError(f"{name}: schema 1 is deprecated: a manifest format of before "
                            "2017, which Docker no longer pulls either; push the image again")
    if kind not in MANIFESTS:
        raise RegistryError(f"{name}: unknown manifest type {kind or 'none'!r}")
    config, layers = document.get("config"), document.get("layers")
    if not isinstance(layers, list) or not all(map(is_descriptor, [config, *layers])):
        raise RegistryError(f"{name}: the manifest has no well-formed config and layers")
    if config["mediaType"] not in CONFIGS:
        raise RegistryError(f"{name} is not a container image: its config is "
                            f"{config['mediaType']}")
    for layer in layers:
        if layer["mediaType"] not in LAYERS:
            raise RegistryError(f"{name}: unknown layer type {layer['mediaType']}")
    return config, layers


def check_platform(config: bytes, wanted: Platform, name: str) -> None:
    """RegistryError unless the image config says it is for platform `wanted`."""
    built_for = platform_of(parse_json(config, name))
    if not wanted.matches(built_for):
        raise RegistryError(f"{name} is for {built_for}, not {wanted}")
