"""Layer 4: networking — a bridge, a virtual cable per container, addresses and NAT.

A new network namespace holds only a loopback: the container is cut off. We wire it
up the way Docker's default bridge does, with netlink messages (what `ip link`,
`ip addr` and `ip route` send) through pyroute2:

- a bridge on the host (mc-br0): a virtual switch, whose address is the gateway;
- per container a veth pair, a virtual cable with two ends: one stays on the host,
  plugged into the bridge; the other moves into the container's namespace as eth0;
- an address for eth0 from the bridge's subnet, and a default route via the bridge;
- NAT (MASQUERADE): what leaves the host seems to come from the host's own address,
  with ip_forward on while a network exists; and a rule that lets nothing *new* into
  a network from elsewhere, so two networks cannot reach each other;
- no IPv6 router advertisements taken from a container: by default the kernel lets any
  neighbour announce itself as a router (net.ipv6.conf.*.accept_ra=1), and a container
  holds NET_RAW, enough to send one. Taken by the bridge, it would give the *host* new
  addresses and routes (CVE-2020-13401); so accept_ra=0 on the bridge, and in every
  container's namespace, so containers cannot do it to each other either.

Published ports are DNAT rules (ports.py), Docker's `userland-proxy: false`: no
process of ours relays them. For the host's own connections to 127.0.0.1 to reach a
container, each bridge has route_localnet on (only ours: it lets 127.0.0.0/8 be
routed through that interface), with the rules that makes necessary: those
connections masqueraded behind the bridge's address, and every packet for
127.0.0.0/8 that arrives *from* the bridge dropped, or a container could reach the
host's loopback-only services (CVE-2020-8558; the escape lab shows it with the rule
off: create(localnet_guard=False)).

The registry of networks and addresses lives in /run/minicontainer/networks, changed
only under a lock, so containers started at once never get the same address.

Loading pyroute2 costs a new Python process ~150 ms, six times the kernel's work for
the whole wiring. A notebook pays it once; `minicontainer run --network` would pay it
on every run. So the CLI (and only it: use_helper) hands the wiring to a helper process
(network_helper.py) that loads the library once, serves every run that follows, and
exits when idle. It is handed the container's network namespace as an open fd, not a
pid, over a root-only socket in our state directory (dockerd's /var/run/docker.sock is
the same idea); a crashed helper is replaced by the next run and swept by `cleanup`.
If no helper takes a request, the CLI does the work itself, as a notebook does.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from . import network_helper, state
from .arguments import NETWORK_NAME
from .errors import InvalidArgument, MinicontainerError, NameInUse, ToolFailed
from .namespaces import refuse_router_advertisements
from .process import interrupts_held, run_to_the_end, start_time
from .syscalls import CLONE_NEWNET, setns

P, T = ParamSpec("P"), TypeVar("T")
DEFAULT_NETWORK = "mc-br0"
CANDIDATES = "10.213.{}.0/24"     # i = 0..255: made when needed (256 objects cost a start ~3 ms)
TAG = re.compile(r'--comment "?(mc-[^" ]+)"?')  # how our iptables rules are tagged, in -S


def ip_route(**options):
    """A pyroute2 netlink connection (fileno=: over a socket of ours)."""
    return _pyroute2()[0](**options)


@functools.cache
def _pyroute2() -> tuple[type, type]:
    """pyroute2's IPRoute and NetlinkError. The library is large: loaded on first use,
    so containers without a network never pay; and whole: a Ctrl-C waits until it is
    in (interrupts_held says why)."""
    with interrupts_held():
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    return IPRoute, NetlinkError


def netlink_socket_in(namespace: int) -> socket.socket:
    """A netlink (rtnetlink) socket that talks to the network namespace open as fd `namespace`.

    A socket belongs for life to the namespace it was created in, and setns(2) moves only
    the calling thread: so a short-lived thread enters the namespace, creates the socket
    and ends there, and no other thread of ours ever leaves the host's namespace. Docker
    does the same (vishvananda/netlink's GetNetlinkSocketAt: a locked OS thread, setns,
    socket). pyroute2's own netns= forks a child process to do it, on every container:
    a process started from a threaded one (a Jupyter kernel), on our hot path."""
    made: list = []

    def create_inside() -> None:
        try:
            setns(namespace, CLONE_NEWNET)          # this thread only
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE))
        except OSError as e:
            made.append(e)

    worker = threading.Thread(target=create_inside, name="mc-netns")
    worker.start()
    worker.join()
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def outside_event_loop(function: Callable[P, T]) -> Callable[P, T]:
    """Run `function` whole, in a thread of its own when this one runs an asyncio loop.

    pyroute2 drives its own event loop, which cannot start inside a running one, and a
    Jupyter kernel's main thread always runs one. Whole: a Ctrl-C waits until it
    returns (these take milliseconds), since pyroute2 interrupted half-way leaves its
    connection unusable ("aclose(): asynchronous generator is already running") and
    the host half-changed; and we never return while the thread still works."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        """`function`, in a thread of its own if this one runs an event loop."""
        with interrupts_held():
            return _in_a_thread_if_a_loop_runs(function, *args, **kwargs)
    return wrapper


def _in_a_thread_if_a_loop_runs(function: Callable[P, T], *args: P.args,
                                **kwargs: P.kwargs) -> T:
    """function(*args, **kwargs), in a thread of its own if this one runs a loop."""
    asyncio = sys.modules.get("asyncio")     # never loaded (the CLI): no loop runs
    try:
        if asyncio is None:
            raise RuntimeError
        asyncio.get_running_loop()
    except RuntimeError:                 # no loop here: call it directly
        return function(*args, **kwargs)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


@dataclass
class Attachment:
    """One container's place on a network."""

    network: str
    address: str
    gateway: str
    prefix: int
    host_end: str    # the veth end left on the host, in the bridge

    def connect(self, pid: int) -> None:
        """Plug the cable into the network namespace of process `pid` (see wire); through
        the helper process (network_helper.py) if this process chose it."""
        namespace = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _use_helper:
                try:
                    return network_helper.ask({"op": "connect", **asdict(self)}, namespace)
                except network_helper.HelperUnavailable:
                    pass                         # none took it: do it here
            self.wire(namespace)
        finally:
            os.close(namespace)

    @outside_event_loop
    def wire(self, namespace: int) -> None:
        """Plug the cable in: a veth pair whose far end is born as eth0 inside the network
        namespace open as fd `namespace`; the near end goes into the bridge. Then, from
        inside, the address and the default route through the bridge."""
        if os.fstat(namespace).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise MinicontainerError("that process shares the host's network namespace: "
                                     "its eth0 would be the host's")    # never plug that
        NetlinkError = _pyroute2()[1]
        with ip_route() as host:             # one request: created in the bridge, up
            try:
                host.link("add", ifname=self.host_end, kind="veth", state="up",
                          master=bridge_index(host, self.network),
                          peer={"ifname": "eth0", "net_ns_fd": namespace})
            except NetlinkError as e:         # it went between the lookup and the add
                if e.code != errno.ENODEV:
                    raise
                raise BridgeVanished(self.network) from None
        inside_socket = netlink_socket_in(namespace).detach()   # pyroute2 owns it (and closes it)
        with ip_route(fileno=inside_socket) as inside:
            eth0 = inside.link_lookup(ifname="eth0")
            if not eth0:                      # its host end was deleted: the pair went
                raise BridgeVanished(self.network, what=f"the veth {self.host_end}")
            eth0 = eth0[0]
            inside.addr("add", index=eth0, address=self.address, prefixlen=self.prefix)
            inside.link("set", index=eth0, state="up")
            inside.route("add", gateway=self.gateway)            # the default route

    @outside_event_loop
    def plug_tap(self) -> None:
        """A VM's cable (vm/machine.py): a tap device named host_end in the bridge, up.

        A tap is a network interface whose other end is a file: what the host sends
        into it, the process holding /dev/net/tun reads, and what that process writes
        comes out of it. QEMU holds it and turns it into the guest's network card, so
        the guest's frames enter the bridge here, as a container's do through its veth.
        It is persistent (made here, not by QEMU): it stays until detach() deletes it,
        so a crash leaves it for `cleanup` to find, like a veth."""
        with ip_route() as host:
            bridge = bridge_index(host, self.network)
            host.link("add", ifname=self.host_end, kind="tuntap", mode="tap")
            host.link("set", ifname=self.host_end, master=bridge, state="up")


