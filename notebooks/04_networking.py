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
# The bridge, and one veth end per running container, named `mc-…`:

# %%
import subprocess

with Container(["sleep", "30"], network="mc-lesson") as c:
    c.start()
    print(subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout)
    print(subprocess.run(["ip", "-br", "addr", "show", "mc-lesson"], capture_output=True, text=True).stdout)

# %%
network.remove("mc-lesson")
print("networks left:", network.names())

# %% [markdown]
# ## What you know now
# - A container's network is a namespace plus a virtual cable to a virtual switch;
#   NAT on the host lets it out, a proxy lets published ports in.
# - A VM would instead get a virtual *network card* emulated by QEMU (next notebook).
#
# ## Exercise 04
# `exercises/ex04_networking.py`: hand out addresses on a bridge.

# %%
from minicontainer.course.grade import grade

grade("04")
