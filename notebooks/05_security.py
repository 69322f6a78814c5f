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
# # 05 — security: what root in a container may still do
#
# > *"Compromising the container software often means you have kernel-level access to
# > the host."*
#
# Namespaces (02) change what a process *sees*; cgroups (03) how much it may *use*.
# Neither changes what root may *do*: root in a container is root of the host's
# kernel. Layer 5 (`minicontainer/security.py`) takes away what a container does not
# need, the way Docker does, in five parts you can switch off one by one:

# %%
from minicontainer.security import Security

print(Security())        # every defence on, as in `docker run`
print(Security.off())    # roughly `docker run --privileged`

# %% [markdown]
# Every section below does the same three things: try something, see it blocked, switch
# the defence off (an option of `Security`, or of the escape lab in
# `minicontainer/escapes.py`) and see it go through. Nothing here harms the host: what
# gets through changes only the container's own namespaces, or only *reads*.
#
# ## 1. Capabilities: root's power, in 41 pieces
# Since Linux 2.2 "root" is a set of capabilities: `CAP_SYS_ADMIN` mounts,
# `CAP_NET_ADMIN` configures networks, `CAP_SYS_MODULE` loads kernel modules... A
# process's sets are in `/proc/self/status` as hexadecimal masks, bit N for capability N.
#
# **Predict, then run.** This notebook's kernel runs as root on the host. How many of
# the 41 capabilities does it hold, and how many does root in a container hold?
#
# <details><summary>Answer</summary>
#
# The kernel's root holds all of them: 41 on a kernel this new, unless whoever started it
# took some away (the first line shows what yours holds). A default container keeps 13 —
# Docker's default list without `MKNOD` (security.py says why): enough to `chown` files,
# bind port 80, `ping`, change user; not enough to mount, configure the network, load
# modules or trace processes.
# </details>

# %%
from pathlib import Path

from minicontainer.course.security_lab import (capabilities_inside, capability_figure,
                                               capability_names, capability_sets)

masks = {"host root (this kernel)": capability_sets(Path("/proc/self/status").read_text())["CapEff"],
         "a default container": capabilities_inside(),
         "capabilities=False": capabilities_inside(security=Security(capabilities=False))}
for who, mask in masks.items():
    print(f"{who:24} CapEff {mask:016x}: {len(capability_names(mask))} capabilities")
print("\nthe container keeps:", ", ".join(capability_names(masks["a default container"])))
capability_figure(masks)

# %% [markdown]
# `capabilities=False` keeps whatever the caller held: root's whole set.
#
# **Predict, then run.** Root in a container runs `mount -t tmpfs none /mnt`. Which
# defence stops it: seccomp (the filter of system calls, section 3) or capabilities?
#
# <details><summary>Answer</summary>
#
# Both. seccomp refuses `mount(2)` outright; without seccomp the kernel still asks for
# `CAP_SYS_ADMIN`, which the container lacks. Only with both off does it go through —
# defence in depth. `ip addr add` needs only `CAP_NET_ADMIN`, which seccomp does not
# watch; `unshare -U` needs no capability at all, so only seccomp stops it.
# </details>
#
# Each row below is a small attack, each column a setting (in
# `minicontainer/course/security_lab.py`; each row's command is a line of shell):

# %%
from minicontainer.course.security_lab import LESSON_ATTACKS, defence_table, went_through

settings = {"all on": Security(), "seccomp off": Security(seccomp=False),
            "caps off": Security(capabilities=False),
            "both off": Security(seccomp=False, capabilities=False),
            "no_new_privs off": Security(no_new_privs=False)}
print(defence_table(LESSON_ATTACKS, settings))
print("\nWhat each said with seccomp and capabilities both off:")
for attack in LESSON_ATTACKS:
    print(f"  {attack.name}: {went_through(attack, settings['both off'])[1] or '(silence)'}")

# %% [markdown]
# Read the rows: `mount` gets through only with both off. `ip addr add` gets through
# with capabilities off — into the container's *own* network namespace; without a
# network namespace it would be the host's. A kernel module is refused by seccomp, then
# by the missing `CAP_SYS_MODULE`; with both off the kernel itself reads the file (on a
# kernel built without module support, like this course's CI, it answers "does not
# support requested operation": nothing could be loaded either way). `unshare -U`
# makes a user namespace whose root holds *every* capability — over that namespace
# only, but each of them is a way into kernel code that assumed root was trusted.
#
# Switch the defences yourself (the table follows the boxes):

