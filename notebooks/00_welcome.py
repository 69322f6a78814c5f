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
# # Why is a container not a virtual machine?
#
# > *"I'm not clear on the difference between a virtual machine and a container. They
# > both seem to be trying to accomplish the same thing."* — a question on DEV Community
#
# Both run a program in a box of its own. In this course you build the container box
# yourself, layer by layer — a new `/` (01), namespaces (02), budgets (03), a network
# (04), defences (05), images (06) — and boot a real virtual machine from the *same*
# files beside it (07). Then you measure both (08), and the numbers answer the question.
#
# First: is this machine ready? Every line that fails says how to fix it.

# %%
from minicontainer import doctor

status = doctor.main()   # 0: ready

# %% [markdown]
# ## A container and a VM, side by side
#
# The same busybox image, the same command. Watch three things: how long each takes,
# which kernel answers `uname -r`, and what the kernel's `boot_id` (a random number
# chosen at every boot) says.
#
# **Predict, then run.** Both print `uname -r` and the `boot_id`. Which of the two
# prints the same `boot_id` as the host (the third cell), and which one starts faster —
# by how much?
#
# <details><summary>Answer</summary>
#
# The container: its `boot_id` and kernel release are the host's, because it *is* a
# process of this machine, and it starts in tens of milliseconds. The VM boots a kernel
# of its own, so its `boot_id` is new (its release may even be the host's, if it booted
# the host's kernel file: a second copy, booted again), and it takes seconds under TCG —
# about a hundred times longer.
# </details>

# %%
import os
from pathlib import Path

from minicontainer import run

container = run("uname -r; cat /proc/sys/kernel/random/boot_id")
print(f"container, {container.duration * 1000:6.1f} ms:", container.stdout.split())

# %%
import time

from minicontainer.vm import VM

started = time.monotonic()
with VM(memory="128M") as vm:
    code, output = vm.run("uname -r; cat /proc/sys/kernel/random/boot_id")
print(f"VM ({vm.accel}), {time.monotonic() - started:5.2f} s:", output.split())

# %%
print("the host:", [os.uname().release, Path("/proc/sys/kernel/random/boot_id").read_text().strip()])

# %% [markdown]
# The container answered in milliseconds with the **host's** kernel and boot_id: it is
# a process of this machine. The VM took seconds, because a whole second kernel booted
# on emulated hardware, and it answers with a kernel and a boot of **its own**.
#
# ## What you know now
# - A container shares the host's kernel; a VM runs its own.
# - Starting a container is starting a process; starting a VM is booting a computer.
#
# Next, `01_chroot`: where containers come from.
