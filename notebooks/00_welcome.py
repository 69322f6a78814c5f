# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Why is a container not a virtual machine?
#
# Both seem to do the same thing: run a program in a box of its own. In this course
# you build the container box yourself, layer by layer — a new `/`, namespaces,
# budgets, a network — and boot a real virtual machine from the *same* files beside
# it. Then you measure both, and the numbers answer the question.
#
# First: is this machine ready? Every line that fails says how to fix it.

# %%
from minicontainer import doctor

doctor.main()

# %% [markdown]
# ## A first container
#
# `run` starts a command in a new container and waits for it. Inside, the command has
# its own hostname and is process number 1 — yet `uname -r` prints the *host's*
# kernel version. Keep that in mind: it is the first half of the answer.

# %%
import os

from minicontainer import run

inside = run("hostname; echo my pid is $$; uname -r", hostname="box")
print(inside.stdout)
print("the host's kernel:", os.uname().release)
print(f"start to exit: {inside.duration * 1000:.1f} ms")
