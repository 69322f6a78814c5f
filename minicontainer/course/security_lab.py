"""The security lesson (notebook 05): each defence of layer 5 tried, then switched off.

Layer 5 (security.py) takes from root in a container what it does not need. This
module only shows it: it reads a container's capabilities back from /proc and names
them, runs small attacks with the defences on and off (as escapes.py's Attack, so the
lesson's attacks read like the escape lab's), makes one denied system call for real,
counts what Docker's default seccomp profile denies on this machine, and starts a
rootless container as an ordinary user to see who "root" is from the host.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .. import escapes, security
from ..container import Container, run
from ..escapes import Attack
from ..security import CAPABILITIES, DENIED_SYSCALLS, Security

# -- capabilities ------------------------------------------------------------------------------

CAPABILITY_NAMES = {number: name for name, number in CAPABILITIES.items()}


def capability_names(mask: int) -> list[str]:
    """The capabilities in a mask as /proc/PID/status shows it (CapEff), by name."""
    return [CAPABILITY_NAMES.get(bit, f"#{bit}") for bit in range(mask.bit_length())
            if mask >> bit & 1]


def capability_sets(status: str) -> dict[str, int]:
    """The Cap* lines of a /proc/PID/status text: {"CapEff": mask, ...}."""
    return {key: int(value, 16) for key, value in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$",
                                                             status, re.MULTILINE)}


def capabilities_inside(**options) -> int:
    """The CapEff of a container's process (Container's options), read from its /proc."""
    done = run(["cat", "/proc/self/status"], **options)
    return capability_sets(done.stdout)["CapEff"]


def capability_figure(rows: dict[str, int]):
    """One row of squares per process (name → CapEff mask), one column per capability:
    filled where it holds it."""
    from . import plots
    figure, axes = plots.described_subplots((9, 1.9 + 0.4 * len(rows)))   # + the names
    for row, mask in enumerate(rows.values()):
        held = [bit for bit in CAPABILITY_NAMES if mask >> bit & 1]
        axes.scatter(held, [row] * len(held), marker="s", s=60, color=plots.COLORS["container"])
    axes.set_yticks(range(len(rows)), list(rows))
    numbers = sorted(CAPABILITY_NAMES)
    axes.set_xticks(numbers, [CAPABILITY_NAMES[n] for n in numbers], rotation=90, fontsize=7)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.invert_yaxis()
    axes.set_title("Capabilities held (CapEff), by number")
    return plots.finish(figure, "Capabilities held, one square per capability: " + "; ".join(
        f"{who}: {len(capability_names(mask))}" for who, mask in rows.items()))


# -- trying an attack with a defence switched off ---------------------------------------------

SUID_PING = ("mkdir -p /root && cp /bin/busybox /root/busybox && chmod u+s /root/busybox && "
             "su -s /bin/sh nobody -c '/root/busybox ping -c 1 -W 1 127.0.0.1'")
# Each is harmless when it gets through: it changes only the container's own
# namespaces, or the kernel reads and refuses a file that is no module.
LESSON_ATTACKS = [
    Attack("mount a tmpfs (CAP_SYS_ADMIN)", "mount -t tmpfs none /mnt",
           "seccomp (mount), then capabilities (no SYS_ADMIN)"),
    Attack("add an address to its network (CAP_NET_ADMIN)",
           "ip addr add 192.0.2.1/32 dev lo", "capabilities (no NET_ADMIN)"),
    Attack("load a kernel module (CAP_SYS_MODULE)",
           "echo not-a-module > /tmp/evil.ko; out=$(insmod /tmp/evil.ko 2>&1); echo $out; "
           "case $out in *'invalid module format'*) exit 0;; esac; exit 1",
           "seccomp (init_module), then capabilities (no SYS_MODULE)"),
    Attack("make a user namespace, with every capability in it",
           "unshare -U -r grep CapEff /proc/self/status", "seccomp (unshare)"),
    Attack("nobody runs a setuid-root ping", SUID_PING, "no_new_privs"),
]


def went_through(attack: Attack, defences: Security | None = None, **options
                 ) -> tuple[bool, str]:
    """Run `attack` in a container with these defences: did it get through, and the
    last thing it said (escapes.attempt, without the lab's bait on the host)."""
    outcome = escapes.attempt(attack, security=defences or Security(), **options)
    return outcome.escaped, outcome.evidence


def defence_table(attacks: list[Attack], settings: dict[str, Security]) -> str:
    """A text table: one row per attack, one column per setting, "blocked" or "THROUGH"."""
    width = max(len(a.name) for a in attacks)
    lines = [" " * width + "  " + "  ".join(f"{title:>14}" for title in settings)]
    for attack in attacks:
        cells = ["THROUGH" if went_through(attack, chosen)[0] else "blocked"
                 for chosen in settings.values()]
        lines.append(f"{attack.name:{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def with_it_off(name: str) -> str:
    """An escape-lab attack (by name) against a default container, then with its layer
    switched off (`shown_with`): two lines saying how each went. Only attacks that need
    no bait on the host (escapes.target) are taken."""
    attack = next(a for a in escapes.ATTACKS if a.name == name)
    lines = []
    for title, changes in (("defaults", {}), ("layer off", attack.shown_with or {})):
        outcome = escapes.attempt(attack, **changes)
        verdict = "GETS THROUGH" if outcome.escaped else "blocked"
        lines.append(f"{title:10} {verdict:12} {outcome.evidence}")
    return "\n".join(lines)


# -- seccomp -------------------------------------------------------------------------------------

def denied_by_reason() -> dict[str, list[str]]:
    """security.DENIED_SYSCALLS turned round: each reason, and the calls it refuses."""
    grouped = defaultdict(list)
    for name, reason in DENIED_SYSCALLS.items():
        grouped[reason].append(name)
    return dict(grouped)


def call_inside(name: str, *args: int) -> Callable[[], None]:
    """A function for a container to run: make system call `name` for real, and print
    what the kernel answered (its number is looked up here: inside, the container's /
    has no Python library to look it up with)."""
    import pyseccomp
    return partial(_make_call, name, pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name), args)


def _make_call(name: str, number: int, args: tuple[int, ...]) -> None:
    """In the container: syscall(number, *args), and one line saying how it went."""
    libc = ctypes.CDLL(None, use_errno=True)
    answer = libc.syscall(number, *args)
    code = ctypes.get_errno() if answer < 0 else 0
    said = (f"errno {code} = {errno.errorcode[code]} ({os.strerror(code)})" if answer < 0
            else "done")
    shown = ", ".join(map(hex, args))
    os.write(1, f"{name}({shown}) returned {answer}: {said}\n".encode())   # fd 1: no buffer


PINNED_PROFILE = Path(__file__).parent / "data" / "moby-seccomp-default.json"   # see README
MOBY_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64", "s390x": "s390x",
             "ppc64le": "ppc64le"}


