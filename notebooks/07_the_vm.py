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

# %%
with VM(memory="128M") as vm:
    code, output = vm.run("uname -r; cat /proc/sys/kernel/random/boot_id; "
                          "grep MemTotal /proc/meminfo; cat /proc/cpuinfo | grep -m1 'model name'; "
                          "ls /sys/bus/platform/devices | head -5")
print(output)

# %% [markdown]
# A different kernel release from the host's, its own boot, its own (smaller) memory,
# a CPU model that QEMU presents, and devices that exist only in software.
#
# ## What the VM costs: slide its memory
# QEMU's own memory (PSS) split into the guest's RAM it has touched and QEMU itself.

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
