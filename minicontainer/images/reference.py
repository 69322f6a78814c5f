"""Image references: what `busybox`, `alpine:3.19` or `ghcr.io/o/app@sha256:…` name.

A reference says where an image lives and which one: `[registry/]repository[:tag]
[@digest]`. Docker fills in what is left out: the registry `docker.io` (Docker Hub),
the `library/` namespace of its official images, and the tag `latest`, so `busybox`
means `docker.io/library/busybox:latest`. The first part is a registry only if it
looks like a host name (it has a `.` or a `:port`, or is `localhost`). A tag can be
moved to another image at any time; a digest (`@sha256:` and 64 hex digits, the
hash of the manifest's bytes) names exactly one image, forever. The grammar is
Docker's (github.com/distribution/reference), which is why these checks look fussy:
a name the registry would refuse is refused here first, with a line saying why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

DEFAULT_REGISTRY = DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io"}   # its other names
OFFICIAL = "library/"              # Docker Hub's namespace for its official images
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
REGISTRY = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
EXAMPLE = "e.g. alpine, alpine:3.19, ghcr.io/owner/app:v1 or busybox@sha256:<64 hex>"


@dataclass(frozen=True)
class Reference:
    """An image reference with Docker's defaults filled in."""

    registry: str                  # docker.io, or a host[:port] such as 127.0.0.1:5000
    repository: str                # library/busybox, owner/app
    tag: str | None                # None only when a digest names the image
    digest: str | None = None      # sha256:…, the manifest's digest

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest: where the image's blobs live."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        """The whole reference: registry/repository[:tag][@digest]."""
        tag = f":{self.tag}" if self.tag else ""
        return self.name + tag + (f"@{self.digest}" if self.digest else "")


def parse(ref: str) -> Reference:
    """Docker's reading of `ref`; InvalidArgument, in one line, for what Docker refuses."""
    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid image reference {ref!r}: {why} ({EXAMPLE})")
    if not isinstance(ref, str) or not ref:
        raise refuse("it is empty")
    rest, _, digest = ref.partition("@")
    if digest and not DIGEST.fullmatch(digest):
        raise refuse("a digest is sha256: and 64 lowercase hex digits")
    name, tag = rest, None
    if ":" in rest.rpartition("/")[2]:             # a colon after the last slash: a tag
        name, _, tag = rest.rpartition(":")
        if not TAG.fullmatch(tag):
            raise refuse("a tag is up to 128 letters, digits, _ . and -, not starting with . or -")
    registry, repository = _split_registry(name)
    if not REGISTRY.fullmatch(registry):
        raise refuse(f"{registry!r} is not a registry's host[:port]")
    if repository.lower() != repository:
        raise refuse("repository names must be lowercase")
    if not REPOSITORY.fullmatch(repository):
        raise refuse("a repository is lowercase letters and digits, parts joined by "
                     ". _ __ - and separated by /")
    if len(f"{registry}/{repository}") > 255:
        raise refuse("the name is longer than 255 characters")
    return Reference(registry, repository, tag or (None if digest else DEFAULT_TAG),
                     digest or None)


def familiar(reference: Reference) -> str:
    """The short name Docker shows for `reference`: docker.io/library/busybox:latest →
    busybox:latest, docker.io/user/app:1 → user/app:1 (distribution's FamiliarString)."""
    name = reference.name
    if reference.registry == DOCKER_HUB:
        name = reference.repository.removeprefix(OFFICIAL) if reference.repository.count(
            "/") == 1 else reference.repository
    tag = f":{reference.tag}" if reference.tag else ""
    return name + tag + (f"@{reference.digest}" if reference.digest else "")


def _split_registry(name: str) -> tuple[str, str]:
    """The registry part of a name, as Docker decides it (distribution's splitDockerDomain)."""
    first, slash, rest = name.partition("/")
    is_host = slash and (any(c in first for c in ".:") or first == "localhost"
                         or first.lower() != first)
    registry, repository = (first, rest) if is_host else (DEFAULT_REGISTRY, name)
    if registry == "index.docker.io":              # Docker Hub's old name
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = OFFICIAL + repository
    return registry, repository
