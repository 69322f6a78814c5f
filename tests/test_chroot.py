"""Layer 1: chroot gives a process a new `/`, and nothing else."""
from __future__ import annotations

import socket
from functools import partial

from minicontainer import process
from minicontainer.chroot import escape_chroot, run_chrooted
from minicontainer.container import run


def test_chroot_makes_the_image_the_root(rootfs):
    code, out = run_chrooted(rootfs, ["/bin/cat", "/etc/os-release"])
    assert code == 0 and "minicontainer busybox" in out


def test_chroot_alone_shares_hostname_and_processes(rootfs):
    code, out = run_chrooted(rootfs, ["/bin/hostname"])
    assert out.strip() == socket.gethostname()


def test_chroot_alone_can_be_escaped(rootfs, host_secret):
    path, token = host_secret
    code, out = run_chrooted(rootfs, [], main=partial(escape_chroot, str(path)))
    assert code == 0 and out == token, "a root process should climb out of a plain chroot"


def test_chroot_only_container_can_be_escaped(host_secret):
    path, token = host_secret
    result = run(partial(escape_chroot, str(path)), namespaces=[])
    assert result.stdout == token


def test_the_same_escape_fails_after_pivot_root(host_secret):
    path, token = host_secret
    result = run(partial(escape_chroot, str(path)))
    assert result.exit_code == 1 and token not in result.stdout
    assert "FileNotFoundError" in result.stderr, "the host's files are out of reach"


def test_a_missing_command_is_reported_not_hidden(rootfs):
    try:
        run_chrooted(rootfs, ["/bin/no-such-program"])
    except process.CommandNotFound as e:
        assert "no-such-program" in str(e)
    else:
        raise AssertionError("exec of a missing program must raise CommandNotFound")
