"""The course as an image: `make image` builds the lab a JupyterHub would start per student.

An image is layers stacked in order, and a layer is rebuilt only when what made it
changed. So the lab is cut where its inputs change at different speeds, heaviest and
slowest first:

    1. base     Debian bookworm from Debian's packages (mmdebstrap): python3, QEMU,
                busybox-static, iproute2, iptables, skopeo, the registry ...   ~700 MB
    2. python   /opt/venv: the course's dependencies (pyproject's list, pinned by
                deploy/image/requirements.lock) and jupyterhub, as z2jh's hub runs
    3. kernel   /var/cache/minicontainer/kernel: the VM's kernel, unpacked as `make
                setup` does (minicontainer.vm.kernel.fetch_kernel)
    4. course   /opt/minicontainer: the package, notebooks, exercises, solutions

Each stage runs in a chroot of the layers below it with an overlayfs on top (in a
private mount namespace of its own, so nothing of it is seen by, or left on, the host);
the new files in the overlay's upper directory are the layer. A notebook edit rebuilds
only layer 4, in seconds. Every layer is packed with entries sorted, owners numeric and
no time later than SOURCE_DATE_EPOCH, and the base is built by mmdebstrap with that
epoch, so two builds from the same inputs (the same Debian mirror state, the same
lock file) give the same layer digests. The result goes into our own image store
(Store.add), from where `minicontainer save --format oci` writes it for umoci, skopeo
or a registry.

    python -m minicontainer.course.labimage [--tag NAME] [--build DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ToolFailed
from ..host import cpu
from ..images import layers
from ..images.archives import Blob, Contents, bytes_blob, digest_of, json_bytes
from ..images.manifests import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from ..images.store import Store

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "deploy" / "image"           # the requirements and the lock
TAG = "minicontainer-course:latest"
SUITE = "bookworm"
# Debian's own mirrors, with the updates and security suites (a lab image without
# security fixes would be a poor thing to hand 300 students).
MIRRORS = [f"deb http://deb.debian.org/debian {SUITE} main",
           f"deb http://deb.debian.org/debian {SUITE}-updates main",
           f"deb http://deb.debian.org/debian-security {SUITE}-security main"]
EPOCH = 1767225600                               # 2026-01-01: every time in the image
# What the course runs besides Python: each is used by a layer of the course.
PACKAGES = ["python3", "python3-venv", "busybox-static", "iproute2", "util-linux",
            "iptables", "nftables", "zstd", "libseccomp2", "qemu-system-x86",
            "docker-registry", "skopeo", "ca-certificates", "procps", "apt"]
# mmdebstrap copies the build host's /etc/resolv.conf and /etc/hostname into the tree
# (for debootstrap's sake): the host's DNS server and name would be in every copy of the
# image, and the base digest would differ per build host. Its manual ("SOURCE_DATE_EPOCH")
# says to remove them with customize hooks; the runtime gives a container its own
# resolv.conf (a bind mount) and hostname (a UTS namespace), as Docker's images have none.
HOST_FILES_REMOVED = ["etc/resolv.conf", "etc/hostname"]
VENV = "/opt/venv"
COURSE = "/opt/minicontainer"
KERNEL_CACHE = "/var/cache/minicontainer"
HOST_CA = "/tmp/build-host-ca.crt"             # on the build's tmpfs only
COURSE_FILES = ["minicontainer", "notebooks", "exercises", "solutions", "pyproject.toml",
                "README.md"]
PORT = 8888
# What the course needs of `minicontainer run` (or of a pod): root (the default), every
# defence off (--privileged: all capabilities, no seccomp, /proc's system paths), a
# network of its own for the published port, a cgroup namespace (so the cgroups that
# labstart mounts show the lab's own group as their root). No device beyond the
# minimal /dev: /dev/kvm only makes the VMs faster. --privileged makes the lab root on
# its host in effect (as runc's and Docker's do): run it so only on a machine the
# student may own, or in a VM of its own (docs/classroom-at-scale.md).
PRIVILEGES = ["--privileged", "--namespaces", "mnt,pid,uts,ipc,net,cgroup",
              "--network", "mc-br0"]
# The entry point mounts the cgroups if the runtime did not (labstart.py), then runs the
# command: JupyterLab here, `jupyterhub-singleuser` when KubeSpawner replaces the Cmd.
ENTRYPOINT = [f"{VENV}/bin/python", "-m", "minicontainer.course.labstart"]
COMMAND = [f"{VENV}/bin/jupyter", "lab", "--allow-root", "--ip=0.0.0.0", f"--port={PORT}",
           "--no-browser", f"--notebook-dir={COURSE}/notebooks"]


@dataclass
class Layer:
    """One built layer: its tarball, its digest (= its diff_id: it is not compressed),
    and the history line that says what made it."""

    tarball: Path
    digest: str
    made_by: str


def stage_keys() -> dict[str, str]:
    """A digest of each cached stage's inputs (a layer is rebuilt when its key changes);
    the course layer has none: it is packed anew each time, in seconds."""
    base = _key("base", SUITE, *MIRRORS, EPOCH, *PACKAGES, *HOST_FILES_REMOVED,
                _mmdebstrap_version())
    python = _key("python", base, *(_read(IMAGE_DIR / name) for name in
                                    ("requirements.txt", "requirements.lock")))
    kernel = _key("kernel", python, _read(REPO / "minicontainer/vm/kernel.py"))
    return {"base": base, "python": python, "kernel": kernel}


def build(build_dir: Path, tag: str = TAG, store: Store | None = None) -> str:
    """Build the lab image in `build_dir` (stages reused when their inputs did not
    change), add it to `store` tagged `tag`, and return its manifest digest."""
    build_dir.mkdir(parents=True, exist_ok=True)
    keys = stage_keys()
    base = _stage(build_dir / "base", keys["base"], _make_base, [], "mmdebstrap " + SUITE)
    python = _stage(build_dir / "python", keys["python"], _make_venv, [base.root],
                    "the course's Python dependencies in " + VENV)
    kernel = _stage(build_dir / "kernel", keys["kernel"], _make_kernel,
                    [python.root, base.root], "the VM kernel, unpacked")
    course = course_layer(build_dir / "course")
    return _add_image(store or Store(), tag, [base.layer, python.layer, kernel.layer, course])


@dataclass
class _Built:
    root: Path     # the stage's files (for the chroot of the next stage)
    layer: Layer


def _stage(where: Path, key: str, make, below: list[Path], made_by: str) -> _Built:
    """Build one stage into where/root unless where/key already says these inputs made
    it; pack it into where/layer.tar."""
    root, tarball, stamp = where / "root", where / "layer.tar", where / "key"
    if not (stamp.is_file() and stamp.read_text() == key and tarball.is_file()):
        print(f"labimage: building {where.name}", file=sys.stderr)
        if where.exists():
            _remove(where)
        where.mkdir(parents=True)
        make(root, below)
        _pack(root, tarball)
        stamp.write_text(key)
    digest = (where / "layer.digest")
    if not (digest.is_file() and digest.stat().st_mtime >= tarball.stat().st_mtime):
        digest.write_text(_file_digest(tarball))
    return _Built(root, Layer(tarball, digest.read_text(), made_by))


def _make_base(root: Path, below: list[Path]) -> None:
    """Debian from Debian's packages; --skip=output/dev: no device nodes in a layer
    (the runtime makes /dev), as Docker's official debian image has none either.
    mmdebstrap as root mounts /proc, /sys and /dev into the tree while it works: in a
    mount namespace of its own, a killed build leaves none of them in the host's table.
    The build host's own files mmdebstrap copied in are removed (HOST_FILES_REMOVED)."""
    hooks = [f'--customize-hook=rm -f "$1"/{path}' for path in HOST_FILES_REMOVED]
    _run(["unshare", "--mount", "--propagation", "private", "--",
          "mmdebstrap", "--variant=minbase", "--skip=output/dev", *hooks,
          "--aptopt=APT::Install-Recommends \"false\"", "--include=" + ",".join(PACKAGES),
          SUITE, str(root), *MIRRORS])


