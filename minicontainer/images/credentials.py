"""Where `minicontainer login` keeps a registry login for later pulls, readable only by you.

The file is `~/.config/minicontainer/auth.json` (`$XDG_CONFIG_HOME` if set; root's is
under /root), in the format Docker's config.json and Podman's auth.json use:
`{"auths": {"ghcr.io": {"auth": base64("user:password")}}}`. Base64 is not encryption:
anyone who can read the file has the password, which is why it is created with mode
0600 (only its owner reads it) in a directory of mode 0700, never widened afterwards.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from .reference import DOCKER_HUB, DOCKER_HUB_ALIASES


def auth_file() -> Path:
    """The file logins are kept in: $XDG_CONFIG_HOME/minicontainer/auth.json."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "minicontainer" / "auth.json"


def registry_key(registry: str) -> str:
    """The name a login is filed under: `https://index.docker.io/v1/` → `docker.io`."""
    host = registry.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def saved(registry: str) -> tuple[str, str] | None:
    """(user, password) saved for `registry`, or None if there is no login for it."""
    try:
        auths = json.loads(auth_file().read_text()).get("auths", {})
    except FileNotFoundError:
        return None
    entry = auths.get(registry_key(registry))
    if not entry:
        return None
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return user, password


def save(registry: str, user: str, password: str) -> Path:
    """File the login for `registry` (replacing an older one); the file written."""
    path = auth_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        document = {}
    secret = base64.b64encode(f"{user}:{password}".encode()).decode()
    document.setdefault("auths", {})[registry_key(registry)] = {"auth": secret}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)        # left by a crashed login of the same pid
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from birth
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=1)
    os.replace(temporary, path)          # readers see the old file or the new, never half
    return path
