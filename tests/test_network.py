"""Layer 4: a bridge, veth pairs and NAT wire containers to each other and the host.

Traffic in these tests goes only to loopback and to addresses on the bridges the tests
create; the NAT rule is inspected, never exercised toward the outside.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nettools import wait_for_http

from minicontainer import network, state
from minicontainer.cleanup import cleanup
from minicontainer.container import Container, run
from minicontainer.errors import InvalidArgument, MinicontainerError

HTTPD = ("mkdir -p /www && echo hello from $(hostname) > /www/index.html && "
         "exec httpd -f -p 80 -h /www")


def address_of(container: Container) -> str:
    return container.attachment.address


@pytest.fixture
def two_networks():
    for name in ("mc-test-a", "mc-test-b"):
        network.create(name)
    yield "mc-test-a", "mc-test-b"
    for name in ("mc-test-a", "mc-test-b"):
        network.remove(name)


def test_two_containers_on_one_network_ping_and_talk_over_tcp():
    with Container(HTTPD, name="mc-web", network="mc-br0") as web, \
         Container(["sleep", "30"], name="mc-client", network="mc-br0") as client:
        web.start()
        client.start()
        assert client.exec("ping -c 1 -W 2 mc-web").exit_code == 0
        page = client.exec("for i in 1 2 3 4 5; do wget -qO- http://mc-web/ && break; "
                           "sleep 0.2; done").stdout
        assert page == "hello from mc-web\n"


def test_each_container_gets_eth0_an_address_and_a_default_route():
    result = run("ip -o -4 addr show eth0; ip route", network="mc-br0")
    assert " eth0 " in result.stdout and "inet 10.213." in result.stdout
    assert "default via 10.213." in result.stdout


def test_the_host_reaches_a_container_on_the_bridge():
    with Container(HTTPD, name="mc-hosted", network="mc-br0") as web:
        web.start()
        ping = subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", address_of(web)],
                              capture_output=True)
        assert ping.returncode == 0
        assert wait_for_http(f"http://{address_of(web)}/") == "hello from mc-hosted\n"


def test_a_published_port_answers_on_loopback_and_on_the_bridge_address():
    with Container(HTTPD, name="mc-published", network="mc-br0", ports={18090: 80}) as web:
        web.start()
        gateway = web.attachment.gateway
        assert wait_for_http("http://127.0.0.1:18090/") == "hello from mc-published\n"
        assert wait_for_http(f"http://{gateway}:18090/") == "hello from mc-published\n"


def test_containers_on_two_networks_cannot_reach_each_other(two_networks):
    net_a, net_b = two_networks
    with Container(HTTPD, name="mc-far", network=net_b) as far, \
         Container(["sleep", "30"], name="mc-near", network=net_a) as near, \
         Container(["sleep", "30"], name="mc-mate", network=net_b) as mate:
        for c in (far, near, mate):
            c.start()
        url = f"http://{address_of(far)}/"
        assert mate.exec(f"for i in 1 2 3 4 5; do wget -qO- {url} && break; sleep 0.2; done"
                         ).exit_code == 0, "same network: reachable"
        assert near.exec(f"wget -T 2 -qO- {url}").exit_code != 0, "other network: cut off"
        assert near.exec(f"ping -c 1 -W 1 {address_of(far)}").exit_code != 0


def test_twenty_containers_at_once_get_distinct_addresses_and_leave_nothing():
    containers = [Container(["sleep", "60"], name=f"mc-many-{i}", network="mc-br0")
                  for i in range(20)]
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:      # attached concurrently
            list(pool.map(Container.start, containers))
        addresses = [c.exec("ip -o -4 addr show eth0").stdout.split()[3] for c in containers]
        assert len(set(addresses)) == 20, "all alive at once: 20 distinct addresses"
        assert sorted(addresses) == sorted(f"{c.attachment.address}/24" for c in containers)
    finally:
        with ThreadPoolExecutor(max_workers=20) as pool:      # and detached concurrently
            list(pool.map(lambda c: c.remove(force=True), containers))
    assert network.names() == [], "the implicit network goes with its last container"
    assert not [n for n in Path("/sys/class/net").iterdir() if n.name.startswith("mc-")]


@pytest.mark.parametrize("tool", ["iptables", "nft"])
def test_the_nat_rule_exists_exactly_while_the_network_does(tool, monkeypatch):
    monkeypatch.setenv("MINICONTAINER_FIREWALL", tool)
    forwarding_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    record = network.create("mc-test-nat")
    try:
        if tool == "iptables":
            rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True,
                                   text=True).stdout
        else:
            rules = subprocess.run(["nft", "list", "table", "ip", "mc-test-nat"],
                                   capture_output=True, text=True).stdout
        assert record["subnet"] in rules and ("MASQUERADE" in rules or "masquerade" in rules)
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    finally:
        network.remove("mc-test-nat")
    assert not network.tagged_iptables_rules("mc-test-nat")
    assert subprocess.run(["nft", "list", "table", "ip", "mc-test-nat"],
                          capture_output=True).returncode != 0
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forwarding_before


@pytest.mark.parametrize("make, message", [
    (lambda: network.create("mc-test-clash", subnet="127.0.0.0/24"), "overlaps the host's route"),
    (lambda: network.create("not-ours"), "invalid network name"),
    (lambda: Container(["true"], ports={80: 80}), "needs a network"),
    (lambda: Container(["true"], network="mc-br0", ports={70000: 80}), "invalid port mapping"),
    (lambda: Container(["true"], network="mc-br0", namespaces=["mnt", "pid"]), "net namespace"),
    (lambda: run(["true"], network="mc-nowhere"), "no network named"),
])
def test_bad_network_input_is_refused_and_changes_nothing(make, message):
    with pytest.raises((InvalidArgument, MinicontainerError), match=message):
        make()
    assert network.names() == [] and state.names() == []


def test_a_port_in_use_is_refused_before_the_container_starts():
    import socket
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 18091))
        taken.listen()
        with pytest.raises(MinicontainerError, match="cannot publish port 18091"):
            run(["true"], network="mc-br0", ports={18091: 80})
    assert network.names() == [] and state.names() == []


def test_cleanup_removes_the_network_a_killed_owner_left():
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from minicontainer import Container
        Container(["sleep", "60"], name="mc-netorphan", network="mc-br0",
                  ports={18092: 80}).start()
        print("started", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "started\n"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert network.names() == ["mc-br0"]
        removed = cleanup()
        assert "mc-netorphan" in removed
    finally:
        owner.kill()
        owner.wait()
    assert network.names() == [] and state.names() == []
    assert not [n for n in Path("/sys/class/net").iterdir() if n.name.startswith("mc-")]


def test_the_command_line_creates_uses_and_removes_a_network():
    def mc(*args):
        return subprocess.run([sys.executable, "-m", "minicontainer", *args],
                              capture_output=True, text=True, timeout=60)
    assert mc("network", "create", "mc-test-cli").returncode == 0
    try:
        assert "mc-test-cli" in mc("network", "ls").stdout
        web = mc("run", "-d", "--name", "mc-cli-net", "--network", "mc-test-cli",
                 "-p", "127.0.0.1:18093:80", "--", "sh", "-c", HTTPD)
        assert web.returncode == 0, web.stderr
        try:
            assert wait_for_http("http://127.0.0.1:18093/") == "hello from mc-cli-net\n"
            busy = mc("network", "rm", "mc-test-cli")
            assert busy.returncode != 0 and "still has containers" in busy.stderr
        finally:
            mc("rm", "-f", "mc-cli-net")
    finally:
        assert mc("network", "rm", "mc-test-cli").returncode == 0
    assert network.names() == []


def test_neither_the_bridge_nor_a_container_takes_router_advertisements():
    """A container may send an IPv6 router advertisement (it holds NET_RAW): neither the
    host's bridge nor eth0 inside listens to one (accept_ra=0, autoconf=0)."""
    check = "cat /proc/sys/net/ipv6/conf/eth0/accept_ra /proc/sys/net/ipv6/conf/eth0/autoconf"
    network.create("mc-test-ra")       # a bridge of our own: mc-br0 may be older than us
    try:
        bridge = Path("/proc/sys/net/ipv6/conf/mc-test-ra")
        assert [(bridge / key).read_text().strip() for key in ("accept_ra", "autoconf")] == [
            "0", "0"]
        assert run(check, network="mc-test-ra").stdout.split() == ["0", "0"]
    finally:
        network.remove("mc-test-ra")


