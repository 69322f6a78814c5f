"""Pulling images: the registry HTTP API v2 against a real registry on 127.0.0.1.

The registry is the CNCF distribution registry (Debian's `docker-registry`), started
here three times over one storage directory: open, with basic auth (htpasswd), and with
Bearer tokens from a token service of ours whose JWTs the registry itself verifies. The
images are built offline with umoci and pushed with skopeo, as a user would. What a
filesystem-backed registry never does (redirect to blob storage, send schema 1 or a
lying manifest) is played by a small fake registry. Nothing leaves this machine.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import stat
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from minicontainer.errors import DigestMismatch, InvalidArgument, RegistryError
from minicontainer.images import credentials, registry
from minicontainer.images.manifests import (OCI_INDEX, OCI_MANIFEST, Platform, parse_platform,
                                            this_platform)
from minicontainer.images.reference import Reference, parse
from minicontainer.images.store import Store

TOOLS = ["docker-registry", "skopeo", "umoci"]
needs_tools = pytest.mark.skipif(
    not all(map(shutil.which, TOOLS)),
    reason="needs docker-registry, skopeo and umoci (Debian packages; `make test` installs them)")
USER, PASSWORD = "student", "s3cret"
HERE = this_platform().architecture
OTHER = {"amd64": "arm64", "arm64": "amd64"}[HERE]


@pytest.fixture
def store(tmp_path) -> Store:
    """A store of our own, never the machine's."""
    return Store(tmp_path / "store")


def blob(store: Store, digest: str) -> bytes:
    """A blob's bytes, from the store."""
    return store.blob_path(digest).read_bytes()


@pytest.fixture(autouse=True)
def own_logins(tmp_path, monkeypatch):
    """Saved logins go to a temporary ~/.config, never the real one."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


# --- real servers on 127.0.0.1 ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def docker_registry(directory: Path, storage: Path, auth: dict | None = None):
    """A distribution registry on 127.0.0.1:PORT serving `storage`; its address."""
    port = free_port()
    config = {"version": 0.1, "log": {"level": "warn"}, "http": {"addr": f"127.0.0.1:{port}"},
              "storage": {"filesystem": {"rootdirectory": str(storage)}}}
    if auth:
        config["auth"] = auth
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yml").write_text(json.dumps(config))    # JSON is YAML too
    log = open(directory / "registry.log", "wb")
    server = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert server.poll() is None and time.monotonic() < deadline, (
                f"the registry did not start: {(directory / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]):
    """An http.server of ours on 127.0.0.1, in a thread; its address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


# --- images built offline and pushed with skopeo ----------------------------------------

def umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def add_layer(layout: Path, tag: str, files: dict[str, bytes], work: Path) -> None:
    """One more layer on image `tag`, holding `files`."""
    bundle = work / f"bundle-{tag}"
    umoci("unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle))
    for name, content in files.items():
        (bundle / "rootfs" / name).write_bytes(content)
    umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle)


def build_images(layout: Path, work: Path) -> None:
    """small (two layers), one image per CPU and an index of both, fragile (for tampering)."""
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:small")
    add_layer(layout, "small", {"hello": b"hello\n"}, work)
    add_layer(layout, "small", {"motd": b"a second layer\n"}, work)
    umoci("config", "--image", f"{layout}:small", "--config.cmd", "/hello")
    for cpu in ("amd64", "arm64"):
        umoci("new", "--image", f"{layout}:{cpu}")
        add_layer(layout, cpu, {"cpu": cpu.encode()}, work)
        umoci("config", "--image", f"{layout}:{cpu}", "--os", "linux", "--architecture", cpu)
    umoci("new", "--image", f"{layout}:fragile")
    add_layer(layout, "fragile", {"noise": os.urandom(256 * 1024)}, work)
    add_index(layout, "multi", {"amd64": None, "arm64": "v8"})


