# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 — networking: a bridge and a virtual cable per container
#
# A new network namespace has only a loopback. Docker's default network is a bridge
# (a virtual switch) on the host, and per container a *veth pair* — a virtual cable
# whose one end is plugged into the bridge and whose other end is the container's
# `eth0`. Every step is a netlink message (`minicontainer/network.py`, with pyroute2).

# %%
from minicontainer import Container, network
from minicontainer.cleanup import cleanup

cleanup()                               # what a killed earlier run left (a dead owner's only)
if "mc-lesson" in network.names():      # made by this kernel in an earlier run: start afresh
    network.remove("mc-lesson", force=True)
net = network.create("mc-lesson")
print(net["name"], net["subnet"], "gateway", net["gateway"])

# %% [markdown]
# ## Two containers talk
# A web server (`mc-web`) and a client (`mc-client`) on the network; the server's port
# 80 is published on the host's port 18080 (`-p 18080:80`).
#
# **Predict, then run.** The client runs `ping mc-web`. There is no DNS server on this
# network: what turns the name `mc-web` into an address?
#
# <details><summary>Answer</summary>
#
# The client's `/etc/hosts` (the cell prints it). Our runtime writes that file for every
# container on the network, one line per neighbour, and rewrites it in place whenever a
# container joins or leaves. Docker does not do this on a network you create: there
# dockerd answers names itself, as an *embedded DNS server* at `127.0.0.11` (the
# container's `/etc/resolv.conf` points there, and its `/etc/hosts` lists only itself).
# On Docker's default `bridge` network, containers get no names at all (only the
# legacy `--link` writes `/etc/hosts` lines).
# </details>
#
# **Predict, then run.** The host opens `http://127.0.0.1:18080/`. Which process
# accepts that TCP connection?
#
# <details><summary>Answer</summary>
#
# `httpd` itself: no process of ours is in the way. A published port is two **DNAT**
# rules in the kernel's `nat` table (`minicontainer/ports.py`): `OUTPUT` catches the
# host's own connections to its addresses, `PREROUTING` packets from elsewhere, and both
# rewrite the destination `:18080` to the container's address, port 80; conntrack then
# rewrites every later packet of that connection, both ways. Docker does the same with
# `userland-proxy: false` (by default it also starts a `docker-proxy` process per
# port). One catch: the kernel will not send a packet from `127.0.0.1` out to a bridge
# unless `route_localnet` is on for it, so we switch it on for our bridge only, and
# masquerade those connections behind the bridge's address: `httpd` sees a client at
# the gateway, not `127.0.0.1`. The host port stays taken meanwhile: the container's
# monitor holds a socket on it, so nothing else on the host can listen there.
# </details>

# %%
WEB = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"

with Container(WEB, name="mc-web", network="mc-lesson", ports={18080: 80}) as web, \
     Container(["sleep", "60"], name="mc-client", network="mc-lesson") as client:
    web.start()
    client.start()
    print(client.exec("ip -o -4 addr show eth0; ip route").stdout)
    print(client.exec("cat /etc/hosts").stdout)
    print(client.exec("ping -c 2 mc-web").stdout)
    print(client.exec("sleep 0.3; wget -qO- http://mc-web/").stdout)

    # A published port: the host's 127.0.0.1:18080 reaches the container's port 80.
    import time
    import urllib.request
    for _ in range(20):
        try:
            print("from the host:", urllib.request.urlopen("http://127.0.0.1:18080/").read().decode())
            break
        except OSError:
            time.sleep(0.1)

# %% [markdown]
# ## What the host sees
# The bridge, and one veth end per running container, named `mc-…`.
#
# **Predict, then run.** With one container running on `mc-lesson`, which new links
# does the host list, and which address does the bridge hold?
#
# <details><summary>Answer</summary>
#
# Two: the bridge `mc-lesson` and the host's end of the container's veth pair, named
# `mc-…` and plugged into the bridge (its other end is the container's `eth0`, in the
# container's namespace, so the host does not list it). The bridge holds the network's
# gateway address, the first of its subnet: the containers' default route.
# </details>

# %%
import subprocess

