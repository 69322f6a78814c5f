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
# # 07 — the VM: virtual hardware, its own kernel
#
# > *"A virtual machine is virtualized at the hardware level (that is, it has virtual
# > hardware)."*
#
# QEMU builds a computer out of software: CPU, RAM, devices. We boot it with the
# distribution's kernel, straight into the *same* busybox image the containers use,
# packed as its first filesystem (`minicontainer/vm/`: `kernel.py`, `initramfs.py`,
# `qemu.py`, `machine.py`).

# %%
from minicontainer.vm import VM
from minicontainer.vm.kernel import find_kernel
from minicontainer.vm.qemu import accelerator

kernel = find_kernel()
print("kernel:", kernel.release, "—", kernel.source)
accel, why = accelerator()
print("accelerator:", accel, "—", why)
if accel != "kvm":
    print("KVM is not usable here, so every VM time in this notebook is TCG's: an emulator's,"
          " not how fast a VM starts on a CPU that virtualizes.")

# %% [markdown]
# **KVM or TCG?** With KVM the guest's instructions run on the real CPU, in a guest
# mode the processor provides. Without it (no VT-x/AMD-V, or a machine that is itself
# virtual), QEMU's TCG translates every instruction: correct, and much slower.
#
# ## Booting, and where the time goes
#
# **Predict, then run.** The boot is split in three: everything before the guest
# kernel's clock starts (QEMU, its firmware, loading and unpacking the kernel), the
# guest kernel until it runs `/init`, and our `/init` until the guest says it is ready.
# Which bar is the longest under TCG?
#
# <details><summary>Answer</summary>
#
# Usually the kernel's, without KVM: it sets up a whole computer (memory, CPU features,
# interrupt controllers, devices), each instruction translated by TCG first. On the
# course's 2-core test machine, idle: 0.2-0.5 s before the guest's clock, 1.7-1.9 s of
# kernel. But the first bar is not QEMU alone, and not always short: it is measured as
# the whole boot minus the guest's uptime, so it holds QEMU starting, the firmware,
# copying the kernel in and decompressing it (translated too) and the kernel's first
# steps before its clock runs; on the same machine, busy, it took 2.9 s against the
# kernel's 2.1 s. The cell prints this run's longest. Our `/init` runs a few commands.
# With KVM the first two bars shrink the most. A container has none of the three: its
# "boot" is a `fork`.
# </details>

# %%
from minicontainer.course import measure
from minicontainer.course.panels import progress

# one boot under TCG; one under KVM too, where it works
breakdown = measure.boot_breakdown(progress_factory=progress)
for accel_name in ("tcg", "kvm"):
    for boot in breakdown[accel_name]:
        print(f"{accel_name}: before the guest's clock (QEMU, firmware, kernel unpacking) "
              f"{boot['qemu_start']:.2f} s, kernel {boot['kernel']:.2f} s, "
              f"init {boot['init']:.2f} s — {boot['total']:.2f} s in all")
        bars = {"before the guest's clock": boot["qemu_start"], "kernel": boot["kernel"],
                "init": boot["init"]}
        print(f"    the longest bar: {max(bars, key=bars.get)}")
if not breakdown["kvm_usable"]:
    print(f"KVM: not measured — not usable here ({breakdown['kvm_reason']})")

