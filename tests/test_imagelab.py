"""The images lesson's registry and images (course/imagelab.py): a real registry on
127.0.0.1 that never outlives its use, and images made here that pull back whole."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicontainer.course import imagelab
from minicontainer.images import registry
from minicontainer.images.store import Store, busybox_image

pytestmark = pytest.mark.skipif(
    not all(map(shutil.which, imagelab.TOOLS)),
    reason="needs docker-registry and skopeo (`make lab` installs them)")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture
def lesson_store(tmp_path) -> Store:
    """A store holding busybox and lesson:1 (busybox, then a layer deleting /etc/hostname)."""
    store = Store(tmp_path / "images")
    busybox_image(store)
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("second layer\n")
    (top / "etc" / ".wh.hostname").touch()
    imagelab.add_layer(store, "busybox", top, "lesson:1", "delete /etc/hostname")
    return store


def test_an_added_layer_keeps_the_base_layers_and_its_whiteout_becomes_overlayfs_mark(
        lesson_store):
    busybox, lesson = lesson_store.image("busybox"), lesson_store.image("lesson:1")
    assert lesson.layers[:1] == busybox.layers and len(lesson.layers) == 2
    assert len(lesson.config["rootfs"]["diff_ids"]) == 2
    whiteout = os.lstat(lesson.layers[1] / "etc" / "hostname")
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert (lesson.layers[0] / "etc" / "hostname").is_file()      # the base is untouched


def test_an_image_pushed_to_the_lesson_registry_pulls_back_whole(lesson_store, tmp_path):
    with imagelab.LocalRegistry() as lab:
        reference = lab.push(lesson_store, "lesson:1", "lesson/whiteout:1")
        pulled = Store(tmp_path / "pulled")
        registry.pull(reference, pulled)
        image = pulled.image(reference)
    assert (image.layers[1] / "etc" / "motd").read_text() == "second layer\n"
    assert image.config["rootfs"] == lesson_store.image("lesson:1").config["rootfs"]


def test_a_second_lesson_registry_stops_the_first_and_stop_twice_is_harmless():
    first = imagelab.LocalRegistry().start()
    pid, storage = first.server.pid, Path(first.directory.name)
    second = imagelab.LocalRegistry().start()
    try:
        assert gone_within(pid, 1) and not storage.exists()
        assert imagelab.LocalRegistry.running is second
    finally:
        second.stop()
        second.stop()
    assert imagelab.LocalRegistry.running is None


def test_a_killed_kernel_takes_its_registry_along_and_the_next_run_its_files():
    """As a Jupyter kernel killed by a restart, or by a crash: no clean-up of its own."""
    owner = subprocess.Popen([sys.executable, "-c",
                              "from minicontainer.course import imagelab; import time; "
                              "lab = imagelab.LocalRegistry().start(); "
                              "work = imagelab.scratch(); "
                              "print(lab.server.pid, lab.directory.name, work.name, flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    pid, *directories = owner.stdout.readline().split()
    assert alive(int(pid)) and all(map(os.path.isdir, directories))
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert gone_within(int(pid), 5), "the registry outlived the process that started it"
    mine = imagelab.scratch()
    try:
        assert not any(map(os.path.exists, directories)), "a dead process's files stayed"
        assert Path(mine.name).is_dir()
    finally:
        mine.cleanup()
