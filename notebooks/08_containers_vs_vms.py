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
# # 08 — containers vs VMs, measured
#
# Everything the discussion claimed, measured on this machine. The same runs as
# `minicontainer compare` (here the quick size; `make compare` for the full one).

# %%
from tqdm.auto import tqdm

from minicontainer.course import measure, plots

bars = []


def progress(total, name):
    bars.append(tqdm(total=total, desc=name))
    return bars[-1].update


results = measure.compare(quick=True, progress_factory=progress)
for bar in bars:
    bar.close()
print(measure.summary(results))

# %% [markdown]
# ## Start time
# Every run is a dot; the axis is logarithmic.
#
# **Predict, then run.** How far apart will the two clouds of dots be?
#
# <details><summary>Answer</summary>
#
# About two decades on the log axis under TCG: tens of milliseconds for a container
# (a `fork`, some system calls, an `exec`) against seconds for a VM (QEMU, a kernel
# booting, our init). The summary above prints the ratio. KVM would shrink the VM's
# side, not close the gap: a VM still boots a kernel. (A VM restored from a snapshot
# need not boot at all: that is how Firecracker starts fast.)
# </details>

# %%
import matplotlib.pyplot as plt

plots.start_time_figure(results["start_time"])
plt.show()

# %% [markdown]
# ## Memory, and how many fit: "30–50 servers on one platform"
# > *"With Docker, it is possible to deploy many servers (for example 30-50 servers)
# > using the same platform."*
#
# **Predict, then run.** What does one more idle container add to the host's memory,
# next to one more idle VM of 128 MiB?
#
# <details><summary>Answer</summary>
#
# A container adds little: its `sleep` shares busybox's pages with every other copy,
# so its own share (PSS) is small, and most of what it costs is the runtime's waiting
# process and the kernel's bookkeeping. A VM adds its guest's touched RAM plus QEMU
# itself — tens of MiB at least, each time: the last line below prints the containers'
# total.
# </details>

# %%
plots.memory_figure(results["scaling"], results["memory"])
plt.show()
n, used = results["scaling"]["containers"][-1]
print(f"{n} idle containers: {used / 2**20:.0f} MiB of host memory in all")

# %% [markdown]
# ## Over-provisioning

# %%
plots.overprovision_figure(results["overprovision"])
plt.show()

# %% [markdown]
# ## Architecture
# > *"Containers always have to match the host CPU architecture (well, not always…)"*
#
# **Predict, then run.** A busybox built for another CPU is run in a container. Does
# it start?
#
# <details><summary>Answer</summary>
#
# Not by itself: `execve` fails with "Exec format error", because the host's kernel
# runs the host's CPU's instructions and no others. With `qemu-user` registered in
# `binfmt_misc`, the kernel hands such programs to the emulator and it runs, translated
# instruction by instruction — the "not always". A VM can emulate a whole other CPU the
# same way, kernel included.
# </details>

# %%
arch = results["architecture"]
print(f"host {arch['host']}, program built for {arch['foreign']}:")
print("  in a container:", arch["without"])
print("  with qemu-user registered (binfmt_misc):", arch["with_qemu_user"])

# %% [markdown]
# ## Attack surface
# > *"Compromising the container software often means you have kernel-level access to
# > the host. Regardless, the attack surface is smaller than a VM…"* — the discussion
# > disagrees with itself; here is what can be counted. (Notebook 05 lists, call by
# call, what layer 5's seccomp filter refuses, beside Docker's default profile.)

# %%
surface = results["attack_surface"]
print(surface["explanation"])
plt.figure(figsize=(5, 2.2))
plt.barh(["container: host syscalls", "VM: emulated devices"],
         [surface["container"]["host_syscalls"], surface["vm"]["emulated_devices"]],
         color=["#2a7ab9", "#d9622b"])
plt.xlabel("entry points into the host (different kinds: compare with care)")
plt.show()
print(f"devices: {surface['vm']['emulated_devices']} device models of {surface['vm']['machine']}"
      f" ({', '.join(surface['vm']['device_types'])}); its {surface['vm']['empty_slots']} empty "
      "virtio-mmio slots are not counted: nothing is plugged into them")