class BridgeVanished(MinicontainerError):
    """A link of ours went from the host while a container was being plugged in."""

    def __init__(self, network: str, what: str = "") -> None:
        """The error for `network`, whose bridge (or `what`) is gone."""
        super().__init__(
            f"{what or 'the bridge ' + network} vanished from the host while the container "
            f"was plugged into network {network} (another process removed it, perhaps a "
            "`minicontainer cleanup --all` or one under another state root): start the "
            f"container again; if it says so again, `minicontainer network rm {network}` "
            "and create the network anew")


def bridge_index(ip, name: str) -> int:
    """The index of bridge `name`; BridgeVanished if it is not there."""
    found = ip.link_lookup(ifname=name)
    if not found:
        raise BridgeVanished(name)
    return found[0]


_use_helper = False      # this process asks network_helper.py (see use_helper)


def use_helper() -> None:
    """Have a short-lived process (the CLI) wire its containers through the helper, which
    keeps pyroute2 loaded, instead of loading it itself (~150 ms per run)."""
    global _use_helper
    _use_helper = True


def handle_helper_request(request: dict, namespace: int | None) -> None:
    """What the helper does for a client: wire a container, or delete a veth of ours."""
    if request["op"] == "connect" and namespace is not None:
        fields = {key: str(request[key]) for key in
                  ("network", "address", "gateway", "host_end")}
        cable = Attachment(**fields, prefix=int(request["prefix"]))
        for name in (cable.network, cable.host_end):      # bridges and veths of ours only
            if not NETWORK_NAME.fullmatch(name):
                raise InvalidArgument(f"not a link of ours: {name!r}")
        cable.wire(namespace)
    elif request["op"] == "delete" and NETWORK_NAME.fullmatch(str(request["ifname"])):
        with ip_route() as ip:
            delete_link(ip, ifname=request["ifname"])
    else:
        raise InvalidArgument(f"not a request the helper serves: {request.get('op')!r}")


