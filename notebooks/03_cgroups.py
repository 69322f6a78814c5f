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
# # 03 — cgroups: a budget the kernel enforces
#
# > *"Because the OS itself is being virtualized, most of the contents of containers
# > can be managed just like other processes on the host. This makes it easier to
# > properly distribute resources when over-provisioning a system with containers than
# > VMs."*
#
# A control group is a directory under `/sys/fs/cgroup`: write a pid into its
# `cgroup.procs` and the process (and its children) live on that budget. This machine
# speaks:

# %%
from minicontainer import cgroups

print("cgroup hierarchy:", cgroups.mode())
for controller in ("memory", "cpu", "pids"):
    version, tree = cgroups.hierarchies()[controller]
    print(f"  {controller:7} {version} at {tree}")

# %% [markdown]
# ## Memory: over the limit, the OOM killer
# A program that wants 64 MiB at once (`dd` with a 64 MiB buffer). Slide the limit.

# %%
import ipywidgets as widgets

from minicontainer import run
from minicontainer.course.panels import panel

memory = widgets.IntSlider(value=32, min=16, max=128, step=16, description="limit MiB")


def try_hog():
    result = run(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                 memory=f"{memory.value}M")
    if result.oom_killed:
        print(f"killed by the kernel: out of memory (limit {memory.value} MiB), exit {result.exit_code}")
    else:
        print(f"finished, exit {result.exit_code}")


panel([memory], try_hog)

# %% [markdown]
# ## CPU: a quota per period
# `cpus=0.5` means 50 000 µs of CPU time in every 100 000 µs period. A busy loop under
# a quota, sampled ten times a second (slide and re-run to compare):

# %%
import time

import matplotlib.pyplot as plt

from minicontainer import Container
from minicontainer.cgroups import Sampler

quota = widgets.FloatSlider(value=0.3, min=0.1, max=1.0, step=0.1, description="cpus")


def busy_loop_under(cpus: float, seconds: float = 2.0) -> list[dict]:
    with Container(["sh", "-c", "while :; do :; done"], cpus=cpus) as c:
        c.start()
        with Sampler(c.cgroup, interval=0.1) as sampler:
            time.sleep(seconds)
    return sampler.samples


def plot_quota():
    samples = busy_loop_under(quota.value)
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot([s["time"] for s in samples], [s["cpu_seconds"] for s in samples],
              label=f"cpus={quota.value:.1f}")
    axes.plot([0, 2], [0, 2], ":", color="grey", label="one whole CPU")
    axes.set_xlabel("seconds")
    axes.set_ylabel("CPU seconds used")
    axes.legend()
    return figure


panel([quota], plot_quota)

# %% [markdown]
# ## Processes: a fork bomb, stopped
# `bomb() { bomb | bomb & }; bomb` doubles without end. Under `pids_limit=32` the
# kernel refuses the 33rd process, and this machine stays usable.

# %%
with Container(["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 30"], pids_limit=32) as c:
    c.start()
    time.sleep(2)
    print("processes in the group:", c.stats()["pids"], "(limit 32)")

# %% [markdown]
# ## Over-provisioning, measured
# Six containers, each allowed 96 MiB — 576 MiB in all — share a budget group of 160
# MiB. Each needs 64 MiB for half a second, one after the other. Then the same six
# workloads as VMs of 160 MiB each.

# %%
from minicontainer.course import measure, plots

over = {"containers": measure.overprovision_containers(k=6),
        "vms": measure.overprovision_vms(k=6)}
print(measure.describe_overprovision(over["containers"], over["vms"]))
plots.overprovision_figure(over)
plt.show()

# %% [markdown]
# The containers' limits add up to more than the budget, and all finish: only memory
# *in use* counts, and the kernel sees every container's processes. Each VM holds the
# memory its guest touched, whether it still uses it or not.
#
# ## What you know now
# - A container's budget is a cgroup: the kernel counts and limits its processes
#   directly (OOM kill, CPU throttling, pid limit).
# - Budgets can add up to more than the machine has: easier over-provisioning.
#
# ## Exercise 03
# `exercises/ex03_cgroups.py`: read "64M" as bytes, and write cgroup v2's `cpu.max`.

# %%
from minicontainer.course.grade import grade

grade("03")