def _make_venv(upper: Path, below: list[Path]) -> None:
    """The course's Python dependencies in /opt/venv, each at the lock file's version."""
    _in_chroot(below, upper, f"python3 -m venv {VENV} && {VENV}/bin/pip install -q "
               "--no-cache-dir --disable-pip-version-check -r /src/deploy/image/requirements.txt "
               "-c /src/deploy/image/requirements.lock", keep=[VENV])


def _make_kernel(upper: Path, below: list[Path]) -> None:
    """The VM's kernel unpacked into the cache by the course's own code, as `make setup`
    does on a student's machine (apt's lists are fetched for it and not kept)."""
    _in_chroot(below, upper, f"apt-get update -qq && MINICONTAINER_CACHE={KERNEL_CACHE} "
               f"PYTHONPATH=/src {VENV}/bin/python -c 'from minicontainer.vm.kernel import "
               f"fetch_kernel; print(fetch_kernel().release)'", keep=[KERNEL_CACHE])


def _in_chroot(below: list[Path], upper: Path, script: str, keep: list[str]) -> None:
    """Run `script` in a chroot of the layers `below` under an overlay whose upper
    directory is `upper`, then keep in `upper` only the paths `keep` (and their parents):
    pip's and apt's leftovers elsewhere are not part of the layer."""
    work = upper.parent / "work"
    merged = upper.parent / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(path) for path in below)
    # A private mount namespace (unshare -m, propagation private): every mount below
    # dies with it, none reaches the host's table.
    mounts = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} "
              f"{merged} && mount --rbind /dev {merged}/dev && mount -t proc proc {merged}/proc"
              f" && mount -t tmpfs tmpfs {merged}/tmp && mkdir -p {merged}/src && "
              f"mount --bind -o ro {REPO} {merged}/src && "
              f"touch {merged}/etc/resolv.conf && mount --bind /etc/resolv.conf "
              f"{merged}/etc/resolv.conf && touch {merged}{HOST_CA} && "
              f"mount --bind {_host_ca()} {merged}{HOST_CA} && ")
    # The build host's trusted certificates (where a proxy inspects TLS, they include
    # its CA) serve the downloads; they are on the tmpfs, never in a layer.
    environment = (f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "
                   f"SOURCE_DATE_EPOCH={EPOCH} PIP_CERT={HOST_CA} SSL_CERT_FILE={HOST_CA}")
    _run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
          mounts + f"chroot {merged} {environment} sh -ec \"$0\"", script])
    _remove(work)
    merged.rmdir()
    _keep_only(upper, keep)