# %%
import ipywidgets as widgets

from minicontainer.course.panels import panel

switches = {name: widgets.Checkbox(value=True, description=name, indent=False,
                                   layout=widgets.Layout(width="130px"))
            for name in Security.switches()}


def table_for_the_boxes():
    chosen = Security(**{name: box.value for name, box in switches.items()})
    print(defence_table(LESSON_ATTACKS, {"these defences": chosen}))


panel(list(switches.values()), table_for_the_boxes)

# %% [markdown]
# ## 2. no_new_privs: a setuid program stays what its caller is
# A *setuid* program runs as its file's owner: that is how `ping` and `passwd` work for
# ordinary users. In a container that is a way back up: an ordinary user inside (or a
# process that dropped to one) runs a setuid-root file from the image and is root
# again. `prctl(PR_SET_NO_NEW_PRIVS)` tells the kernel to ignore setuid bits and file
# capabilities at every `execve` from then on; it is inherited and cannot be undone.
#
# **Predict, then run.** `nobody` runs a setuid-root copy of busybox's `ping` (the
# classic setuid program: a raw ICMP socket needs `CAP_NET_RAW`). With no_new_privs, what
# happens?
#
# <details><summary>Answer</summary>
#
# The setuid bit is ignored: `ping` runs as `nobody`, cannot open its raw socket and
# says "permission denied (are you root?)". With `no_new_privs=False` it runs as root
# and the ping goes through. (`/proc/self/status` shows `NoNewPrivs: 1`.)
# </details>

# %%
from minicontainer import run
from minicontainer.course.security_lab import SUID_PING

print(SUID_PING, "\n")
for title, chosen in (("no_new_privs on", Security()),
                      ("no_new_privs off", Security(no_new_privs=False))):
    done = run(f"grep NoNewPrivs /proc/self/status; {SUID_PING}", security=chosen)
    said = (done.stdout + done.stderr).strip().splitlines()
    print(f"{title:17} exit {done.exit_code}: {said[0]}; {said[-1]}")

# %% [markdown]
# Docker sets it with `--security-opt no-new-privileges` (off by default there: Docker
# relies on capabilities). We switch it on by default, as Kubernetes' "restricted" pod
# security standard demands (`allowPrivilegeEscalation: false`);
# `--security-opt no-new-privileges=false` undoes it here.
#
# ## 3. seccomp: a filter in front of every system call
# The kernel has about 370 system calls. A container needs most of them, but some reach
# the whole machine: the clock, kernel modules, other namespaces, the kernel's keyrings.
# seccomp runs a small BPF program at every system call; ours answers `EPERM` to these
# (`security.DENIED_SYSCALLS`, name → why):

# %%
from IPython.display import Markdown

from minicontainer.course.security_lab import denied_by_reason

rows = [f"| {', '.join(f'`{c}`' for c in calls)} | {reason} |"
        for reason, calls in denied_by_reason().items()]
Markdown("| refused | why |\n|---|---|\n" + "\n".join(rows))

# %% [markdown]
# **Predict, then run.** A container calls `unshare(CLONE_NEWUSER)` — the raw system
# call, from Python, inside. What does the kernel return, and with which `errno`?
#
# <details><summary>Answer</summary>
#
# `-1` with `errno` 1, `EPERM` — "Operation not permitted", the answer a missing
# permission gives, so programs take the usual path. The BPF program decided it before
# the kernel's `unshare` code ran. With `seccomp=False` the call returns 0: a new user
# namespace.
# </details>

# %%
from minicontainer.course.security_lab import call_inside

CLONE_NEWUSER = 0x10000000
print("seccomp on: ", run(call_inside("unshare", CLONE_NEWUSER)).stdout, end="")
print("seccomp off:", run(call_inside("unshare", CLONE_NEWUSER),
                          security=Security(seccomp=False)).stdout, end="")