def add_index(layout: Path, tag: str, cpus: dict[str, str | None]) -> None:
    """An OCI index of the images tagged with these CPUs' names, tagged `tag` (by hand:
    umoci makes no index)."""
    index = json.loads((layout / "index.json").read_text())
    tagged = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    entries = [{**{k: v for k, v in tagged[cpu].items() if k != "annotations"},
                "platform": {"os": "linux", "architecture": cpu, **({"variant": v} if v else {})}}
               for cpu, v in cpus.items()]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": entries}).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(body)
    index["manifests"].append({"mediaType": OCI_INDEX, "digest": f"sha256:{digest}",
                               "size": len(body),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps(index))


def skopeo_copy(source: str, destination: str, work: Path, *options: str) -> None:
    # As root, skopeo keeps a cache of where blobs are in /var/lib/containers; as a
    # "rootless" user it keeps it under XDG_DATA_HOME: here, in our temporary directory.
    env = {**os.environ, "_CONTAINERS_ROOTLESS_UID": "1000", "XDG_DATA_HOME": str(work),
           "HOME": str(work)}
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                    *options, source, f"docker://{destination}"],
                   check=True, capture_output=True, env=env)


@pytest.fixture(scope="session")
def storage(tmp_path_factory) -> Path:
    """A registry's storage holding the test images, pushed through a real registry."""
    work = tmp_path_factory.mktemp("registry-images")
    if not all(map(shutil.which, TOOLS)):
        pytest.skip("needs docker-registry, skopeo and umoci")
    layout, storage = work / "layout", work / "storage"
    build_images(layout, work)
    with docker_registry(work / "push", storage) as address:
        skopeo_copy(f"oci:{layout}:small", f"{address}/small:1", work)
        skopeo_copy(f"oci:{layout}:small", f"{address}/docker/small:1", work, "--format", "v2s2")
        skopeo_copy(f"oci:{layout}:{OTHER}", f"{address}/foreign:1", work)
        skopeo_copy(f"oci:{layout}:multi", f"{address}/multi:latest", work, "--all")
        skopeo_copy(f"oci:{layout}:multi", f"{address}/multi-docker:latest", work, "--all",
                    "--format", "v2s2")
        skopeo_copy(f"oci:{layout}:fragile", f"{address}/fragile:1", work)
    return storage


@pytest.fixture(scope="session")
def open_registry(storage, tmp_path_factory):
    with docker_registry(tmp_path_factory.mktemp("open"), storage) as address:
        yield address


@pytest.fixture(scope="session")
def basic_registry(storage, tmp_path_factory):
    if not shutil.which("htpasswd"):
        pytest.skip("needs htpasswd (apache2-utils) to write the bcrypt password file")
    directory = tmp_path_factory.mktemp("basic")
    passwords = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                               capture_output=True, text=True).stdout
    (directory / "htpasswd").write_text(passwords)
    auth = {"htpasswd": {"realm": "test", "path": str(directory / "htpasswd")}}
    with docker_registry(directory, storage, auth) as address:
        yield address


# --- Bearer tokens: a token service of ours, the real registry checks its signature -----

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_der: bytes) -> str:
    """The registry's (libtrust's) name for a key: base32 of its SHA-256, grouped by 4."""
    encoded = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


class TokenService(Quiet):
    """GET /token?service=…&scope=… with the right basic auth → a signed JWT (RS256)."""

    key: Path
    kid: str
    scopes: list[str] = []

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self.answer(401, b'{"details": "wrong user name or password"}')
        scope = query.get("scope", [""])[0]
        TokenService.scopes.append(scope)
        self.answer(200, json.dumps({"token": self.jwt(scope), "expires_in": 300}).encode(),
                    {"Content-Type": "application/json"})

    def jwt(self, scope: str) -> str:
        now = int(time.time())
        access = []
        if scope:
            kind, name, actions = scope.split(":")
            access = [{"type": kind, "name": name, "actions": actions.split(",")}]
        claims = {"iss": "test-issuer", "sub": USER, "aud": "test-registry", "iat": now,
                  "nbf": now - 10, "exp": now + 300, "jti": os.urandom(8).hex(),
                  "access": access}
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signed.encode(), capture_output=True, check=True).stdout
        return f"{signed}.{b64url(signature)}"