# %% [markdown]
# Under TCG these seconds say how fast QEMU *emulates* a CPU, not how fast a VM can
# start. With KVM the kernel's bar shrinks most (its instructions run natively), and
# microVMs such as Firecracker boot a trimmed kernel in about a tenth of a second —
# but they still boot one.
#
# ## Not booting at all: restoring a snapshot
# A running guest is only state: its RAM, its CPUs' and devices' registers. QEMU can
# write it to a file (the live migration that moves VMs between hosts, sent into a
# file) and a new QEMU started with `-incoming` goes on from there: no firmware, no
# kernel boot, no init (`minicontainer/vm/snapshot.py`). This is how Firecracker
# starts VMs in milliseconds. Our guest answers commands typed on its console
# (`vm.exec`), so we time both until the guest *answers*.
#
# **Predict, then run.** Restored three times from the same file: is it the same
# guest (its `boot_id`), and how much faster than the cold boot, even under TCG?
#
# <details><summary>Answer</summary>
#
# The same guest each time — the `boot_id` lives in the saved RAM — and several times
# faster: 7 to 10 times in runs of this notebook on the course's 2-core test machine
# under TCG (the cell prints this run's ratio). QEMU starts, reads the ~60 MiB file,
# and the CPUs run on. The cost moved elsewhere: the file is the guest's whole RAM, on
# disk.
# </details>

# %%
import matplotlib.pyplot as plt

from minicontainer.course import plots

restore = measure.snapshot_restore(restores=3, progress_factory=progress)
print(f"cold boot until it answers: {restore['cold']['answered']:.2f} s ({restore['accel']})")
print(f"saved in {restore['save']:.2f} s, a {restore['snapshot_bytes'] / 2**20:.0f} MiB file")
for r in restore["restores"]:
    print(f"restored: running after {r['running']:.2f} s, answered after {r['answered']:.2f} s")
print("the same guest each time (same boot_id):", restore["same_guest"])
fastest = min(r["answered"] for r in restore["restores"])
print(f"answering: {restore['cold']['answered'] / fastest:.1f} times faster restored than "
      "booted")
plots.vm_start_figure(breakdown, restore)
plt.show()

# %% [markdown]
# ## Its own kernel, its own hardware
#
# **Predict, then run.** The VM has `memory="128M"`. Does its `MemTotal` say 128 MiB?
# And its `boot_id`: the host's? And a container's `MemTotal`, under a 64M limit?
#
# <details><summary>Answer</summary>
#
# `MemTotal` is well under the 128 MiB given (about 80 MiB measured here): it counts
# what the guest's kernel can hand out, after its own code, reserved areas and the
# initramfs it unpacked into RAM — the guest sees only the RAM QEMU gave it,
# never the host's. The `boot_id` is its own, since this kernel booted a moment ago. Its
# release may even equal the host's (when the VM boots the host's own kernel file from
# `/boot`): the same program, a second copy running on other hardware. The container
# says the host's `MemTotal`, limit or not: it reads the host kernel's /proc/meminfo.
# </details>
#
# The same shell lines asked of the host, of a container limited to 64M and of the VM
# (`measure.HARDWARE_PROBE`): which ones see the host's machine?

# %%
probes = measure.hardware_probes()
print(f"{'':18}{'host':30}{'container (64M)':30}{'VM (128M)'}")
for row in probes["host"]:
    print(f"{row:18}" + "".join(f"{probes[side][row][:28]:30}" for side in ("host", "container"))
          + probes["vm"][row])

# %% [markdown]
# The container answers exactly as the host does: the same CPU, all the host's CPUs and
# RAM (its 64M limit is a cgroup's budget, which /proc/meminfo does not show), the host's
# devices, the host's kernel and boot. The OS is virtualized, not the hardware. The VM
# has a kernel of its own (a different release when it comes from the distribution's
# package; a second boot of the same one when it is the host's file), its own boot, its
# own (smaller) memory, a CPU model that QEMU presents, and devices that exist only in
# software — no PCI bus at all on microvm, and no network card: we started QEMU with
# `-nodefaults` and gave it none, so it talks to us only over its serial console.
# Unless we give it one:
#
# ## One network, two kinds of guests
# A container joins a bridge through a veth whose far end is in its network namespace
# (notebook 04). A VM joins it through a *network card*: QEMU emulates a virtio-net
# card on the guest's PCI bus (so this VM is a q35 PC, not a microvm), the guest's own
# kernel drives it (its `virtio_net` module, which our `/init` loads), and the card's
# cable on the host is a *tap* device, `mc-<id>`, plugged into the same bridge.
# `VM(network=...)` leases the guest's address from the bridge's pool, as a container's.
#
# **Predict, then run.** The container asks the VM's web server for its page. How many
# kernels does that request go through?
#
# <details><summary>Answer</summary>
#
# Two. The host's carries it out of the container's namespace, through its veth, the
# bridge and the tap, into QEMU's hands; QEMU puts the frame into the virtual card, and
# the *guest's* kernel, with its own TCP/IP stack, hands it to httpd. A reply from a
# container on the same bridge crosses one kernel only.
# </details>

