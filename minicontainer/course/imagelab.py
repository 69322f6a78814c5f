"""The images lesson's props: a real registry on 127.0.0.1, images to push to it, a pull watched.

No internet in class, ever. The registry is the CNCF distribution registry, the
server Docker Hub grew from (Debian's `docker-registry`), started here on 127.0.0.1
with a temporary storage directory. The images pushed to it are made on this machine
(the busybox image, and layers added on top of it), written as an OCI image layout
and copied in by skopeo, as a user would push:

    lab = LocalRegistry().start()          # or: with LocalRegistry() as lab: ...
    lab.push(store, "hello", "lesson/hello:1")   # the store's image, via an OCI layout
    registry.pull(f"{lab.address}/lesson/hello:1", other_store)
    lab.stop()

Notebooks are interrupted and run again, so nothing here may outlive its use:
starting a LocalRegistry stops the one this process started before (one at a time),
stop() may be called any number of times, and the server dies with the process that
started it (`setpriv --pdeathsig KILL`), so even a killed kernel leaves none running.
Files go in scratch() directories, named after the process that made them (pid and
start time, as a container's record names its owner): removed with their object or
when the process exits, and, if it was killed, by the next scratch() on this machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from .. import process
from ..errors import ImageError, ToolFailed
from ..images import archives, layers
from ..images.archives import Blob, Contents, digest_of, json_bytes
from ..images.manifests import OCI_LAYER, OCI_MANIFEST
from ..images.registry import Registry
from ..images.store import Image, Store

TOOLS = ("docker-registry", "skopeo")
STARTUP_SECONDS = 20
SCRATCH = "imagelab-"              # imagelab-<pid>-<start time>-<random>, in $TMPDIR


def scratch() -> tempfile.TemporaryDirectory:
    """A new temporary directory of this process's (after removing those whose process
    is gone: a killed kernel runs no clean-up of its own)."""
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*"):
        _, pid, started, _ = (path.name.split("-", 3) + ["", "", ""])[:4]
        if not (pid.isdigit() and str(process.start_time(int(pid))) == started):
            shutil.rmtree(path, ignore_errors=True)
    me = os.getpid()
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{me}-{process.start_time(me)}-")


class LocalRegistry:
    """A distribution registry on 127.0.0.1:PORT serving a temporary directory, until stop()."""

    running: LocalRegistry | None = None       # the one this process started last

    def __init__(self) -> None:
        """Nothing runs until start()."""
        self.server: subprocess.Popen | None = None
        self.directory: tempfile.TemporaryDirectory | None = None
        self.address = ""                      # 127.0.0.1:PORT once started

    def start(self) -> LocalRegistry:
        """Start the server (stopping the one this process started before); return self
        once it accepts connections."""
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise ToolFailed(f"{' and '.join(missing)} not found: `make lab` installs them "
                             "(Debian packages docker-registry and skopeo)")
        if LocalRegistry.running is not None:
            LocalRegistry.running.stop()
        LocalRegistry.running = self
        try:
            self.directory = scratch()
            port = free_port()
            config = Path(self.directory.name) / "config.yml"
            config.write_text(json.dumps({         # JSON is YAML too
                "version": 0.1, "log": {"level": "warn"},
                "http": {"addr": f"127.0.0.1:{port}"},
                "storage": {"filesystem": {"rootdirectory": f"{self.directory.name}/storage"}}}))
            log = open(Path(self.directory.name) / "registry.log", "wb")
            with log:
                # PR_SET_PDEATHSIG: killed when the thread that started it ends (in a
                # notebook the kernel's main thread, which runs the cells).
                self.server = subprocess.Popen(
                    ["setpriv", "--pdeathsig", "KILL", "--",
                     "docker-registry", "serve", str(config)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.address = f"127.0.0.1:{port}"
            self._wait_until_listening(port)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self, port: int) -> None:
        """Return once the server accepts connections; ToolFailed if it exits or hangs."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.server.poll() is not None or time.monotonic() > deadline:
                log = (Path(self.directory.name) / "registry.log").read_text()[-300:]
                raise ToolFailed(f"docker-registry did not start on 127.0.0.1:{port}: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and remove its storage; again, it does nothing."""
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None
        if LocalRegistry.running is self:
            LocalRegistry.running = None

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps blob `digest` on disk (its filesystem driver's layout)."""
        hex_digest = digest.removeprefix("sha256:")
        return (Path(self.directory.name) / "storage/docker/registry/v2/blobs/sha256"
                / hex_digest[:2] / hex_digest / "data")

    def __enter__(self) -> LocalRegistry:
        """Start the server for the block."""
        return self.start()

    def __exit__(self, *exc) -> None:
        """Stop it, whatever happened in the block."""
        self.stop()

    def push(self, store: Store, name: str, destination: str) -> str:
        """Push the store's image `name` to this registry as `destination`
        (repository:tag) with skopeo; return the reference to pull it by."""
        image = store.image(name)
        with scratch() as work:
            layout = save_layout(store, image, Path(work) / "layout")
            skopeo(["copy", "--dest-tls-verify=false", f"oci:{layout}:push",
                    f"docker://{self.address}/{destination}"], Path(work))
        return f"{self.address}/{destination}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skopeo(arguments: list[str], work: Path) -> None:
    """Run skopeo with its caches in `work`: as root it would keep them in
    /var/lib/containers, which is the host's, not the lesson's."""
    env = {**os.environ, "_CONTAINERS_ROOTLESS_UID": str(os.getuid() or 1000),
           "XDG_DATA_HOME": str(work), "HOME": str(work)}
    done = subprocess.run(["skopeo", "--insecure-policy", *arguments[:1], "-q", *arguments[1:]],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ToolFailed(f"skopeo {arguments[0]} failed: {done.stderr.strip()[-300:]}")


def save_layout(store: Store, image: Image, directory: Path, tag: str = "push") -> Path:
    """Write `image` (from `store`) as an OCI image layout in `directory`, tagged `tag`:
    oci-layout, index.json naming its manifest, and every blob under blobs/sha256/."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    manifest = image.manifest
    for digest in [image.digest, manifest["config"]["digest"],
                   *(layer["digest"] for layer in manifest["layers"])]:
        shutil.copyfile(store.blob_path(digest), blobs / digest.removeprefix("sha256:"))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    size = store.blob_path(image.digest).stat().st_size
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": manifest.get("mediaType", OCI_MANIFEST), "digest": image.digest,
            "size": size, "annotations": {archives.REF_NAME: tag}}]}))
    return directory


def add_layer(store: Store, base: str, tree: Path, name: str, comment: str) -> Image:
    """A new image `name` in `store`: image `base`'s layers and one more, the directory
    `tree` packed as a tarball (an empty file `.wh.NAME` in it is a whiteout: a layer
    deletes that way). Its config says so: one more diff_id, one more history line."""
    parent = store.image(base)
    with tempfile.TemporaryFile() as layer:
        layers.pack(tree, layer, owner=(0, 0))
        size = layer.tell()
        layer.seek(0)
        layer_digest = "sha256:" + hashlib.file_digest(layer, "sha256").hexdigest()

        def chunks():
            layer.seek(0)
            while chunk := layer.read(archives.CHUNK):
                yield chunk
        config = json.loads(json.dumps(parent.config))
        config["rootfs"]["diff_ids"].append(layer_digest)   # uncompressed: the same digest
        config.setdefault("history", []).append({"created": config.get("created", ""),
                                                 "created_by": comment})
        config_bytes = json_bytes(config)
        manifest = json_bytes({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {**parent.manifest["config"], "digest": digest_of(config_bytes),
                       "size": len(config_bytes)},
            "layers": [*parent.manifest["layers"],
                       {"mediaType": OCI_LAYER, "digest": layer_digest, "size": size}]})
        store.add(Contents([Blob(layer_digest, size, chunks), archives.bytes_blob(config_bytes),
                            archives.bytes_blob(manifest)], [(name, digest_of(manifest))]))
    return store.image(name)


def show_requests(session: Registry) -> Registry:
    """Print every HTTP request `session` makes, with the answer's status and the headers
    that matter to a pull (what it is, its digest, where a redirect goes)."""
    def show(response: httpx.Response) -> None:
        request = response.request
        line = f"{request.method} {request.url.path} -> {response.status_code}"
        for header in ("content-type", "docker-content-digest", "www-authenticate",
                       "location", "content-length"):
            if header in response.headers:
                line += f"\n      {header}: {response.headers[header]}"
        print(line)
    session.client.event_hooks = {"response": [show]}
    return session


def disk_use(path: Path) -> int:
    """Bytes of disk `path` takes (`du -s -B1`: blocks, each hard-linked file once)."""
    done = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageError(f"du {path} failed: {done.stderr.strip()}")
    return int(done.stdout.split()[0])
