"""Images: a store of blobs by digest, layers unpacked once and stacked by overlayfs,
whiteouts honoured, hostile layers refused, and images loaded from the files Docker,
skopeo and umoci write. Every store here is a temporary one, never the machine's."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from minicontainer.container import Container, run
from minicontainer.errors import DigestMismatch, ImageError, InvalidArgument
from minicontainer.host import cpu
from minicontainer.images.archives import digest_of, json_bytes
from minicontainer.images.manifests import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from minicontainer.images.layers import GZIP, Limits, pack
from minicontainer.images.reference import parse
from minicontainer.images.store import Store, busybox_image
from minicontainer.rootfs import Overlay, default_rootfs
from minicontainer.spec import describe

ROOT = Path(__file__).resolve().parent.parent


# -- layers and images built here, byte by byte ------------------------------------------

def file(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
    return info, data


def directory(name: str, mode: int = 0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def symlink(name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def hardlink(name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


def device(name: str, major: int, minor: int):
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, major, minor
    return info, None


def layer(*members, compress: bool = False) -> bytes:
    """A layer tarball holding `members`, in their order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compress else "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def put_image(store: Store, name: str, tarballs: list[bytes], base=None):
    """An image named `name`: the layers of `base` (an Image), then `tarballs`."""
    layers = list(base.manifest["layers"]) if base else []
    diff_ids = list(base.config["rootfs"]["diff_ids"]) if base else []
    for data in tarballs:
        diff_ids.append(digest_of(gzip.decompress(data) if data[:2] == GZIP else data))
        store.ingest(digest_of(data), len(data), [data])
        layers.append({"mediaType": OCI_LAYER + ("+gzip" if data[:2] == GZIP else ""),
                       "digest": digest_of(data), "size": len(data)})
    config = json_bytes({"architecture": cpu().debian, "os": "linux",
                         "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": diff_ids}})
    store.ingest(digest_of(config), len(config), [config])
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config),
                                      "size": len(config)}, "layers": layers})
    store.ingest(digest_of(manifest), len(manifest), [manifest])
    store.add_image(name, digest_of(manifest))
    return store.image(name)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "images")


@pytest.fixture
def busybox(store):
    return busybox_image(store)


