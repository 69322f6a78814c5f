"""Layer 2: each namespace gives the container its own copy of one thing."""
from __future__ import annotations

import os
import socket
import time
from functools import partial
from pathlib import Path

import pytest

from minicontainer import syscalls
from minicontainer.container import Container, run
from minicontainer.namespaces import DEFAULT, FLAGS, ns_ids
from minicontainer.process import Channel, fork_and_wait, spawn, wait_for_parent


def test_container_has_its_own_hostname():
    assert run("hostname", hostname="inside").stdout.strip() == "inside"
    assert socket.gethostname() != "inside"


def test_the_command_is_pid_1():
    assert run("echo $$").stdout.strip() == "1"


def test_container_cannot_see_host_processes():
    result = run(["ps", "-o", "pid,comm"])
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows == [["1", "ps"]], "ps, as PID 1, should be the only process it can see"


def test_without_a_pid_namespace_host_processes_are_visible():
    result = run("ls /proc", namespaces=DEFAULT - {"pid"})
    assert str(os.getpid()) in result.stdout.split()


def test_container_has_its_own_mount_table():
    mounts = run("cat /proc/self/mounts").stdout
    points = [line.split()[1] for line in mounts.splitlines()]
    assert points[0] == "/" and mounts.split()[2] == "overlay"
    assert {"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"} <= set(points)
    host_points = {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}
    assert not (host_points - {"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"}
                ) & set(points), "no host mount point may show through"


def test_dev_holds_only_a_few_harmless_devices():
    listing = set(run("ls /dev").stdout.split())
    assert listing == {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx",
                       "shm", "fd", "stdin", "stdout", "stderr"}
    assert run("echo gone > /dev/null && head -c 4 /dev/zero | wc -c").stdout.strip() == "4"


def test_loopback_is_up_in_the_new_network_namespace():
    links = run("ip -o link").stdout.splitlines()
    assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0]
    assert run("ping -c 1 -W 2 127.0.0.1").exit_code == 0


def test_every_namespace_of_a_container_differs_from_the_hosts():
    with Container(["sleep", "30"]) as c:
        c.start()
        inside, outside = ns_ids(c.pid), ns_ids()
        for kind in FLAGS:
            assert (inside[kind] != outside[kind]) == (kind in DEFAULT), kind


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_each_namespace_switch_changes_only_its_namespace(kind):
    with Container(["sleep", "30"], namespaces=[kind]) as c:
        c.start()
        inside, outside = ns_ids(c.pid), ns_ids()
        assert {k for k in FLAGS if inside[k] != outside[k]} == {kind}


def test_container_shares_the_hosts_kernel():
    result = run("uname -r; cat /proc/sys/kernel/random/boot_id")
    release, boot_id = result.stdout.split()
    assert release == os.uname().release
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_user_namespace_maps_root_inside_to_our_uid_outside():
    result = run("id -u; cat /proc/self/uid_map", namespaces=DEFAULT | {"user"})
    uid, *mapping = result.stdout.split()
    assert uid == "0" and mapping == ["0", str(os.geteuid()), "1"]


class SlowToTellPid(Channel):
    """A channel whose `pid` message is late, as a waiter descheduled under load is."""

    def tell(self, message: bytes) -> None:
        """Wait a little before telling a pid."""
        if message.startswith(b"pid "):
            time.sleep(0.5)
        super().tell(message)


def test_the_command_pid_reaches_the_parent_before_its_ready_even_when_the_waiter_is_slow():
    # The parent plugs eth0 into the namespaces of the pid it last heard of: heard
    # after `ready`, that was the waiter's, in the host's network namespace.
    channel, heard = SlowToTellPid(), []
    steps = [partial(syscalls.unshare, syscalls.CLONE_NEWPID), partial(fork_and_wait, channel),
             partial(syscalls.unshare, syscalls.CLONE_NEWNET),
             partial(wait_for_parent, channel)]
    child = spawn(["/bin/true"], steps, channel=channel, when_ready=heard.append)
    child.wait(10)
    child.close()
    assert heard == [child.main_pid] and child.main_pid != child.pid


def test_a_cgroup_namespace_is_rooted_at_the_containers_own_group():
    # Made before the process joins its group, its "/" would be the runtime's group
    # and the container would see its own path (/minicontainer/mc-…) from there.
    result = run(["cat", "/proc/self/cgroup"], namespaces=DEFAULT | {"cgroup"})
    lines = result.stdout.splitlines()
    assert lines and all(line.endswith(":/") for line in lines), result.stdout
