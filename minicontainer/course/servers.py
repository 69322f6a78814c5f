"""Fifty real web servers: the seed's "30-50 servers on one platform", measured.

Every server is the same program, busybox's httpd serving one small page, and
every one sits on the same bridge network of our own (layer 4): containers through
a veth, VMs through a virtio network card wired to a tap (vm/machine.py). The
containers share one memory budget (layer 3); as VMs there are only as many as the
budget's memory can be promised to (each VM is given its -m up front), at most six
under TCG. This process drives each server, container or VM, with the same bounded
load over the bridge — never anything beyond this host — timing every request, and
then measures what the server costs. Heavy: `make compare` runs it whole and saves
the numbers in results/servers.json, which notebook 08 reads.
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


def loaded(address: str, requests: int) -> dict:
    """Drive the server at `address` with `requests` GETs: their p50 and p99, in
    seconds, and how many were answered (the same load for a container and a VM)."""
    latencies = timed_requests(address, requests)
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "requests": len(latencies)}


def container_servers(count: int, budget: str, requests: int, bridge: str,
                      progress=None) -> list[dict]:
    """`count` httpd containers on `bridge`, under one budget: each loaded with
    `requests` GETs, then measured (its cost, as measure.container_cost)."""
    tick = progress or (lambda: None)
    budget_group = Cgroup(f"mc-srvbudget-{os.urandom(3).hex()}",
                          Limits(memory=parse_memory(budget)))
    state.write_group(budget_group.path)     # before it exists: a crash leaves it recorded
    budget_group.create()
    running: list[Container] = []
    try:
        for _ in range(count):
            running.append(Container(SERVE, network=bridge, cgroup_parent=budget_group).start())
        wait_until_serving([c.attachment.address for c in running])
        servers = []
        for container in running:
            servers.append({**loaded(container.attachment.address, requests),
                            "memory": container_cost(container)})
            tick()
        return servers
    finally:
        for container in running:
            container.remove(force=True)
        budget_group.remove()
        state.release_group(budget_group.path)


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


def vm_servers(count: int, vm_memory: str, requests: int, bridge: str,
               progress=None) -> list[dict]:
    """`count` VMs on `bridge`, each running httpd in its guest, booted side by side:
    each loaded with `requests` GETs as a container is, then measured (qemu_memory's
    parts, after the load: the pages it touched count)."""
    tick = progress or (lambda: None)
    machines = [VM(memory=vm_memory, network=bridge) for _ in range(count)]
    try:
        for vm in machines:
            vm.start(f"{PAGE} && httpd -p 80 -h /www; {IDLE}")   # httpd in the background
        for vm in machines:
            vm.ready()
        wait_until_serving([vm.address for vm in machines], timeout=60)   # TCG is slow
        servers = []
        for vm in machines:
            servers.append({**loaded(vm.address, requests),
                            **qemu_memory(psutil.Process(vm.process.pid), vm.memory),
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

    bridge = network.create(f"mc-srv-{os.urandom(3).hex()}")["name"]    # one for both kinds
    try:
        return {"budget": parse_memory(budget), "requests_each": requests,
                "vm_memory": vm_bytes(vm_memory), "vms_that_fit": fit,
                "containers": container_servers(containers, budget, requests, bridge,
                                                progress(containers, "servers: containers")),
                "vms": vm_servers(fit, vm_memory, requests, bridge,
                                  progress(fit, "servers: VMs"))}
    finally:
        network.remove(bridge, force=True)


def saved(path: Path = SAVED) -> dict | None:
    """The results `make compare` saved, or None if it has not run here."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def latency_line(servers: list[dict]) -> str:
    """How many requests `servers` answered, their median p50 and worst p99."""
    if not servers or "p50" not in servers[0]:      # saved before VMs had network cards
        return "not loaded"
    p50 = sorted(s["p50"] for s in servers)[len(servers) // 2] * 1000
    p99 = max(s["p99"] for s in servers) * 1000
    return (f"{sum(s['requests'] for s in servers)} requests, median p50 {p50:.1f} ms, "
            f"worst p99 {p99:.1f} ms")


def summary(results: dict) -> str:
    """The servers experiment in two lines, with today's numbers."""
    containers, vms = results["containers"], results["vms"]
    lines = [f"{len(containers)} web servers as containers: "
             f"{sum(c['memory'] for c in containers) / 2**20:.0f} MiB in all, "
             f"{latency_line(containers)}",
             f"{len(vms)} as VMs (as many as a {results['budget'] // 2**20} MiB budget can "
             f"promise {results['vm_memory'] // 2**20} MiB each, at most 6 under TCG): "
             f"{sum(vm['pss'] for vm in vms) / 2**20:.0f} MiB in all, {latency_line(vms)}"]
    return "\n".join(lines)