def _host_ca() -> str:
    """The build host's CA bundle: SSL_CERT_FILE, PIP_CERT or Debian's own."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ToolFailed("no CA certificates on this host to download the image's packages with")


def _keep_only(upper: Path, keep: list[str]) -> None:
    """Remove from `upper` everything that is neither one of `keep` nor a parent of one."""
    wanted = [Path(path.lstrip("/")) for path in keep]
    for path in sorted(upper.rglob("*"), reverse=True):
        relative = path.relative_to(upper)
        inside = any(relative == w or w in relative.parents for w in wanted)
        parent = any(relative in w.parents for w in wanted)
        if not (inside or parent):
            _remove(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def course_layer(where: Path, source: Path = REPO) -> Layer:
    """The package, notebooks and exercises (from the checkout `source`) in
    /opt/minicontainer, a `minicontainer` command, and JupyterLab's no-news setting (as
    scripts/setup.sh writes it)."""
    if where.exists():
        _remove(where)
    course = where / "root" / COURSE.lstrip("/")
    course.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in COURSE_FILES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, course / name, ignore=ignore)
        else:
            shutil.copy2(path, course / name)
    command = where / "root/usr/local/bin/minicontainer"
    command.parent.mkdir(parents=True)
    command.write_text(f"#!/bin/sh\nexec {VENV}/bin/python -m minicontainer \"$@\"\n")
    command.chmod(0o755)
    settings = where / "root" / VENV.lstrip("/") / "share/jupyter/lab/settings/overrides.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false", "checkForUpdates": False}}) + "\n")
    tarball = where / "layer.tar"
    _pack(where / "root", tarball)
    return Layer(tarball, _file_digest(tarball), "the course: package, notebooks, exercises")


def _add_image(store: Store, tag: str, built: list[Layer]) -> str:
    """Put the layers, a config (JupyterLab on 0.0.0.0:8888) and a manifest in `store`."""
    created = datetime.fromtimestamp(EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = json_bytes({
        "created": created, "architecture": cpu().debian, "os": "linux",
        "config": {"Env": [f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                           "/usr/bin:/sbin:/bin", f"PYTHONPATH={COURSE}"],
                   "Entrypoint": ENTRYPOINT, "Cmd": COMMAND, "WorkingDir": COURSE,
                   "ExposedPorts": {f"{PORT}/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in built]},
        "history": [{"created": created, "created_by": layer.made_by} for layer in built]})
    manifest = json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest,
                    "size": layer.tarball.stat().st_size} for layer in built]})
    blobs = [Blob(layer.digest, layer.tarball.stat().st_size, _chunks(layer.tarball))
             for layer in built]
    store.add(Contents([*blobs, bytes_blob(config), bytes_blob(manifest)],
                       [(tag, digest_of(manifest))]))
    return digest_of(manifest)


def _chunks(path: Path):
    """A reader of `path` in 1 MiB pieces, for Blob."""
    def read():
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                yield chunk
    return read


def _pack(root: Path, tarball: Path) -> None:
    """Pack `root` as a layer, no time in it later than EPOCH."""
    with open(tarball, "wb") as out:
        layers.pack(root, out, latest=EPOCH)


def _file_digest(path: Path) -> str:
    """sha256:<hex> of a file's bytes."""
    with open(path, "rb") as source:
        return "sha256:" + hashlib.file_digest(source, "sha256").hexdigest()


