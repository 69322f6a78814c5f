"""Is this machine ready for the course? A checklist with a fix for every failure.

Each check looks at the real thing (a namespace is tried, not assumed), says what it
found in one line, and on failure says what to do. Required checks make the exit
status non-zero; the others only warn, because the lessons that need them (the VM
side, networking) can still be read on a machine without them.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass

MIN_KERNEL = (5, 3)  # pidfd_open(2), used to wait for containers without polling


@dataclass
class Check:
    """One line of the report: what was checked, what was found, how to fix it."""
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True


def run_checks() -> list[Check]:
    """Every check, in the order a failure is best fixed in."""
    checks = [check_linux()]
    if not checks[0].ok:
        return checks
    checks += [check_root(), check_kernel(), *check_namespaces()]
    for check in (check_cgroups, check_rootless, check_busybox, check_monitor, check_kvm,
                  check_qemu, check_vm_kernel):
        try:
            checks.append(check())
        except OSError as e:          # e.g. a cache directory an ordinary user cannot read
            checks.append(Check(check.__name__.removeprefix("check_"), False,
                                f"could not look: {e}", "run as root (sudo)", required=False))
    return checks + [check_module("pyroute2", "networking (layer 4)")]


def check_linux() -> Check:
    """Containers need Linux."""
    system = platform.system()
    return Check("Linux", system == "Linux", system,
                 "containers are a Linux kernel feature: use the course's Vagrant VM "
                 "(`vagrant up`, see the README)")


def check_root() -> Check:
    """Namespaces, mounts and cgroups need root."""
    return Check("running as root", os.geteuid() == 0, f"uid {os.geteuid()}",
                 "run with sudo (namespaces, mounts and cgroups need root)")


def check_kernel() -> Check:
    """A kernel new enough for what the course uses (pidfds, close_range...)."""
    release = platform.release()
    version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    return Check("kernel version", version >= MIN_KERNEL, release,
                 f"a kernel {'.'.join(map(str, MIN_KERNEL))} or newer is needed: upgrade "
                 "the distribution, or use the Vagrant VM")


def check_namespaces() -> list[Check]:
    """Try each kind of namespace for real, in a throwaway child process."""
    from .namespaces import FLAGS
    from .syscalls import unshare
    checks = []
    for kind, flag in FLAGS.items():
        pid = os.fork()
        if pid == 0:
            try:
                unshare(flag)
                os._exit(0)
            except BaseException:
                os._exit(1)
        ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        checks.append(Check(f"{kind} namespace", ok, "unshare works" if ok else "unshare failed",
                            f"the kernel refuses new {kind} namespaces: are you root? "
                            "(CONFIG_" + kind.upper() + "_NS, sysctl user.max_*_namespaces)",
                            required=kind in ("mnt", "pid", "uts", "ipc", "net")))
    return checks


def check_rootless() -> Check:
    """Can an ordinary user run `minicontainer run --rootless`? And what it lacks."""
    from .namespaces import user_namespaces_refused
    why = user_namespaces_refused()
    return Check("rootless containers (--rootless)", why is None,
                 "user namespaces allowed; without root there are no cgroup limits (unless "
                 "systemd delegates a cgroup) and no bridged network" if why is None else why,
                 why or "", required=False)


def check_cgroups() -> Check:
    """The memory, cpu and pids controllers, on v1 or v2."""
    from .cgroups import hierarchies, mode
    where = hierarchies()
    missing = {"memory", "cpu", "pids"} - set(where)
    found = f"{mode()}: " + "; ".join(
        f"{v}: " + " ".join(sorted(c for c in where if where[c][0] == v and c != "cgroup2"))
        for v in ("v1", "v2") if any(version == v for version, _ in where.values()))
    return Check("cgroups (memory, cpu, pids)", not missing, found,
                 f"controllers missing: {', '.join(sorted(missing))}; enable them on the kernel "
                 "command line (cgroup_enable=memory) or use the Vagrant VM", required=False)


def check_busybox() -> Check:
    """A static busybox to build the image from."""
    from .errors import RootfsError
    from .rootfs import find_busybox
    try:
        return Check("static busybox (the image)", True, str(find_busybox()))
    except RootfsError as e:
        return Check("static busybox (the image)", False, "missing", str(e))


def check_monitor() -> Check:
    """The small C monitor a detached container keeps (monitor.py); without it, a
    Python waiter of ~3 MiB per container: it works, at a cost."""
    from .monitor import doctor_check
    ok, found, fix = doctor_check()
    return Check("container monitor (C)", ok, found, fix, required=False)


def check_kvm() -> Check:
    """KVM usable: /dev/kvm, the CPU's virtualization flag, and QEMU able to use it."""
    from .vm.qemu import accelerator
    accel, why = accelerator()
    return Check("KVM (fast VMs)", accel == "kvm", why,
                 "VMs will run under TCG, slower but fine for the course; for KVM enable "
                 "VT-x/AMD-V in the firmware (or nested virtualization for this VM)",
                 required=False)


def check_qemu() -> Check:
    """QEMU for this CPU, for the VM side (optional)."""
    from .host import cpu
    qemu = shutil.which(cpu().qemu)
    return Check("QEMU (the VM side)", qemu is not None, qemu or "not found",
                 "run `make setup` (it installs QEMU)", required=False)


def check_vm_kernel() -> Check:
    """A kernel for the VMs to boot (optional)."""
    from .errors import VMError
    from .vm.kernel import find_kernel
    try:
        kernel = find_kernel()
        return Check("a kernel for the VM", True, f"{kernel.release}, {kernel.source}",
                     required=False)
    except VMError as e:
        return Check("a kernel for the VM", False, "none found", str(e), required=False)


def check_module(module: str, purpose: str) -> Check:
    """A Python module the notebooks need (optional)."""
    ok = importlib.util.find_spec(module) is not None
    return Check(f"Python module {module}", ok, "importable" if ok else "missing",
                 f"needed for {purpose}: run `make setup`", required=False)


def main() -> int:
    """Print the checklist; exit status 1 if a required check failed."""
    checks = run_checks()
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        print(f"[{mark}] {c.name:30} {c.found}")
        if not c.ok:
            print(f"       fix: {c.fix}")
    failed = [c for c in checks if c.required and not c.ok]
    print("ready." if not failed else f"not ready: {len(failed)} required check(s) failed.")
    return 1 if failed else 0