def stored(store: Store) -> list[str]:
    """Every file and directory in the store but its lock files, relative to it."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                  if not p.name.endswith(".lock"))


# -- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("ref, normalised", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("user/app", "docker.io/user/app:latest"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
    ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
])
def test_a_reference_gets_dockers_defaults(ref, normalised):
    assert str(parse(ref)) == normalised


@pytest.mark.parametrize("ref", ["", "Busybox", "busybox:", "a//b", "busybox@sha256:12",
                                 "-x", "x:.v1", "app:" + "v" * 129, "a b"])
def test_a_reference_docker_would_refuse_is_refused_in_one_line(ref):
    with pytest.raises(InvalidArgument, match="invalid image reference") as refused:
        parse(ref)
    assert "\n" not in str(refused.value)


# -- blobs ------------------------------------------------------------------------------

def test_bytes_that_are_not_what_their_digest_says_leave_nothing(store):
    digest = digest_of(b"the real content")
    with pytest.raises(DigestMismatch, match="hashes to"):
        store.ingest(digest, 16, [b"the fake content"])
    with pytest.raises(DigestMismatch, match="longer than"):
        store.ingest(digest, 4, [b"the real content"])
    assert not store.has_blob(digest) and stored(store) == ["tmp"]
    store.ingest(digest, 16, [b"the real", b" content"])
    assert store.blob_path(digest).read_bytes() == b"the real content"


def test_a_killed_ingest_leaves_only_a_temporary_file_that_prune_removes(store):
    digest = digest_of(b"x" * 2048)
    code = (f"import sys, time\nfrom minicontainer.images.store import Store\n"
            f"def slow():\n    yield b'x' * 1024\n    time.sleep(60)\n    yield b'x' * 1024\n"
            f"Store(sys.argv[1]).ingest({digest!r}, 2048, slow())")
    writer = subprocess.Popen([sys.executable, "-c", code, str(store.root)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 20
    while not any((store.root / "tmp").glob("blob-*")):
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftover, = (store.root / "tmp").iterdir()
    assert not store.has_blob(digest) and leftover.name.startswith("blob-")
    assert store.prune() == [f"tmp/{leftover.name}"]
    assert list((store.root / "tmp").iterdir()) == []


def test_a_killed_unpack_leaves_no_half_layer_and_prune_removes_its_scraps(store):
    data = layer(file("first", b"1"), file("second", b"2"))
    store.ingest(digest_of(data), len(data), [data])
    code = ("import sys, time\nfrom minicontainer.images import layers\n"
            "from minicontainer.images.store import Store\nmake = layers._Writer.add\n"
            "def slowly(*args):\n    make(*args)\n    time.sleep(60)\n"
            "layers._Writer.add = slowly\n"
            f"Store(sys.argv[1]).unpacked({digest_of(data)!r}, {OCI_LAYER!r})")
    unpacker = subprocess.Popen([sys.executable, "-c", code, str(store.root)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 20
    while not list((store.root / "layers").glob(".unpacking-*/first")):
        assert time.monotonic() < deadline and unpacker.poll() is None
        time.sleep(0.05)
    unpacker.send_signal(signal.SIGKILL)
    unpacker.wait()
    scraps, = (store.root / "layers").iterdir()
    assert scraps.name.startswith(".unpacking-")          # never under the layer's name
    put_image(store, "mc-st/whole", [data])                # unpacked again, whole
    assert store.prune() == [f"layers/{scraps.name}"]
    assert (store.root / "layers" / digest_of(data)[7:] / "second").read_bytes() == b"2"


def test_a_tag_never_names_half_an_image(store):
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"),
                                      "size": 2}, "layers": []})
    store.ingest(digest_of(manifest), len(manifest), [manifest])
    with pytest.raises(ImageError):
        store.add_image("mc-st/half", digest_of(manifest))
    assert store.tags() == {}


# -- unpacking: hostile layers ------------------------------------------------------------

@pytest.mark.parametrize("members, refusal", [
    ([file("../escaped", b"x")], "climbs out"),
    ([file("/etc/escaped", b"x")], "absolute path"),
    ([symlink("lib", "{outside}"), file("lib/escaped", b"x")], "goes through a symlink"),
    ([symlink("lib", "../../../../../../../.."), file("lib/escaped", b"x")],
     "goes through a symlink"),
    ([directory("a"), symlink("a/up", ".."), file("a/up/up/escaped", b"x")],
     "goes through a symlink"),
    ([hardlink("shadow", "../../../../etc/shadow")], "climbs out"),
    ([hardlink("shadow", "/etc/shadow")], "absolute path"),
    ([symlink("etc", "/etc"), hardlink("shadow", "etc/shadow")], "goes through a symlink"),
    ([hardlink("nothing", "not-in-this-layer")], "not in this layer"),
], ids=["dotdot", "absolute", "symlink-then-write", "relative-symlink-then-write",
        "symlink-to-parent", "hardlink-dotdot", "hardlink-absolute", "hardlink-via-symlink",
        "hardlink-elsewhere"])
def test_a_hostile_layer_is_refused_and_nothing_escapes(store, tmp_path, members, refusal):
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(info, data) for info, data in members]
    for info, _ in members:
        info.linkname = info.linkname.replace("{outside}", str(outside))
    data = layer(*members)
    store.ingest(digest_of(data), len(data), [data])
    with pytest.raises(ImageError, match=refusal):
        store.unpacked(digest_of(data), OCI_LAYER)
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped").exists()
    assert list((store.root / "layers").iterdir()) == []      # no half layer either


def test_a_layer_never_makes_a_device_node(store):
    data = layer(directory("dev"), device("dev/sda", 8, 0), device("dev/kmsg", 1, 11),
                 file("kept", b"x"))
    store.ingest(digest_of(data), len(data), [data])
    unpacked = store.unpacked(digest_of(data), OCI_LAYER)
    assert os.listdir(unpacked / "dev") == [] and (unpacked / "kept").read_bytes() == b"x"


def test_a_layer_past_its_file_count_is_refused_with_the_limit_named(tmp_path):
    store = Store(tmp_path / "images", Limits(max_files=100))
    data = layer(*[file(f"f{number}") for number in range(1000)], compress=True)
    store.ingest(digest_of(data), len(data), [data])
    with pytest.raises(ImageError, match="more than 100 entries.*max_files"):
        store.unpacked(digest_of(data), OCI_LAYER + "+gzip")
    small = Store(tmp_path / "images", Limits(max_bytes=1000))
    data = layer(file("big", b"\0" * 100_000), compress=True)    # a few hundred bytes gzip'd
    small.ingest(digest_of(data), len(data), [data])
    with pytest.raises(ImageError, match="more than 1,000 bytes"):
        small.unpacked(digest_of(data), OCI_LAYER + "+gzip")
    assert list((store.root / "layers").iterdir()) == []


def test_setuid_bits_and_owners_are_kept_and_whiteouts_become_overlayfs_marks(store):
    data = layer(file("bin/su", b"#!", 0o4755, uid=0), file("home/user/notes", b"n", uid=1000),
                 file("etc/.wh.motd"), directory("opt"), file("opt/.wh..wh..opq"))
    store.ingest(digest_of(data), len(data), [data])
    unpacked = store.unpacked(digest_of(data), OCI_LAYER)
    assert stat.S_IMODE((unpacked / "bin/su").stat().st_mode) == 0o4755
    assert (unpacked / "home/user/notes").stat().st_uid == 1000
    whiteout = (unpacked / "etc/motd").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0   # 0:0: no device
    assert os.getxattr(unpacked / "opt", "trusted.overlay.opaque") == b"y"
    assert not list(unpacked.rglob(".wh.*"))


# -- layers on overlayfs ------------------------------------------------------------------

def test_deletions_in_an_upper_layer_are_gone_in_the_container(store, busybox):
    lower = layer(directory("etc"), file("etc/gone", b"1"), file("etc/kept", b"2\n"),
                  directory("opt"), directory("opt/old"), file("opt/old/a", b"3"))
    upper = layer(file("etc/.wh.gone"), directory("opt/old"), file("opt/old/.wh..wh..opq"),
                  file("opt/old/b", b"4"), file("bin/.wh.vi"))
    image = put_image(store, "mc-st/whiteouts", [lower, upper], base=busybox)
    result = run("cat /etc/kept; ls /opt/old; ls /etc/gone /bin/vi 2>&1 | wc -l",
                 image=image, name="mc-st-whiteouts")
    assert result.stdout.split() == ["2", "b", "2"], result


def test_in_a_user_namespace_overlayfs_reads_the_opaque_mark_from_user_xattrs(store, busybox):
    lower = layer(directory("opt"), directory("opt/old"), file("opt/old/a"))
    upper = layer(directory("opt/old"), file("opt/old/.wh..wh..opq"), file("opt/old/b"))
    image = put_image(store, "mc-st/opaque", [lower, upper], base=busybox)
    result = run("ls /opt/old", image=image, name="mc-st-opaque", rootless=True)
    assert result.stdout.split() == ["b"], result


def test_two_images_sharing_a_layer_unpack_it_once(store, busybox):
    one = put_image(store, "mc-st/one", [layer(file("one"))], base=busybox)
    two = put_image(store, "mc-st/two", [layer(file("two"))], base=busybox)
    assert one.layers[0] == two.layers[0] == busybox.layers[0]
    assert len(list((store.root / "layers").iterdir())) == 3
    assert run("ls /one /two 2>/dev/null", image=two, name="mc-st-two").stdout == "/two\n"


def test_a_layer_repeated_in_an_image_runs_as_if_stacked_twice(store, busybox):
    """overlayfs refuses one directory twice among its lowerdirs; the top copy of a
    repeated layer shows all it holds, so the lower copies can go."""
    again = layer(directory("opt"), file("opt/f", b"again\n"))
    between = layer(directory("opt"), file("opt/.wh.f"), file("opt/g", b"between\n"))
    image = put_image(store, "mc-st/repeated", [again, between, again], base=busybox)
    assert len(image.layers) == 3 and len(image.manifest["layers"]) == 4
    result = run("cat /opt/f /opt/g", image=image, name="mc-st-repeated")
    assert result.stdout == "again\nbetween\n", result


def test_a_deep_image_fits_overlayfs_options_by_short_names(store, busybox):
    image = put_image(store, "mc-st/deep", [layer(file(f"layer-{n}", b"%d\n" % n))
                                            for n in range(80)], base=busybox)
    written_out = ":".join(str(p) for p in image.layers)
    assert len(written_out) > os.sysconf("SC_PAGE_SIZE")       # would not fit as paths
    result = run("ls /layer-* | wc -l; cat /layer-79; ls /bin/sh", image=image,
                 name="mc-st-deep")
    assert result.stdout.split() == ["80", "79", "/bin/sh"], result


def test_overlayfs_options_stay_within_a_page_up_to_its_500_layers(tmp_path):
    layers = [tmp_path / "layers" / ("f" * 64) / str(n) for n in range(500)]
    overlay = Overlay(layers, tmp_path / "upper", tmp_path / "work", tmp_path / "rootfs")
    assert len(overlay.options()) < os.sysconf("SC_PAGE_SIZE")
    assert overlay.options().startswith("lowerdir=0:1:2:")


def test_a_whiteout_seen_without_overlayfs_opens_no_device(store):
    image = put_image(store, "mc-st/flat", [busybox_layer_with(file("etc/.wh.gone"))])
    # The layer as a plain rootfs, chroot alone, no cgroup: neither overlayfs, nodev
    # nor an allow-list stands between the container and the 0:0 node.
    result = run("cat /etc/gone", rootfs=image.layers[0], name="mc-st-flat", cgroup=False,
                 namespaces={"pid", "uts", "ipc", "net"})
    assert result.exit_code != 0 and "No such device" in result.stderr, result


def busybox_layer_with(*members) -> bytes:
    """The busybox tree as one layer, with `members` after it."""
    tree, combined = io.BytesIO(), io.BytesIO()
    pack(default_rootfs(), tree, owner=(0, 0))
    tree.seek(0)
    with tarfile.open(fileobj=tree) as busybox, tarfile.open(fileobj=combined, mode="w") as out:
        for info in busybox:
            out.addfile(info, busybox.extractfile(info) if info.isreg() else None)
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return combined.getvalue()


def test_an_image_and_a_rootfs_together_or_an_image_without_its_overlay_are_refused(
        store, busybox):
    with pytest.raises(InvalidArgument, match="not both"):
        describe(["true"], image=busybox, rootfs=default_rootfs())
    with pytest.raises(InvalidArgument, match="mount namespace"):   # chroot would write
        describe(["true"], image=busybox, namespaces={"pid"})      # into shared layers
    with pytest.raises(ImageError, match="pull or load it"):
        describe(["true"], image="mc-st/absent")


# -- busybox, prune ----------------------------------------------------------------------

def test_busybox_is_an_ordinary_image_made_once(store, busybox):
    assert busybox.name == "docker.io/library/busybox:latest"
    assert busybox.config["config"]["Cmd"] == ["sh"] and len(busybox.layers) == 1
    before = stored(store)
    assert busybox_image(store).digest == busybox.digest and stored(store) == before
    result = run("cat /etc/os-release", image=busybox, name="mc-st-busybox")
    assert "minicontainer busybox" in result.stdout


def test_prune_removes_only_what_no_tag_names(store, busybox):
    one = put_image(store, "mc-st/one", [layer(file("one"))], base=busybox)
    put_image(store, "mc-st/two", [layer(file("two"))], base=busybox)
    assert store.prune() == []
    store.remove("mc-st/one")
    removed = store.prune()
    own = one.manifest["layers"][-1]["digest"].removeprefix("sha256:")
    assert f"layers/{own}" in removed and f"blobs/sha256/{own}" in removed
    assert f"diff_ids/{own}" in removed
    assert f"blobs/sha256/{one.digest.removeprefix('sha256:')}" in removed
    assert busybox.layers[0].is_dir()                      # two and busybox still use it
    store.remove("mc-st/two")
    store.remove("busybox")
    store.prune()
    assert stored(store) == ["blobs", "blobs/sha256", "diff_ids", "layers", "tags.json", "tmp"]


def test_prune_keeps_the_layers_a_running_container_stands_on(store, busybox):
    image = put_image(store, "mc-st/running", [layer(file("here", b"yes"))], base=busybox)
    with Container(["sleep", "30"], image=image, name="mc-st-running") as box:
        box.start()
        store.remove("mc-st/running")
        store.remove("busybox")
        store.prune()
        assert all(path.is_dir() for path in image.layers)
        assert box.exec("cat /here").stdout == "yes"
    store.prune()
    assert not any(path.exists() for path in image.layers)


# -- loading what docker save, skopeo and umoci write ---------------------------------------

def docker_save(path: Path, tarballs: list[bytes], tags: list[str]) -> None:
    """A `docker save` tarball as Docker before v25 wrote it: <id>/layer.tar, a config
    named by its digest, manifest.json and repositories."""
    config = json_bytes({"architecture": cpu().debian, "os": "linux",
                         "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [digest_of(t) for t in tarballs]}})
    files = {f"{digest_of(config)[7:]}.json": config}
    for number, tarball in enumerate(tarballs):
        files[f"{number:064x}/layer.tar"] = tarball
        files[f"{number:064x}/VERSION"] = b"1.0"
    files["manifest.json"] = json.dumps([{
        "Config": f"{digest_of(config)[7:]}.json", "RepoTags": tags,
        "Layers": [f"{number:064x}/layer.tar" for number in range(len(tarballs))]}]).encode()
    files["repositories"] = json.dumps({tag.split(":")[0]: {tag.split(":")[1]: "0" * 64}
                                        for tag in tags}).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_a_docker_save_tarball_loads_verified_and_runs(store, tmp_path):
    top = layer(file("etc/.wh.os-release"), file("saved", b"from docker save"))
    docker_save(tmp_path / "saved.tar", [busybox_layer_with(), top], ["mc-st/saved:v1"])
    assert store.load(tmp_path / "saved.tar") == ["docker.io/mc-st/saved:v1"]
    image = store.image("mc-st/saved:v1")
    result = run("cat /saved; ls /etc/os-release 2>&1", image=image, name="mc-st-saved")
    assert result.stdout.startswith("from docker save") and "No such file" in result.stdout


def test_a_docker_save_tarball_with_a_tampered_layer_loads_nothing(store, tmp_path):
    docker_save(tmp_path / "saved.tar", [layer(file("x"))], ["mc-st/tampered:v1"])
    with tarfile.open(tmp_path / "saved.tar") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    members[f"{0:064x}/layer.tar"] = layer(file("x", b"evil"))   # diff_id says otherwise
    with tarfile.open(tmp_path / "tampered.tar", "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DigestMismatch):
        store.load(tmp_path / "tampered.tar")
    assert store.tags() == {}


def test_a_zstd_layer_unpacks_and_its_diff_id_is_checked(store, busybox):
    import zstandard
    tar = layer(file("zstd", b"squeezed"))
    data = zstandard.ZstdCompressor().compress(tar)
    store.ingest(digest_of(data), len(data), [data])
    made = store.unpacked(digest_of(data), OCI_LAYER + "+zstd", digest_of(tar))
    assert (made / "zstd").read_bytes() == b"squeezed"
    other = Store(store.root.parent / "other")
    other.ingest(digest_of(data), len(data), [data])
    with pytest.raises(DigestMismatch):
        other.unpacked(digest_of(data), OCI_LAYER + "+zstd", digest_of(b"another tar"))


def test_a_gzip_layer_whose_tar_is_not_its_diff_id_is_refused_and_not_kept(store, busybox):
    # The blob's digest is right (it is what the manifest names) but the config lists
    # another tar inside: a registry or a tool that swapped layers. Docker refuses it.
    put_image(store, "mc-st/right", [layer(file("x", b"one"), compress=True)], base=busybox)
    swapped = layer(file("x", b"two"), compress=True)
    store.ingest(digest_of(swapped), len(swapped), [swapped])
    image = store.image("mc-st/right")
    manifest = {**image.manifest, "layers": [*image.manifest["layers"][:-1], {
        "mediaType": OCI_LAYER + "+gzip", "digest": digest_of(swapped), "size": len(swapped)}]}
    data = json_bytes(manifest)
    store.ingest(digest_of(data), len(data), [data])
    store.add_image("mc-st/swapped", digest_of(data))
    with pytest.raises(DigestMismatch, match="rootfs.diff_ids"):
        store.image("mc-st/swapped")
    assert not (store.root / "layers" / digest_of(swapped)[7:]).exists()
    assert [p.name for p in (store.root / "layers").iterdir() if p.name.startswith(".")] == []


def test_a_second_image_that_names_an_unpacked_layer_by_another_diff_id_is_refused(store,
                                                                                  busybox):
    # The layer is unpacked already (checked then); a later image's config that says
    # another tar is inside it lies about it just the same, and is refused too.
    right = put_image(store, "mc-st/first", [layer(file("x", b"one"))], base=busybox)
    config = {**right.config, "rootfs": {"type": "layers", "diff_ids": [
        *right.config["rootfs"]["diff_ids"][:-1], digest_of(b"another tar")]}}
    body = json_bytes(config)
    store.ingest(digest_of(body), len(body), [body])
    manifest = json_bytes({**right.manifest, "config": {
        "mediaType": OCI_CONFIG, "digest": digest_of(body), "size": len(body)}})
    store.ingest(digest_of(manifest), len(manifest), [manifest])
    store.add_image("mc-st/liar", digest_of(manifest))
    with pytest.raises(DigestMismatch, match="rootfs.diff_ids"):
        store.image("mc-st/liar")
    assert store.image("mc-st/first").layers == right.layers     # the truthful one still runs


def test_an_oci_index_of_platforms_loads_this_machines_image(store, tmp_path):
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)

    def blob(data: bytes) -> dict:
        (layout / "blobs/sha256" / digest_of(data)[7:]).write_bytes(data)
        return {"digest": digest_of(data), "size": len(data)}
    manifests = {}
    for architecture in (cpu(cpu().foreign).debian, cpu().debian):
        tarball = layer(file("arch", architecture.encode()))
        config = json_bytes({"architecture": architecture, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [digest_of(tarball)]}})
        manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, **blob(config)},
                               "layers": [{"mediaType": OCI_LAYER, **blob(tarball)}]})
        manifests[architecture] = {"mediaType": OCI_MANIFEST, **blob(manifest),
                                   "platform": {"os": "linux", "architecture": architecture}}
    index = json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": list(manifests.values())})
    (layout / "index.json").write_bytes(json_bytes({
        "schemaVersion": 2, "manifests": [{"mediaType": OCI_INDEX, **blob(index),
                                           "annotations": {"org.opencontainers.image.ref.name":
                                                           "v2"}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    assert store.load(layout, repository="mc-st/multi") == ["docker.io/mc-st/multi:v2"]
    image = store.image("mc-st/multi:v2")
    assert image.digest == manifests[cpu().debian]["digest"]
    assert (image.layers[0] / "arch").read_text() == cpu().debian


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci is not installed "
                    "(scripts/setup.sh test installs it)")
def test_an_oci_layout_umoci_built_loads_as_a_directory_and_as_a_tar(store, tmp_path):
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True)
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:v1")
    umoci("unpack", "--image", f"{layout}:v1", str(bundle))
    shutil.copytree(default_rootfs(), bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:v1", str(bundle))
    (bundle / "rootfs/etc/os-release").unlink()                # a whiteout, by umoci
    (bundle / "rootfs/umoci").write_text("made by umoci\n")
    umoci("repack", "--image", f"{layout}:v1", str(bundle))
    assert store.load(layout, repository="mc-st/umoci") == ["docker.io/mc-st/umoci:v1"]
    with tarfile.open(tmp_path / "layout.tar", "w") as archive:
        archive.add(layout, arcname=".")
    assert store.load(tmp_path / "layout.tar", repository="mc-st/tarred") == [
        "docker.io/mc-st/tarred:v1"]
    image = store.image("mc-st/tarred:v1")
    assert image.digest == store.image("mc-st/umoci:v1").digest and len(image.layers) == 2
    result = run("cat /umoci; cat /etc/os-release 2>&1", image=image, name="mc-st-umoci")
    assert result.stdout.startswith("made by umoci\n") and "No such file" in result.stdout


# -- the same root as umoci's ---------------------------------------------------------------

def oci_layout(path: Path, tarballs: list[bytes], tag: str) -> None:
    """An OCI image layout at `path`: one image of `tarballs` (gzip'd here), tagged `tag`."""
    (path / "blobs/sha256").mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict:
        (path / "blobs/sha256" / digest_of(data)[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
    layers = [blob(gzip.compress(t, mtime=0), OCI_LAYER + "+gzip") for t in tarballs]
    config = blob(json_bytes({"architecture": cpu().debian, "os": "linux",
                              "config": {"Cmd": ["sh"]}, "rootfs": {
                                  "type": "layers", "diff_ids": [digest_of(t) for t in tarballs]}}),
                  OCI_CONFIG)
    manifest = blob(json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": config, "layers": layers}), OCI_MANIFEST)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_bytes(json_bytes({"schemaVersion": 2, "manifests": [
        {**manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}]}))


