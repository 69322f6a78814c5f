"""The image commands, as Docker users type them: images, tag, rmi, image inspect,
image prune, save, load, import. Each runs the real CLI against a temporary store
(MINICONTAINER_DATA moves it), and what save writes is read by skopeo and umoci."""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from minicontainer.container import Container
from minicontainer.images.archives import digest_of, json_bytes
from minicontainer.images.manifests import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from minicontainer.images.store import Store, busybox_image
from minicontainer.rootfs import default_rootfs

CLI = [sys.executable, "-m", "minicontainer"]
ID = re.compile(r"[0-9a-f]{12}")


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """A data directory of the test's own: the store is data/images (as the CLI's)."""
    monkeypatch.setenv("MINICONTAINER_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def store(data) -> Store:
    store = Store(data / "images")
    busybox_image(store)
    return store


def mc(*args: str, stdin: bytes | str | None = None, data: Path | None = None,
       text: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"MINICONTAINER_DATA": str(data)} if data else {}))
    return subprocess.run(CLI + list(args), input=stdin, capture_output=True, text=text,
                          timeout=120, env=env)


def ok(*args: str, **options) -> str:
    result = mc(*args, **options)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicontainer: "), result.stderr
    return lines[0]


def stored(store: Store) -> list[str]:
    """Every file and directory in the store but its lock files."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                  if not p.name.endswith(".lock"))


def rootfs_tarball(path: Path, *extra: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    """The busybox tree as a plain rootfs tarball (what `docker export` writes), plus
    `extra` entries."""
    with tarfile.open(path, "w") as archive:
        archive.add(default_rootfs(), arcname=".")
        for info, content in extra:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def entry(name: str, content: bytes = b"", uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(content), 0o644, uid, uid
    return info, content


def docker_typed_image(store: Store, name: str) -> str:
    """busybox as a registry serves Docker's images: schema 2 media types and a gzip'd
    layer, a manifest that docker save's manifest.json alone could not rebuild."""
    busybox = store.image("busybox")
    layer = gzip.compress(store.blob_path(busybox.manifest["layers"][0]["digest"]).read_bytes(),
                          mtime=0)
    config = busybox.manifest["config"]
    manifest = json_bytes({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {**config, "mediaType": DOCKER_CONFIG},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": digest_of(layer), "size": len(layer)}]})
    for blob in (layer, manifest):
        store.ingest(digest_of(blob), len(blob), [blob])
    store.add_image(name, digest_of(manifest))
    return digest_of(manifest)


# -- images, tag, inspect ----------------------------------------------------------------------

def test_images_shows_a_row_per_tag_with_the_manifests_digest_as_the_id(store):
    ok("tag", "busybox", "mc-ic/app:1")
    lines = ok("images").splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = [line.split() for line in lines[1:]]
    digest = store.tags()["docker.io/library/busybox:latest"]
    assert [row[:3] for row in rows] == [["busybox", "latest", digest[7:19]],
                                         ["mc-ic/app", "1", digest[7:19]]]
    assert all(row[-1].endswith(("kB", "MB")) and row[-2] == "ago" for row in rows)
    assert ok("images", "-q").split() == [digest[7:19]]
    assert [line.split()[0] for line in ok("image", "ls", "mc-ic/app").splitlines()] == [
        "REPOSITORY", "mc-ic/app"]


def test_image_inspect_describes_an_image_as_docker_does(store):
    image = store.image("busybox")
    [described] = json.loads(ok("image", "inspect", "busybox"))
    assert described["Id"] == image.digest
    assert described["RepoTags"] == ["busybox:latest"]
    assert described["RepoDigests"] == [f"busybox@{image.digest}"]
    assert described["RootFS"] == {"Type": "layers",
                                   "Layers": image.config["rootfs"]["diff_ids"]}
    assert described["Config"]["Cmd"] == ["sh"] and described["Os"] == "linux"
    assert described["Architecture"] == image.config["architecture"] and described["Size"] > 0
    assert json.loads(ok("image", "inspect", image.digest[7:19]))[0]["Id"] == image.digest


def test_inspecting_a_missing_image_prints_nothing_but_one_line(store):
    result = mc("image", "inspect", "busybox", "mc-ic/ghost")
    assert "no such image: mc-ic/ghost" in one_line_error(result) and result.stdout == ""


def test_a_tag_to_a_missing_image_or_a_digest_changes_nothing(store):
    before = store.tags()
    assert "no such image" in one_line_error(mc("tag", "mc-ic/ghost", "mc-ic/new"))
    assert "not name@digest" in one_line_error(mc("tag", "busybox", "x@sha256:" + "a" * 64))
    assert store.tags() == before


# -- rmi, prune --------------------------------------------------------------------------------

def test_rmi_untags_and_removes_the_image_with_its_last_tag(store):
    digest = store.tags()["docker.io/library/busybox:latest"]
    ok("tag", "busybox", "mc-ic/app:1")
    assert ok("rmi", "mc-ic/app:1") == "Untagged: mc-ic/app:1\n"
    assert store.has_blob(digest)                       # busybox:latest still names it
    assert ok("rmi", digest[7:19]) == f"Untagged: busybox:latest\nDeleted: {digest}\n"
    assert store.tags() == {} and stored(store) == ["blobs", "blobs/sha256", "diff_ids",
                                                    "layers", "tags.json", "tmp"]


def test_rmi_by_id_of_an_image_in_two_repositories_must_be_forced(store):
    ok("tag", "busybox", "mc-ic/app:1")
    digest = store.tags()["docker.io/library/busybox:latest"]
    line = one_line_error(mc("rmi", digest[7:19]))
    assert "referenced in multiple repositories" in line and len(store.tags()) == 2
    assert ok("rmi", "-f", digest[7:19]).count("Untagged:") == 2 and store.tags() == {}


def test_rmi_refuses_an_image_a_container_was_created_from_until_forced_never_while_it_runs(
        store, tmp_path):
    ok("import", str(rootfs_tarball(tmp_path / "rootfs.tar", entry("mine", b"imported\n"))),
       "mc-ic/imported:1")
    image = store.image("mc-ic/imported:1")
    with Container(["sleep", "30"], image=image, name="mc-ic-user") as box:
        box.start()
        assert box.exec("cat /mine").stdout == "imported\n"
        line = one_line_error(mc("rmi", "mc-ic/imported:1"))
        assert ('unable to remove repository reference "mc-ic/imported:1" (must force) - '
                "container mc-ic-user is using its referenced image") in line
        line = one_line_error(mc("rmi", "-f", "mc-ic/imported:1"))
        assert "(cannot be forced)" in line and "running container mc-ic-user" in line
        assert "docker.io/mc-ic/imported:1" in store.tags()
        box.stop(timeout=1)
        assert "(must force)" in one_line_error(mc("rmi", "mc-ic/imported:1"))
        assert "Deleted: " + image.digest in ok("rmi", "-f", "mc-ic/imported:1")
        assert not store.has_blob(image.digest)
        assert all(layer.is_dir() for layer in image.layers)   # the container stands on them
    store.prune()
    assert not any(layer.exists() for layer in image.layers)


def test_image_prune_removes_unnamed_blobs_and_with_all_unused_images(store, tmp_path):
    stray = b"a blob nothing names"
    store.ingest(digest_of(stray), len(stray), [stray])
    output = ok("image", "prune", "-f")
    assert f"deleted: {digest_of(stray)}" in output
    assert output.endswith(f"Total reclaimed space: {len(stray)}B\n")
    ok("import", str(rootfs_tarball(tmp_path / "rootfs.tar", entry("used"))), "mc-ic/used:1")
    with Container(["true"], image=store.image("mc-ic/used:1"), name="mc-ic-stopped") as box:
        box.start()
        box.wait()
        output = ok("image", "prune", "-a", "-f")
        assert "untagged: busybox:latest" in output and "mc-ic/used" not in output
        assert list(store.tags()) == ["docker.io/mc-ic/used:1"]


def test_image_prune_asks_first_and_a_no_changes_nothing(store):
    stray = b"kept: the answer was no"
    store.ingest(digest_of(stray), len(stray), [stray])
    result = mc("image", "prune", stdin="n\n")
    assert "Are you sure" in result.stdout and "cancelled" in one_line_error(result)
    assert store.has_blob(digest_of(stray))


# -- save, load, import --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["docker", "oci"])
def test_save_then_load_gives_the_same_manifest_digest(store, tmp_path, form):
    docker_typed_image(store, "mc-ic/app:1")
    archive = tmp_path / "saved.tar"
    ok("save", "--format", form, "-o", str(archive), "busybox", "mc-ic/app:1")
    with tarfile.open(archive) as saved:
        names = set(saved.getnames())
    assert {"oci-layout", "index.json"} <= names
    assert ({"manifest.json", "repositories"} <= names) == (form == "docker")
    elsewhere = tmp_path / "elsewhere"
    assert ok("load", "-i", str(archive), data=elsewhere) == (
        "Loaded image: busybox:latest\nLoaded image: mc-ic/app:1\n")
    assert Store(elsewhere / "images").tags() == store.tags()


def test_save_to_stdout_loads_from_stdin(store, tmp_path):
    archive = mc("save", "busybox", text=False)
    assert archive.returncode == 0 and archive.stdout[:512].find(b"blobs/") == 0
    loaded = mc("load", stdin=archive.stdout, data=tmp_path / "elsewhere", text=False)
    assert loaded.stdout == b"Loaded image: busybox:latest\n"


@pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")),
                    reason="skopeo and umoci are not installed (scripts/setup.sh installs them)")
def test_skopeo_and_umoci_read_what_save_writes(store, tmp_path):
    digest = store.tags()["docker.io/library/busybox:latest"]
    ok("save", "--format", "oci", "-o", str(tmp_path / "oci.tar"), "busybox")
    ok("save", "-o", str(tmp_path / "docker.tar"), "busybox")

    def tool(*args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout
    assert json.loads(tool("skopeo", "inspect", f"oci-archive:{tmp_path}/oci.tar"))[
        "Digest"] == digest
    tool("skopeo", "copy", f"docker-archive:{tmp_path}/docker.tar", f"oci:{tmp_path}/copy:v1")
    tool("umoci", "unpack", "--image", f"{tmp_path}/copy:v1", str(tmp_path / "bundle"))
    assert (tmp_path / "bundle/rootfs/bin/busybox").is_file()
    assert ok("load", "-i", str(tmp_path / "copy"), data=tmp_path / "elsewhere") == (
        "Loaded image: copy:v1\n")


def test_save_of_a_missing_image_writes_no_file_and_leaves_one_as_it_was(store, tmp_path):
    assert "no such image" in one_line_error(
        mc("save", "-o", str(tmp_path / "new.tar"), "busybox", "mc-ic/ghost"))
    (tmp_path / "old.tar").write_text("mine")
    one_line_error(mc("save", "-o", str(tmp_path / "old.tar"), "mc-ic/ghost"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "old.tar"]
    assert (tmp_path / "old.tar").read_text() == "mine"


def test_import_makes_a_one_layer_image_keeping_owners(store, tmp_path):
    tarball = rootfs_tarball(tmp_path / "rootfs.tar", entry("home/owned", b"x", uid=1234))
    image_id = ok("import", "-m", "from a test", str(tarball), "mc-ic/imported:1").strip()
    image = store.image("mc-ic/imported:1")
    assert image_id == image.digest and len(image.layers) == 1
    assert (image.layers[0] / "home/owned").stat().st_uid == 1234
    assert image.config["history"][0]["created_by"] == "from a test"
    piped = mc("import", "-", "mc-ic/piped:1", stdin=tarball.read_bytes(), text=False)
    assert piped.stdout.decode().strip() == store.tags()["docker.io/mc-ic/piped:1"]


def test_an_escaping_tarball_is_refused_on_import_and_leaves_nothing(store, tmp_path):
    before = stored(store)
    tarball = rootfs_tarball(tmp_path / "evil.tar", entry("../../escaped", b"out"))
    assert "climbs out" in one_line_error(mc("import", str(tarball), "mc-ic/evil:1"))
    assert stored(store) == before and not (tmp_path / "escaped").exists()
