"""Measuring containers against VMs, with psutil and the cgroups' own accounting.

Every function here returns plain data (dicts and lists of numbers) that a notebook
prints or plots; none of them draws anything.
"""
from __future__ import annotations

import time

import psutil

from .cgroups import Cgroup, Limits, Sampler, format_bytes, parse_memory
from .container import Container
from .vm import IDLE, VM

MiB = 1024**2


def peak_workload(delay: float, peak_mb: int, hold: float, where: str) -> str:
    """Shell: wait `delay` s, hold `peak_mb` MiB in a tmpfs file for `hold` s, let go.

    tmpfs pages cannot be reclaimed without swap: the memory is really in use, and
    counts against the group (or the guest's RAM) until the file is removed.
    """
    return (f"sleep {delay}; dd if=/dev/zero of={where}/peak bs=1M count={peak_mb} "
            f"2>/dev/null || exit 1; sleep {hold}; rm {where}/peak")


def overprovision_containers(k: int = 6, budget: str = "160M", limit: str = "96M",
                             peak_mb: int = 64, hold: float = 0.5, gap: float = 0.7) -> dict:
    """K containers whose limits add up to more than the budget they share, each
    peaking in turn: all complete, because the budget caps only what is in use."""
    budget_group = Cgroup(f"mc-budget-{id(object()):x}", Limits(memory=parse_memory(budget)))
    budget_group.create()
    containers = [Container(peak_workload(i * gap, peak_mb, hold, "/dev/shm"), memory=limit,
                            cgroup_parent=budget_group) for i in range(k)]
    try:
        with Sampler(budget_group, interval=0.05) as sampler:
            for container in containers:
                container.start()
            results = [container.wait(timeout=60) for container in containers]
        peak = budget_group.stats()["memory_peak"]
    finally:
        for container in containers:
            container.remove(force=True)
        budget_group.remove()
    return {
        "k": k, "budget": parse_memory(budget), "limit_each": parse_memory(limit),
        "sum_of_limits": k * parse_memory(limit), "peak_mb": peak_mb,
        "exit_codes": [r.exit_code for r in results],
        "oom_killed": [r.oom_killed for r in results],
        "peak_in_use": peak or max(s["memory"] for s in sampler.samples),
        "timeline": [(s["time"], s["memory"]) for s in sampler.samples],
    }


def overprovision_vms(k: int = 6, memory: str = "160M", peak_mb: int = 64, hold: float = 0.5,
                      gap: float = 0.7) -> dict:
    """The same K workloads as VMs: each guest gets its RAM up front, and what a guest
    once touched stays with its QEMU process, so the host's total only grows."""
    vms = [VM(memory=memory) for _ in range(k)]
    timeline: list[tuple[float, int]] = []
    try:
        for i, vm in enumerate(vms):     # each works, says so, then stays up (and keeps its RAM)
            workload = peak_workload(i * gap, peak_mb, hold, "/tmp")
            vm.start(f"{workload}; echo MC-DONE=$?; {IDLE}")
        for vm in vms:
            vm.ready()
        processes = [psutil.Process(vm.process.pid) for vm in vms]
        started = time.monotonic()
        done = [None] * k
        while None in done:
            timeline.append((time.monotonic() - started, sum(_rss(p) for p in processes)))
            for i, vm in enumerate(vms):
                vm.poll_console()
                found = [line for line in vm.console if line.startswith("MC-DONE=")]
                done[i] = int(found[0].split("=")[1]) if found else None
            time.sleep(0.05)
        results = done
    finally:
        for vm in vms:
            vm.stop()
    return {"k": k, "memory_each": parse_memory(memory), "committed": k * parse_memory(memory),
            "exit_codes": results, "peak_in_use": max(m for _, m in timeline),
            "timeline": timeline}


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def describe_overprovision(containers: dict, vms: dict | None = None) -> str:
    """The experiment in three sentences, with today's numbers."""
    lines = [f"{containers['k']} containers, each allowed {format_bytes(containers['limit_each'])}"
             f" ({format_bytes(containers['sum_of_limits'])} in all) under a shared budget of "
             f"{format_bytes(containers['budget'])}: exit codes {containers['exit_codes']}, "
             f"at most {format_bytes(containers['peak_in_use'])} in use at once."]
    if vms:
        lines.append(f"{vms['k']} VMs of {format_bytes(vms['memory_each'])} each: exit codes "
                     f"{vms['exit_codes']}, their QEMU processes held up to "
                     f"{format_bytes(vms['peak_in_use'])} of host memory.")
    return "\n".join(lines)
