"""Fifty containers at once, each with a cgroup and an address: all start, all are
alive together with distinct names, cgroups and addresses, all run a command, all are
torn down, and the host is clean after. (Rates: bench/load.py.)"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from hostcheck import host_objects
from minicontainer.container import Container
from minicontainer.course.load import churn

INSIDE = ("ip -4 -o addr show eth0 | awk '{print $4}'; grep -m1 -o 'mc-[0-9a-f]*' "
          "/proc/self/cgroup; hostname; ping -c 1 -W 2 $GATEWAY >/dev/null && echo reached")


def test_fifty_containers_started_concurrently_are_alive_together_and_leave_nothing():
    before = host_objects()
    containers = [Container(["sleep", "60"], network="mc-br0", memory="32M", pids_limit=16)
                  for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        try:
            list(pool.map(Container.start, containers))
            assert all(c.running for c in containers)
            gateway = containers[0].attachment.gateway
            given = [c.attachment.address for c in containers]
            results = list(pool.map(lambda c: c.exec(f"GATEWAY={gateway}; {INSIDE}"),
                                    containers))
        finally:
            list(pool.map(lambda c: c.remove(force=True), containers))
    assert [r.exit_code for r in results] == [0] * 50, [r.stderr for r in results]
    inside = [r.stdout.split() for r in results]
    assert [line[0] for line in inside] == [f"{a}/24" for a in given]
    assert len({line[0] for line in inside}) == 50        # fifty distinct addresses
    assert len({line[1] for line in inside}) == 50        # cgroups
    assert len({line[2] for line in inside}) == 50        # hostnames
    assert all(line[3] == "reached" for line in inside)   # each talks to its bridge
    assert host_objects() == before


def test_fifty_in_a_row_and_fifty_at_once_with_network_leave_nothing():
    before = host_objects()
    assert all(r.exit_code == 0 for r in churn(50)["results"])
    assert all(r.exit_code == 0 for r in churn(50, concurrent=True, network="mc-br0")["results"])
    assert host_objects() == before