@pytest.fixture(scope="session")
def token_registry(storage, tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make the token service's key and certificate")
    directory = tmp_path_factory.mktemp("token")
    key, certificate = directory / "token.key", directory / "token.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=token", "-keyout", key, "-out", certificate],
                   check=True, capture_output=True)
    public = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                            check=True, capture_output=True).stdout
    TokenService.key, TokenService.kid = key, key_id(public)
    with serving(TokenService) as service:
        auth = {"token": {"realm": f"http://{service}/token", "service": "test-registry",
                          "issuer": "test-issuer", "rootcertbundle": str(certificate)}}
        with docker_registry(directory, storage, auth) as address:
            yield address


def pushed_digest(address: str, repository: str, tag: str) -> str:
    """The digest of what skopeo pushed, as the registry has it."""
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{address}/{repository}:{tag}"],
                         check=True, capture_output=True).stdout
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def file_in_layers(store: Store, manifest_digest: str) -> dict:
    manifest = json.loads(blob(store, manifest_digest))
    return {"config": json.loads(blob(store, manifest["config"]["digest"])),
            "layers": [layer["digest"] for layer in manifest["layers"]]}


# --- references and platforms: Docker's defaults ----------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("alpine:3.19", Reference("docker.io", "library/alpine", "3.19", None)),
    ("user/app", Reference("docker.io", "user/app", "latest", None)),
    ("index.docker.io/alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("localhost:5000/app", Reference("localhost:5000", "app", "latest", None)),
    ("ghcr.io/org/team/app:v1", Reference("ghcr.io", "org/team/app", "v1", None)),
    ("alpine@sha256:" + "a" * 64,
     Reference("docker.io", "library/alpine", None, "sha256:" + "a" * 64)),
    ("127.0.0.1:5000/app:1@sha256:" + "b" * 64,
     Reference("127.0.0.1:5000", "app", "1", "sha256:" + "b" * 64)),
])
def test_a_short_name_gets_dockers_defaults(text, expected):
    assert parse(text) == expected


def test_a_references_name_is_written_in_full():
    assert str(parse("alpine")) == "docker.io/library/alpine:latest"
    assert str(parse("localhost:5000/app@sha256:" + "c" * 64)) == (
        "localhost:5000/app@sha256:" + "c" * 64)


@pytest.mark.parametrize("text, reason", [
    ("Alpine", "lowercase"), ("alpine:", "a tag is"), ("a//b", "a repository is"),
    ("alpine@sha256:abc", "a digest is"), ("alpine@md5:" + "a" * 32, "a digest is"),
    ("ex ample.com/app", "is not a registry's host"), ("alpine:a:b", "a repository is"),
])
def test_a_malformed_reference_is_refused_with_the_reason(text, reason):
    with pytest.raises(InvalidArgument, match=reason):
        parse(text)


def test_platforms_are_written_os_arch_variant():
    assert parse_platform("linux/arm64") == Platform("linux", "arm64")
    assert parse_platform("linux/aarch64/v8") == Platform("linux", "arm64", "v8")
    assert parse_platform("linux/x86_64") == Platform("linux", "amd64")
    assert Platform("linux", "arm64", "v8").matches(Platform("linux", "arm64"))
    assert not Platform("linux", "arm", "v7").matches(Platform("linux", "arm", "v6"))
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(InvalidArgument, match="OS/ARCH"):
            parse_platform(bad)


def test_plain_http_only_to_a_registry_on_this_machine():
    # The decision, checked before any connection: no network is touched here.
    assert registry.scheme_for("127.0.0.1:5000") == "http"
    assert registry.scheme_for("localhost") == "http"
    assert registry.scheme_for("[::1]:5000") == "http"
    assert registry.scheme_for("registry.example.com:5000") == "https"
    assert registry.scheme_for("127.0.0.1.example.com") == "https"
    assert registry.Registry("docker.io").base == "https://registry-1.docker.io/v2/"
    registry.check_transport("https://registry.example.com/v2/")
    registry.check_transport("http://127.0.0.1:5000/v2/")
    for url in ("http://registry.example.com/v2/", "http://10.0.0.1/token", "ftp://x/", ""):
        with pytest.raises(RegistryError, match="only HTTPS"):
            registry.check_transport(url)