# -- the registry ---------------------------------------------------------------------------

def networks_dir() -> Path:
    """Where networks' records live, beside the containers'."""
    return state.containers_dir().parent / "networks"


def load(name: str) -> dict:
    """The record of network `name`."""
    try:
        return json.loads((networks_dir() / f"{name}.json").read_text())
    except FileNotFoundError:
        raise MinicontainerError(f"no network named {name!r} (see `minicontainer network ls`)"
                                 ) from None


def save(record: dict) -> None:
    """Write a network's record (atomically, as a container's)."""
    networks_dir().mkdir(parents=True, exist_ok=True)
    state.write_json(networks_dir() / f"{record['name']}.json", record)


def names() -> list[str]:
    """The networks there are records of."""
    if not networks_dir().is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in networks_dir().glob("*.json"))


# -- networks -------------------------------------------------------------------------------

def create(name: str = DEFAULT_NETWORK, subnet: str | None = None, explicit: bool = True,
           keep: bool = False, router_advertisements: bool = False,
           localnet_guard: bool = True) -> dict:
    """Create a bridge network (docker network create), or refuse a name in use.

    A network made from Python belongs to the process that made it: once that process
    is gone (a notebook kernel restarted or killed), `cleanup` removes it. With `keep`
    (the CLI's `network create`) it stays until `network rm`, as Docker's networks do.
    router_advertisements=True leaves the bridge taking them, as the kernel would (the
    escape lab uses it to show why not); localnet_guard=False leaves out the rule that
    keeps containers off the host's 127.0.0.1 (the escape lab again).
    """
    if not NETWORK_NAME.fullmatch(name):
        raise InvalidArgument(f"invalid network name {name!r}: use mc- and then up to 12 of "
                              "a-z 0-9 - (it names the bridge)")
    with state.locked():
        if name in names():
            raise NameInUse(f"a network named {name!r} exists already")
        return _create(name, subnet, explicit, router_advertisements,
                       owner=None if keep else os.getpid(), localnet_guard=localnet_guard)


