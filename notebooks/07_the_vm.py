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

# %% [markdown]
# **KVM or TCG?** With KVM the guest's instructions run on the real CPU, in a guest
# mode the processor provides. Without it (no VT-x/AMD-V, or a machine that is itself
# virtual), QEMU's TCG translates every instruction: correct, and much slower.
#
# ## Booting, and where the time goes
#
# **Predict, then run.** The boot is split in three: QEMU starting (with its firmware),
# the guest kernel until it runs `/init`, and our `/init` until the guest says it is
# ready. Which bar is the longest under TCG?
#
# <details><summary>Answer</summary>
#
# The kernel's, on a machine without KVM: it sets up a whole computer — memory, CPU
# features, interrupt controllers, devices — and under TCG each of its instructions is
# translated first. QEMU's own start is a fraction of a second and our `/init` runs a
# few commands. With KVM the kernel's bar shrinks the most. A container has none of the
# three: its "boot" is a `fork`.
# </details>

# %%
import matplotlib.pyplot as plt

with VM(memory="128M") as vm:
    boot = vm.boot()
    print("machine type:", vm.machine)
print(boot)

plt.figure(figsize=(6, 1.6))
left = 0.0
for label, seconds in (("QEMU", boot.qemu_start), ("kernel", boot.kernel), ("init", boot.init)):
    plt.barh(0, seconds, left=left, label=f"{label} {seconds:.2f} s")
    left += seconds
plt.yticks([])
plt.xlabel("seconds from starting QEMU to the guest's 'ready'")
plt.legend(ncol=3, fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0))
plt.show()

# %% [markdown]
# ## Its own kernel, its own hardware
#
# **Predict, then run.** The VM has `memory="128M"`. Does its `MemTotal` say 128 MiB?
# And its `boot_id`: the host's?
#
# <details><summary>Answer</summary>
#
# `MemTotal` is well under the 128 MiB given (about 80 MiB measured here): it counts
# what the guest's kernel can hand out, after its own code, reserved areas and the
# initramfs it unpacked into RAM — the guest sees only the RAM QEMU gave it,
# never the host's. The `boot_id` is its own, since this kernel booted a moment ago. Its
# release may even equal the host's (when the VM boots the host's own kernel file from
# `/boot`): the same program, a second copy running on other hardware.
# </details>

# %%
with VM(memory="128M") as vm:
    code, output = vm.run("uname -r; cat /proc/sys/kernel/random/boot_id; "
                          "grep MemTotal /proc/meminfo; cat /proc/cpuinfo | grep -m1 'model name'; "
                          "ls /sys/bus/platform/devices | head -5")
print(output)

# %% [markdown]
# A kernel of its own (a different release from the host's when it comes from the
# distribution's package; a second boot of the same one when it is the host's file),
# its own boot, its own (smaller) memory, a CPU model that QEMU presents, and devices
# that exist only in software — but no network card: we started QEMU with
# `-nodefaults` and gave it none, so it talks to us only over its serial console.
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

from minicontainer.course import measure
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
# - Booting is seconds (under TCG), and the guest's RAM plus QEMU stays with the VM.
#
# ## Exercise 07
# `exercises/ex07_initramfs.py`: write one record of the archive the VM boots from.
# The last check boots a VM from *your* archive.

# %%
from minicontainer.course.grade import grade

grade("07")
