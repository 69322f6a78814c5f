"""Published ports are DNAT rules: no process of ours relays them (ports.py).

What the rules must do: reach the container from every host address (127.0.0.1
included) and from a neighbour through the host, keep a port published on 127.0.0.1
off the host's other addresses, keep the host port taken while the container lives
(held by its monitor alone, never by the container), and go away with the
container: on remove(), and by `cleanup` after its owner was killed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minicontainer import network, process, state
from minicontainer.cleanup import cleanup
from minicontainer.container import Container
from minicontainer.errors import MinicontainerError
from test_network import HTTPD, wait_for_http


def rules_tagged(tag: str) -> list[str]:
    """Every rule tagged `tag`, as `-A CHAIN ...` (iptables: of any table; nft: the
    DNAT rules of the table named `tag`)."""
    if network.firewall_tool() != "nft":
        return [rule for _, rule in network.tagged_iptables_rules(tag)]
    listing = subprocess.run(["nft", "list", "table", "ip", tag], capture_output=True,
                             text=True).stdout
    rules, chain = [], None
    for line in listing.splitlines():
        words = line.split()
        if words[:1] == ["chain"]:
            chain = words[1].upper()
        elif "dnat" in words:
            rules.append(f"-A {chain} {line.strip()}")
    return rules


def socket_inodes(port: int) -> set[str]:
    """Inodes of the host's listening TCP sockets on `port` (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":   # LISTEN
            inodes.add(fields[9])
    return inodes