def test_a_veth_is_never_plugged_into_the_hosts_own_network_namespace():
    before = host_links()
    cable = network.Attachment("mc-br0", "10.213.0.250", "10.213.0.1", 24, "mc-000000000000")
    with pytest.raises(MinicontainerError, match="shares the host's network namespace"):
        cable.connect(os.getpid())
    assert host_links() == before


def host_links() -> str:
    """The host's interfaces, by name."""
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


def test_cleanup_leaves_a_veth_and_a_bridge_no_record_names_unless_all():
    # Recorded under another state root (or `oci --root`), or not at all: whether the
    # far end's namespace lives or not, this root's records cannot say the owner died.
    from minicontainer.cleanup import left_alone, remove_objects, unrecorded
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.2)
        for args in (["link", "add", "mc-xbr0", "type", "bridge"],
                     ["link", "add", "mc-abcdef012345", "master", "mc-xbr0", "type", "veth",
                      "peer", "name", "eth0", "netns", str(holder.pid)],
                     ["link", "add", "mc-xbr1", "type", "bridge"]):      # idle
            subprocess.run(["ip", *args], check=True)
        removed = cleanup()
        assert not {"mc-abcdef012345", "mc-xbr0", "mc-xbr1"} & set(removed)
        assert all(n in host_links() for n in ("mc-abcdef012345", "mc-xbr0", "mc-xbr1"))
        assert {"mc-abcdef012345 (veth)", "mc-xbr0 (bridge)", "mc-xbr1 (bridge)"} <= set(
            left_alone())
        # What --all removes, but of the host's only ours: other sessions may be at work.
        ours = [(n, k) for n, k in unrecorded((state.containers_dir().parent,))
                if n in ("mc-abcdef012345", "mc-xbr0", "mc-xbr1")]
        assert sorted(remove_objects(ours)) == ["mc-abcdef012345", "mc-xbr0", "mc-xbr1"]
    finally:
        holder.kill()
        holder.wait()
        for name in ("mc-abcdef012345", "mc-xbr0", "mc-xbr1"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_a_network_whose_name_another_link_has_is_refused_and_that_link_kept():
    """A bridge of another state root's (or made by hand) with the name we want: our
    record of it must not stay, or our cleanup would delete theirs."""
    subprocess.run(["ip", "link", "add", "mc-xtaken", "type", "bridge"], check=True)
    try:
        with pytest.raises(MinicontainerError, match="exists on the host already"):
            network.create("mc-xtaken")
        assert network.names() == [] and "mc-xtaken" in host_links()
        assert "mc-xtaken" not in cleanup() and "mc-xtaken" in host_links()
    finally:
        subprocess.run(["ip", "link", "del", "mc-xtaken"], capture_output=True)


def test_a_bridge_that_vanished_is_one_clear_error_that_blames_no_one():
    network.create("mc-test-gone")
    try:
        subprocess.run(["ip", "link", "del", "mc-test-gone"], check=True)   # another's cleanup
        with pytest.raises(network.BridgeVanished) as raised:
            run(["true"], network="mc-test-gone")
        message = str(raised.value)
        assert "vanished" in message and "by hand" not in message and "\n" not in message
        assert state.names() == []
    finally:
        network.remove("mc-test-gone", force=True)
    assert "mc-test-gone" not in host_links()


# -- the CLI's helper: pyroute2 loaded once, not in every `run --network` -----------------

def helpers_serving(root: Path) -> list[int]:
    """Pids of network helpers started for the state root `root`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (b"minicontainer.network_helper" in (proc / "cmdline").read_bytes()
                    and f"MINICONTAINER_RUN={root}\0".encode() in (proc / "environ").read_bytes()
                    and not (proc / "stat").read_text().rsplit(")", 1)[1].startswith(" Z")):
                found.append(int(proc.name))
        except (OSError, ValueError):
            pass
    return found


def until(condition, seconds: float = 8) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.fixture
def cli_with_own_root(tmp_path):
    """`minicontainer ARGS` with records of its own (and a helper idle for 3 s at most),
    on a network mc-test-hlp; the state root, which must be gone afterwards; the
    environment, to change."""
    root = tmp_path / "run"
    env = {**os.environ, "MINICONTAINER_RUN": str(root), "MINICONTAINER_HELPER_IDLE": "3"}

    def mc(*args):
        return subprocess.run([sys.executable, "-m", "minicontainer", *args], env=env,
                              capture_output=True, text=True, timeout=60)
    assert mc("network", "create", "mc-test-hlp").returncode == 0
    try:
        yield mc, root, env
    finally:
        assert mc("network", "rm", "mc-test-hlp").returncode == 0
        mc("cleanup")                               # a helper the test left, live or dead
    assert until(lambda: not helpers_serving(root) and not root.exists()), list(root.iterdir())


WIRED = ["run", "--no-cgroup", "--network", "mc-test-hlp", "--", "sh", "-c",
         "ip -o -4 addr show eth0; ip route"]


def test_the_cli_wires_through_one_helper_that_leaves_nothing_once_idle(cli_with_own_root):
    mc, root, env = cli_with_own_root
    first = mc(*WIRED)
    assert first.returncode == 0 and "inet 10.213." in first.stdout, first.stderr
    assert "default via" in first.stdout
    helper = helpers_serving(root)
    assert len(helper) == 1, "the CLI did the netlink work itself"
    assert mc(*WIRED).returncode == 0 and helpers_serving(root) == helper   # the same one
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "minicontainer", *WIRED],
                             env=env, capture_output=True, text=True, timeout=60).stderr
    assert "minicontainer.network_helper" in imports and "pyroute2" not in imports
    assert until(lambda: not helpers_serving(root), 10), "the helper outlived its idle time"
    assert not (root / "network-helper.sock").exists()


def test_a_killed_helper_is_replaced_and_cleanup_stops_or_forgets_one(cli_with_own_root):
    mc, root, env = cli_with_own_root
    env["MINICONTAINER_HELPER_IDLE"] = "60"            # alive until cleanup, however slow
    assert mc(*WIRED).returncode == 0
    [helper] = helpers_serving(root)
    os.kill(helper, signal.SIGKILL)                    # a crash: its socket file stays
    assert until(lambda: not helpers_serving(root))
    assert (root / "network-helper.sock").exists()
    again = mc(*WIRED)
    assert again.returncode == 0 and "inet 10.213." in again.stdout, again.stderr
    [replacement] = helpers_serving(root)
    assert replacement != helper
    swept = mc("cleanup")                              # a live one is asked to exit
    assert swept.returncode == 0 and "network helper" in swept.stdout, swept.stdout
    assert until(lambda: not helpers_serving(root))
    assert mc(*WIRED).returncode == 0
    [third] = helpers_serving(root)
    os.kill(third, signal.SIGKILL)
    assert until(lambda: not helpers_serving(root))
    swept = mc("cleanup")                              # a dead one's socket is removed
    assert "stale network helper socket" in swept.stdout, swept.stdout
    assert not (root / "network-helper.sock").exists()


def test_the_helper_refuses_the_hosts_own_namespace_and_links_not_ours(tmp_path, monkeypatch):
    from minicontainer import network_helper
    monkeypatch.setenv("MINICONTAINER_RUN", str(tmp_path / "run"))
    cable = {"op": "connect", "network": "mc-br0", "address": "10.213.0.250",
             "gateway": "10.213.0.1", "prefix": 24, "host_end": "mc-000000000000"}
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    other = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        until(lambda: Path(f"/proc/{other.pid}/ns/net").stat().st_ino != os.fstat(host).st_ino
              and Path(f"/proc/{other.pid}/comm").read_text().strip() == "sleep")
        away = os.open(f"/proc/{other.pid}/ns/net", os.O_RDONLY)
        with pytest.raises(MinicontainerError, match="shares the host's network namespace"):
            network_helper.ask(cable, host)
        with pytest.raises(MinicontainerError, match="not a link of ours"):
            network_helper.ask({**cable, "host_end": "eth0"}, away)
        with pytest.raises(MinicontainerError, match="not a link of ours"):
            network_helper.ask({**cable, "network": "docker0"}, away)
        with pytest.raises(MinicontainerError, match="not a request the helper serves"):
            network_helper.ask({"op": "delete", "ifname": "lo"})
        assert not Path("/sys/class/net/mc-000000000000").exists()
        assert Path("/sys/class/net/lo").exists()
    finally:
        os.close(host)
        other.kill()
        other.wait()
        assert network_helper.stop() == ["network helper"]
    assert until(lambda: not helpers_serving(tmp_path / "run") and not (tmp_path / "run").exists())


PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
socket.send_fds(s, [b'{"op": "delete", "ifname": "mc-nothing1"}'], [])
s.settimeout(10)
print(repr(s.recv(100)))
"""


def test_the_helper_says_not_a_word_to_another_user(monkeypatch):
    # Its socket file is 0600 in a root directory; made reachable here on purpose, the
    # helper itself still refuses: it reads the caller's uid from the kernel.
    from minicontainer import network_helper
    base = Path(tempfile.mkdtemp(prefix="mc-helper-"))
    try:
        base.chmod(0o755)
        monkeypatch.setenv("MINICONTAINER_RUN", str(base / "run"))
        network_helper.ask({"op": "delete", "ifname": "mc-nothing0"})    # starts it
        (base / "run").chmod(0o755)
        network_helper.socket_path().chmod(0o666)
        other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                sys.executable, "-c", PEER, str(network_helper.socket_path())],
                               capture_output=True, text=True, timeout=30, cwd="/")
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "b''"           # not even "accepted"
    finally:
        assert network_helper.stop() == ["network helper"]
        shutil.rmtree(base, ignore_errors=True)
    assert until(lambda: not helpers_serving(base / "run"))


def test_the_helper_survives_a_request_that_is_not_a_json_object(tmp_path, monkeypatch):
    """A request is untrusted input: `[1]` (JSON, not an object) once ended the helper
    outside its error handling, leaving its socket file behind (an attack review)."""
    import socket
    from minicontainer import network_helper
    monkeypatch.setenv("MINICONTAINER_RUN", str(tmp_path / "run"))
    try:
        network_helper.ask({"op": "delete", "ifname": "mc-nothing2"})    # starts it
        for request in (b"[1]", b"null", b"3", b"not json"):
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(network_helper.socket_path()))
                client.sendall(request)
                client.settimeout(10)
                assert b"error" in b"".join(iter(lambda: client.recv(100), b""))
        network_helper.ask({"op": "delete", "ifname": "mc-nothing2"})    # the same one
    finally:
        assert network_helper.stop() == ["network helper"]
