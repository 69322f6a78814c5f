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
#
# **Predict, then run.** At the starting limit, 32 MiB, what happens to `dd`, and what
# exit code does the line print?
#
# <details><summary>Answer</summary>
#
# The kernel kills it, and the exit code is **137**. When the group's memory is full and
# nothing can be reclaimed (a container gets no swap here: its memory+swap limit equals
# its memory limit), the kernel's *OOM killer* sends SIGKILL, signal 9, which no program
# can catch; a shell, and Docker, report death by signal N as 128 + N: 128 + 9 = 137.
# So exit 137 means "killed by SIGKILL" — by the OOM killer, as here and as
# `docker inspect`'s `OOMKilled` says, or by anyone's `kill -9` (`docker kill`). The
# limit has to be a little above 64 MiB for `dd` to finish: the buffer alone is 64.
# </details>

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
# a quota, sampled ten times a second (slide and re-run to compare).
#
# **Predict, then run.** The loop never sleeps. With `cpus=0.3`, how many CPU seconds
# has it used after 2 seconds?
#
# <details><summary>Answer</summary>
#
# About 0.6: a line with slope 0.3, well under the dotted "one whole CPU" line. The
# loop is always ready to run, but after 30 000 µs in each 100 000 µs period the
# scheduler *throttles* the group until the next period. Nothing is killed: CPU is
# slowed, where memory over the limit is taken away.
# </details>

# %%
import time

import matplotlib.pyplot as plt

from minicontainer import Container
from minicontainer.cgroups import Sampler
from minicontainer.course import plots

quota = widgets.FloatSlider(value=0.3, min=0.1, max=1.0, step=0.1, description="cpus")


def busy_loop_under(cpus: float, seconds: float = 2.0) -> list[dict]:
    with Container(["sh", "-c", "while :; do :; done"], cpus=cpus) as c:
        c.start()
        with Sampler(c.cgroup, interval=0.1) as sampler:
            time.sleep(seconds)
    return sampler.samples


def plot_quota():
    samples = busy_loop_under(quota.value)
    figure, axes = plots.described_subplots(figsize=(6, 3))
    axes.plot([s["time"] for s in samples], [s["cpu_seconds"] for s in samples],
              label=f"cpus={quota.value:.1f}")
    axes.plot([0, 2], [0, 2], ":", color="grey", label="one whole CPU")
    axes.set_xlabel("seconds")
    axes.set_ylabel("CPU seconds used")
    axes.legend()
    used = samples[-1]["cpu_seconds"] if samples else 0
    return plots.finish(figure, f"CPU seconds used by a busy loop against wall-clock "
                        f"seconds under cpus={quota.value:.1f}: {used:.2f} CPU seconds in "
                        f"{samples[-1]['time'] if samples else 0:.1f} s, a line of slope "
                        f"{quota.value:.1f} under the grey line of one whole CPU.")


panel([quota], plot_quota)

# %% [markdown]
# ## Processes: a fork bomb, stopped
# `bomb() { bomb | bomb & }; bomb` doubles without end. Under `pids_limit=32` the
# kernel refuses the 33rd process, and this machine stays usable.
#
# **Predict, then run.** After 2 seconds of the bomb, how many processes are in the
# container's group?
#
# <details><summary>Answer</summary>
#
# At the limit, 32 (or just under, as some end while others are refused): `fork` fails
# with `EAGAIN` ("can't fork") for the group's 33rd process, whoever asks. Without the
# limit the count grows until the host's own process table is full, and every program
# on the machine fails to fork.
# </details>

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
#
# **Predict, then run.** The limits add up to 576 MiB, more than three times the
# budget. How many of the six containers does the OOM killer take?
#
# <details><summary>Answer</summary>
#
# None: the budget caps what is *in use* at once, not what is promised, and the peaks
# come one after another, so the group's peak stays far under 160 MiB. The VMs are the
# other way round: each keeps the memory its guest touched (without a balloon or free
# page reporting, QEMU does not learn that the guest freed it), so the host holds six
# peaks at the end, not one.
# </details>

# %%
from minicontainer.course import measure, plots
from minicontainer.course.panels import progress

over = {"containers": measure.overprovision_containers(k=6, progress_factory=progress),
        "vms": measure.overprovision_vms(k=6, progress_factory=progress)}
print(measure.describe_overprovision(over["containers"], over["vms"]))
plots.overprovision_figure(over)
plt.show()

# %% [markdown]
# The containers' limits add up to more than the budget, and all finish: only memory
# *in use* counts, and the kernel sees every container's processes. Each VM holds the
# memory its guest touched, whether it still uses it or not — unless the guest gives it
# back: a virtio balloon the host inflates, or free page reporting; and KSM can merge
# identical pages of several guests. None is on here, as on a default QEMU. (Peaks that
# *overlap* are another story: then the budget is full and the OOM killer takes one —
# exit 137; notebook 08 shows it.)
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