def holders(inodes: set[str]) -> set[int]:
    """The pids of processes holding an fd on one of these sockets."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:                      # gone meanwhile
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) in wanted:
                    found.add(int(fd_dir.parent.name))
            except OSError:                  # closed meanwhile (our own listing's fd)
                pass
    return found


def test_a_published_port_is_rules_and_its_socket_is_held_by_the_monitor_alone():
    with Container(HTTPD, name="mc-ruled", network="mc-br0", ports={18110: 80}) as web:
        web.start()
        assert wait_for_http("http://127.0.0.1:18110/") == "hello from mc-ruled\n"
        assert wait_for_http(f"http://{web.attachment.gateway}:18110/") == \
            "hello from mc-ruled\n"
        chains = [rule.split()[1] for rule in rules_tagged(web.attachment.host_end)]
        assert sorted(chains) == ["OUTPUT", "PREROUTING"], chains
        monitor, command = web.child().pid, web.pid
        assert monitor != command
        assert holders(socket_inodes(18110)) == {monitor}, "held by the monitor, no one else"
        assert web.stats()["host_pss"] < 1024 * 1024, "a monitor, and no relay beside it"


def test_without_a_pid_namespace_there_is_no_monitor_and_the_caller_holds_the_port():
    namespaces = {"net", "mnt", "uts", "ipc"}
    with Container(HTTPD, name="mc-nopid", network="mc-br0", ports={18119: 80},
                   namespaces=namespaces) as web:
        web.start()
        assert wait_for_http("http://127.0.0.1:18119/") == "hello from mc-nopid\n"
        assert holders(socket_inodes(18119)) == {os.getpid()}, "not the container: us"
    socket.create_server(("0.0.0.0", 18119)).close()


def test_a_port_in_use_fails_before_anything_runs_and_a_published_one_cannot_be_taken():
    with socket.create_server(("0.0.0.0", 18111)):
        with pytest.raises(MinicontainerError, match="cannot publish port 18111"):
            Container(["true"], network="mc-br0", ports={18111: 80}).start()
    with Container(["sleep", "30"], network="mc-br0", ports={18111: 80}) as sleeper:
        sleeper.start()
        for host in ("0.0.0.0", "127.0.0.1"):
            with pytest.raises(OSError, match="in use"):
                taken = socket.socket()
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    taken.bind((host, 18111))
                    taken.listen()
                finally:
                    taken.close()
    socket.create_server(("0.0.0.0", 18111)).close()      # free again


def test_a_port_published_on_127_0_0_1_is_not_reached_at_the_hosts_other_addresses():
    with Container(HTTPD, name="mc-local", network="mc-br0",
                   ports={"127.0.0.1:18112": 80}) as web:
        web.start()
        assert wait_for_http("http://127.0.0.1:18112/") == "hello from mc-local\n"
        with pytest.raises(OSError):
            socket.create_connection((web.attachment.gateway, 18112), timeout=2).close()


def test_a_neighbour_reaches_a_published_port_through_the_host_hairpin():
    with Container(HTTPD, name="mc-hairweb", network="mc-br0", ports={18113: 80}) as web, \
         Container(["sleep", "30"], name="mc-hairclient", network="mc-br0") as client:
        web.start()
        client.start()
        wait_for_http("http://127.0.0.1:18113/")
        url = f"http://{client.attachment.gateway}:18113/"
        page = client.exec(f"for i in 1 2 3 4 5; do wget -qO- {url} && break; "
                           "sleep 0.2; done").stdout
        assert page == "hello from mc-hairweb\n"


def test_removing_the_container_removes_its_rules_and_frees_its_port():
    with Container(["sleep", "30"], network="mc-br0", ports={18114: 80}) as sleeper:
        sleeper.start()
        tag = sleeper.attachment.host_end
        assert rules_tagged(tag)
    assert rules_tagged(tag) == []
    socket.create_server(("0.0.0.0", 18114)).close()


OWNER = textwrap.dedent("""
    import time
    from minicontainer import Container
    c = Container(["sleep", "60"], name="mc-portorphan", network="mc-br0", ports={18115: 80})
    c.start()
    print(c.attachment.host_end, c.child().pid, flush=True)
    time.sleep(60)
    """)


def test_cleanup_spares_a_live_containers_rules_and_removes_a_dead_owners():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        tag, monitor = owner.stdout.readline().split()
        cleanup()                          # the owner lives: its rules are in use
        assert rules_tagged(tag), "a live container's rules were removed"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert "mc-portorphan" in cleanup()
    finally:
        owner.kill()
        owner.wait()
        if "mc-portorphan" in state.names():          # the test failed: tidy up anyway
            Container.load("mc-portorphan").remove(force=True)
    assert rules_tagged(tag) == []
    assert process.start_time(int(monitor)) is None
    socket.create_server(("0.0.0.0", 18115)).close()


def test_rules_no_record_names_are_left_by_cleanup_unless_all():
    """Rules tagged with a veth no record of ours names: a container recorded under
    another state root, whose owner may be alive. Left, named; `--all` removes them."""
    from minicontainer.cleanup import left_alone, remove_objects, unrecorded
    subprocess.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "18116",
                    "-j", "DNAT", "--to-destination", "10.213.0.99:80",
                    "-m", "comment", "--comment", "mc-0123456789ab"], check=True)
    try:
        assert "rules mc-0123456789ab" not in cleanup()
        assert rules_tagged("mc-0123456789ab") and "mc-0123456789ab (rules)" in left_alone()
        # What --all removes, but of the host's only ours: other sessions may be at work.
        ours = [(n, k) for n, k in unrecorded((state.containers_dir().parent,))
                if n == "mc-0123456789ab"]
        assert remove_objects(ours) == ["rules mc-0123456789ab"]
    finally:
        subprocess.run(["iptables", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "--dport",
                        "18116", "-j", "DNAT", "--to-destination", "10.213.0.99:80",
                        "-m", "comment", "--comment", "mc-0123456789ab"],
                       capture_output=True)
    assert rules_tagged("mc-0123456789ab") == []


def test_a_detached_containers_port_stays_taken_after_the_cli_has_exited():
    def mc(*args):
        return subprocess.run([sys.executable, "-m", "minicontainer", *args],
                              capture_output=True, text=True, timeout=60)
    started = mc("run", "-d", "--name", "mc-portcli", "--network", "mc-br0", "-p", "18117:80",
                 "--", "sh", "-c", HTTPD)
    assert started.returncode == 0, started.stderr
    try:
        assert wait_for_http("http://127.0.0.1:18117/") == "hello from mc-portcli\n"
        monitor = state.read("mc-portcli")["pid"]
        assert holders(socket_inodes(18117)) == {monitor}
        taken = mc("run", "-d", "--network", "mc-br0", "-p", "18117:80", "--", "true")
        assert taken.returncode != 0
        assert taken.stderr.strip() == ("minicontainer: cannot publish port 18117: Address "
                                        "already in use (is it in use? choose another)")
    finally:
        assert mc("rm", "-f", "mc-portcli").returncode == 0
    socket.create_server(("0.0.0.0", 18117)).close()