def test_a_challenge_is_read_into_its_scheme_and_parameters():
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull,push"')
    assert registry.parse_challenge(header) == ("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull,push"})
    assert registry.parse_challenge('Basic realm="test"') == ("basic", {"realm": "test"})


# --- pulling from the real registry -----------------------------------------------------

@needs_tools
def test_pull_by_tag_keeps_the_config_every_layer_and_the_manifest(open_registry, store):
    digest = registry.pull(f"{open_registry}/small:1", store)
    assert digest == pushed_digest(open_registry, "small", "1")
    assert store.tags() == {f"{open_registry}/small:1": digest}
    image = file_in_layers(store, digest)
    assert image["config"]["config"]["Cmd"] == ["/hello"]
    assert len(image["layers"]) == 2 and all(map(store.has_blob, image["layers"]))


@needs_tools
def test_pull_a_docker_schema_2_image(open_registry, store):
    digest = registry.pull(f"{open_registry}/docker/small:1", store)
    manifest = json.loads(blob(store, digest))
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert all(store.has_blob(layer["digest"]) for layer in manifest["layers"])


@needs_tools
def test_pull_by_digest_gets_exactly_that_manifest(open_registry, store):
    digest = pushed_digest(open_registry, "small", "1")
    assert registry.pull(f"{open_registry}/small@{digest}", store) == digest
    assert store.tags() == {f"{open_registry}/small@{digest}": digest}


@needs_tools
def test_a_second_pull_downloads_no_layer_again(open_registry, store):
    downloaded = []

    def progress(digest: str, size: int):
        downloaded.append([digest, size, 0])
        return lambda count: downloaded[-1].__setitem__(2, downloaded[-1][2] + count)
    registry.pull(f"{open_registry}/small:1", store, progress=progress)
    assert len(downloaded) == 2 and all(size == got for _, size, got in downloaded)
    downloaded.clear()
    registry.pull(f"{open_registry}/small:1", store, progress=progress)
    assert downloaded == []


@needs_tools
def test_an_image_pulled_by_its_index_digest_is_found_by_that_name(open_registry, store):
    index = pushed_digest(open_registry, "multi", "latest")
    ref = f"{open_registry}/multi@{index}"
    digest = registry.pull(ref, store)
    assert digest != index and store.image(ref).digest == digest
    assert store.tags() == {ref: digest}
    assert file_in_layers(store, digest)["config"]["architecture"] == HERE


@needs_tools
@pytest.mark.parametrize("repository", ["multi", "multi-docker"])
def test_an_index_gives_this_machines_image(open_registry, store, repository):
    digest = registry.pull(f"{open_registry}/{repository}", store)
    config = file_in_layers(store, digest)["config"]
    assert (config["os"], config["architecture"]) == ("linux", HERE)


@needs_tools
@pytest.mark.parametrize("repository", ["multi", "multi-docker"])
def test_platform_chooses_another_cpus_image_from_an_index(open_registry, store, repository):
    digest = registry.pull(f"{open_registry}/{repository}", store, platform=f"linux/{OTHER}")
    assert file_in_layers(store, digest)["config"]["architecture"] == OTHER


@needs_tools
def test_a_platform_the_index_lacks_is_refused_naming_those_it_has(open_registry, store):
    with pytest.raises(RegistryError, match="no linux/s390x image .*linux/amd64, linux/arm64/v8"):
        registry.pull(f"{open_registry}/multi", store, platform="linux/s390x")
    assert store.tags() == {}


@needs_tools
def test_platform_is_checked_on_a_single_image_too(open_registry, store):
    with pytest.raises(RegistryError, match=f"is for linux/{OTHER}, not linux/{HERE}"):
        registry.pull(f"{open_registry}/foreign:1", store, platform=f"linux/{HERE}")
    registry.pull(f"{open_registry}/foreign:1", store)     # unasked, as Docker: it is pulled