# %%
from minicontainer import network
from minicontainer.container import Container
from minicontainer.vm.initramfs import ANSWER

if "mc-lesson7" in network.names():      # made by this kernel in an earlier run: start afresh
    network.remove("mc-lesson7", force=True)
lesson = network.create("mc-lesson7")["name"]
try:
    with Container(["sleep", "120"], network=lesson) as neighbour, VM(network=lesson) as vm:
        neighbour.start()
        vm.boot(ANSWER)                    # a guest that runs what we send it (vm.exec)
        print(f"container {neighbour.attachment.address}, VM {vm.address} "
              f"(its tap on the host: {vm.attachment.host_end})")
        vm.exec("mkdir -p /www && echo hello from the VM > /www/index.html && httpd -p 80 -h /www")
        asked = neighbour.exec(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {vm.address} 80")
        print("the container asks the VM's httpd:", asked.stdout.splitlines()[-1])
        code, output = vm.exec(f"ping -c 1 -W 5 {neighbour.attachment.address}")
        print("the VM pings the container:", output.splitlines()[1])
finally:
    network.remove(lesson, force=True)

# %% [markdown]
# One network, two kinds of guests: to the bridge, the VM is one more port, and its
# neighbours cannot tell it from a container. The difference is on the host: the
# container's packets never leave the host's kernel, the VM's go through QEMU and a
# kernel of its own — which is also why its answers take longer under TCG (notebook 08
# loads fifty servers of each kind).
#
# ## What the VM costs: slide its memory
# QEMU's own memory (PSS) split into the guest's RAM it has touched and QEMU itself.
#
# **Predict, then run.** From 128M to 256M, the guest gets twice the RAM. Does the
# host pay twice as much?
#
# <details><summary>Answer</summary>
#
# No, far from it: QEMU maps the guest's RAM, but the host gives it a page only when
# the guest first writes there. An idle guest has touched its kernel, its unpacked
# image and its bookkeeping of the RAM (which grows a little with the size), not the
# rest. What it *has* touched stays with QEMU even after the guest frees it, unless a
# balloon driver or free page reporting tells the host.
# </details>

# %%
import ipywidgets as widgets
import psutil

from minicontainer.course.panels import panel

size = widgets.Dropdown(options=["96M", "128M", "256M", "512M"], value="128M", description="VM memory")


def measure_vm():
    with VM(memory=size.value) as vm:
        vm.boot()
        used = measure.qemu_memory(psutil.Process(vm.process.pid), vm.memory)
    print(f"guest RAM touched {used['guest_ram_touched'] / 2**20:6.0f} MiB, "
          f"QEMU itself {used['qemu_overhead'] / 2**20:6.0f} MiB, "
          f"in all {used['pss'] / 2**20:6.0f} MiB")


panel([size], measure_vm)

# %% [markdown]
# ## What you know now
# - A VM has virtual hardware and boots a kernel of its own, which a container never does.
# - Booting is seconds under TCG (emulation: not a measure of how fast VMs boot); a VM
#   restored from a snapshot does not boot at all and answers in a fraction of a second.
# - The guest's RAM plus QEMU stays with the VM.
#
# ## Exercise 07
# `exercises/ex07_initramfs.py`: write one record of the archive the VM boots from.
# The last check boots a VM from *your* archive.

# %%
from minicontainer.course.grade import grade

grade("07")
