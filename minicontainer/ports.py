"""Published ports: rules in the kernel's NAT table, and no process of ours at all.

`-p 8080:80` asks that a connection to port 8080 of the host reach port 80 of the
container. The kernel can do that by itself: a DNAT rule (destination NAT) rewrites a
connection's first packet from host:8080 to container:80, conntrack remembers it,
and every later packet of that connection, both ways, is rewritten the same way.
Nothing of ours runs while the bytes flow, so a published port costs the host a few
rules and one socket, not a process (our relay, proxy.py, was ~8 MiB of Python per
container). This is Docker's `userland-proxy: false` (libnetwork's bridge driver,
iptabler/port.go); Docker's default still starts a docker-proxy per port as well.

Per published port, two rules, tagged with the container's veth name `mc-<id>`:

    nat PREROUTING   packets from elsewhere (another machine, a container) to a host
                     address:8080, but never to 127.0.0.0/8 → DNAT container:80
    nat OUTPUT       the host's own connections to its addresses:8080, 127.0.0.1
                     included → DNAT container:80

A connection from the host to 127.0.0.1 leaves, after DNAT, with source 127.0.0.1: the
kernel drops that as a "martian" unless route_localnet is on for the way out, and the
container could not answer 127.0.0.1 anyway. So each network (network.add_rules)
switches route_localnet on for its own bridge only, masquerades such connections
behind the bridge's address, and, because route_localnet also lets a container send
*to* 127.0.0.1 through the bridge and reach the host's loopback-only services
(CVE-2020-8558, the escape lab's attack), drops every packet for 127.0.0.0/8 that
arrives on the bridge, in the raw table, before anything else looks at it.

Where we differ from Docker, and why: Docker jumps to one DNAT chain from both
PREROUTING and OUTPUT, so a machine on the same LAN can send a packet for
127.0.0.1:8080 to the host and reach a port published on 127.0.0.1 only (moby issue
41872); Docker then adds a raw-table DROP per such port. We never DNAT 127.0.0.0/8 in
PREROUTING, so such a packet stays a martian and no extra rule is needed. And Docker
masquerades every host-local source towards the bridge (`--src-type LOCAL`), which
hides the client's address even when it is not 127.0.0.1 (moby issue 45629); we
masquerade only 127.0.0.0/8. IPv4 and TCP only: Docker also publishes UDP and IPv6.

The host port is still *reserved* while the container lives, as Docker does
(portallocator/osallocator_linux.go): reserve() binds and listens, so a port in use
fails before anything runs and no other program can take it meanwhile; a socket filter
that drops every packet (a one-instruction BPF program) keeps the kernel from
completing a connection on it should one ever bypass the rules. The socket goes to the
container's monitor (monitor.c), which holds it, untouched, until the container ends
(a container without a pid namespace has no monitor: the process that started it
holds the socket, and a detached one's port is then reserved only by its rules).

What is left to watch: the guard is a rule, and a rule can be flushed (`iptables -t
raw -F`, a firewall manager reloading its own rules) while route_localnet stays on;
Docker's rules share that weakness. The host pays for a published port in kernel
memory (two rules, a conntrack entry per connection, one socket), which no PSS shows.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

from . import network
from .errors import InvalidArgument, MinicontainerError
from .network import Attachment, run_firewall

SO_ATTACH_FILTER = 26                  # <asm-generic/socket.h>; Python has no name for it
# A classic BPF program of one instruction, BPF_RET|BPF_K 0: "keep 0 bytes" of every
# packet, i.e. drop it. setsockopt copies it, but it must exist during the call.
DROP_EVERYTHING = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0), 8)
LOOPBACK = "127.0.0.0/8"


def reserve(ports: list[tuple[str, int, int]]) -> list[socket.socket]:
    """Bound, listening, packet-dropping sockets for [(host ip, host port, container
    port)], or one clear error (and none held) if a port is in use."""
    sockets: list[socket.socket] = []
    try:
        for host_ip, host_port, _ in ports:
            held = socket.socket()
            sockets.append(held)
            # Before bind: not one packet may reach it (struct sock_fprog: length, address).
            held.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                            struct.pack("HL", 1, ctypes.addressof(DROP_EVERYTHING)))
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as Docker
            try:
                held.bind((str(host_address(host_ip)), host_port))
            except OSError as e:
                raise MinicontainerError(f"cannot publish port {host_port}: {e.strerror} "
                                         "(is it in use? choose another)") from None
            # Listening, not just bound: two bound-only sockets with SO_REUSEADDR may
            # share a port, but nobody can bind beside a listener.
            held.listen(0)
    except BaseException:
        for held in sockets:
            held.close()
        raise
    return sockets


def host_address(host_ip: str) -> ipaddress.IPv4Address:
    """The host address of a published port, as an IPv4 address (0.0.0.0: all)."""
    try:
        return ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise InvalidArgument(f"invalid address {host_ip!r} to publish on: give an IPv4 "
                              "address such as 127.0.0.1, or none for all") from None


def iptables_rules(address: str, ports: list[tuple[str, int, int]]) -> list[list[str]]:
    """The nat rules (chain first) that send each published port to `address`."""
    rules = []
    for host_ip, host_port, port in ports:
        host = host_address(host_ip)
        to = ["-p", "tcp", "--dport", str(host_port), "-j", "DNAT",
              "--to-destination", f"{address}:{port}"]
        which = ["-d", str(host)] if not host.is_unspecified else [
            "-m", "addrtype", "--dst-type", "LOCAL"]
        if not host.is_loopback:        # from elsewhere, to 127.0.0.0/8: never (see above)
            outside = which if not host.is_unspecified else ["!", "-d", LOOPBACK, *which]
            rules.append(["PREROUTING", *outside, *to])
        rules.append(["OUTPUT", *which, *to])
    return rules


def nft_table(tag: str, address: str, ports: list[tuple[str, int, int]]) -> str:
    """The same rules as iptables_rules, as an nft table of the container's own."""
    outside, own = [], []
    for host_ip, host_port, port in ports:
        host = host_address(host_ip)
        which = f"ip daddr {host}" if not host.is_unspecified else "fib daddr type local"
        to = f"tcp dport {host_port} dnat to {address}:{port}"
        if not host.is_loopback:
            guard = "" if not host.is_unspecified else f"ip daddr != {LOOPBACK} "
            outside.append(f"{guard}{which} {to};")
        own.append(f"{which} {to};")
    return f"""table ip {tag} {{
        chain prerouting {{ type nat hook prerouting priority dstnat; {' '.join(outside)} }}
        chain output {{ type nat hook output priority -100; {' '.join(own)} }}
    }}"""


def add_rules(attachment: Attachment, ports: list[tuple[str, int, int]]) -> None:
    """DNAT each published port to the container's address on its network, in rules
    tagged with its veth's name (remove_rules deletes them)."""
    tag, address = attachment.host_end, attachment.address
    if firewall_of(attachment) == "nft":
        run_firewall(["nft", "-f", "-"], input=nft_table(tag, address, ports))
        return
    for chain, *rule in iptables_rules(address, ports):
        run_firewall(["iptables", "-t", "nat", "-A", chain, *rule,
                      "-m", "comment", "--comment", tag])


def remove_rules(attachment: Attachment) -> None:
    """Delete the rules of a container's published ports, if there are any."""
    network.remove_rules(attachment.host_end, firewall_of(attachment))


def firewall_of(attachment: Attachment) -> str:
    """The tool the container's network made its rules with (iptables or nft)."""
    try:
        return network.load(attachment.network)["firewall"]
    except MinicontainerError:      # the network is gone already: as it would be now
        return network.firewall_tool()
