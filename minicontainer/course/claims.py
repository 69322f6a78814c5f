"""The course's closing table: each claim of the discussion, the cell that measured it,
this run's number, and whether the claim held.

No number in the table is typed in. Each row reads the measurements the notebook made
in the same run, by name — 08's `results` (measure.compare), its escape lab `lab`, and
what other cells left behind (07's `restore`, `breakdown`, `probes`, when a notebook
measures them) — and a row whose measurement is absent from this run says so instead of
failing: quick runs skip some measurements, and cells that add new ones slot in by name.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

NOT_MEASURED = "not measured in this run"
MiB = 2**20


class NotMeasured(LookupError):
    """None of the names a row reads is in the notebook's namespace."""


class Measurements:
    """The notebook's variables, read by dotted name: "results.start_time.vm"."""

    def __init__(self, namespace: Mapping[str, object]) -> None:
        """Read from `namespace` (a notebook's globals()); nothing is copied."""
        self.namespace = namespace

    def __call__(self, *names: str):
        """The first of `names` that exists (dict keys after the first dot); NotMeasured
        if none does."""
        for name in names:
            value, found = self.namespace, True
            for key in name.split("."):
                if isinstance(value, Mapping) and key in value:
                    value = value[key]
                else:
                    found = False
                    break
            if found:
                return value
        raise NotMeasured(" or ".join(names))


@dataclass(frozen=True)
class Claim:
    """A sentence of the discussion, the cell that measures it, and how to read the
    measurement: `judge` returns (today's number, whether it held)."""
    said: str
    cell: str
    judge: Callable[[Measurements], tuple[str, str]]


def from_chroot(m: Measurements) -> tuple[str, str]:
    """The escape lab's chroot row: stopped by pivot_root, through without it."""
    row = next((r for r in m("lab") if r["attack"] == "chroot breakout"), None)
    if row is None:
        raise NotMeasured("lab: chroot breakout")
    return (f"chroot breakout: {'blocked' if row['blocked'] else 'ESCAPED'} by "
            f"{row['stopped by']}; without it: {row['with it off']}",
            "partly: chroot is the ancestor, but chroot alone is escaped"
            if row["with it off"] == "gets through" else "yes")


def os_not_hardware(m: Measurements) -> tuple[str, str]:
    """Devices a VM's kernel drives (emulated by QEMU) against none for a container."""
    surface = m("results.attack_surface")
    devices = surface["vm"]["emulated_devices"]
    return f"VM: {devices} emulated device models; container: none, the host's kernel", \
        "yes" if devices > 0 else "no"


def same_kernel(m: Measurements) -> tuple[str, str]:
    """The kernel release and boot_id a container and a VM report, against the host's."""
    kernel = m("results.kernel")
    host, container, vm = kernel["host"], kernel["container"], kernel["vm"]
    same = container == host
    return (f"container: {container['release']}, the host's boot ({same}); VM: its own boot "
            f"({vm['boot_id'] != host['boot_id']})", "yes" if same else "no")


def architecture(m: Measurements) -> tuple[str, str]:
    """A foreign busybox: refused by the kernel, run through qemu-user."""
    arch = m("results.architecture")
    refused = "Exec format" in arch["without"]
    return (f"{arch['foreign']} busybox: {'Exec format error' if refused else arch['without'][:30]}"
            f"; with qemu-user: {str(arch['with_qemu_user'])[:30]}",
            "yes, with the 'not always'" if refused and arch["with_qemu_user"] else
            "yes" if refused else "no")


def performance(m: Measurements) -> tuple[str, str]:
    """Median start-to-exit time of a container and of a VM."""
    start = m("results.start_time")
    container, vm = statistics.median(start["container"]), statistics.median(start["vm"])
    return (f"start to exit: container {container * 1000:.0f} ms, VM {vm:.2f} s "
            f"({start['vm_accel']})", "yes" if container < vm else "no")


def attack_surface(m: Measurements) -> tuple[str, str]:
    """Host system calls a container may make beside the device models a VM has."""
    surface = m("results.attack_surface")
    return (f"{surface['container']['host_syscalls']} host syscalls "
            f"({surface['container']['refused_by_seccomp']} refused by seccomp) vs "
            f"{surface['vm']['emulated_devices']} device models",
            "not decided by counting: different kinds of doors")


def kernel_access(m: Measurements) -> tuple[str, str]:
    """The escape lab: what is blocked, and by what: an isolation feature of the host's
    kernel the runtime switches on, or the runtime's own conduct (escapes.Attack)."""
    lab = m("lab")
    blocked = [row for row in lab if row["blocked"]]
    by_runtime = sum(bool(row.get("by the runtime")) for row in blocked)
    by_kernel = len(blocked) - by_runtime
    return (f"{len(blocked)} of {len(lab)} escapes blocked: {by_kernel} by a feature of the "
            f"host's kernel (namespaces, capabilities, seccomp, cgroups, mounts), {by_runtime} "
            "by the runtime's own conduct (fds closed, a session, pipes, non-dumpable)",
            "partly: a kernel bug would pass the kernel's layers (none was tried here); the "
            "runtime's own layers fall to a runtime bug (runc's CVEs)"
            + ("" if len(blocked) == len(lab) else "; and some escapes got through"))


