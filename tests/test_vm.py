"""The VM side: a real QEMU guest booted from the containers' own image."""
from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from nettools import wait_for_http

from minicontainer.container import run
from minicontainer.errors import InvalidArgument, Timeout, VMError
from minicontainer.host import cpu
from minicontainer.images.archives import digest_of, json_bytes
from minicontainer.images.manifests import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from minicontainer.images.store import Store, busybox_image
from minicontainer.rootfs import default_rootfs
from minicontainer.vm import VM
from minicontainer.vm.image import initramfs_dir, packed_image
from minicontainer.vm.initramfs import pack_initramfs
from minicontainer.vm.kernel import Kernel
from minicontainer.vm.qemu import accelerator


def test_the_initramfs_is_a_newc_archive_that_cpio_reads(tmp_path):
    archive = tmp_path / "initramfs.gz"
    archive.write_bytes(pack_initramfs(default_rootfs(), {"init": b"#!/bin/sh\n"}))
    listing = subprocess.run(f"zcat {archive} | busybox cpio -t", shell=True,
                             capture_output=True, text=True).stdout.split()
    assert {"init", "bin/busybox", "bin/sh", "etc/passwd"} <= set(listing)


def test_the_vm_runs_a_command_on_the_same_image_and_reports_its_exit_code():
    with VM(memory="128M") as vm:
        assert vm.run("echo hello; exit 3") == (3, "hello\n")
    with VM(memory="128M") as vm:
        release = (default_rootfs() / "etc/os-release").read_text()
        assert vm.run("cat /etc/os-release") == (0, release)
    assert vm.process.returncode is not None, "QEMU ends with the guest"


def test_boot_time_is_split_into_qemu_kernel_and_init():
    with VM(memory="128M") as vm:
        boot = vm.boot()
        assert vm.process.poll() is None, "booted without a command: it stays up"
    assert vm.process.returncode is not None, "stop() ends QEMU"
    assert 0 < boot.kernel and 0 < boot.init and 0 < boot.qemu_start
    assert boot.total == pytest.approx(boot.qemu_start + boot.kernel + boot.init)


def test_the_vm_has_its_own_kernel_instance_while_a_container_shares_the_hosts():
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with VM() as vm:
        guest_boot_id = vm.run("cat /proc/sys/kernel/random/boot_id")[1].strip()
    assert len(guest_boot_id) == 36 and guest_boot_id != host_boot_id
    assert run("cat /proc/sys/kernel/random/boot_id").stdout.strip() == host_boot_id


def test_guest_memory_follows_the_memory_argument():
    def mem_total_kb(memory: str) -> int:
        with VM(memory=memory) as vm:
            return int(vm.run("grep MemTotal /proc/meminfo")[1].split()[1])
    small, large = mem_total_kb("96M"), mem_total_kb("256M")
    assert small < 96 * 1024 and large < 256 * 1024      # the kernel keeps some for itself
    assert large - small == pytest.approx(160 * 1024, rel=0.05), "the extra RAM is all there"


def test_without_usable_kvm_the_vm_falls_back_to_tcg_and_says_why():
    accel, why = accelerator()
    flags = Path("/proc/cpuinfo").read_text()
    if " vmx" in flags or " svm" in flags:
        pytest.skip("this machine can virtualize: the KVM path is taken")
    assert accel == "tcg" and "vmx/svm" in why
    with VM() as vm:
        assert vm.accel == "tcg"
        vm.boot()
    with pytest.raises(VMError, match="KVM is not usable here"):
        VM(accel="kvm")


def test_a_corrupt_kernel_is_a_clear_error(tmp_path):
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"not a kernel" * 1000)
    with VM(machine="q35-bzimage", kernel=Kernel(None, bad, None, "bad", "test")) as vm:
        with pytest.raises(VMError, match="QEMU exited"):
            vm.boot(timeout=60)


