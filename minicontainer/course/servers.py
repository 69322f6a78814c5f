"""Fifty real web servers: the seed's "30-50 servers on one platform", measured.

Every server is the same program, busybox's httpd serving one small page. As
containers they sit on a bridge network of our own (layer 4) under one shared memory
budget (layer 3), and this process drives each with a bounded load over the bridge —
never anything beyond this host — timing every request. As VMs, each guest runs the
same httpd, and there are only as many as the budget's memory can be promised to
(each VM is given its -m up front), at most six under TCG. Our VMs have no network
card, so a VM's server cannot be reached from here: for VMs we measure memory only,
and say so. Heavy: `make compare` runs it whole and saves the numbers in
results/servers.json, which notebook 08 reads.
"""
from __future__ import annotations

import http.client
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from .. import network, state
from ..cgroups import Cgroup, Limits, parse_memory
from ..container import Container
from ..vm.initramfs import IDLE
from ..vm.machine import VM
from .measure import container_cost, qemu_memory, vm_bytes

PAGE = "mkdir -p /www && echo hello from $(hostname) > /www/index.html"
SERVE = f"{PAGE} && exec httpd -f -p 80 -h /www"        # in the foreground: PID 1
SAVED = Path(__file__).resolve().parents[2] / "results" / "servers.json"


def timed_requests(address: str, requests: int = 200, threads: int = 4) -> list[float]:
    """Seconds each of `requests` GETs of http://address/ took, `threads` at a time."""
    def one(_: int) -> float:
        started = time.perf_counter()
        connection = http.client.HTTPConnection(address, 80, timeout=10)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            if response.status != 200 or not response.read().startswith(b"hello"):
                raise RuntimeError(f"{address} answered {response.status}")
        finally:
            connection.close()
        return time.perf_counter() - started

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def container_servers(count: int, budget: str, requests: int, progress=None) -> list[dict]:
    """`count` httpd containers on a bridge of their own, under one budget: each loaded
    with `requests` GETs, then measured (its cost, as measure.container_cost)."""
    tick = progress or (lambda: None)
    suffix = os.urandom(3).hex()
    bridge = network.create(f"mc-srv-{suffix}")["name"]
    budget_group = Cgroup(f"mc-srvbudget-{suffix}", Limits(memory=parse_memory(budget)))
    state.write_group(budget_group.path)     # before it exists: a crash leaves it recorded
    budget_group.create()
    running: list[Container] = []
    try:
        for _ in range(count):
            running.append(Container(SERVE, network=bridge, cgroup_parent=budget_group).start())
        wait_until_serving([c.attachment.address for c in running])
        servers = []
        for container in running:
            latencies = timed_requests(container.attachment.address, requests)
            servers.append({"memory": container_cost(container),
                            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                            "requests": len(latencies)})
            tick()
        return servers
    finally:
        for container in running:
            container.remove(force=True)
        budget_group.remove()
        state.release_group(budget_group.path)
        network.remove(bridge, force=True)


def wait_until_serving(addresses: list[str], timeout: float = 30) -> None:
    """Return once every address answers on port 80 (httpd starts in a few ms)."""
    deadline = time.monotonic() + timeout
    for address in addresses:
        while True:
            try:
                timed_requests(address, requests=1, threads=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def vm_servers(count: int, vm_memory: str, progress=None) -> list[dict]:
    """`count` VMs each running httpd in its guest, booted side by side: the memory
    each costs (qemu_memory's parts). No latency: they have no network card."""
    tick = progress or (lambda: None)
    machines = [VM(memory=vm_memory) for _ in range(count)]
    try:
        for vm in machines:
            vm.start(f"{PAGE} && httpd -p 80 -h /www; {IDLE}")   # httpd in the background
        for vm in machines:
            vm.ready()
        time.sleep(0.5)                                             # let the guests settle
        servers = []
        for vm in machines:
            servers.append({**qemu_memory(psutil.Process(vm.process.pid), vm.memory),
                            "committed": vm.memory})
            tick()
        return servers
    finally:
        for vm in machines:
            vm.stop()


def servers(containers: int = 50, vms: int = 6, budget: str = "768M", vm_memory: str = "128M",
            requests: int = 200, progress_factory=None) -> dict:
    """The whole experiment: `containers` served and loaded, then as many VMs as the
    budget can promise their -m to (at most `vms`), measured."""
    fit = min(vms, parse_memory(budget) // vm_bytes(vm_memory))

    def progress(total: int, name: str):
        """A ticker for `total` steps, or None without a progress_factory."""
        return progress_factory(total, name) if progress_factory else None

    return {"budget": parse_memory(budget), "requests_each": requests,
            "vm_memory": vm_bytes(vm_memory), "vms_that_fit": fit,
            "containers": container_servers(containers, budget, requests,
                                            progress(containers, "servers: containers")),
            "vms": vm_servers(fit, vm_memory, progress(fit, "servers: VMs"))}


def saved(path: Path = SAVED) -> dict | None:
    """The results `make compare` saved, or None if it has not run here."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def summary(results: dict) -> str:
    """The servers experiment in three lines, with today's numbers."""
    containers, vms = results["containers"], results["vms"]
    p50 = sorted(c["p50"] for c in containers)[len(containers) // 2] * 1000
    p99 = max(c["p99"] for c in containers) * 1000
    lines = [f"{len(containers)} web servers as containers: "
             f"{sum(c['memory'] for c in containers) / 2**20:.0f} MiB in all, "
             f"{sum(c['requests'] for c in containers)} requests, median p50 {p50:.1f} ms, "
             f"worst p99 {p99:.1f} ms",
             f"{len(vms)} as VMs (as many as a {results['budget'] // 2**20} MiB budget can "
             f"promise {results['vm_memory'] // 2**20} MiB each, at most 6 under TCG): "
             f"{sum(vm['pss'] for vm in vms) / 2**20:.0f} MiB in all; no network card, "
             "so no requests"]
    return "\n".join(lines)
