"""Pull an image from a registry: the registry HTTP API v2 (the OCI distribution spec).

In a registry an image is a few files, each named by the sha256 digest of its bytes: a
*manifest* (JSON: which config, which layers), a *config* (JSON: the command, the
environment, the CPU it is for) and *layers* (tarballs, usually gzipped). A digest names
the content itself: whoever sends us the bytes, we hash them and keep them only if they
match. So the digest of one manifest vouches for the whole image, wherever it came from.

The steps, as you would take them with curl (Docker Hub's API is registry-1.docker.io):

1. `curl -i https://registry-1.docker.io/v2/` — is this a v2 registry, and may we come
   in? 200: yes. 401 with `WWW-Authenticate: Bearer realm="https://auth.docker.io/token",
   service="registry.docker.io"`: first get a token from that realm.
2. `curl 'https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/
   alpine:pull'` (`-u user:password` if we have a login) → `{"token": "…"}`; every later
   request carries `Authorization: Bearer …`. A registry that answers `Basic realm=…`
   instead wants the login itself each time: `Authorization: Basic base64(user:password)`.
3. `curl -H 'Accept: application/vnd.oci.image.index.v1+json, …' …/v2/library/alpine/
   manifests/latest`. A multi-platform image answers with an *index* (Docker says
   manifest list): one manifest per os/architecture. Choose this machine's
   (linux/amd64, linux/arm64) and GET that manifest by its digest.
4. `curl …/v2/library/alpine/blobs/sha256:…` for the config and for each layer, hashed
   on the way in. The registry may answer 307 with an address in blob storage (S3, a
   CDN): follow it WITHOUT the Authorization header, for the token is the registry's.
5. Keep the manifest, and name the image: `docker.io/library/alpine:latest` → its digest.

Plain HTTP only to a registry on this machine (localhost, 127.0.0.1), as Docker allows:
anywhere else, someone on the way could read the password and change the manifest.

Why httpx and not urllib: urllib follows redirects by itself and forwards an
Authorization header to wherever it is sent; httpx lets us turn automatic redirects off
and take step 4's redirect ourselves, in plain view. It also streams and has timeouts.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import re
import ssl
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import DigestMismatch, InvalidArgument, RegistryError
from . import credentials as logins
from .manifests import (INDEXES, MANIFESTS, Manifest, check_platform, choose, image_parts,
                        parse_json, parse_platform, this_platform)
from .reference import DIGEST, DOCKER_HUB, REGISTRY, parse

ACCEPTED = (*INDEXES, *MANIFESTS)          # step 3: every kind of manifest we can read
API_HOSTS = {DOCKER_HUB: "registry-1.docker.io"}   # the name people use → where the API is
MAX_JSON = 4 * 1024 * 1024      # a manifest or config is JSON; more than 4 MiB is not one
MAX_REDIRECTS = 5

Progress = Callable[[str, int], Callable[[int], None]]   # (digest, size) → on_bytes(count)


class Store(Protocol):
    """What pull needs of an image store (images/store.py is one)."""

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob with this digest already."""

    def ingest(self, digest: str, size: int | None, chunks: Iterable[bytes]) -> Path:
        """Write a blob, checking its sha256 and size; DigestMismatch and nothing kept if not."""

    def add_image(self, name: str, manifest_digest: str) -> None:
        """Name the image whose manifest has this digest."""


def pull(ref: str, store: Store, platform: str | None = None, progress: Progress | None = None,
         credentials: tuple[str, str] | None = None) -> str:
    """Download image `ref` into `store`, every blob verified; the digest of its manifest.
    Without `credentials`, the login `minicontainer login` saved for that registry, if any."""
    reference = parse(ref)
    wanted = parse_platform(platform) if platform else this_platform()
    login = credentials or logins.saved(reference.registry)
    repository = reference.repository
    with Registry(reference.registry, login, f"repository:{repository}:pull") as registry, \
            store.adding():        # a prune meanwhile would take blobs not yet tagged
        registry.ping()                                                        # steps 1-2
        manifest = registry.manifest(repository, reference.digest or reference.tag)  # 3
        if manifest.media_type in INDEXES:
            entry = choose(manifest, wanted, reference.name)
            manifest = registry.manifest(repository, entry["digest"])
        config, layers = image_parts(manifest, reference.name)
        config_body = registry.config(repository, config)                       # step 4
        if platform:      # Docker, too, pulls another CPU's image unless --platform is said
            check_platform(config_body, wanted, reference.name)
        keep(store, config["digest"], config_body)
        for layer in layers:
            if not store.has_blob(layer["digest"]):
                with contextlib.closing(registry.layer(repository, layer, progress)) as chunks:
                    store.ingest(layer["digest"], layer["size"], chunks)
        keep(store, manifest.digest, manifest.body)                              # step 5
        store.add_image(str(reference), manifest.digest)
    return manifest.digest