@outside_event_loop
def _create(name: str, subnet: str | None, explicit: bool,
            router_advertisements: bool = False, owner: int | None = None,
            localnet_guard: bool = True) -> dict:
    network = choose_subnet(subnet)
    gateway = next(network.hosts())
    record = {"name": name, "subnet": str(network), "gateway": str(gateway),
              "explicit": explicit, "leases": {}, "firewall": firewall_tool(),
              "owner": owner, "owner_started": owner and start_time(owner),
              "localnet_guard": localnet_guard}
    if not names():                                  # the first network: remember forwarding
        before = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        (state.containers_dir().parent / "ip_forward.before").write_text(before)
    save(record)                                     # recorded before it exists on the host
    NetlinkError = _pyroute2()[1]
    with ip_route() as ip:
        try:
            ip.link("add", ifname=name, kind="bridge")
        except NetlinkError as e:
            _forget(record)          # the record named a link that is not ours: drop it
            if e.code != errno.EEXIST:
                raise
            raise NameInUse(f"a link named {name} exists on the host already, and no network "
                            "of this state root records it (another MINICONTAINER_RUN's, or "
                            "made by hand): choose another network name") from None
    try:
        with ip_route() as ip:
            if not router_advertisements:             # before it is up and can hear one
                refuse_router_advertisements(name)
            bridge = bridge_index(ip, name)
            ip.addr("add", index=bridge, address=str(gateway), prefixlen=network.prefixlen)
            ip.link("set", index=bridge, state="up")
        add_rules(record)
        # Only now, with the guard in place: 127.0.0.0/8 may be routed through this bridge
        # (the host's connections to a port published on 127.0.0.1; see ports.py).
        Path(f"/proc/sys/net/ipv4/conf/{name}/route_localnet").write_text("1")
    except BaseException:
        _remove(record, force=True)                  # the bridge is ours: it all goes
        raise
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    return record


def remove(name: str, force: bool = False) -> None:
    """Delete the network's rules, bridge and record (docker network rm)."""
    with state.locked():
        _remove(load(name), force)


@outside_event_loop
def _remove(record: dict, force: bool = False) -> None:
    if record["leases"] and not force:
        raise MinicontainerError(f"network {record['name']} still has containers: "
                                 f"{', '.join(v['container'] for v in record['leases'].values())}")
    remove_rules(record["name"], record.get("firewall"))
    with ip_route() as ip:
        delete_link(ip, ifname=record["name"])
    _forget(record)


def _forget(record: dict) -> None:
    """Delete a network's record; the last one puts forwarding back as it was."""
    if set(names()) <= {record["name"]}:             # the last one: forwarding as it was
        before = state.containers_dir().parent / "ip_forward.before"
        if before.exists():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(before.read_text())
            before.unlink()
    state.forget_record(networks_dir() / f"{record['name']}.json")