print(run("grep Seccomp /proc/self/status").stdout)   # 2: a filter is loaded

# %% [markdown]
# ### Docker's default profile, counted here
# Docker's profile is the other way round: an *allow-list* (its default action is
# `SCMP_ACT_ERRNO`), so whatever it does not name is denied — how many depends on the
# machine's list of calls. Below, a pinned copy of it
# (`minicontainer/course/data/`, from github.com/moby/profiles, as moby vendors it) is
# read for a container holding our capabilities on this architecture and kernel, and
# compared with our list. The same comparison is a test (`tests/test_security.py`):
# every call Docker denies, we deny.

# %%
from minicontainer.course.security_lab import seccomp_counts, seccomp_figure

counts = seccomp_counts()
print(f"this kernel: {len(counts['kernel'])} system calls; Docker's profile denies "
      f"{len(counts['docker denies'])} outright and checks the arguments of "
      f"{len(counts['docker checks arguments'])} ({', '.join(sorted(counts['docker checks arguments']))}); "
      f"ours denies {len(counts['we deny'])}")
print("denied by ours, not by Docker's:",
      ", ".join(sorted(counts["we deny"] - counts["docker denies"])) or "none")
print("denied by Docker's, not by ours:",
      ", ".join(sorted(counts["docker denies"] - counts["we deny"])) or "none")
seccomp_figure(counts)

# %% [markdown]
# Where ours refuses a call whole, Docker's allows it for some arguments or some
# capabilities (`personality` for a few personas, `process_vm_readv` with
# `CAP_SYS_PTRACE`...): a lesson reads a list of names more easily than argument rules.
#
# ## 4. Masked and read-only paths: /proc is the host kernel's
# `/proc` and `/sys` are windows into the one kernel. Some files leak the host (its
# timers, interrupts, keyrings; `/proc/kcore` is its memory, where the kernel has one);
# some are switches (`/proc/sys/kernel/core_pattern` names a program the *host* runs as
# root at every crash; `/proc/sysrq-trigger` reboots it). Layer 5 hides the first kind
# under `/dev/null` or an empty tmpfs, and bind-mounts the second read-only.
#
# **Predict, then run.** Inside a default container, is `/proc/sys/kernel/core_pattern`
# writable? (The lab only *asks*, with `access(2)`; nothing is written.)
#
# <details><summary>Answer</summary>
#
# No: `/proc/sys` is a read-only bind mount. With `system_paths=False` — Docker's
# `--security-opt systempaths=unconfined` — root may write it, and the host would run
# the container's program as root at its next crash: a classic escape.
# </details>

# %%
from minicontainer.course.security_lab import with_it_off
from minicontainer.security import MASKED_PATHS, READ_ONLY_PATHS

print("on this host:", sum(Path(p).exists() for p in MASKED_PATHS), "of the",
      len(MASKED_PATHS), "masked paths exist;", "/proc/kcore", "exists" if
      Path("/proc/kcore").exists() else "does not exist (a kernel without it)")
print("read-only:", ", ".join(READ_ONLY_PATHS))
for attack in ("read the host kernel's internals", "find a writable kernel switch"):
    print(f"\n{attack}:\n{with_it_off(attack)}")

# %% [markdown]
# ## 5. User namespaces: root inside, nobody outside
# Everything above still leaves one fact: the container's root *is* uid 0 on the host.
# A user namespace maps ids: `/proc/self/uid_map` says "uid 0 inside is uid N
# outside". Run as an ordinary user, a *rootless* container (`rootless=True`,
# `minicontainer run --rootless`, as rootless Podman) maps its root to that user: what
# escapes it escapes as that user.
#
# **Predict, then run.** A container's root makes a file. Who owns it on the host —
# for a default container, and for a rootless one started by `nobody` (uid 65534)?
#
# <details><summary>Answer</summary>
#
# Default: uid 0, the host's root (its uid_map is `0 0 4294967295`: every id, unchanged).
# Rootless: uid 65534 — root only inside (uid_map `0 65534 1`: one id). Its process,
# seen from the host, runs as 65534 too.
# </details>

# %%
from minicontainer.course.security_lab import root_inside_and_outside, root_inside_and_outside_as
from minicontainer.namespaces import user_namespaces_refused

