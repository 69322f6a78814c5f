"""The image: a directory tree built from the host's static busybox."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from minicontainer.container import run
from minicontainer.errors import RootfsError
from minicontainer.rootfs import build_busybox_rootfs, find_busybox, is_static


def test_the_image_is_a_static_busybox_and_links_to_it(rootfs):
    assert is_static(rootfs / "bin" / "busybox")
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"
    for path in ("etc/passwd", "etc/group", "etc/hostname", "etc/hosts"):
        assert (rootfs / path).is_file()
    for path in ("proc", "sys", "dev", "tmp"):
        assert (rootfs / path).is_dir() and not os.listdir(rootfs / path)


def test_a_dynamic_binary_is_refused_with_the_package_to_install(monkeypatch):
    assert not is_static(Path("/bin/ls"))
    monkeypatch.setattr("minicontainer.rootfs.BUSYBOX", Path("/bin/ls"))
    with pytest.raises(RootfsError, match="busybox-static"):
        find_busybox()


def test_a_build_appears_whole_or_not_at_all(tmp_path):
    stale = tmp_path / ".building-interrupted"
    (stale / "bin").mkdir(parents=True)            # what an interrupted build leaves
    image = build_busybox_rootfs(tmp_path / "busybox")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busybox"]
    assert run("cat /etc/passwd", rootfs=image).stdout.startswith("root:x:0:0")