def test_a_missing_kernel_names_the_setup_step(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICONTAINER_CACHE", str(tmp_path))
    monkeypatch.setenv("MINICONTAINER_KERNEL", str(tmp_path / "nowhere"))
    with pytest.raises(VMError, match="not a file"):
        VM()
    monkeypatch.delenv("MINICONTAINER_KERNEL")
    if not Path(f"/boot/vmlinuz-{__import__('os').uname().release}").exists():
        with pytest.raises(VMError, match="make setup"):
            VM()


def test_a_boot_that_takes_too_long_is_stopped_and_reported():
    with VM(machine="q35-bzimage") as vm:
        with pytest.raises(Timeout, match="did not answer within 0.5 s"):
            vm.boot(timeout=0.5)
    assert vm.process.returncode is not None


@pytest.mark.parametrize("options, message", [({"memory": "16M"}, "too small"),
                                              ({"memory": "lots"}, "invalid VM memory"),
                                              ({"cpus": 0}, "invalid cpus"),
                                              ({"accel": "warp"}, "invalid accel"),
                                              ({"machine": "vax"}, "invalid machine")])
def test_bad_vm_arguments_are_refused(options, message):
    with pytest.raises(InvalidArgument, match=message):
        VM(**options)


# -- an image from the store, booted as a VM ----------------------------------------------

def layer(*members: tuple, uid: int = 0) -> bytes:
    """A layer tarball: (name, contents[, mode]) for a file, (name, None) for a
    directory, (name, "other name") for a hard link."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data, *mode in members:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(data, str):
                info.type, info.linkname, data = tarfile.LNKTYPE, data, None
            else:
                info.size, info.mode = len(data), mode[0] if mode else 0o644
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def put_image(store: Store, name: str, tarballs: list[bytes], base=None, settings=None):
    """Image `name` in `store`: the layers of `base` (an Image), then `tarballs`; a
    nonce layer on top, so that its digest (and its cached archive) is new each run."""
    layers = list(base.manifest["layers"]) if base else []
    for data in [*tarballs, layer((f"nonce-{os.urandom(4).hex()}", b""))]:
        store.ingest(digest_of(data), len(data), [data])
        layers.append({"mediaType": OCI_LAYER, "digest": digest_of(data), "size": len(data)})
    config = json_bytes({"architecture": cpu().debian, "os": "linux",
                         "config": settings or {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [d["digest"] for d in layers]}})
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config),
                                      "size": len(config)}, "layers": layers})
    for blob in (config, manifest):
        store.ingest(digest_of(blob), len(blob), [blob])
    store.add_image(name, digest_of(manifest))
    return store.image(name)


@pytest.fixture
def store(tmp_path):
    """A store of our own; the archives its images left in the cache are removed."""
    store = Store(tmp_path / "images")
    yield store
    for digest in store.tags().values():
        for made in initramfs_dir().glob(digest.removeprefix("sha256:") + "-*"):
            made.unlink()


@pytest.fixture
def deletions(store):
    """Layers on busybox: one deletes a file and a program and makes a directory
    opaque, the top one adds a file owned by uid 1000, and a hard link to it."""
    lower = layer(("etc", None), ("etc/gone", b"1"), ("etc/kept", b"2\n"), ("opt", None),
                  ("opt/old", None), ("opt/old/a", b"3"))
    upper = layer(("etc/.wh.gone", b""), ("opt/old", None), ("opt/old/.wh..wh..opq", b""),
                  ("opt/old/b", b"4"), ("bin/.wh.vi", b""))
    owned = layer(("home", None), ("home/user", None), ("home/user/notes", b"5\n"),
                  ("home/user/same", "home/user/notes"), uid=1000)
    return put_image(store, "mc-vm/deletions", [lower, upper, owned], base=busybox_image(store))


SEEN = ("cat /etc/kept; ls -1 /opt/old; ls /etc/gone /bin/vi 2>&1 | wc -l; "
        "ls -ln /etc/kept /opt/old/b /home/user | cat; echo $PATH; pwd")


def test_a_vm_of_an_image_has_its_top_layers_files_and_not_those_it_deleted(deletions):
    with VM(image=deletions) as vm:
        code, output = vm.run("cat /etc/kept /opt/old/b; ls /opt/old; ls /etc/gone /bin/vi")
    assert code != 0, "ls fails: the deleted file and program are absent"
    assert output.splitlines()[:2] == ["2", "4b"], output
    assert "/etc/gone: No such file" in output and "/bin/vi: No such file" in output


def test_the_same_command_says_the_same_in_a_container_and_a_vm_of_one_image(deletions):
    with VM(image=deletions) as vm:
        in_vm = vm.run(SEEN)
    in_container = run(SEEN, image=deletions, name="mc-vm-same")
    assert in_vm == (0, in_container.stdout), "same files, owners, modes and times"
    assert in_vm[1].count("-rw-r--r--    2 1000     1000") == 2, "owners; a hard link kept"


def test_an_image_is_packed_once_and_cached_by_its_manifest_digest(store):
    image = put_image(store, "mc-vm/cached", [layer(("hello", b"hi\n"))],
                      base=busybox_image(store))
    archive = initramfs_dir() / f"{image.digest.removeprefix('sha256:')}-v1.cpio.gz"
    assert not archive.exists()
    starts = []
    for _ in range(2):
        with VM(image=image) as vm:
            began = time.monotonic()
            vm.start("cat /hello")
            starts.append(time.monotonic() - began)
            vm.ready()
            assert vm.wait() == (0, "hi\n")
        if not starts[1:]:
            packed = archive.stat()
    again = archive.stat()
    assert (again.st_ino, again.st_mtime_ns) == (packed.st_ino, packed.st_mtime_ns)
    assert starts[1] < starts[0] / 4, f"the second start did not pack again: {starts}"


def test_a_killed_pack_leaves_no_archive_no_mount_and_no_process(store, tmp_path):
    big = layer(("big", os.urandom(64 * 2**20)))       # random: 2 s to gzip
    image = put_image(store, "mc-vm/killed", [big], base=busybox_image(store))
    archive = initramfs_dir() / f"{image.digest.removeprefix('sha256:')}-v1.cpio.gz"
    scratch = tmp_path / "mc-scratch"
    scratch.mkdir()
    before = set(initramfs_dir().iterdir()) if initramfs_dir().is_dir() else set()
    packer = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from minicontainer.images.store import Store; "
         "from minicontainer.vm.image import packed_image; "
         "packed_image(Store(sys.argv[1]).image('mc-vm/killed'), Path(sys.argv[2]))",
         str(store.root), str(scratch)])
    deadline = time.monotonic() + 30
    while not (helper := _running_with(str(scratch), b"minicontainer.vm.image")):
        assert time.monotonic() < deadline and packer.poll() is None, "no packing child"
        time.sleep(0.02)
    time.sleep(0.3)                                     # well into packing
    assert str(scratch) not in Path("/proc/self/mountinfo").read_text(), "the host sees it"
    packer.send_signal(signal.SIGKILL)
    packer.wait()
    deadline = time.monotonic() + 0.5                   # not the second its packing takes
    while _running_with(str(scratch), b"minicontainer.vm.image"):
        assert time.monotonic() < deadline, f"packing child {helper} outlived its packer"
        time.sleep(0.05)
    assert not archive.exists()
    assert set(initramfs_dir().iterdir()) == before, "not even a temporary file"


def _running_with(*words: bytes | str) -> list[int]:
    """The processes whose command line holds every one of `words`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if cmdline and all((w.encode() if isinstance(w, str) else w) in cmdline
                           for w in words):
            found.append(int(proc.name))
    return found


def test_an_image_without_busybox_boots_on_our_own_and_keeps_its_own_init(store):
    # Only a shell (busybox under another name, as a distribution's dash would be):
    # no mount, no reboot, no /proc, /sys, /dev or /tmp, and an /init of its own.
    shell = (default_rootfs() / "bin/busybox").read_bytes()
    bare = layer(("bin", None), ("bin/sh", shell, 0o755),
                 ("init", b"#!/bin/sh\necho WRONG INIT\n", 0o755),
                 ("work", None))
    image = put_image(store, "mc-vm/bare", [bare],
                      settings={"Env": ["GREETING=from the image"], "WorkingDir": "/work"})
    with VM(image=image) as vm:
        code, output = vm.run('echo "$GREETING in $PWD"; cat /init; '
                              'test -e /bin/mount || echo no mount')
    assert (code, output) == (0, "from the image in /work\n#!/bin/sh\necho WRONG INIT\n"
                                 "no mount\n"), output


def test_symlinks_in_an_image_are_packed_as_links_never_followed_to_the_hosts_files(
        store, tmp_path):
    # The packer runs on the host's /, so a followed link would read the host's files.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, target in (("leak", "/etc/shadow"), ("hostetc", "/etc"),
                             ("etc/passwd", "../../../../etc/shadow")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    image = put_image(store, "mc-vm/links", [archive.getvalue()], base=busybox_image(store))
    packed = gzip.decompress(packed_image(image, tmp_path).archive.read_bytes())
    host_secret = Path("/etc/shadow").read_bytes().split(b"\n")[0]
    assert host_secret not in packed, "the host's /etc/shadow went into the image"
    listing = subprocess.run(["busybox", "cpio", "-t"], input=packed,
                             capture_output=True).stdout.decode().split()
    assert {"leak", "hostetc", "etc/passwd"} <= set(listing)
    assert not [name for name in listing if name.startswith("hostetc/")]


def test_an_image_too_big_for_the_vms_ram_is_refused_in_one_line(store, tmp_path):
    image = put_image(store, "mc-vm/big", [layer(("zeros", bytes(24 * 2**20)))],
                      base=busybox_image(store))
    with pytest.raises(VMError, match="more than 16 MiB of files, more than a VM boots from RAM"):
        packed_image(image, tmp_path, max_bytes=16 * 2**20)
    assert not list(initramfs_dir().glob(image.digest.removeprefix("sha256:") + "*"))
    with pytest.raises(VMError, match=r"needs a VM of at least 1\d\dM: its 2\d MiB of files"):
        with VM(image=image, memory="64M") as vm:
            vm.start()
    assert vm.process is None, "QEMU never started"


def test_an_image_and_the_hosts_files_together_are_refused():
    with pytest.raises(InvalidArgument, match="an image or host_files"):
        VM(image="busybox", host_files=True)


# -- snapshot and restore: a VM that need not boot ------------------------------------------

def test_a_restored_vm_is_the_saved_guest_and_answers_sooner_than_a_cold_boot():
    from minicontainer.vm.initramfs import ANSWER
    with VM() as vm:
        boot = vm.boot(ANSWER)
        code, boot_id = vm.exec("cat /proc/sys/kernel/random/boot_id")
        assert code == 0 and len(boot_id.strip()) == 36
        vm.save_snapshot()
        assert vm.process.returncode is not None, "saving ends the first QEMU"
        saved = vm.snapshot_file
        assert saved.stat().st_size > 16 * 2**20, "the guest's RAM is in the file"
        for _ in range(2):                          # one snapshot, restored again and again
            started = time.monotonic()
            vm.restore()
            assert vm.exec("cat /proc/sys/kernel/random/boot_id; exit 5") == (5, boot_id)
            answered = time.monotonic() - started
            assert answered < boot.total / 2, \
                f"restored in {answered:.2f} s, booted in {boot.total:.2f} s"
    assert vm.process.returncode is not None and not saved.exists() and not vm.scratch.exists()


def test_restore_without_a_snapshot_and_exec_without_an_answering_guest_are_refused():
    with VM() as vm:
        with pytest.raises(VMError, match="save_snapshot"):
            vm.restore()
        vm.boot()
        with pytest.raises(VMError, match="boot\\(ANSWER\\)"):
            vm.exec("true")
        with pytest.raises(VMError, match="boot\\(\\) it first"):
            VM().save_snapshot()


def test_an_owner_killed_after_a_restore_leaves_no_qemu_and_no_snapshot_after_cleanup():
    from minicontainer.vm import cleanup
    pid, scratch = killed_owner("""if True:
        import time
        from minicontainer.vm import VM
        from minicontainer.vm.initramfs import ANSWER
        vm = VM()
        vm.boot(ANSWER)
        vm.save_snapshot()
        vm.restore()
        print(vm.process.pid, vm.scratch, flush=True)
        time.sleep(600)
        """)
    assert Path(scratch, "snapshot").exists() and Path(f"/proc/{pid}").exists()
    assert f"vm {Path(scratch).name.removeprefix('mc-vm-')}" in cleanup.cleanup()
    assert not Path(scratch).exists()
    assert not Path(f"/proc/{pid}").exists() or b"qemu" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()


# -- attack surface: device models, not slots ----------------------------------------------

def test_only_real_device_models_are_counted_not_empty_virtio_slots():
    from minicontainer.vm.qemu import device_models
    if "microvm" not in cpu().machines:
        pytest.skip("microvm is an x86 machine type")
    models, empty_slots = device_models("microvm")
    assert empty_slots == 8 and "virtio-mmio" not in models
    assert {"isa-serial", "ioapic", "mc146818rtc"} <= set(models) and len(models) < 12


# -- a network card: one bridge, two kinds of guests ----------------------------------------

VM_HTTPD = ("mkdir -p /www && echo hello from the vm > /www/index.html && httpd -p 80 -h /www; "
            "while :; do sleep 3600; done")


def killed_owner(code: str) -> list[str]:
    """Run `code` in an owner process until it prints its first line, then SIGKILL
    it (a crashed notebook): the words of that line."""
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        return owner.stdout.readline().split()
    finally:
        owner.kill()
        owner.wait()


def links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


@pytest.fixture
def bridge():
    from minicontainer import network
    name = network.create(f"mc-vmt-{os.urandom(2).hex()}")["name"]
    yield name
    network.remove(name, force=True)


def test_a_vm_on_the_bridge_answers_http_from_the_host_and_from_a_container(bridge):
    from minicontainer import network
    from minicontainer.container import Container
    with VM(network=bridge) as vm:
        vm.boot(VM_HTTPD)
        tap = vm.attachment.host_end
        assert wait_for_http(f"http://{vm.address}/") == "hello from the vm\n"
        with Container(["sleep", "30"], network=bridge) as neighbour:
            neighbour.start()
            # nc, not wget: Debian 12's static busybox wget segfaults on this kernel
            asked = neighbour.exec(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {vm.address} 80")
            assert asked.exit_code == 0 and asked.stdout.endswith("\r\n\r\nhello from the vm\n")
        assert f"{tap} " in links() and vm.address in network.load(bridge)["leases"]
    assert f"{tap} " not in links(), "the tap goes with stop()"
    assert network.load(bridge)["leases"] == {}, "and the lease with it"


def test_a_vm_pings_a_container_on_its_bridge(bridge):
    from minicontainer.container import Container
    with Container(["sleep", "60"], network=bridge) as neighbour:
        neighbour.start()
        with VM(network=bridge) as vm:
            code, output = vm.run(f"ping -c 1 -W 5 {neighbour.attachment.address}")
    assert code == 0 and "1 packets received" in output


def test_a_killed_owner_leaves_no_tap_no_lease_and_no_qemu_after_cleanup(bridge):
    from minicontainer import network
    from minicontainer.vm.cleanup import cleanup      # what `minicontainer cleanup` runs for VMs
    pid, tap = killed_owner(f"""if True:
        import time
        from minicontainer.vm import VM
        vm = VM(network={bridge!r})
        vm.boot()
        print(vm.process.pid, vm.attachment.host_end, flush=True)
        time.sleep(600)
        """)
    assert f"{tap} " in links() and network.load(bridge)["leases"]
    removed = cleanup()
    assert f"vm {tap.removeprefix('mc-')}" in removed
    assert f"{tap} " not in links() and network.load(bridge)["leases"] == {}
    assert not Path(f"/proc/{pid}").exists() or b"qemu" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()


def test_a_live_vms_tap_and_lease_survive_cleanup(bridge):
    from minicontainer import network
    from minicontainer.cleanup import cleanup
    with VM(network=bridge) as vm:
        vm.start()                        # cleanup may run while the guest still boots
        cleanup()
        assert vm.attachment.host_end in links() and network.load(bridge)["leases"]
        vm.ready()


@pytest.mark.parametrize(("options", "message"), [
    ({"network": "eth0"}, "invalid network 'eth0'"),
    ({"network": "mc-br0", "machine": "microvm"}, "microvm cannot have a network card"),
])
def test_a_network_card_is_refused_where_it_cannot_work(options, message):
    if "microvm" in str(options) and "microvm" not in cpu().machines:
        pytest.skip("microvm is an x86 machine type")
    with pytest.raises(InvalidArgument, match=message):
        VM(**options)


def test_a_vm_record_naming_a_tap_not_its_own_is_refused():
    from minicontainer.vm.cleanup import refused
    vm_id = "0123456789ab"
    record = {"owner": 1, "owner_started": 1, "qemu": None,
              "tmp": str(Path(tempfile.gettempdir()) / f"mc-vm-{vm_id}"),
              "network": {"network": "mc-br0", "address": "10.213.0.2", "gateway": "10.213.0.1",
                          "prefix": 24, "host_end": "mc-br0"}}
    assert "not its own mc-0123456789ab" in refused(vm_id, record)
    record["network"]["host_end"], record["network"]["address"] = f"mc-{vm_id}", ["10.0.0.1"]
    assert "malformed" in refused(vm_id, record)
    record["network"]["address"] = "10.213.0.2"
    record["network"]["host_end"] = f"mc-{vm_id}"
    assert refused(vm_id, record) is None


def test_a_vm_of_an_image_gets_its_network_card_too(store, bridge):
    from minicontainer import network
    gateway = network.load(bridge)["gateway"]
    with VM(image=busybox_image(store), network=bridge) as vm:
        code, output = vm.run(f"ip -o -4 addr show eth0; ping -c 1 -W 5 {gateway}")
        address = vm.address
    assert code == 0 and f"inet {address}/24" in output and "1 packets received" in output, output
