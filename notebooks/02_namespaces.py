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
# # 02 — namespaces: the OS is virtualized, not the hardware
#
# > *"A virtual machine is virtualized at the hardware level, while a container is
# > virtualized at the OS level (that is, the OS itself is virtualized)."*
#
# A namespace gives a process its own copy of one kind of name: mount points (`mnt`),
# process ids (`pid`), the hostname (`uts`), IPC, the network (`net`), user ids
# (`user`), the cgroup tree it sees as `/` (`cgroup`) and the boot-time clocks
# (`time`) — Linux has these eight. The system call is `unshare(2)`; the code is
# `minicontainer/namespaces.py`. A container here gets the first five, as `docker run`
# does; `user` only when rootless (notebook 05). A `cgroup` namespace is made only when
# asked for (`namespaces={..., "cgroup"}`); like runc, we make it only once the process
# has joined its own cgroup, so that group is its `/` and `/proc/self/cgroup` shows no
# path of the host's (made earlier, its `/` would be the runtime's group, and the
# container would read its own place below it). Docker makes one by default on cgroup v2
# hosts (`--cgroupns=private`), not on v1 ones. We never make a `time` namespace (it only
# shifts `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, for checkpoint and restore), and
# `docker run` has no option for one.
#
# Tick namespaces and see what the container sees. (Run the cell, then change the boxes.)
#
# **Predict, then run.** With the five boxes ticked, what is the container's own pid
# (`$$`), and how many processes does it see? Then untick `pid`: what changes?
#
# <details><summary>Answer</summary>
#
# It is **PID 1**, and it sees only itself and the commands of its probe (`ls`,
# `grep`, and the subshell of `$(...)`): 4 processes when this was written. Without `pid` it gets an ordinary host pid and sees every process
# of the host — its `/proc` is still its own mount, but it lists the host's
# pid namespace.
# </details>

# %%
import ipywidgets as widgets

from minicontainer import run
from minicontainer.namespaces import DEFAULT
from minicontainer.course.panels import panel

# Each line is NAME=VALUE. Without a mount namespace the container gets no /proc of its
# own (mounting one would change the host's mount table), so it cannot count processes
# or mounts: those lines are left out, and the table says why.
PROBE = """echo hostname=$(hostname); echo pid=$$
[ -r /proc/self/mounts ] && echo processes=$(ls /proc | grep -c '^[0-9]') mounts=$(wc -l < /proc/self/mounts)
echo links=$(ip -o link | wc -l)"""
NO_PROC = "- (no /proc without a mount namespace)"


def what_it_sees(kinds: set[str]) -> dict:
    seen = dict(pair.split("=", 1) for pair in run(PROBE, namespaces=kinds,
                                                   hostname="inside").stdout.split())
    return {"hostname": seen["hostname"], "its own pid": seen["pid"],
            "processes it sees": seen.get("processes", NO_PROC),
            "mounts it sees": seen.get("mounts", NO_PROC), "network links": seen["links"]}


boxes = {kind: widgets.Checkbox(value=kind in DEFAULT, description=kind, indent=False)
         for kind in ["mnt", "pid", "uts", "ipc", "net"]}


def show():
    kinds = {kind for kind, box in boxes.items() if box.value}
    for key, value in what_it_sees(kinds).items():
        print(f"{key:18} {value}")


panel(boxes.values(), show)

# %% [markdown]
# With all five: its own hostname, it is **PID 1**, it sees only itself, a short mount
# table and only a loopback. Untick `pid` and it sees every process of the host;
# untick `uts` and it gets the host's hostname.
#
# ## Namespaces have identities
# Each namespace is an inode under `/proc/PID/ns/`. Same inode: same namespace.
#
# The cell lists every entry the kernel puts there — all eight kinds, `time` included
# (the `…_for_children` entries name the namespace a process's *next* children get: a
# `pid` or `time` namespace is entered by children, never by the caller itself).
#
# **Predict, then run.** Which kinds does a default container *share* with the host?
#
# <details><summary>Answer</summary>
#
# `user`, `cgroup` and `time`. Root in the container is the host's root (uid 0 on both
# sides, held in check by layer 5, not by a namespace), it sees the host's cgroup tree,
# and its clocks are the host's. The other five — `ipc`, `uts`, `net`, `pid`, `mnt` —
# are its own.
# </details>