@outside_event_loop
def choose_subnet(wanted: str | None) -> ipaddress.IPv4Network:
    """`wanted`, or the first candidate /24 that overlaps no route of the host's."""
    with ip_route() as ip:
        # Every link at once: one looked up by index could vanish between the two dumps
        # (another container's veth going), and its route is only named in a message.
        devices = {link["index"]: link.get("IFLA_IFNAME") for link in ip.get_links()}
        routes = [(ipaddress.ip_network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False),
                   devices.get(r.get("RTA_OIF"), "?"))
                  for r in ip.get_routes(family=2) if r.get("RTA_DST")]
    if wanted is not None:
        try:
            network = ipaddress.ip_network(wanted)
        except ValueError:
            raise InvalidArgument(f"invalid subnet {wanted!r}: use e.g. 10.213.7.0/24") from None
        for route, device in routes:
            if network.overlaps(route):
                raise InvalidArgument(f"subnet {network} overlaps the host's route {route} "
                                      f"dev {device}: choose another")
        return network
    for network in (ipaddress.ip_network(CANDIDATES.format(i)) for i in range(256)):
        if not any(network.overlaps(route) for route, _ in routes):
            return network
    raise MinicontainerError("no free subnet left in 10.213.0.0/16")


# -- addresses ------------------------------------------------------------------------------

def attach(network: str, container: str, container_id: str, hostname: str,
           hosts_file: Path | None) -> Attachment:
    """Lease an address (creating the network on first use) and write /etc/hosts for
    the container and for its neighbours (a VM, with no hosts_file, is only listed)."""
    with state.locked():
        if network not in names():
            if network != DEFAULT_NETWORK:
                raise MinicontainerError(f"no network named {network!r}: create it with "
                                         f"`minicontainer network create {network}`")
            _create(network, None, explicit=False)
        record = load(network)
        address = free_address(record["subnet"], set(record["leases"]) | {record["gateway"]})
        record["leases"][address] = {"container": container, "hostname": hostname,
                                     "hosts_file": hosts_file and str(hosts_file)}
        save(record)
        write_hosts_files(record)
    prefix = ipaddress.ip_network(record["subnet"]).prefixlen
    return Attachment(network, address, record["gateway"], prefix, f"mc-{container_id}")


def free_address(subnet: str, taken: set[str]) -> str:
    """The first host address of `subnet` that is not taken (the gateway counts as taken)."""
    for address in ipaddress.ip_network(subnet).hosts():
        if str(address) not in taken:
            return str(address)
    raise MinicontainerError(f"subnet {subnet} has no free address left")


@outside_event_loop
def detach(attachment: Attachment) -> None:
    """Give the address back and delete the cable (a VM's tap, which no namespace
    takes with it, even if the network is gone); the last container of an implicit
    network removes it."""
    with state.locked():
        if attachment.host_end not in names():   # a record may name a bridge: never that
            remove_veth(attachment.host_end)
        if attachment.network not in names():
            return
        record = load(attachment.network)
        record["leases"].pop(attachment.address, None)
        save(record)
        write_hosts_files(record)
        if not record["leases"] and not record["explicit"]:
            _remove(record)


def remove_veth(name: str) -> None:
    """Delete a container's host end, normally gone with its namespace already."""
    try:
        socket.if_nametoindex(name)          # in this thread's namespace: the host's
    except OSError:                          # gone: no netlink needed (nor pyroute2 loaded)
        return
    if _use_helper:
        try:
            return network_helper.ask({"op": "delete", "ifname": name})
        except network_helper.HelperUnavailable:
            pass
    with ip_route() as ip:
        delete_link(ip, ifname=name)


def delete_link(ip, **which) -> None:
    """Delete a link if it is still there. A veth goes by itself when its namespace
    dies, which the kernel finishes a moment after the last process: it may vanish
    between our look and our delete."""
    NetlinkError = _pyroute2()[1]
    try:
        ip.link("del", **which)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise


def write_hosts_files(record: dict) -> None:
    """Every container's /etc/hosts lists its neighbours. Rewritten in place (same
    inode), because each file is bind-mounted into its container."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost"] + [
        f"{address}\t{lease['hostname']} {lease['container']}"
        for address, lease in sorted(record["leases"].items())]
    for lease in record["leases"].values():
        path = Path(lease["hosts_file"] or "/nonexistent/hosts")     # a VM's: none
        if path.parent.exists():
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")


def resolv_conf() -> str:
    """The host's name servers, minus those on loopback (unreachable from inside)."""
    try:
        host = Path("/etc/resolv.conf").read_text()
    except FileNotFoundError:
        host = ""
    servers = [line for line in host.splitlines() if line.startswith("nameserver")
               and not line.split()[1].startswith(("127.", "::1"))]
    return "\n".join(servers or ["# the host has no name server reachable from here"]) + "\n"


# -- firewall rules: iptables where it works, nft otherwise, every rule tagged ---------------

def firewall_tool() -> str:
    """iptables where it works (either backend), else nft; MINICONTAINER_FIREWALL forces one."""
    forced = os.environ.get("MINICONTAINER_FIREWALL")
    if forced:
        return forced
    if shutil.which("iptables") and firewall(["iptables", "-t", "nat", "-S"]).returncode == 0:
        return "iptables"
    if shutil.which("nft"):
        return "nft"
    raise MinicontainerError("neither iptables nor nft works here: run `make setup`")


def add_rules(record: dict) -> None:
    """NAT for the network's subnet, forwarding to and from its bridge, and what its
    published ports need (ports.py), tagged with its name."""
    name, subnet = record["name"], record["subnet"]
    guard = record.get("localnet_guard", True)
    if record["firewall"] == "nft":
        drop = f'iifname "{name}" ip daddr 127.0.0.0/8 drop;' if guard else ""
        run_firewall(["nft", "-f", "-"], input=f"""table ip {name} {{
            chain raw {{ type filter hook prerouting priority raw; {drop} }}
            chain postrouting {{ type nat hook postrouting priority srcnat;
                ip saddr {subnet} oifname != "{name}" masquerade;
                ip saddr 127.0.0.0/8 oifname "{name}" masquerade;
                ip saddr {subnet} oifname "{name}" ct status dnat masquerade; }}
            chain forward {{ type filter hook forward priority filter - 1;
                oifname "{name}" ct status dnat accept;
                oifname "{name}" iifname != "{name}" ct state new drop; }}
        }}""")
        return
    tag = ["-m", "comment", "--comment", name]
    nat = [["-s", subnet, "!", "-o", name, "-j", "MASQUERADE"],   # out to the world
           # published ports: the host's connections to 127.0.0.1 (no container can
           # answer 127.0.0.1), and a container's to a host address that leads back
           # into this bridge ("hairpin": the answer must come back through us)
           ["-s", "127.0.0.0/8", "-o", name, "-j", "MASQUERADE"],
           ["-s", subnet, "-o", name, "-m", "conntrack", "--ctstate", "DNAT",
            "-j", "MASQUERADE"]]
    for rule in nat:
        run_firewall(["iptables", "-t", "nat", "-A", "POSTROUTING", *rule, *tag])
    for rule in (["-i", name, "-j", "ACCEPT"], ["-o", name, "-j", "ACCEPT"],
                 ["-o", name, "!", "-i", name, "-m", "conntrack", "--ctstate", "NEW",
                  "-j", "DROP"],
                 # a published port's connections are the new ones let in
                 ["-o", name, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"]):
        run_firewall(["iptables", "-I", "FORWARD", *rule, *tag])   # last = checked first
    if guard:   # route_localnet is on for the bridge: nothing from it may reach 127/8
        run_firewall(["iptables", "-t", "raw", "-A", "PREROUTING", "-i", name,
                      "-d", "127.0.0.0/8", "-j", "DROP", *tag])


def remove_rules(name: str, tool: str | None) -> None:
    """Delete every rule tagged with the network's name."""
    if (tool or firewall_tool()) == "nft":
        listed = firewall(["nft", "list", "table", "ip", name])
        if listed.returncode == 0:
            run_firewall(["nft", "delete", "table", "ip", name])
        return
    for table, rule in tagged_iptables_rules(name):
        run_firewall(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]])