def _key(*parts: object) -> str:
    """A digest of a stage's inputs: the same inputs, the same key, the stage reused."""
    return hashlib.sha256(json.dumps([str(part) for part in parts]).encode()).hexdigest()


def _read(path: Path) -> str:
    """A file's text, as an input of a key."""
    return path.read_text()


def _mmdebstrap_version() -> str:
    """The installed mmdebstrap's version (a different one may build a different base)."""
    if shutil.which("mmdebstrap") is None:
        raise ToolFailed("mmdebstrap not found: apt-get install mmdebstrap")
    return subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout


def _run(command: list[str]) -> None:
    """Run a build step with SOURCE_DATE_EPOCH set; ToolFailed naming it if it fails."""
    done = subprocess.run(command, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    if done.returncode != 0:
        raise ToolFailed(f"{command[0]} failed (exit {done.returncode}) building the lab image")


def _remove(path: Path) -> None:
    """Remove a build directory (the trees hold root-owned, read-only files)."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def main(argv: list[str] | None = None) -> None:
    """`make image`: build the lab image into the store and print its digest."""
    parser = argparse.ArgumentParser(prog="python -m minicontainer.course.labimage")
    parser.add_argument("--tag", default=TAG)
    parser.add_argument("--build", type=Path, default=REPO / "build" / "image",
                        help="where the stages are kept between builds")
    arguments = parser.parse_args(argv)
    digest = build(arguments.build, arguments.tag)
    print(f"{arguments.tag} {digest}")


if __name__ == "__main__":
    main()