with Container(["sleep", "30"], network="mc-lesson") as c:
    c.start()
    print(subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout)
    print(subprocess.run(["ip", "-br", "addr", "show", "mc-lesson"], capture_output=True, text=True).stdout)

# %% [markdown]
# ## The NAT rules, as the kernel holds them
# Rules are not links: they sit in the kernel's netfilter tables. `iptables -t nat -S`
# prints the `nat` table as the commands that would rebuild it. Each of our rules carries
# a comment with its network's name (`mc-…`); the cell keeps this network's lines.
#
# **Predict, then run.** A container is running with `-p 18080:80`. How many of our
# rules mention a *destination* (`DNAT`)?
#
# <details><summary>Answer</summary>
#
# Two, both tagged with the container's veth name (`mc-<id>`), not the network's: one
# in `PREROUTING` (from elsewhere, to any host address but `127.0.0.0/8`) and one in
# `OUTPUT` (the host's own connections, `127.0.0.1` included). Docker lists the same
# kind of rule in its `DOCKER` chain: `-A DOCKER ! -i docker0 -p tcp -m tcp --dport
# 18080 -j DNAT --to-destination 172.17.0.2:80`. The network's own rules: `MASQUERADE`
# in `POSTROUTING` for packets from the subnet leaving by another interface (replies find
# their way back), for the host's `127.0.0.1` connections into the bridge, and for a
# container reaching a neighbour through the host's address ("hairpin"); in `filter`,
# `FORWARD` rules that let the bridge's traffic out, published ports' connections in,
# and drop other new connections from elsewhere; and in `raw`, one `DROP` for whatever
# the bridge sends to `127.0.0.0/8`. Without it, `route_localnet` would let a container
# reach the host's loopback-only services (CVE-2020-8558: the security notebook's
# escape lab shows the attack get through with the rule off). And Docker's names come
# from its embedded DNS server at `127.0.0.11`, not from `/etc/hosts`: dockerd opens a
# socket inside the container's network namespace, and `DNAT` rules there (in the
# container's own `nat` table, not the host's) send port 53 of that address to it.
# </details>

# %%
def our_rules(table: str, *tags: str) -> list[str]:
    listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
    return [line for line in listing.stdout.splitlines() if any(tag in line for tag in tags)]


with Container(WEB, network="mc-lesson", ports={18080: 80}) as web:
    web.start()
    tags = ("mc-lesson", web.attachment.host_end)     # the network's, the container's
    if network.firewall_tool() == "iptables":
        nat = our_rules("nat", *tags)
        print("iptables -t nat -S | grep mc-", *nat, sep="\n  ")
        print("iptables -t filter -S | grep mc-", *our_rules("filter", *tags), sep="\n  ")
        print("iptables -t raw -S | grep mc-", *our_rules("raw", *tags), sep="\n  ")
        print("DNAT rules among ours:", sum("-j DNAT" in line for line in nat))
    else:                           # nftables instead: a table per network, per container
        for table in tags:
            print(subprocess.run(["nft", "list", "table", "ip", table], capture_output=True,
                                 text=True).stdout)
    print("route_localnet on the bridge:",
          open("/proc/sys/net/ipv4/conf/mc-lesson/route_localnet").read().strip())

# %%
network.remove("mc-lesson")
print("networks left:", network.names())

# %% [markdown]
# ## What you know now
# - A container's network is a namespace plus a virtual cable to a virtual switch;
#   NAT on the host lets it out, DNAT rules let published ports in (Docker's
#   `userland-proxy: false`: no process relays them); neighbours' names come from
#   `/etc/hosts` (Docker: its embedded DNS server at 127.0.0.11).
# - A VM is networked another way: QEMU emulates a *network card* (virtio-net, e1000)
#   that the guest's own kernel drives, and its host side is a tap device, which can be
#   plugged into a bridge like ours. Notebook 07 does exactly that: a VM with a
#   virtio card on a bridge of ours, talking to a container beside it.
#
# ## Exercise 04
# `exercises/ex04_networking.py`: hand out addresses on a bridge.

# %%
from minicontainer.course.grade import grade

grade("04")
