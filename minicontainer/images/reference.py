"""What `alpine`, `ghcr.io/org/app:1.2` and `alpine@sha256:…` name: an image reference.

A reference is up to four parts, `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`, and Docker
fills in what is left out, so the short names students type mean what they expect:

- no registry → `docker.io` (Docker Hub); the first part is a registry only if it looks
  like a host: it has a `.` or a `:port`, or it is `localhost` (`user/app` is a repository);
- a Docker Hub repository with one part → `library/…` (the official images):
  `alpine` is `docker.io/library/alpine`;
- no tag and no digest → the tag `latest`. A digest (`@sha256:` and 64 hex digits) names
  one manifest for ever; a tag is a name the registry may move to another one tomorrow.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io"}
# The grammar of docker/distribution's reference package, in a few lines:
HOST = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?")
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """An image reference with Docker's defaults filled in (parse builds one)."""

    registry: str           # docker.io, ghcr.io, 127.0.0.1:5000
    repository: str         # library/alpine
    tag: str | None         # latest (None when only a digest was given)
    digest: str | None      # sha256:… (None when pulled by tag)

    @property
    def name(self) -> str:
        """The full name, as `docker.io/library/alpine:latest` (`@sha256:…` for a digest)."""
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse(ref: str) -> Reference:
    """`alpine` → Reference("docker.io", "library/alpine", "latest", None); InvalidArgument
    for what no registry could hold."""
    rest, at, digest = ref.partition("@")
    if at and not DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid reference {ref!r}: a digest is sha256: and 64 "
                              "lowercase hex digits")
    first, slash, after = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, after
    else:
        registry, path = DOCKER_HUB, rest
    path, colon, tag = path.partition(":")
    registry = DOCKER_HUB if registry in DOCKER_HUB_ALIASES else registry
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    check(ref, registry, path, tag if colon else None)
    return Reference(registry, path, tag if colon else (None if at else "latest"),
                     digest if at else None)


def check(ref: str, registry: str, repository: str, tag: str | None) -> None:
    """InvalidArgument, saying which part is wrong, unless every part is well formed."""
    if not HOST.fullmatch(registry):
        raise InvalidArgument(f"invalid reference {ref!r}: {registry!r} is not a host[:port]")
    if repository.lower() != repository:
        raise InvalidArgument(f"invalid reference {ref!r}: repository names are lowercase")
    if not all(COMPONENT.fullmatch(part) for part in repository.split("/")):
        raise InvalidArgument(f"invalid reference {ref!r}: a repository is lowercase "
                              "letters and digits, separated by /, ., _ or -")
    if tag is not None and not TAG.fullmatch(tag):
        raise InvalidArgument(f"invalid reference {ref!r}: a tag is up to 128 letters, "
                              "digits, _, . and -")
