"""Layer 1: chroot gives a process a new `/`, and nothing else."""
from __future__ import annotations

import os
import socket
from functools import partial

from minicontainer import process
from minicontainer.chroot import escape_chroot, spawn_chrooted
from minicontainer.container import run


def run_chrooted(rootfs, argv, **options):
    """spawn_chrooted to completion, returning (exit code, stdout)."""
    out = os.memfd_create("stdout")
    child = spawn_chrooted(rootfs, argv, stdio=(None, out, None), **options)
    code = os.waitstatus_to_exitcode(child.wait(10))
    child.close()
    os.lseek(out, 0, 0)
    text = os.read(out, 1 << 16).decode()
    os.close(out)
    return code, text


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
        spawn_chrooted(rootfs, ["/bin/no-such-program"])
    except process.CommandNotFound as e:
        assert "no-such-program" in str(e)
    else:
        raise AssertionError("exec of a missing program must raise CommandNotFound")