def tree(root: Path, skip: set[str]) -> dict[str, tuple]:
    """Each path below `root` (never followed through a symlink): its type and mode,
    owner, and its sha256 (a file) or target (a symlink)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            inside = "/" + str(path.relative_to(root))
            if inside in skip or any(inside.startswith(s + "/") for s in skip):
                continue
            info = path.lstat()
            what = (digest_of(path.read_bytes()) if stat.S_ISREG(info.st_mode) else
                    os.readlink(path) if stat.S_ISLNK(info.st_mode) else None)
            found[inside] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, what)
    return found


def test_our_containers_root_is_umoci_unpacks_in_paths_types_modes_owners_and_contents(
        store, tmp_path):
    middle = layer(directory("keep"), file("keep/owned", b"alpha", uid=1000),
                   file("keep/setuid", b"#!/bin/sh\n", mode=0o4755), symlink("keep/link", "owned"),
                   hardlink("keep/hard", "keep/owned"), directory("data"),
                   file("data/old", b"gone soon"), directory("data/sub"),
                   file("data/sub/deep", b"gone too"), file("etc/motd", b"hello\n"))
    top = layer(file("data/.wh..wh..opq"), file("data/new", b"only me"),
                file("etc/.wh.os-release"), file("keep/.wh.link"),
                file("etc/motd", b"changed\n", mode=0o600))
    oci_layout(tmp_path / "layout", [busybox_layer_with(), middle, top], "v1")
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:v1",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    assert store.load(tmp_path / "layout", repository="mc-st/same") == ["docker.io/mc-st/same:v1"]
    # What the runtime puts there, not the image: kernel filesystems, Docker's files.
    skip = {"/proc", "/sys", "/dev", "/tmp", "/etc/hosts", "/etc/resolv.conf"}
    with Container(["sleep", "30"], image=store.image("mc-st/same:v1"),
                   name="mc-st-same") as box:
        box.start()
        ours = tree(Path(f"/proc/{box.child().main_pid}/root"), skip)
    theirs = tree(tmp_path / "bundle/rootfs", skip)
    assert ours == theirs
    assert "/data/old" not in ours and ours["/data/new"][3] == digest_of(b"only me")
    assert "/etc/os-release" not in ours and "/keep/link" not in ours
    assert ours["/keep/owned"][1:3] == (1000, 1000) and ours["/keep/setuid"][0] == "-rwsr-xr-x"


def test_a_rootless_unpack_makes_other_owners_files_the_users_and_says_so():
    data = layer(file("mine", b"root's"), file("theirs", b"a user's", uid=1000))
    script = ("import sys; from minicontainer.images.store import Store; s = Store(sys.argv[1]);"
              "s.ingest(sys.argv[2], None, [sys.stdin.buffer.read()]);"
              "print(s.unpacked(sys.argv[2], sys.argv[3]))")
    with tempfile.TemporaryDirectory() as work:        # where an ordinary user may write
        os.chmod(work, 0o777)
        done = subprocess.run([sys.executable, "-c", script, f"{work}/images", digest_of(data),
                               OCI_LAYER], input=data, user=65534, group=65534,
                              capture_output=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        unpacked = Path(done.stdout.decode().strip())
        assert (unpacked / "theirs").stat().st_uid == 65534 == (unpacked / "mine").stat().st_uid
    assert b"1 entries owned by other users in the image are yours here" in done.stderr


@pytest.mark.parametrize("repo_tags, message", [("mc-st/x:1", "RepoTags is not a list"),
                                                ([7], "a RepoTag is not a string")])
def test_a_docker_save_whose_tags_are_not_a_list_of_names_loads_nothing(store, tmp_path,
                                                                        repo_tags, message):
    docker_save(tmp_path / "saved.tar", [layer(file("x"))], ["mc-st/x:1"])
    with tarfile.open(tmp_path / "saved.tar") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    entries = json.loads(members["manifest.json"])
    entries[0]["RepoTags"] = repo_tags
    members["manifest.json"] = json.dumps(entries).encode()
    with tarfile.open(tmp_path / "odd.tar", "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ImageError, match=message):
        store.load(tmp_path / "odd.tar")
    assert store.tags() == {}