# %%
import os

from minicontainer import Container


def ns_entries(pid: int | str = "self") -> dict[str, int]:
    """Every namespace /proc/PID/ns shows (the kernel's list, not ours), by inode."""
    folder = f"/proc/{pid}/ns"
    return {kind: os.stat(f"{folder}/{kind}").st_ino for kind in sorted(os.listdir(folder))
            if not kind.endswith("_for_children")}


with Container(["sleep", "30"]) as c:
    c.start()
    inside, outside = ns_entries(c.pid), ns_entries()
for kind in inside:
    print(f"{kind:7} host {outside[kind]}  container {inside[kind]}  "
          f"{'its own' if inside[kind] != outside[kind] else 'shared'}")

# %% [markdown]
# ## The process tree, seen from inside and from outside
# Inside, the container's first process is PID 1 — here our tiny init (`init.py`, a
# copy of this Python process, hence its name). On the host the same processes have
# ordinary PIDs, and above them our runtime's waiting process, also a copy of this
# notebook's kernel: it collects the container's exit status.

# %%
import psutil

with Container("sleep 30 & sleep 30 & exec sleep 30", init=True) as c:
    c.start()
    import time
    time.sleep(0.3)
    print("inside:\n" + c.exec("ps -o pid,ppid,comm").stdout)
    host = psutil.Process(c.pid)
    print("on the host:")
    for p in [host.parent(), host, *host.children(recursive=True)]:
        print(f"  pid {p.pid:6}  parent {p.ppid():6}  {' '.join(p.cmdline())[:50]}")

# %% [markdown]
# ## Same kernel
# > *"You can only run containers for the same OS as the host."*
#
# Nothing in a namespace is emulated: the host's kernel answers every system call.

# %%
import os
from pathlib import Path

inside = run("uname -r; cat /proc/sys/kernel/random/boot_id").stdout.split()
host = [os.uname().release, Path("/proc/sys/kernel/random/boot_id").read_text().strip()]
print("kernel release   container", inside[0], "| host", host[0])
print("boot_id          container", inside[1], "| host", host[1])
print("same kernel, same boot:", inside == host)

# %% [markdown]
# ## A terminal of its own: what `-t` is
# `docker run -it busybox sh` gives a shell a terminal. A terminal is a **pseudo-terminal
# pair**: a *master*, held by whoever plays keyboard and screen (your terminal window,
# sshd, the runtime), and a *slave* `/dev/pts/N`, the terminal the program sees. The
# container's first process opens one in the `devpts` its mount namespace mounted with
# `newinstance` (so it sees its own ptys only), sends the master out to the runtime
# over a unix socket, calls `setsid()` and makes the slave its **controlling
# terminal** (`ioctl(TIOCSCTTY)`). Code: `minicontainer/terminal.py`.
#
# From Python we can play the person at the keyboard: `converse` types into the master
# and returns what the screen shows.

# %%
import os

from minicontainer.terminal import converse

with Container("/bin/sh", tty=True) as c:
    c.start(window=(20, 60))
    converse(c.console)                                  # the shell's greeting
    print(converse(c.console, "tty; ls /dev/pts; stty size\n"))
print("the host's /dev/pts, for comparison:", " ".join(sorted(os.listdir("/dev/pts"))))

# %% [markdown]
# Inside: terminal 0 of its own devpts, the window size we gave, and none of the host's
# terminals. Now the part that surprises Docker users: **why does Ctrl-C stop the
# `sleep` in the container's shell, and not the runtime?** Ctrl-C is just a byte (`\x03`)
# until the terminal's *line discipline* in the kernel turns it into SIGINT — for the
# terminal's *foreground process group*. Look at the sessions in `/proc/PID/stat`:

# %%
import re
from pathlib import Path

import psutil


def terminal_of(pid: int) -> dict:
    """Session, process group, controlling terminal and its foreground group (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tty = int(fields[4])
    return {"session": int(fields[3]), "group": int(fields[2]),
            "terminal": f"{os.major(tty)}:{os.minor(tty)}" if tty else "none",
            "foreground group": int(fields[5])}


with Container("/bin/sh", tty=True) as c:
    c.start()
    converse(c.console, "sleep 100\n")
    sleep = psutil.Process(c.pid).children()[0]
    for who, pid in [("the shell", c.pid), ("its sleep", sleep.pid), ("this notebook", os.getpid())]:
        print(f"{who:14} pid {pid:6} {terminal_of(pid)}")
    converse(c.console, b"\x03")                         # Ctrl-C, typed
    answer = re.search(r"status (\d+)", converse(c.console, "echo status $?\n"))
    print("after Ctrl-C: sleep", "runs" if sleep.is_running() else "is gone;",
          "the shell answers: exit status", answer.group(1))

# %% [markdown]
# The shell leads its own session (session = its pid) with terminal 136:0 (`/dev/pts/0`
# inside); `sleep` is the foreground group, so it got the SIGINT (exit status 130 =
# 128 + 2) and the shell lived on. This notebook is in another session with no terminal
# at all: nothing typed at the container can signal the runtime.
#
# **PID 1 is special.** The kernel delivers a signal to a namespace's PID 1 only if PID 1
# has a handler for it. `sleep` has none — run as PID 1, Ctrl-C (and `docker stop`'s
# SIGTERM) do nothing to it. A tiny init as PID 1 (`--init`, `init.py`) runs the command
# as PID 2, where the defaults apply again.
#
# **Predict, then run.** Ctrl-C is typed at `sleep 100`, once as PID 1 and once with
# `init=True`. Which one ends, and with which exit code?
#
# <details><summary>Answer</summary>
#
# As PID 1, nothing happens: `sleep` has no handler for SIGINT, so the kernel drops the
# signal, and it is still running 2 s later. With `init=True` the init receives the
# SIGINT (it does handle it), passes it to `sleep` as PID 2, where the default action
# kills it: exit code 130, which is 128 + 2, SIGINT's number.
# </details>

# %%
import time

from minicontainer.errors import Timeout

for init in (False, True):
    with Container(["sleep", "100"], tty=True, init=init) as c:
        c.start()
        time.sleep(0.3)
        converse(c.console, b"\x03")                     # Ctrl-C
        try:
            outcome = f"ended, exit code {c.wait(timeout=2).exit_code}"
        except Timeout:
            outcome = "still running 2 s later (no handler for SIGINT)"
    print(f"sleep as PID {2 if init else 1} (init={init}): after Ctrl-C {outcome}")

# %% [markdown]
# In a terminal, the same by hand: `sudo .venv/bin/minicontainer run -it -- sh`; Ctrl-C,
# Ctrl-Z and `fg` work; **Ctrl-P Ctrl-Q** detaches (the container runs on) and
# `minicontainer attach NAME` comes back; `exit 3` returns 3 to your shell.
#
# ## What you know now
# - Namespaces virtualize the *operating system's names*: pids, hostnames, mounts,
#   network devices. The hardware is not virtualized at all.
# - The container runs on the host's kernel — same release, same boot.
# - `-t` is a pty pair from the container's own devpts; the container's shell leads a
#   session with it as controlling terminal, so Ctrl-C reaches the container's
#   foreground process, never the runtime. PID 1 ignores signals it has no handler for:
#   `--init`.
#
# ## Exercise 02
# `exercises/ex02_namespaces.py`: compute `unshare` flags, and write `pivot_into`.

# %%
from minicontainer.course.grade import grade

grade("02")