def kernel_calls() -> set[str]:
    """Every system call of this architecture that libseccomp can name, plus the newer
    ones security.py knows by number (a call unknown to both is invisible here)."""
    import pyseccomp
    names = set(security.NEWER_SYSCALLS)
    for number in range(1024):
        try:
            name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
        except (OSError, ValueError, RuntimeError):
            continue
        if name:
            names.add(name.decode() if isinstance(name, bytes) else name)
    return names


def dockers_rules(capabilities=security.DEFAULT_CAPABILITIES) -> list[dict]:
    """The allow rules of Docker's default profile that apply to a container holding
    `capabilities`, on this architecture and kernel (a rule for a capability it lacks,
    or one a capability it holds excludes, does not count)."""
    arch, held = MOBY_ARCH.get(os.uname().machine), {f"CAP_{c}" for c in capabilities}
    profile = json.loads(PINNED_PROFILE.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO", "an allow-list: deny what it omits"
    kernel = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    rules = []
    for rule in profile["syscalls"]:
        includes, excludes = rule.get("includes", {}), rule.get("excludes", {})
        if (rule["action"] != "SCMP_ACT_ALLOW"
                or arch not in includes.get("arches", [arch]) or arch in excludes.get("arches", [])
                or not set(includes.get("caps", [])) <= held or set(excludes.get("caps", [])) & held
                or kernel < tuple(int(n) for n in includes.get("minKernel", "0.0").split("."))):
            continue
        rules.append(rule)
    return rules


def seccomp_counts() -> dict[str, set[str]]:
    """Measured here: this kernel's calls, those Docker's default profile denies
    outright (for a container with our capabilities), those it allows only with some
    arguments, and those our filter refuses whole."""
    calls, rules = kernel_calls(), dockers_rules()
    allowed = {name for rule in rules if not rule.get("args") for name in rule["names"]}
    conditional = {name for rule in rules if rule.get("args") for name in rule["names"]}
    ours = (set(DENIED_SYSCALLS) | set(security.NOT_IMPLEMENTED)) & calls
    return {"kernel": calls, "docker denies": calls - allowed - conditional,
            "docker checks arguments": conditional - allowed, "we deny": ours}


def seccomp_figure(counts: dict[str, set[str]]):
    """Bars: this kernel's system calls, what Docker's profile denies, what ours does."""
    from . import plots
    figure, axes = plots.described_subplots((7, 2.4))
    labels = {"kernel": "this kernel has", "docker denies": "Docker's profile denies",
              "docker checks arguments": "Docker checks the arguments of",
              "we deny": "our filter denies"}
    sizes = [len(counts[key]) for key in labels]
    axes.barh(list(labels.values()), sizes, color=plots.COLORS["container"])
    for row, size in enumerate(sizes):
        axes.text(size + 3, row, str(size), va="center")
    axes.invert_yaxis()
    axes.set_xlabel("system calls (this machine, measured)")
    return plots.finish(figure, "Bar chart of system calls: " + ", ".join(
        f"{label} {size}" for label, size in zip(labels.values(), sizes, strict=True)),
        (axes.xaxis,))


# -- user namespaces -------------------------------------------------------------------------------

WHO = "id -u; cat /proc/self/uid_map; touch /made-by-root; sleep 30"


def root_inside_and_outside(rootless: bool = False) -> dict[str, str]:
    """Who "root" in a container is: its uid and uid_map inside, and from the host
    its process's uid and the owner of a file it made (read through /proc/PID/root)."""
    with Container(WHO, rootless=rootless, cgroup=not rootless) as container:
        container.start()
        made = Path(f"/proc/{container.pid}/root/made-by-root")
        for _ in range(100):
            if made.exists():
                break
            time.sleep(0.02)
        status = Path(f"/proc/{container.pid}/status").read_text()
        uid_on_host = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1)
        owner = str(made.stat().st_uid)
        container.kill()
        inside, mapping = container.wait(10).stdout.splitlines()[:2]
    return {"uid inside": inside, "uid_map": " ".join(mapping.split()),
            "its process's uid on the host": uid_on_host,
            "owner of /made-by-root on the host": owner}


USER = 65534   # nobody: an ordinary user on every machine
HOME = Path("/tmp/mc-lesson-home")   # theirs for the lesson; emptied before, removed after


def root_inside_and_outside_as(user: int = USER) -> dict[str, str]:
    """root_inside_and_outside(rootless=True), run by `user` (setpriv drops to it, as
    test_rootless does): an ordinary user's container, seen from the host."""
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir()
    os.chown(HOME, user, user)
    code = ("import json; from minicontainer.course.security_lab import "
            "root_inside_and_outside as f; print(json.dumps(f(rootless=True)))")
    try:
        done = _as_user(user, ["-c", code])
    finally:    # a run stopped half-way (Ctrl-C) leaves the user's records: tidy them
        _as_user(user, ["-m", "minicontainer", "cleanup"])
        shutil.rmtree(HOME, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the rootless container failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def _as_user(user: int, python_args: list[str]) -> subprocess.CompletedProcess:
    """This Python, with this package, run as `user` with the lesson's HOME."""
    package_root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", sys.executable,
         *python_args], capture_output=True, text=True, timeout=60, cwd="/",
        env={"HOME": str(HOME), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root)})