@needs_tools
@pytest.mark.parametrize("name, message", [
    ("small:no-such-tag", "small:no-such-tag: not found .*MANIFEST_UNKNOWN"),
    ("no/such/repository:1", "no/such/repository:1: not found"),
])
def test_a_missing_tag_or_repository_is_one_clear_line(open_registry, store, name, message):
    with pytest.raises(RegistryError, match=message) as caught:
        registry.pull(f"{open_registry}/{name}", store)
    assert "\n" not in str(caught.value)


@needs_tools
@pytest.mark.parametrize("damage", ["one byte changed", "cut short"])
def test_a_corrupted_layer_is_refused_and_nothing_of_it_is_kept(open_registry, storage, store,
                                                                damage):
    digest = pushed_digest(open_registry, "fragile", "1")
    layer = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{open_registry}/fragile:1"], check=True, capture_output=True).stdout)[
        "layers"][0]["digest"]
    data = storage / "docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    original = data.read_bytes()
    try:
        if damage == "one byte changed":
            data.write_bytes(original[:1000] + bytes([original[1000] ^ 1]) + original[1001:])
        else:
            data.write_bytes(original[:-100])
        with pytest.raises(DigestMismatch, match=layer):
            registry.pull(f"{open_registry}/fragile:1", store)
    finally:
        data.write_bytes(original)
    assert store.tags() == {} and not store.has_blob(layer) and not store.has_blob(digest)
    assert list((store.root / "tmp").iterdir()) == []          # no half blob either
    registry.pull(f"{open_registry}/fragile:1", store)       # whole again: it is pulled


@needs_tools
def test_basic_auth_needs_the_right_login(basic_registry, store):
    with pytest.raises(RegistryError, match=f"needs a login: minicontainer login {basic_registry}"):
        registry.pull(f"{basic_registry}/small:1", store)
    with pytest.raises(RegistryError, match="refused the login of 'student'"):
        registry.pull(f"{basic_registry}/small:1", store, credentials=(USER, "wrong"))
    assert store.tags() == {}
    registry.pull(f"{basic_registry}/small:1", store, credentials=(USER, PASSWORD))
    assert list(store.tags()) == [f"{basic_registry}/small:1"]


@needs_tools
def test_bearer_token_from_the_token_service_for_the_repositorys_scope(token_registry, store):
    with pytest.raises(RegistryError, match="needs a login"):
        registry.pull(f"{token_registry}/small:1", store)
    with pytest.raises(RegistryError, match="refused the login of 'student'"):
        registry.pull(f"{token_registry}/small:1", store, credentials=(USER, "wrong"))
    TokenService.scopes.clear()
    digest = registry.pull(f"{token_registry}/multi", store, credentials=(USER, PASSWORD))
    assert TokenService.scopes == ["repository:multi:pull"]       # one token for the pull
    assert store.tags() == {f"{token_registry}/multi:latest": digest}


@needs_tools
@pytest.mark.parametrize("registry_fixture", ["basic_registry", "token_registry"])
def test_login_is_tried_then_saved_for_pulls_readable_only_by_its_owner(
        request, store, registry_fixture):
    address = request.getfixturevalue(registry_fixture)
    with pytest.raises(RegistryError, match="refused the login"):
        registry.login(address, USER, "wrong")
    assert credentials.saved(address) is None
    path = registry.login(address, USER, PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert credentials.saved(address) == (USER, PASSWORD)
    registry.pull(f"{address}/small:1", store)               # with the saved login


# --- what a real registry never does: a fake one ----------------------------------------

CONFIG = json.dumps({"os": "linux", "architecture": HERE, "config": {}}).encode()
LAYER = b"not really a tarball, but bytes with a digest"


def descriptor(media_type: str, body: bytes) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
            "size": len(body)}