def login(registry: str, user: str, password: str) -> Path:
    """Try a login on `registry` (as `docker login` does) and save it; the file it is in."""
    name = logins.registry_key(registry)
    if not REGISTRY.fullmatch(name):
        raise InvalidArgument(f"invalid registry {registry!r}: give its host[:port]")
    with Registry(name, (user, password)) as session:
        session.ping()
    return logins.save(name, user, password)


class Registry:
    """One registry, spoken to over HTTP(S), with the authorization it granted us."""

    def __init__(self, name: str, login: tuple[str, str] | None = None, scope: str = "") -> None:
        """Talk to registry `name`, with `login` if given, for `scope`."""
        api = API_HOSTS.get(name, name)
        self.name, self.login, self.scope = name, login, scope
        self.base = f"{scheme_for(api)}://{api}/v2/"
        self.authorization: str | None = None       # "Bearer …" or "Basic …", once asked
        self.client = httpx.Client(follow_redirects=False, verify=ssl.create_default_context(),
                                   timeout=httpx.Timeout(30, connect=10))

    def __enter__(self) -> Registry:
        """The registry, its connection open."""
        return self

    def __exit__(self, *exc) -> None:
        """Close the connection."""
        self.client.close()

    def ping(self) -> None:
        """Step 1: GET /v2/ — a v2 registry answers 200, or 401 and how to log in (step 2)."""
        response = self.get("")
        try:
            self.check(response, f"{self.name}/v2/")
        finally:
            response.close()

    def manifest(self, repository: str, tag_or_digest: str) -> Manifest:
        """Step 3: a manifest or index, by tag or by digest (then checked against it)."""
        what = f"{self.name}/{repository}{'@' if ':' in tag_or_digest else ':'}{tag_or_digest}"
        response = self.get(f"{repository}/manifests/{tag_or_digest}", accept=ACCEPTED)
        body = self.read_json(response, what)
        digest = digest_of(body)
        said = response.headers.get("docker-content-digest", digest)     # the registry's word
        if (DIGEST.fullmatch(tag_or_digest) and tag_or_digest != digest) or (
                said.startswith("sha256:") and said != digest):
            raise DigestMismatch(f"{what}: the manifest received has digest {digest}")
        document = parse_json(body, what)
        media_type = document.get("mediaType") or response.headers.get("content-type", "")
        return Manifest(body, digest, str(media_type).split(";")[0].strip(), document)

    def config(self, repository: str, blob: dict) -> bytes:
        """Step 4 for the config: small JSON, read whole, checked against its digest and size."""
        response = self.get(f"{repository}/blobs/{blob['digest']}")
        body = self.read_json(response, blob["digest"])
        if (digest_of(body), len(body)) != (blob["digest"], blob["size"]):
            raise DigestMismatch(f"the config received is not {blob['digest']} "
                                 f"({blob['size']} bytes)")
        return body

    def layer(self, repository: str, blob: dict, progress: Progress | None) -> Iterator[bytes]:
        """Step 4 for a layer: its bytes as they arrive, hashed on the way; DigestMismatch
        after the last unless they are exactly the `size` bytes of `digest` (the store
        that writes them checks again, and keeps nothing of a blob that fails)."""
        digest, size = blob["digest"], blob["size"]
        on_bytes = progress(digest, size) if progress else (lambda count: None)
        hasher, received = hashlib.sha256(), 0
        response = self.get(f"{repository}/blobs/{digest}")
        try:
            self.check(response, digest)
            for chunk in response.iter_bytes(1024 * 1024):
                received += len(chunk)
                if received > size:
                    raise DigestMismatch(f"{digest}: more than the {size} bytes it should be")
                hasher.update(chunk)
                on_bytes(len(chunk))
                yield chunk
        finally:
            response.close()
        if received != size or "sha256:" + hasher.hexdigest() != digest:
            raise DigestMismatch(f"the layer received ({received} bytes, sha256:"
                                 f"{hasher.hexdigest()}) is not {digest} ({size} bytes)")

    def get(self, path: str, accept: tuple[str, ...] = ()) -> httpx.Response:
        """GET /v2/`path`, logging in when asked (steps 1-2) and following redirects
        (step 4); the answer is streamed, so close it."""
        url = self.base + path
        for _ in range(MAX_REDIRECTS):
            response = self.send(url, accept)
            if response.status_code == 401 and self.is_ours(url):
                response.close()
                self.authorize(response.headers.get("www-authenticate", ""))
                response = self.send(url, accept)
            if not response.is_redirect:
                return response
            response.close()
            url = urljoin(url, response.headers["location"])
        raise RegistryError(f"{self.name}: more than {MAX_REDIRECTS} redirects for /v2/{path}")

    def send(self, url: str, accept: tuple[str, ...]) -> httpx.Response:
        """One GET; it carries our Authorization only if it goes to the registry itself."""
        check_transport(url)
        headers = {"Accept": ", ".join(accept)} if accept else {}
        if self.authorization and self.is_ours(url):
            headers["Authorization"] = self.authorization
        request = self.client.build_request("GET", url, headers=headers)
        try:
            return self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise RegistryError(f"cannot reach {urlsplit(url).netloc}: {e}") from e

    def is_ours(self, url: str) -> bool:
        """Whether `url` is on the registry (same scheme, host and port), not elsewhere."""
        return urlsplit(url)[:2] == urlsplit(self.base)[:2]

    def authorize(self, challenge: str) -> None:
        """Step 2: answer a 401's WWW-Authenticate, with a Bearer token or a Basic login."""
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer":
            self.authorization = f"Bearer {self.token(params)}"
        elif scheme == "basic" and self.login:
            user_password = ":".join(self.login).encode()
            self.authorization = f"Basic {base64.b64encode(user_password).decode()}"
        elif scheme == "basic":
            raise RegistryError(f"{self.name} needs a login: minicontainer login {self.name}")
        else:
            raise RegistryError(f"{self.name} asks for authentication we do not speak: "
                                f"{challenge or 'none named'}")

    def token(self, params: dict[str, str]) -> str:
        """Step 2 with Bearer: ask the challenge's realm for a token for our scope."""
        realm = params.get("realm", "")
        check_transport(realm)
        query = {"service": params.get("service"), "scope": params.get("scope") or self.scope}
        try:
            response = self.client.get(realm, params={k: v for k, v in query.items() if v},
                                       auth=self.login)
        except httpx.HTTPError as e:
            raise RegistryError(f"cannot reach {self.name}'s token service {realm}: {e}") from e
        if response.status_code != 200:
            self.check(response, f"a token from {realm}")
        token = parse_json(response.content, realm)
        if not (token.get("token") or token.get("access_token")):
            raise RegistryError(f"{realm} answered without a token")
        return token.get("token") or token["access_token"]

    def read_json(self, response: httpx.Response, what: str) -> bytes:
        """The whole body of a 200 answer, at most MAX_JSON bytes (a manifest, a config)."""
        try:
            self.check(response, what)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JSON:
                    raise RegistryError(f"{what}: more than {MAX_JSON} bytes of JSON")
            return bytes(body)
        finally:
            response.close()

    def check(self, response: httpx.Response, what: str) -> None:
        """RegistryError in one line, saying why, unless the answer is 200 OK."""
        status = response.status_code
        if status == 200:
            return
        detail = error_detail(response)
        if status == 401 and self.login:
            raise RegistryError(f"{self.name} refused the login of {self.login[0]!r} for "
                                f"{what}: wrong password, or no access ({detail})")
        if status == 401:
            raise RegistryError(f"{what}: access denied; it does not exist or needs a login: "
                                f"minicontainer login {self.name} ({detail})")
        if status == 404:
            raise RegistryError(f"{what}: not found ({detail})")
        raise RegistryError(f"{self.name} answered {status} for {what} ({detail})")


