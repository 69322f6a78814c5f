"""The seed's "30-50 servers on one platform", measured with real web servers: each
container's httpd answers every request over our bridge, and nothing is left behind."""
from __future__ import annotations

import subprocess

from minicontainer import network
from minicontainer.course import servers

MiB = 2**20


def test_web_servers_in_containers_and_vms_answer_every_request_of_the_same_load():
    result = servers.servers(containers=3, vms=1, requests=50)
    assert [c["requests"] for c in result["containers"]] == [50] * 3
    assert all(0 < c["p50"] <= c["p99"] < 1 for c in result["containers"])
    assert all(c["memory"] < 32 * MiB for c in result["containers"])
    vm = result["vms"][0]
    assert vm["requests"] == 50 and 0 < vm["p50"] <= vm["p99"] < 10
    assert vm["guest_ram_touched"] <= vm["committed"] == 128 * MiB
    assert vm["pss"] > 4 * max(c["memory"] for c in result["containers"])
    assert not [n for n in network.names() if n.startswith("mc-srv-")]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "mc-srv-" not in links
    summary = servers.summary(result)
    assert "no network card" not in summary and summary.count("150 requests") == 1
    assert "50 requests, median p50" in summary.splitlines()[1]


def test_as_many_vms_as_the_budget_can_promise_their_memory_to():
    assert servers.servers.__defaults__ is not None
    fit = servers.parse_memory("768M") // servers.vm_bytes("128M")
    assert min(6, fit) == 6 and servers.parse_memory("300M") // servers.vm_bytes("128M") == 2