def manifest_of(config_type: str = "application/vnd.oci.image.config.v1+json") -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": descriptor(config_type, CONFIG),
                       "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip",
                                             LAYER)]}).encode()


@contextmanager
def fake_registry(manifest: bytes, media_type: str, blobs_at: str | None = None,
                  digest_header: str | None = None):
    """A registry with basic auth serving one manifest (any bytes) as app:1; its blobs
    from here, or a redirect to `blobs_at`. Yields (address, the requests it saw)."""
    seen = []
    blobs = {descriptor("", body)["digest"]: body for body in (CONFIG, LAYER)}

    class Fake(Quiet):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            if not self.headers.get("Authorization"):
                return self.answer(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
            digest = self.path.rpartition("/")[2]
            if self.path == "/v2/":
                self.answer(200)
            elif "/manifests/" in self.path:
                said = digest_header or descriptor("", manifest)["digest"]
                self.answer(200, manifest, {"Content-Type": media_type,
                                            "Docker-Content-Digest": said})
            elif blobs_at:
                self.answer(307, b"", {"Location": f"{blobs_at}/storage/{digest}?signed=1"})
            else:
                self.answer(200, blobs[digest])
    with serving(Fake) as address:
        yield address, seen


@contextmanager
def blob_storage():
    """Blob storage (as S3 behind a registry's redirect): serves any blob, notes headers."""
    seen = []
    blobs = {descriptor("", body)["digest"]: body for body in (CONFIG, LAYER)}

    class Storage(Quiet):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.answer(200, blobs[urlsplit(self.path).path.rpartition("/")[2]])
    with serving(Storage) as address:
        yield address, seen


def test_a_redirect_to_blob_storage_does_not_carry_our_authorization(store):
    with blob_storage() as (storage, stored), fake_registry(
            manifest_of(), OCI_MANIFEST, blobs_at=f"http://{storage}") as (
            address, seen):
        digest = registry.pull(f"{address}/app:1", store, credentials=("u", "p"))
    assert store.tags() == {f"{address}/app:1": digest} and blob(store, digest) == manifest_of()
    assert len(stored) == 2, "the config and the layer, from storage"
    assert not any("Authorization" in headers for headers in stored)
    assert all(authorization for _, authorization in seen[1:]), "the registry did get it"


def test_a_redirect_to_plain_http_elsewhere_is_refused_before_connecting(store):
    with fake_registry(manifest_of(), OCI_MANIFEST,
                       blobs_at="http://storage.example.com") as (address, seen):
        with pytest.raises(RegistryError, match="refusing http://storage.example.com/"):
            registry.pull(f"{address}/app:1", store, credentials=("u", "p"))
    assert store.tags() == {}


def test_schema_1_is_refused_as_deprecated(store):
    old = json.dumps({"schemaVersion": 1, "name": "app", "tag": "1", "fsLayers": []}).encode()
    with fake_registry(old, "application/vnd.docker.distribution.manifest.v1+prettyjws") as (
            address, _):
        with pytest.raises(RegistryError, match="schema 1 is deprecated: "):
            registry.pull(f"{address}/app:1", store, credentials=("u", "p"))
    assert store.tags() == {}


@pytest.mark.parametrize("manifest, media_type, message", [
    (manifest_of("application/vnd.cncf.helm.config.v1+json"), OCI_MANIFEST,
     "is not a container image: its config is application/vnd.cncf.helm.config"),
    (b'{"schemaVersion": 2}', "application/vnd.example.thing+json",
     "unknown manifest type 'application/vnd.example.thing\\+json'"),
    (b"<html>a login page</html>", "text/html", "not a JSON object"),
])
def test_what_is_not_an_image_manifest_is_refused_by_name(store, manifest, media_type, message):
    with fake_registry(manifest, media_type) as (address, _):
        with pytest.raises(RegistryError, match=message):
            registry.pull(f"{address}/app:1", store, credentials=("u", "p"))
    assert store.tags() == {}


def test_a_manifest_that_is_not_the_digest_asked_for_is_refused(store):
    other = "sha256:" + "0" * 64
    with fake_registry(manifest_of(), OCI_MANIFEST, digest_header=other) as (
            address, _):
        with pytest.raises(DigestMismatch, match="the manifest received has digest"):
            registry.pull(f"{address}/app@{other}", store, credentials=("u", "p"))
        with pytest.raises(DigestMismatch):       # by tag: the registry's own header lies
            registry.pull(f"{address}/app:1", store, credentials=("u", "p"))
    assert store.tags() == {} and [p.name for p in store.root.rglob("*") if p.is_file()] == [
        "gc.lock"]


# --- the command line ---------------------------------------------------------------

def mc(*args: str, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MINICONTAINER_DATA": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run([sys.executable, "-m", "minicontainer", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env)


@needs_tools
def test_cli_pull_prints_the_digest_and_errors_in_one_line(open_registry, tmp_path):
    pulled = mc("pull", f"{open_registry}/small:1", tmp_path=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"Digest: {pushed_digest(open_registry, 'small', '1')}\n"
    missing = mc("pull", f"{open_registry}/small:gone", tmp_path=tmp_path)
    assert missing.returncode == 125 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1 and "not found" in missing.stderr
    bad = mc("pull", "--platform", "linux", f"{open_registry}/multi", tmp_path=tmp_path)
    assert bad.returncode == 125 and "OS/ARCH" in bad.stderr


@needs_tools
def test_cli_login_reads_the_password_from_stdin_and_pull_uses_it(basic_registry, tmp_path):
    refused = mc("login", "-u", USER, "--password-stdin", basic_registry, stdin="wrong\n",
                 tmp_path=tmp_path)
    assert refused.returncode == 125 and "refused the login" in refused.stderr
    saved = mc("login", "-u", USER, "--password-stdin", basic_registry, stdin=PASSWORD + "\n",
               tmp_path=tmp_path)
    assert saved.returncode == 0 and "Login Succeeded" in saved.stdout, saved.stderr
    pulled = mc("pull", f"{basic_registry}/small:1", tmp_path=tmp_path)
    assert pulled.returncode == 0, pulled.stderr


# --- a pull killed at any point --------------------------------------------------------

KILLED_PULL = """
import os, signal, sys
from minicontainer.images import registry
from minicontainer.images.store import Store
ref, root, name, when, nth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
calls = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if name == "chunk":                      # in the middle of a layer's bytes
    def progress(digest, size):
        def update(count):
            calls.append(count)
            if len(calls) == nth:
                die()
        return update
else:
    progress, real = None, getattr(Store, name)
    def wrapped(*args, **kwargs):
        calls.append(name)
        if when == "before" and len(calls) == nth:
            die()
        result = real(*args, **kwargs)
        if when == "after" and len(calls) == nth:
            die()
        return result
    setattr(Store, name, wrapped)
registry.pull(ref, Store(root), progress=progress)
"""


@needs_tools
@pytest.mark.parametrize("name, when, nth", [
    ("ingest", "before", 1), ("ingest", "after", 1), ("ingest", "before", 3),
    ("ingest", "after", 3), ("add_image", "before", 1), ("add_image", "after", 1),
    ("chunk", "during", 1)])
def test_a_pull_killed_at_any_point_leaves_a_consistent_store_that_the_next_pull_completes(
        open_registry, tmp_path, name, when, nth):
    ref, root = f"{open_registry}/fragile:1", tmp_path / "store"
    killed = subprocess.run([sys.executable, "-c", KILLED_PULL, ref, str(root), name, when,
                             str(nth)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = Store(root)
    for path in (root / "blobs/sha256").glob("*"):   # every blob whole, under its digest
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    for tag in store.tags():                          # a tag only ever names a whole image
        store.image(tag)
    if name == "add_image" and when == "after":
        assert list(store.tags()) == [ref]
    else:
        assert store.tags() == {}
    store.prune()
    assert not (root / "tmp").exists() or list((root / "tmp").iterdir()) == []
    digest = registry.pull(ref, store)
    assert store.image(ref).digest == digest and store.tags() == {ref: digest}