def overprovision(m: Measurements) -> tuple[str, str]:
    """Containers whose limits add up to more than the budget all finish; VMs hold RAM."""
    over = m("results.overprovision")
    containers, vms = over["containers"], over["vms"]
    finished = set(containers["exit_codes"]) == {0}
    return (f"limits {containers['sum_of_limits'] / MiB:.0f} MiB > budget "
            f"{containers['budget'] / MiB:.0f} MiB, all finished: {finished}; "
            f"VMs held {vms['peak_in_use'] / MiB:.0f} MiB",
            "yes" if finished and containers["sum_of_limits"] > containers["budget"] else "no")


def fast_vms(m: Measurements) -> tuple[str, str]:
    """A VM restored from a snapshot (07) beside its cold boot; else the boot time."""
    try:
        restore = m("restore", "results.snapshot")
    except NotMeasured:
        start = m("results.start_time")
        return (f"VM boot {statistics.median(start['vm']):.2f} s ({start['vm_accel']}); "
                "no snapshot restore in this run", "not shown here" if start["vm_accel"] != "kvm"
                else "partly")
    answered = statistics.median(r["answered"] for r in restore["restores"])
    return (f"restored from a snapshot: answers after {answered:.2f} s; cold boot "
            f"{restore['cold']['answered']:.2f} s ({restore['accel']})",
            "yes: a VM that need not boot starts fast" if answered < restore["cold"]["answered"]
            else "no")


def servers(m: Measurements) -> tuple[str, str]:
    """Many idle containers' host memory beside one VM's (or 50 real servers' run)."""
    try:
        served = m("served", "results.servers")
        containers, vms = served["containers"], served["vms"]
        answered = all(c["requests"] >= served["requests_each"] for c in containers)
        per_container = sum(c["memory"] for c in containers) / len(containers) / 2**20
        per_vm = sum(vm["pss"] for vm in vms) / max(len(vms), 1) / 2**20
        return (f"{len(containers)} web servers as containers, {per_container:.0f} MiB each, "
                f"all requests answered: {answered}; {len(vms)} VMs fit the same budget, "
                f"{per_vm:.0f} MiB each",
                "yes" if answered and len(containers) >= 30 else
                f"partly: {len(containers)} run here (quick mode; `make compare` runs 50)")
    except NotMeasured:
        pass
    count, used = m("results.scaling")["containers"][-1]
    vm = m("results.memory")["vm"]["pss"]
    return (f"{count} idle containers: {used / MiB:.0f} MiB in all; one VM: {vm / MiB:.0f} MiB",
            f"yes: all {count} cost less than one VM" if used < vm else
            "yes" if used < count * vm else "no")


CLAIMS = [
    Claim("containers come from chroot", "08: the escape lab (01: the escape)", from_chroot),
    Claim("a VM virtualizes the hardware, a container the OS", "08: attack surface (07)",
          os_not_hardware),
    Claim("containers run the host's OS", "08: kernel identity (02: uname -r)", same_kernel),
    Claim("containers must match the CPU architecture", "08: architecture", architecture),
    Claim("fewer layers of indirection: faster", "08: start time", performance),
    Claim("the attack surface is smaller than a VM's", "08: attack surface", attack_surface),
    Claim("breaking out means kernel-level access", "08: the escape lab", kernel_access),
    Claim("easier to over-provision containers", "08: over-provisioning (03)", overprovision),
    Claim("fast minimal VMs are possible", "07: snapshot restore; 08: start time", fast_vms),
    Claim("30–50 servers on one platform", "08: memory, and how many fit", servers),
]


def closing_table(namespace: Mapping[str, object], claims: list[Claim] = CLAIMS) -> list[dict]:
    """One row per claim: what was said, the cell, today's number, whether it held
    ("not measured in this run" where the notebook did not measure it)."""
    measurements, rows = Measurements(namespace), []
    for claim in claims:
        try:
            today, held = claim.judge(measurements)
        except NotMeasured:
            today, held = NOT_MEASURED, "—"
        rows.append({"claim": claim.said, "cell": claim.cell, "today": today, "held": held})
    return rows


def show(rows: list[dict]) -> None:
    """Print the table, one claim per block, readable in a notebook and in the handout."""
    for row in rows:
        print(f"{row['claim']}\n    measured in {row['cell']}: {row['today']}\n"
              f"    held? {row['held']}")
