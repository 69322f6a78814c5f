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
# # 01 — chroot: a different `/`
#
# > *"Containers come as a solidification of functionality which Linux already
# > supports, chroot."* — from the discussion this course answers
#
# What a container sees as `/` is only a directory tree: its *root filesystem*. (An OCI
# image, what `docker pull` fetches, is more — a manifest, a config and layers that
# are stacked into such a tree: notebook 06.) Ours is built from the host's static
# busybox: one binary that is `sh`, `ls`, `ps` and 300 other commands at once.

# %%
from minicontainer.rootfs import default_rootfs

image = default_rootfs()
print(image)
print(sorted(p.name for p in image.iterdir()))
print(len(list((image / "bin").iterdir())), "programs in /bin, all links to", (image / "bin/sh").readlink())

# %% [markdown]
# The layers of the course, each adding one thing to the process below it:

# %%
import matplotlib.pyplot as plt
from minicontainer.course import plots

layers = ["a process (fork, exec)", "1 chroot: its own /", "2 namespaces: its own view",
          "3 cgroups: its own budget", "4 network: its own wire",
          "5 security: less power for its root"]
figure, axes = plots.described_subplots(figsize=(6, 3))
for i, layer in enumerate(layers):
    axes.barh(i, 1, color=plt.cm.Blues(0.25 + 0.15 * i))
    axes.text(0.02, i, layer, va="center")
axes.set_axis_off()
axes.set_title("A container, layer by layer (a VM: none of these, a whole machine)")
plots.finish(figure, "Six stacked bars, bottom to top: " + "; ".join(layers) +
             ". A container is a process with these layers; a VM has none of them.")
plt.show()

# %% [markdown]
# ## chroot(2)
# `chroot_into` is two system calls. The child process sees the image as `/`; this
# notebook's own process is untouched.
#
# **Predict, then run.** A chroot only (`namespaces=[]`) prints its hostname and counts
# the entries of its `/proc`. Whose hostname, and how many entries?
#
# <details><summary>Answer</summary>
#
# The host's hostname, and 0: `/proc` in the image is an empty directory, because nobody
# mounted the kernel's proc filesystem there. chroot changes which directory is `/`,
# nothing else — no new hostname, no process list of its own.
# </details>

# %%
import inspect

from minicontainer import chroot

print(inspect.getsource(chroot.chroot_into))

# %%
from minicontainer.container import run

inside = run("cat /etc/os-release; hostname; ls /proc | wc -l", namespaces=[])
print(inside.stdout)

# %% [markdown]
# Same hostname as the host, and `/proc` is empty in the image (nobody mounted it): a
# chroot changes *paths*, nothing else. The processes, the hostname, the network, the
# mounts: all still the host's.
#
# ## Not a jail
# A root process inside a chroot can climb out: chroot again into a subdirectory, and
# its working directory is now *above* its root, where `..` is never stopped. Here is
# the attacker's code, run as the container's process:
#
# **Predict, then run.** The same code runs twice below: in a plain chroot, and in a
# container with namespaces (layer 2). Which run prints the host's secret file?
#
# <details><summary>Answer</summary>
#
# Only the plain chroot. In the container the climb stops at the container's own `/`:
# `pivot_root` moved the host's root aside and detached it, so there is no "above" to
# reach, and opening the host's path fails (the error is on its stderr). Being root
# inside did not help: the host's files are simply not in its mount table.
# </details>

# %%
print(inspect.getsource(chroot.escape_chroot))

# %%
import tempfile
from functools import partial
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    secret = Path(tmp) / "host-secret.txt"
    secret.write_text("a file of the host's\n")
    chroot_only = run(partial(chroot.escape_chroot, str(secret)), namespaces=[])
    with_namespaces = run(partial(chroot.escape_chroot, str(secret)))
print("chroot only:       ", repr(chroot_only.stdout), chroot_only.stderr.strip())
print("with layer 2 added:", repr(with_namespaces.stdout), with_namespaces.stderr.strip())

# %% [markdown]
# The same code escapes a plain chroot and fails in a container with a mount namespace
# and `pivot_root` (next notebook): the host's `/` is not under the container at all.
#
# ## What you know now
# - Containers come from chroot: a different `/` for a process, nothing emulated.
# - chroot alone is not isolation: root walks out.
#
# ## Exercise 01
# Open `exercises/ex01_chroot.py`, write `chroot_into` and `escape_chroot`, then run
# the check below. It says what it expected, what happened, and gives a hint.

# %%
from minicontainer.course.grade import grade

grade("01")
