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
from minicontainer.course import measure, plots
from minicontainer.course.panels import progress     # a progress bar per step of the run

results = measure.compare(quick=True, progress_factory=progress)
print(measure.summary(results))

# %% [markdown]
# ## Start time
# Every run is a dot; the axis is logarithmic.
#
# **Predict, then run.** How far apart will the two clouds of dots be?
#
# <details><summary>Answer</summary>
#
# One to two decades on the log axis under TCG: tens of milliseconds to a tenth of a
# second for a container (a `fork`, some system calls, an `exec`; on the course's
# 2-core test machine a median of 19 ms when idle, about 100 ms while it was busy)
# against seconds for a VM (QEMU, a kernel booting, our init). The summary above prints
# this run's medians and their ratio. KVM would shrink the VM's
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
# so its own share (PSS) is small, and the rest is the kernel's bookkeeping and our
# monitor, a small C program (monitor.py: about 0.05 MiB each). A VM adds its guest's
# touched RAM plus QEMU itself: about 200 MiB per 128 MiB VM when this was written
# under TCG (90 of guest RAM touched, 36 of translation cache, the rest QEMU); under
# KVM there is no translation cache. The last line below prints the containers' total.
# </details>
#
# The VMs' stack is what their QEMU processes hold, split three ways: the guest's RAM
# as far as the guest has touched it (its `-m` is a promise; untouched pages cost
# nothing yet), TCG's translation cache (the guest's code translated to the host's:
# none under KVM), and QEMU itself. The dashed line is what the VMs were promised: a
# host that runs them must be ready to give it all. Memory a guest touched stays with
# QEMU even once the guest frees it, unless the guest hands it back — a virtio
# *balloon* that the host inflates, or *free page reporting* (virtio-balloon's
# `free-page-reporting=on`); and KSM (`/sys/kernel/mm/ksm`) can merge identical pages
# of several guests. None of them is on here, as on a default QEMU.

# %%
plots.memory_figure(results["scaling"], results["memory"])
plt.show()
n, used = results["scaling"]["containers"][-1]
print(f"{n} idle containers: {used / 2**20:.0f} MiB of host memory in all")

# %% [markdown]
# ## Fifty real web servers
# Idle `sleep`s prove little: here each instance is busybox's `httpd`, loaded with 200
# requests from this notebook over our bridge, timed one by one — the containers
# through their veths, the VMs through their virtio network cards on the same bridge
# (notebook 07), with the same client and the same requests. The containers share
# one memory budget; as VMs, only as many fit as the budget can promise their `-m` to
# (at most six under TCG). `make compare` runs 50 containers and 6 VMs and saves the
# numbers; without them, a small version runs now (5 and 1). The full one from here:
# `servers.servers()` (about a minute, plus the VMs' boots).
#
# Under TCG a VM's request takes tens of times a container's: every instruction of the
# guest's kernel and httpd is translated, and each packet crosses QEMU as well. With
# KVM the gap is much smaller, but a VM's packet still goes through a second kernel.

# %%
from minicontainer.course import servers

served = servers.saved()
if served is None:                     # `make compare` has not run on this machine
    served = servers.servers(containers=5, vms=1, progress_factory=progress)
print(servers.summary(served))
plots.servers_figure(served)
plt.show()

# %% [markdown]
# ## Over-provisioning
# Left: peaks in turn, as in 03 — every container finishes, and the VMs keep each
# guest's peak (no balloon, no free page reporting: QEMU is never told the guest freed
# it). Right: the same budget, but four containers need 64 MiB *at the same time*.
# Over-provisioning is a bet that peaks do not meet; when they do, the kernel's OOM
# killer takes the process using the most memory in the budget group, SIGKILL, exit
# 137 — which is what a `docker run --memory` container shows as `OOMKilled`.

# %%
plots.overprovision_figure(results["overprovision"])
plt.show()
overlapping = results["overprovision"]["overlapping"]
print("peaks at once, exit codes:", overlapping["exit_codes"],
      "| OOM-killed:", overlapping["oom_killed"])

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
figure, axes = plots.described_subplots(figsize=(5, 2.2))
axes.barh(["container: host syscalls", "VM: emulated devices"],
          [surface["container"]["host_syscalls"], surface["vm"]["emulated_devices"]],
          color=["#2a7ab9", "#d9622b"])
axes.set_xlabel("entry points into the host (different kinds: compare with care)")
plots.finish(figure, f"Two bars: a container reaches the host kernel through "
             f"{surface['container']['host_syscalls']} system calls, a VM reaches QEMU through "
             f"{surface['vm']['emulated_devices']} emulated device models; different kinds "
             "of entry point.", counts=(axes.xaxis,))
plt.show()
kinds = surface["vm"]["device_types"]
print(f"devices: {surface['vm']['emulated_devices']} device models of {surface['vm']['machine']}"
      f", of {len(kinds)} kinds ({', '.join(kinds)}); its {surface['vm']['empty_slots']} empty "
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

lab = escapes.run_lab(progress_factory=progress)
for row in lab:
    print(f"{'blocked' if row['blocked'] else 'ESCAPED':8} {row['attack']:45} "
          f"{row['stopped by']:36} with it off: {row['with it off']}")
print("stopped by the runtime's own conduct, not by a kernel feature (a runtime bug, not a "
      "kernel bug, gets past these):", [row["attack"] for row in lab if row["by the runtime"]])

layers = {}
for row in lab:
    layer = row["stopped by"].split(" (")[0]
    layers[layer] = layers.get(layer, 0) + 1
figure, axes = plots.described_subplots(figsize=(6, 2.6))
axes.barh(list(layers), list(layers.values()), color="#2a7ab9")
axes.set_xlabel("attacks stopped (first line of defence)")
axes.set_title(f"{sum(r['blocked'] for r in lab)} of {len(lab)} escapes blocked")
plots.finish(figure, f"{sum(r['blocked'] for r in lab)} of {len(lab)} escapes blocked; "
             "attacks stopped per layer: " + "; ".join(f"{layer} {count}" for layer, count
                                                       in layers.items()),
             counts=(axes.xaxis,))
plt.show()

# %% [markdown]
# ## Every claim, and the cell that measured it
# The discussion's claims one by one: where this course measured each, the number this
# run measured (read from the variables the cells above filled — `results`, `lab` — by
# `minicontainer/course/claims.py`; nothing is typed in), and whether the claim held. A
# claim whose measurement this run did not make says so.

# %%
from minicontainer.course import claims

claims.show(claims.closing_table(globals()))