def error_detail(response: httpx.Response) -> str:
    """The registry's own words for an error: its JSON `errors`, else the status line."""
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError, ValueError, LookupError,
                             TypeError, AttributeError):
        body = b""
        for chunk in response.iter_bytes():      # a few lines of JSON; no more than 64 KiB
            body += chunk
            if len(body) > 65536:
                break
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    return f"HTTP {response.status_code} {response.reason_phrase}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"` →
    ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"})."""
    scheme, _, rest = header.strip().partition(" ")
    pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]*))', rest)
    return scheme.lower(), {key.lower(): quoted or bare for key, quoted, bare in pairs}


def scheme_for(host: str) -> str:
    """"http" for a registry on this machine (localhost, 127.0.0.1), else "https"."""
    return "http" if is_this_machine(urlsplit(f"//{host}").hostname) else "https"


def check_transport(url: str) -> None:
    """RegistryError unless `url` is HTTPS, or plain HTTP to this machine (as Docker allows)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_this_machine(parts.hostname)):
        return
    raise RegistryError(f"refusing {url or 'an empty address'}: only HTTPS, or plain HTTP "
                        "to a registry on this machine (localhost, 127.0.0.1)")


def is_this_machine(hostname: str | None) -> bool:
    """Whether `hostname` is this machine: localhost or a loopback address."""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname or "").is_loopback
    except ValueError:
        return False


def digest_of(data: bytes) -> str:
    """The name a registry gives `data`: "sha256:" and the hex SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def keep(store: Store, digest: str, body: bytes) -> None:
    """Put a small blob, already read and verified, into the store unless it is there."""
    if not store.has_blob(digest):
        store.ingest(digest, len(body), [body])