print("A container's number counts doors into the host kernel itself; the VM's, doors into "
      "QEMU, a host process that can be confined in turn. Different kinds: compare with care.")
print(f"of the {surface['container']['host_syscalls']} system calls, layer 5's seccomp filter "
      f"refuses {surface['container']['refused_by_seccomp']} to a container")

# %% [markdown]
# ## The escape lab: which layer stops which attack
# Counting doors says nothing about which are locked. Here an attacker, root inside a
# default container, tries the classic ways out. Each row names the layer that stopped
# it, then tries again with that layer switched off — only where getting through harms
# nothing (the attacks read a marker file, signal 0, or ask `access(2)` "could I
# write?" without writing). Read them in `minicontainer/escapes.py`: each is a line of
# shell or a few lines of Python. Notebook 05 teaches the layer-5 rows (capabilities,
# seccomp, masked and read-only paths, no_new_privs) one defence at a time.

# %%
from minicontainer import escapes

lab = escapes.run_lab()
for row in lab:
    print(f"{'blocked' if row['blocked'] else 'ESCAPED':8} {row['attack']:45} "
          f"{row['stopped by']:36} with it off: {row['with it off']}")

layers = {}
for row in lab:
    layer = row["stopped by"].split(" (")[0]
    layers[layer] = layers.get(layer, 0) + 1
plt.figure(figsize=(6, 2.6))
plt.barh(list(layers), list(layers.values()), color="#2a7ab9")
plt.xlabel("attacks stopped (first line of defence)")
plt.title(f"{sum(r['blocked'] for r in lab)} of {len(lab)} escapes blocked")
plt.show()

# %% [markdown]
# ## Every claim, and the cell that measured it

# %%
import statistics

start, mem, kernel = results["start_time"], results["memory"], results["kernel"]
over_c = results["overprovision"]["containers"]
claims = [
    ("containers come from chroot", "01: the escape", "chroot alone escaped; pivot_root stopped it"),
    ("the OS is virtualized, not the hardware", "02: namespace inodes; 07: devices",
     f"{surface['vm']['emulated_devices']} emulated devices in the VM, none in a container"),
    ("same OS / kernel as the host", "02 and here: uname -r, boot_id",
     f"container {kernel['container']['release']}, VM {kernel['vm']['release']}"),
    ("a VM has virtual hardware", "07: its own kernel and devices", f"VM boot_id differs: "
     f"{kernel['vm']['boot_id'] != kernel['host']['boot_id']}"),
    ("containers must match the CPU architecture", "here: the foreign busybox",
     ("fails: Exec format error" if "Exec format" in arch["without"] else arch["without"][:40])
     + f"; via qemu-user: {arch['with_qemu_user']}"),
    ("smaller attack surface than a VM?", "here: entry points",
     f"{surface['container']['host_syscalls']} syscalls vs {surface['vm']['emulated_devices']} devices"),
    ("the container software is the attack surface", "here: the escape lab",
     f"{sum(r['blocked'] for r in lab)}/{len(lab)} escapes blocked, "
     f"{len(layers)} layers doing it"),
    ("easier to over-provision containers", "03 and here",
     f"limits {over_c['sum_of_limits'] / 2**20:.0f} MiB > budget {over_c['budget'] / 2**20:.0f}: "
     f"all done at {over_c['peak_in_use'] / 2**20:.0f} MiB; VMs held "
     f"{results['overprovision']['vms']['peak_in_use'] / 2**20:.0f} MiB"),
    ("fast minimal VMs are possible", "07: boot phases, snapshot restore",
     f"VM median start {statistics.median(start['vm']):.2f} s ({start['vm_accel']}"
     + (": emulated, not evidence either way; 07 restores a snapshot instead)"
        if start["vm_accel"] != "kvm" else ")")),
    ("30–50 servers on one platform", "here: scaling",
     f"{n} containers in {used / 2**20:.0f} MiB; one VM {mem['vm']['pss'] / 2**20:.0f} MiB"),
]
for claim, where, number in claims:
    print(f"{claim:44} {where:34} {number}")
