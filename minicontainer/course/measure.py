"""Measuring containers against VMs, with psutil and the cgroups' own accounting.

Every function here returns plain data (dicts and lists of numbers) that a notebook
prints or plots; none of them draws anything.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import psutil

from .. import state
from ..binfmt import foreign_binary_demo
from ..cgroups import Cgroup, Limits, Sampler, parse_memory
from ..container import Container, run
from ..process import Result
from ..arguments import MIN_VM_MEMORY
from ..host import cpu, format_bytes, parse_size
from ..vm.initramfs import ANSWER, IDLE
from ..vm.kernel import find_kernel
from ..vm.machine import VM, choose_machine
from ..vm.qemu import accelerator, device_models

MiB = 1024**2


def no_progress() -> None:
    """A step done, and no progress bar to show it."""


def vm_bytes(memory: str | int) -> int:
    """A VM's memory in bytes, as VM() reads it (not a cgroup's limit)."""
    return parse_size(memory, "VM memory", MIN_VM_MEMORY)

def peak_workload(delay: float, peak_mb: int, hold: float, where: str) -> str:
    """Shell: wait `delay` s, hold `peak_mb` MiB in a tmpfs file for `hold` s, let go.

    tmpfs pages cannot be reclaimed without swap: the memory is really in use, and
    counts against the group (or the guest's RAM) until the file is removed.
    """
    return (f"sleep {delay}; dd if=/dev/zero of={where}/peak bs=1M count={peak_mb} "
            f"2>/dev/null || exit 1; sleep {hold}; rm {where}/peak")


def anonymous_peak(delay: float, peak_mb: int, hold: float) -> str:
    """Shell: wait `delay` s, then become dd (the container's PID 1) holding a
    `peak_mb` MiB buffer for `hold` s.

    A process's own memory, unlike a tmpfs file: the OOM killer gets it back by killing
    dd, and the container ends with exit 137 (128 + SIGKILL's 9), as Docker's would.
    dd reads one full block (its buffer, touched) from a FIFO whose writer then waits.
    """
    return (f"sleep {delay}; mkfifo /tmp/feed; (head -c {peak_mb}m /dev/zero; sleep {hold}) "
            f"> /tmp/feed & exec dd if=/tmp/feed of=/dev/null bs={peak_mb}M count=2 "
            "iflag=fullblock")


def overprovision_containers(k: int = 6, budget: str = "160M", limit: str = "96M",
                             peak_mb: int = 64, hold: float = 0.5, gap: float = 0.7,
                             progress_factory=None) -> dict:
    """K containers whose limits add up to more than the budget they share, each
    peaking in turn: all complete, because the budget caps only what is in use.
    progress_factory(total, name) → a tick called as each container ends."""
    commands = [peak_workload(i * gap, peak_mb, hold, "/dev/shm") for i in range(k)]
    tick = progress_factory(k, "containers") if progress_factory else no_progress
    return {"peak_mb": peak_mb, **containers_under_budget(commands, budget, limit, tick)}


def overlapping_peaks(k: int = 4, budget: str = "160M", limit: str = "96M", peak_mb: int = 64,
                      hold: float = 1.5, start: float = 2.0) -> dict:
    """The unhappy case of the same budget: K peaks at once need more than it holds, so
    the kernel's OOM killer takes some of the containers (exit 137) to save the rest.

    Which ones: on a budget the kernel picks the process using the most memory in the
    whole budget group (ties go to the one it finds first), not the one that asked
    last. Docker shares a budget the same way with --cgroup-parent.
    """
    # All wait `start` s first: a container still being set up when the budget is full
    # can fail to start at all (seen: ENODEV from its setup), which is another lesson.
    commands = [anonymous_peak(start, peak_mb, hold) for _ in range(k)]
    return {"peak_mb": peak_mb, **containers_under_budget(commands, budget, limit)}


def containers_under_budget(commands: list[str], budget: str, limit: str,
                            ended: Callable[[], None] = no_progress) -> dict:
    """Run one container per command, each limited to `limit`, all in one budget group
    of `budget`; sample the group's memory; how each ended and what the kernel counted
    (`ended()` is called as each one ends)."""
    name = f"mc-budget-{os.urandom(3).hex()}"      # random: experiments may run side by side
    budget_group = Cgroup(name, Limits(memory=parse_memory(budget)))
    state.write_group(budget_group.path)     # before it exists: a crash leaves it recorded
    budget_group.create()
    containers = [Container(command, memory=limit, cgroup_parent=budget_group)
                  for command in commands]
    try:
        with Sampler(budget_group, interval=0.05) as sampler:
            for container in containers:
                container.start()
            # Each waited for as it ends (how it died is read from its group, at once).
            with ThreadPoolExecutor(len(containers)) as waiters:
                results = list(waiters.map(partial(_wait_and_tell, ended), containers))
        # The budget's own oom_kills counts the kills on cgroup v2 (events go up the
        # tree); on v1 the kernel counts each only in the victim's group: 0 here.
        budget_stats = budget_group.stats()
    finally:
        for container in containers:
            container.remove(force=True)
        budget_group.remove()
        state.release_group(budget_group.path)
    k = len(commands)
    return {
        "k": k, "budget": parse_memory(budget), "limit_each": parse_memory(limit),
        "sum_of_limits": k * parse_memory(limit),
        "exit_codes": [r.exit_code for r in results],
        "oom_killed": [r.oom_killed for r in results], "oom_kills": budget_stats["oom_kills"],
        "peak_in_use": budget_stats["memory_peak"] or max(s["memory"] for s in sampler.samples),
        "timeline": [(s["time"], s["memory"]) for s in sampler.samples],
    }


def _wait_and_tell(ended: Callable[[], None], container: Container) -> Result:
    """The container's end (within 60 s); then ended()."""
    result = container.wait(timeout=60)
    ended()
    return result


def overprovision_vms(k: int = 6, memory: str = "160M", peak_mb: int = 64, hold: float = 0.5,
                      gap: float = 0.7, progress_factory=None) -> dict:
    """The same K workloads as VMs: each guest gets its RAM up front, and what a guest
    once touched stays with its QEMU process, so the host's total only grows.
    progress_factory(total, name) → a tick called as each guest boots."""
    tick = progress_factory(k, "VMs booted") if progress_factory else no_progress
    vms = [VM(memory=memory) for _ in range(k)]
    timeline: list[tuple[float, int]] = []
    try:
        for i, vm in enumerate(vms):     # each works, says so, then stays up (and keeps its RAM)
            workload = peak_workload(i * gap, peak_mb, hold, "/tmp")
            vm.start(f"{workload}; echo MC-DONE=$?; {IDLE}")
        for vm in vms:
            vm.ready()
            tick()
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
    return {"k": k, "memory_each": vm_bytes(memory), "committed": k * vm_bytes(memory),
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


# -- start time ------------------------------------------------------------------------------

def start_times(containers: int = 20, vms: int = 5, progress=None) -> dict:
    """Start-to-exit of `true`, in seconds, in fresh containers and fresh VMs (same image),
    and where each VM's boot time went."""
    tick = progress or no_progress
    container_times = []
    for _ in range(containers):
        container_times.append(run("true").duration)
        tick()
    vm_times, boots = [], []
    for _ in range(vms):
        started = time.monotonic()
        with VM() as vm:
            boots.append(asdict(vm.boot("true")))
            vm.wait()
        vm_times.append(time.monotonic() - started)
        tick()
    return {"container": container_times, "vm": vm_times, "vm_boot_phases": boots,
            "vm_accel": VM().accel}


# -- memory ----------------------------------------------------------------------------------

def tree_memory(pid: int) -> dict[str, int]:
    """PSS and USS of process `pid` and all its descendants (bytes)."""
    root = psutil.Process(pid)
    totals = {"pss": 0, "uss": 0}
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        totals["pss"] += info.pss
        totals["uss"] += info.uss
    return totals


def _waiter_pid(container: Container) -> int:
    """Host pid of our runtime's process that waits for the container's PID 1 (as
    Docker's containerd-shim does): its parent, with a pid namespace; without one,
    no process waits in between and this is the container's own pid."""
    if "pid" in container.spec.namespaces:
        return psutil.Process(container.pid).ppid()   # the waiter forked PID 1 (fork_and_wait)
    return container.pid


def qemu_memory(process: psutil.Process, guest_bytes: int) -> dict[str, int]:
    """QEMU's PSS, split: the guest's RAM (the one mapping of its size), TCG's
    translation cache (its executable anonymous mapping; none under KVM) and the rest.

    qemu_overhead is everything but the guest's RAM: the cache, QEMU's code and
    libraries, its heap, the kernel file it loaded. The guest's RAM is what its -m
    gave it as far as the guest has touched it: pages never touched cost nothing yet.
    """
    maps = process.memory_maps(grouped=False)
    ram = min(maps, key=lambda m: abs(m.size - guest_bytes))
    # QEMU's code_gen_buffer: one anonymous read-write-execute mapping (1 GiB reserved by
    # default, filled as guest code is translated), or a memfd named "tcg-jit" when QEMU
    # maps it twice (split-wx).
    cache = sum(m.pss for m in maps if m is not ram and (
        "tcg-jit" in m.path or (m.perms.startswith("rwx") and not m.path.startswith("/"))))
    total = sum(m.pss for m in maps)
    return {"pss": total, "guest_ram_touched": ram.pss, "qemu_overhead": total - ram.pss,
            "tcg_cache": cache, "qemu_itself": total - ram.pss - cache}


def memory_per_instance(vm_memory: str = "128M") -> dict:
    """One idle container and one idle VM, measured: what each costs the host."""
    bare = subprocess.Popen(["/bin/busybox", "sleep", "60"])
    time.sleep(0.3)
    bare_memory = tree_memory(bare.pid)
    bare.kill()
    bare.wait()
    with Container(["sleep", "60"], cgroup=False) as container:
        container.start()
        time.sleep(0.3)
        container_memory = tree_memory(container.pid)
        # Our runtime's own process per container (it waits for PID 1, like Docker's
        # containerd-shim): a copy of this Python process, mostly shared with it.
        waiter = psutil.Process(_waiter_pid(container)).memory_full_info()
    with VM(memory=vm_memory) as vm:
        vm.boot()
        vm_memory_used = qemu_memory(psutil.Process(vm.process.pid), vm.memory)
    return {"bare_process": bare_memory, "container": container_memory,
            "runtime_waiter": {"pss": waiter.pss, "uss": waiter.uss},
            "vm": vm_memory_used, "vm_memory": vm_bytes(vm_memory)}


def scaling(max_containers: int = 50, max_vms: int = 6, vm_memory: str = "128M",
            progress=None) -> dict:
    """Memory that 1…N idle containers, then 1…M idle VMs (as memory allows), cost the host.

    Each side is measured on its own processes, not as the host's "used" memory, which
    moves with everything else the machine does. A container costs the USS of its
    processes, our waiter included (the memory freed if they ended), plus the kernel
    memory its cgroup is charged (page tables, kernel stacks, slab): USS, not PSS,
    because the waiter is a fork of this process and PSS would bill this notebook's own
    memory to the containers. A VM costs the PSS of its QEMU process, split into the
    guest's RAM, TCG's translation cache and QEMU itself (qemu_memory): PSS, because
    several QEMUs share their code and the kernel file, and each should pay its share.
    "vm_committed" is what the VMs were promised (-m each): what a host must be ready
    to give them, touched or not.
    """
    tick = progress or no_progress
    result = {"containers": [], "vms": [], "vm_parts": [], "vm_committed": []}
    running: list[Container] = []
    try:
        for n in range(1, max_containers + 1):
            running.append(Container(["sleep", "3600"]).start())
            result["containers"].append((n, sum(container_cost(c) for c in running)))
            tick()
    finally:
        for container in running:
            container.remove(force=True)
    per_vm = vm_bytes(vm_memory) + 150 * MiB          # guest RAM plus QEMU, roughly
    max_vms = max(1, min(max_vms, psutil.virtual_memory().available // 2 // per_vm))
    machines: list[VM] = []
    try:
        for n in range(1, max_vms + 1):
            machines.append(VM(memory=vm_memory))
            machines[-1].boot()
            time.sleep(0.5)                                     # let the guest settle
            parts = vm_parts(machines)
            result["vms"].append((n, parts["pss"]))
            result["vm_parts"].append((n, parts))
            result["vm_committed"].append((n, n * vm_bytes(vm_memory)))
            tick()
    finally:
        for vm in machines:
            vm.stop()
    return result


def vm_parts(machines: list[VM]) -> dict[str, int]:
    """qemu_memory of every running VM, added up part by part."""
    totals: dict[str, int] = {}
    for vm in machines:
        for part, size in qemu_memory(psutil.Process(vm.process.pid), vm.memory).items():
            totals[part] = totals.get(part, 0) + size
    return totals


def container_cost(container: Container) -> int:
    """Bytes a running container costs the host: the USS of its processes and of our
    monitor above them (monitor.py: a small C program; a Python waiter where setup
    did not build it), plus the kernel memory charged to its cgroup. These containers
    hold no terminal, so no keeper is left out (a published port is rules, no process)."""
    kernel = (container.stats()["kernel_memory"] or 0) if container.cgroup else 0
    return tree_memory(_waiter_pid(container))["uss"] + kernel


# -- the kernel, and what each side exposes of the host ---------------------------------------

def kernel_identity() -> dict:
    """uname -r and boot_id: the container's are the host's; the VM has its own."""
    probe = "uname -r; cat /proc/sys/kernel/random/boot_id"
    host = [os.uname().release, Path("/proc/sys/kernel/random/boot_id").read_text().strip()]
    container = run(probe).stdout.split()
    with VM() as vm:
        guest = vm.run(probe)[1].split()
    return {side: {"release": r, "boot_id": b} for side, (r, b) in
            {"host": host, "container": container, "vm": guest}.items()}


def attack_surface(machine: str | None = None) -> dict:
    """What each side can call on directly, counted on this machine.

    A container's processes call the host kernel itself: every system call it
    implements (counted from /proc/kallsyms) is within reach, minus what layer 5's
    seccomp filter refuses. A guest never calls the host kernel: it programs the device
    models QEMU emulates (listed by QEMU's own `info qtree`; empty virtio-mmio slots,
    where nothing is plugged in, are not counted) and, under KVM, reaches the kernel's
    KVM interface. So the container's number counts doors into the host kernel, the VM's
    doors into QEMU, a host process (which seccomp and namespaces can confine in turn):
    fewer, narrower doors — but bugs in QEMU's device models have been real escapes too,
    so this is a count of doors, not a proof of safety.
    """
    machine = machine or choose_machine(find_kernel(), accelerator()[0])  # the VMs we boot
    symbols = Path("/proc/kallsyms").read_text()
    prefix = cpu().kernel_symbols
    syscalls = sorted(set(re.findall(rf" T {prefix}(\w+)$", symbols, re.M)) - {"ni_syscall"})
    devices, empty_slots = device_models(machine)
    from ..security import DENIED_SYSCALLS
    refused = sorted(set(syscalls) & set(DENIED_SYSCALLS))  # layer 5's seccomp filter
    return {"container": {"host_syscalls": len(syscalls), "examples": syscalls[:12],
                          "refused_by_seccomp": len(refused)},
            "vm": {"machine": machine, "emulated_devices": len(devices),
                   "device_types": sorted(set(devices)), "empty_slots": empty_slots},
            "explanation": " ".join(attack_surface.__doc__.split("\n\n")[1].split())}


# -- a VM's start: booting, and not booting (notebook 07) ---------------------------------------

def boot_breakdown(boots: int = 1, progress_factory=None) -> dict:
    """Where `boots` cold boots' time goes (QEMU, kernel, init) under TCG, and under
    KVM too where /dev/kvm really works; why not, where it does not.
    progress_factory(total, name) → a tick called after each boot."""
    usable, why = accelerator()
    phases = {"tcg": [], "kvm": []}
    accels = ("tcg", "kvm") if usable == "kvm" else ("tcg",)
    tick = progress_factory(boots * len(accels), "boots") if progress_factory else no_progress
    for accel in accels:
        for _ in range(boots):
            with VM(accel=accel) as vm:
                phases[accel].append(asdict(vm.boot()))
            tick()
    return {**phases, "kvm_usable": usable == "kvm", "kvm_reason": why}


def snapshot_restore(restores: int = 3, progress_factory=None) -> dict:
    """A cold boot until the guest answers a command, then that guest saved to a file
    and restored `restores` times until it answers again (seconds each), and whether
    the restored guest was the saved one (the same boot_id). progress_factory(total,
    name) → a tick called after the boot, the save and each restore."""
    probe = "cat /proc/sys/kernel/random/boot_id"
    tick = progress_factory(restores + 2, "boot, save, restores") if progress_factory \
        else no_progress
    with VM() as vm:
        boot = vm.boot(ANSWER)
        started = time.monotonic()
        boot_id = vm.exec(probe)[1]
        cold = {**asdict(boot), "answered": boot.total + time.monotonic() - started}
        tick()
        saved = vm.save_snapshot()
        size = vm.snapshot_file.stat().st_size
        tick()
        restored, same = [], True
        for _ in range(restores):
            started = time.monotonic()
            running = vm.restore()
            same &= vm.exec(probe)[1] == boot_id
            restored.append({"running": running, "answered": time.monotonic() - started})
            tick()
    return {"accel": vm.accel, "cold": cold, "save": saved, "snapshot_bytes": size,
            "restores": restored, "same_guest": same}


# -- the same hardware probes on both sides (notebook 07) ------------------------------------

HARDWARE_PROBE = ("grep -m1 -e 'model name' -e '^CPU part' /proc/cpuinfo | cut -d: -f2; "
                  "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; "
                  "ls /sys/bus/platform/devices 2>/dev/null | wc -l; "
                  "ls /sys/bus/pci/devices 2>/dev/null | wc -l; "
                  "uname -r; cat /proc/sys/kernel/random/boot_id")


def hardware_probes() -> dict[str, dict[str, str]]:
    """What the host, a container (limited to 64M) and a VM (given 128M) say about
    their machine, asked the same shell lines: CPU model and count, MemTotal, platform
    and PCI devices, and the kernel that answers (release, boot_id)."""
    names = ("cpu model", "cpus", "MemTotal", "platform devices", "PCI devices",
             "kernel release", "boot_id")
    host = subprocess.run(["/bin/sh", "-c", HARDWARE_PROBE], capture_output=True,
                          text=True).stdout
    container = run(HARDWARE_PROBE, memory="64M").stdout
    with VM(memory="128M") as vm:
        guest = vm.run(HARDWARE_PROBE)[1]
    return {side: dict.fromkeys(names, "?") | dict(zip(names, (  # "?": a probe said nothing
                line.strip().removeprefix("MemTotal:").strip() for line in output.splitlines()),
                strict=False))
            for side, output in (("host", host), ("container", container), ("vm", guest))}


# -- everything, for `minicontainer compare` -------------------------------------------------

def compare(quick: bool = False, progress_factory=None) -> dict:
    """All the measurements side by side; progress_factory(total, name) → a callable
    ticked once per step (tqdm's update, in the CLI and the notebooks)."""
    size = {"containers": 10 if quick else 30, "vms": 2 if quick else 5,
            "scale_containers": 20 if quick else 50, "scale_vms": 2 if quick else 5,
            "overprovision": 3 if quick else 6}

    def progress(total: int, name: str):
        """A ticker for a step of `total` runs, or None without a progress_factory."""
        return progress_factory(total, name) if progress_factory else None

    results = {"host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                        "memory": psutil.virtual_memory().total}}
    results["start_time"] = start_times(size["containers"], size["vms"],
                                        progress(size["containers"] + size["vms"], "start time"))
    results["memory"] = memory_per_instance()
    results["scaling"] = scaling(size["scale_containers"], size["scale_vms"], progress=progress(
        size["scale_containers"] + size["scale_vms"], "scaling"))
    results["overprovision"] = {"containers": overprovision_containers(size["overprovision"]),
                                "vms": overprovision_vms(size["overprovision"]),
                                "overlapping": overlapping_peaks()}
    results["kernel"] = kernel_identity()
    results["architecture"] = foreign_binary_demo()
    results["attack_surface"] = attack_surface()
    results["snapshot"] = snapshot_restore(restores=1 if quick else 3)   # Firecracker's trick
    return results


def summary(results: dict) -> str:
    """The comparison as a small table: one row per claim, container beside VM."""
    import statistics
    start, memory, scale = results["start_time"], results["memory"], results["scaling"]
    kernel, surface = results["kernel"], results["attack_surface"]
    over = results["overprovision"]
    c_start, v_start = statistics.median(start["container"]), statistics.median(start["vm"])
    rows = [
        ("", "container", "VM"),
        ("start to exit (median)", f"{c_start * 1000:.1f} ms",
         f"{v_start:.2f} s ({v_start / c_start:.0f}x, {start['vm_accel']})"),
        ("memory of one (PSS)", f"{memory['container']['pss'] / MiB:.1f} MiB",
         f"{memory['vm']['pss'] / MiB:.0f} MiB (guest RAM "
         f"{memory['vm']['guest_ram_touched'] / MiB:.0f} of {memory['vm_memory'] / MiB:.0f}, "
         f"TCG cache {memory['vm'].get('tcg_cache', 0) / MiB:.0f})"),
        (f"{scale['containers'][-1][0]} containers / {scale['vms'][-1][0]} VMs, host memory",
         f"{scale['containers'][-1][1] / MiB:.0f} MiB", f"{scale['vms'][-1][1] / MiB:.0f} MiB"),
        ("kernel release", f"{kernel['container']['release']} (the host's)",
         f"{kernel['vm']['release']} (its own)"),
        ("boot_id same as the host's", *(str(kernel[side]["boot_id"] == kernel["host"]["boot_id"])
                                         for side in ("container", "vm"))),
        (f"a program built for {results['architecture']['foreign']}",
         "runs only through qemu-user" if results["architecture"]["with_qemu_user"]
         else "fails", "a whole emulated machine could run it (qemu-system)"),
        ("what it can call on directly", f"{surface['container']['host_syscalls']} host syscalls",
         f"{surface['vm']['emulated_devices']} emulated devices"),
        ("over-provisioned, all finished", str(set(over["containers"]["exit_codes"]) == {0}),
         str(set(over["vms"]["exit_codes"]) == {0})),
        ("peaks at once, OOM-killed (exit 137)",
         f"{over['overlapping']['exit_codes'].count(137)} of {over['overlapping']['k']}"
         if "overlapping" in over else "not measured", "(a VM's guest would OOM inside)"),
        ("  memory held at the peak", f"{over['containers']['peak_in_use'] / MiB:.0f} MiB",
         f"{over['vms']['peak_in_use'] / MiB:.0f} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:{width}}  {b:28}  {c}" for a, b, c in rows)