def tagged_iptables_rules(tag: str | None = None) -> list[tuple[str, str]]:
    """(table, rule) of every iptables rule tagged mc-… (or with exactly `tag`)."""
    found = []
    for table in ("raw", "nat", "filter"):
        listing = firewall(["iptables", "-t", table, "-S"]).stdout
        for rule in listing.splitlines():
            match = TAG.search(rule)
            if match and (tag is None or match[1] == tag):
                found.append((table, rule))
    return found


def firewall(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run iptables or nft to its end, deaf to Ctrl-C (process.run_to_the_end): a
    listing killed half-way reads as "no rules", or as "iptables does not work here"."""
    return run_to_the_end(argv, input=input, capture_output=True, text=True)


def run_firewall(argv: list[str], input: str | None = None) -> None:
    """Run iptables or nft; ToolFailed, saying what to do, if it refuses."""
    done = firewall(argv, input)
    if done.returncode != 0:
        said = done.stderr.strip() or (f"killed by {signal.Signals(-done.returncode).name}"
                                       if done.returncode < 0 else f"exit {done.returncode}")
        raise ToolFailed(f"{' '.join(argv[:4])}… failed: {said} (does "
                         f"`{argv[0]} {'-S' if argv[0] == 'iptables' else 'list ruleset'}` "
                         "work by hand? MINICONTAINER_FIREWALL=nft or =iptables picks the "
                         "other tool)")


# -- after a crash --------------------------------------------------------------------------

@outside_event_loop
def cleanup(live_containers: set[str], live_vms: frozenset[str] = frozenset()) -> list[str]:
    """Free the leases of containers and VMs (ids `live_vms`) that are gone, and remove
    the networks (bridge, rules, record) whose owner is gone and that nothing uses:
    what our records say is a dead owner's. Links and rules no record names are
    cleanup.py's to judge."""
    removed = []
    live_containers = set(live_containers) | {vm_holder(vm_id) for vm_id in live_vms}
    with state.locked():
        for name in names():
            record = load(name)
            for address, lease in list(record["leases"].items()):
                if lease["container"] not in live_containers:
                    del record["leases"][address]
                    removed.append(f"lease {address}")
            save(record)
            if not record["leases"] and not _still_wanted(record):
                _remove(record)
                removed.append(name)
    return removed


def vm_holder(vm_id: str) -> str:
    """The name a VM's lease is held under, beside the containers' names."""
    return f"vm-{vm_id}"


@outside_event_loop
def host_objects() -> list[tuple[str, str]]:
    """(name, kind) of every mc-… object of ours in the host's network: links (kind
    "bridge", "veth", "tun", ...), iptables rules by their tag ("rules") and nft
    tables ("nft table"). A container's published ports are tagged with its veth's
    name, a network's rules with its bridge's."""
    with ip_route() as ip:
        found = [(link.get("IFLA_IFNAME"),
                  link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "link")
                 for link in ip.get_links() if link.get("IFLA_IFNAME").startswith("mc-")]
    if shutil.which("iptables"):
        found += [(tag, "rules") for tag in dict.fromkeys(
            TAG.search(rule)[1] for _, rule in tagged_iptables_rules())]
    if shutil.which("nft"):
        tables = firewall(["nft", "list", "tables", "ip"]).stdout.split()
        found += [(table, "nft table") for table in tables if table.startswith("mc-")]
    return found


@outside_event_loop
def remove_host_object(name: str, kind: str) -> None:
    """Delete one object host_objects() listed (gone meanwhile: nothing to do)."""
    if kind == "rules":
        remove_rules(name, "iptables")
    elif kind == "nft table":
        remove_rules(name, "nft")
    else:
        with ip_route() as ip:
            delete_link(ip, ifname=name)


def _still_wanted(record: dict) -> bool:
    """Kept by `network create`, or its owner still runs; an implicit one never is."""
    if not record["explicit"]:
        return False
    return not record.get("owner") or state.owner_alive(record)
