"""The published-port proxy: it survives a flood of connections, and lives in a budget.

A published port is relayed by one process on the host (proxy.py). Anyone who can
reach the port can open connections to it, as many as they like; each costs the
relay file descriptors. These tests flood it beyond its fd limit, and check that it
runs inside a cgroup of its own that goes away with the container, even after a crash.

The flood is lowered to a size a test can afford with prlimit(2) on the running
proxy (what `prlimit --pid PID --nofile=64` does): RLIMIT_NOFILE is the relay's fd
limit, whatever sets it.
"""
from __future__ import annotations

import resource
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from minicontainer import cgroups, process, state
from minicontainer.cleanup import cleanup
from minicontainer.container import Container
from test_network import HTTPD, wait_for_http

FD_LIMIT = 256


def proxy_pid(container: Container) -> int:
    pid, started = container._proxy
    assert process.start_time(pid) == started, "the proxy is not running"
    return pid


def open_without_waiting(port: int, count: int) -> list[socket.socket]:
    """`count` connections to `port`, each begun with a non-blocking connect(2): a
    flood does not wait for the relay to accept."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def abort(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a flooder that gives up does: nothing is
    left for the relay to pass on. (After a plain close, the relay still connects to
    the container for each client that queued; busybox httpd queues only 9 of those
    and the kernel retries a dropped SYN after 1 s, so the container becomes the
    bottleneck, not the relay.)"""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def cgroup_of(pid: int) -> dict[str, str]:
    """For the memory and pids controllers: the group `pid` is in (/proc/PID/cgroup)."""
    where = cgroups.hierarchies()
    groups = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in ("memory", "pids"):
            if (where[controller][0] == "v2" and controllers == "") or \
               controller in controllers.split(","):
                groups[controller] = path
    return groups


def test_a_flood_of_twice_the_relays_fd_limit_does_not_kill_the_published_port():
    with Container(HTTPD, name="mc-flooded", network="mc-br0", ports={18110: 80}) as web:
        web.start()
        assert wait_for_http("http://127.0.0.1:18110/") == "hello from mc-flooded\n"
        pid = proxy_pid(web)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
        flood = open_without_waiting(18110, 2 * FD_LIMIT)
        try:
            time.sleep(1)                  # the relay takes what it can
            assert process.start_time(pid) == web._proxy[1], "the flood killed the proxy"
            held = len(list(Path(f"/proc/{pid}/fd").iterdir()))
            assert held < FD_LIMIT, "the relay should stop accepting before it runs out"
        finally:
            for s in flood:
                abort(s)
        started = time.monotonic()
        assert wait_for_http("http://127.0.0.1:18110/", tries=1) == "hello from mc-flooded\n"
        served_after = time.monotonic() - started
        assert served_after < 1.0, f"served {served_after:.2f} s after the flood ended"
        print(f"fd limit {FD_LIMIT}, {2 * FD_LIMIT} connections held, "
              f"served {served_after * 1000:.0f} ms after they closed")


def test_the_proxy_runs_in_a_cgroup_of_its_own_with_memory_and_pids_limits():
    with Container(HTTPD, name="mc-budgeted", network="mc-br0", ports={18111: 80}) as web:
        web.start()
        pid = proxy_pid(web)
        groups = cgroup_of(pid)
        assert groups["memory"] == groups["pids"] == f"/minicontainer/mc-{web.spec.id}-proxy"
        group = web.proxy_cgroup
        assert group.pids() == [pid], "the proxy alone, not the container, is in it"
        if group.version["memory"] == "v2":
            memory = int(cgroups.read(group.dirs["memory"] / "memory.max"))
        else:
            memory = int(cgroups.read(group.dirs["memory"] / "memory.limit_in_bytes"))
        pids = int(cgroups.read(group.dirs["pids"] / "pids.max"))
        assert memory <= 64 * 1024**2 and pids <= 64
        assert wait_for_http("http://127.0.0.1:18111/") == "hello from mc-budgeted\n"


def test_removing_the_container_removes_its_proxy_and_the_proxys_cgroup():
    with Container(HTTPD, name="mc-removed", network="mc-br0", ports={18112: 80}) as web:
        web.start()
        pid, group = proxy_pid(web), web.proxy_cgroup
        assert all(d.is_dir() for d in group.dirs.values())
        web.remove(force=True)
    assert process.start_time(pid) is None
    assert not any(d.exists() for d in group.dirs.values())


OWNER = textwrap.dedent("""
    import sys, time
    from minicontainer import Container
    c = Container(["sleep", "60"], name="mc-proxyorphan", network="mc-br0", ports={18113: 80})
    c.start()
    print(c._proxy[0], c.proxy_cgroup.path, flush=True)
    time.sleep(60)
    """)


def test_cleanup_spares_a_live_proxys_cgroup_and_removes_a_dead_owners():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        pid, path = owner.stdout.readline().split()
        group = cgroups.Cgroup(path)
        cleanup()                          # the owner lives: nothing of it is a stray
        assert all(d.is_dir() for d in group.dirs.values()), "a live proxy's group was removed"
        assert int(pid) in group.pids()
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert "mc-proxyorphan" in cleanup()
    finally:
        owner.kill()
        owner.wait()
        if "mc-proxyorphan" in state.names():          # the test failed: tidy up anyway
            Container.load("mc-proxyorphan").remove(force=True)
    assert not any(d.exists() for d in group.dirs.values())
    assert process.start_time(int(pid)) is None
    assert "mc-proxyorphan" not in state.names()