seen = {"default container (by root)": root_inside_and_outside()}
if user_namespaces_refused():
    print("this machine refuses user namespaces to ordinary users:", user_namespaces_refused())
else:
    seen["rootless (by nobody)"] = root_inside_and_outside_as()
print(f"{'':36}", "".join(f"{who:30}" for who in seen))
for key in seen["default container (by root)"]:
    print(f"{key:36}", "".join(f"{found[key]:30}" for found in seen.values()))

# %% [markdown]
# The price, said plainly by `--rootless`: no cgroup (creating one needs root, or a
# cgroup delegated by systemd), no bridged network (a veth into a host bridge needs
# root; rootless Podman uses slirp4netns or pasta). Docker's `userns-remap` is the
# middle way: a root daemon, containers mapped to a range of unprivileged ids.
#
# ## What no layer can fix
# **The kernel is shared.** Every container makes its system calls to the host's one
# kernel (02 showed the same `uname -r`); seccomp narrows the door, it does not remove
# it. A bug in what is left reaches every container on the machine at once, whatever
# its capabilities: Dirty COW (CVE-2016-5195) and Dirty Pipe (CVE-2022-0847) let any
# process write into files it could only read — an image layer other containers share,
# a read-only mount of the host's, a setuid program.
#
# **The runtime is code too.** CVE-2019-5736: when `docker exec` joined a container,
# runc was, for a moment, a process *inside* it, still running the host's runc binary.
# Root in the container opened `/proc/PID/exe` of that process and, once runc exited,
# wrote over the host's runc: the next `docker run` ran the attacker's code as root on
# the host. Our `exec` (`minicontainer/joining.py`) joins the same way, and its joining
# process is the host's Python until it execs. Like runc, it makes itself
# *non-dumpable* first, so the container cannot open its `/proc/PID/exe` (or its fds).
# runc's fix for this CVE went further: runc re-executes itself from a sealed copy (a
# sealed memfd in 2019; today a read-only overlay or a sealed memfd,
# `libcontainer/exeseal`), so even an opened exe cannot be written. We do not: a
# container holding `CAP_SYS_PTRACE` (`--privileged`) could still open it. Notebook
# 08's escape lab runs this attack (it only *opens* the exe) against a default
# container, then with `hardened=False` (the joining process left dumpable), where it
# gets through: `open_a_joining_process_exe` in `minicontainer/escapes.py`.
#
# **The middle grounds** put something between the container and the host's kernel:
#
# | | what the container's system calls reach | cost |
# |---|---|---|
# | container (this course, runc) | the host kernel, narrowed by layer 5 | ~ms to start, no memory of its own |
# | gVisor (`runsc`) | a kernel written in Go, in user space; it uses a few dozen host calls itself | slower system calls and I/O; not every call implemented |
# | Kata Containers | a guest kernel in a small VM per pod (QEMU, Cloud Hypervisor or Firecracker) | a VM's boot and memory per pod |
# | Firecracker (microVMs, AWS Lambda) | a guest kernel; a minimal VMM with a handful of devices, itself under seccomp | boots in ~125 ms and < 5 MiB per VMM (its published figures, with KVM) |
# | VM (07) | a guest kernel; QEMU's emulated devices | seconds to boot, its RAM held |
#
# Each moves the line of trust from "the host kernel's system calls" to something
# smaller: a user-space kernel, or a hypervisor's few devices. Notebook 07 boots the VM;
# 08 measures both sides, and runs the whole escape lab (24 attacks, each with the layer
# that stops it).
#
# ## What you know now
# - Root in a container is the host's root, minus what layer 5 takes: capabilities,
#   system calls, setuid's effect, the /proc files that reach the host.
# - Most attacks meet two defences; switch one off and the other still stops them.
# - A user namespace makes root inside someone else outside.
# - The shared kernel, and the runtime's own code, are what no layer fixes.
#
# ## Exercise 05
# Open `exercises/ex05_security.py`: turn capability names into the mask the kernel
# prints (and compare it with what a default container holds), then write an attack
# of your own for the escape lab — one the pid namespace, and nothing else, stops.

# %%
from minicontainer.course.grade import grade

grade("05")
