"""The OCI runtime attacked as a hostile bundle's author would (a cold attack review of
the bundle fields): each test failed before its defence.

- root.path "/": the container's root would be the host's own (writes included, since a
  bundle's root is used as it is);
- a cgroupsPath inside another container's group: charged to its budget, blocking its
  removal;
- a created container joined into another's pid namespace: its host fds (cgroup.procs,
  exec.fifo) were readable through /proc/PID/fd from the other container;
- values our setup steps would choke on: one line naming the field instead.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicontainer import state
from minicontainer.rootfs import default_rootfs

SPEC = Path(__file__).parent.parent / "tests" / "data" / "runc-spec.json"
PIDS = Path("/sys/fs/cgroup/pids")


def oci(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`minicontainer oci --root ROOT ARGS`; stdio to files (create hands them over)."""
    out = root.parent / f"out-{time.monotonic_ns()}"
    with open(out, "w+") as f:
        done = subprocess.run([sys.executable, "-m", "minicontainer", "oci", "--root",
                               str(root), *args], stdin=subprocess.DEVNULL, stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout)
        f.seek(0)
        done.stdout = f.read()
    return done


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicontainer", *args],
                          capture_output=True, text=True, timeout=60)


def make_bundle(directory: Path, args: list[str], **changes) -> Path:
    """`runc spec`'s bundle (three capabilities) on busybox, running `args`."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "rootfs").exists():
        shutil.copytree(default_rootfs(), directory / "rootfs", symlinks=True)
    config = json.loads(SPEC.read_text())
    config["process"].update(terminal=False, args=args)
    for change in changes.values():
        change(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def record(root: Path, container_id: str) -> dict:
    return json.loads((root / "containers" / container_id / "state.json").read_text())


@pytest.fixture
def root(tmp_path):
    state = tmp_path / "state"
    yield state
    for directory in (state / "containers").glob("*") if (state / "containers").is_dir() else ():
        oci(state, "delete", "--force", directory.name)


# -- 1. root.path "/": the host's root filesystem as the container's ---------------------------

def test_root_path_slash_is_refused(tmp_path, root):
    """A bundle's root.path "/" (absolute: "the caller's choice") runs the container on
    the host's own filesystem: /etc/shadow, /var/lib/minicontainer readable. A relative
    rootfs that is a symlink to / is refused (root_of), and so is a volume of / (
    arguments.check_source); the same rule should hold for root.path."""
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", "head -c 5 /etc/shadow"],
                         root=lambda c: c.update(root={"path": "/", "readonly": True}))
    done = oci(root, "run", "-b", str(bundle), "slash")
    assert done.returncode != 0 and "root" in done.stdout, done.stdout   # now: "root:" printed


# -- 2. cgroupsPath inside another container's group -------------------------------------------

def test_cgroups_path_inside_another_containers_group_is_refused(tmp_path, root):
    """cgroupsPath /minicontainer/mc-<victim>/x: only the last name is checked for mc-,
    so the bundle's container lands inside another container's group (its memory
    budget charged to the victim's), and the victim's `rm -f` then fails (EBUSY)."""
    victim = cli("run", "-d", "--name", "oci-victim", "busybox", "sleep", "300")
    assert victim.returncode == 0, victim.stderr
    try:
        group = json.loads((state.containers_dir() / "oci-victim" / "state.json")
                           .read_text())["cgroup"]
        bundle = make_bundle(tmp_path / "b", ["sleep", "300"], cg=lambda c: c["linux"].update(
            cgroupsPath=f"/{group}/inside"))
        done = oci(root, "create", "-b", str(bundle), "nested")
        assert done.returncode != 0, "a bundle's group was made inside another container's"
    finally:
        oci(root, "delete", "--force", "nested")
        removed = cli("rm", "-f", "oci-victim")
    assert removed.returncode == 0, removed.stderr


# -- 3. a created container's process, seen from a pid namespace it joined -----------------------

ATTACKER = r"""
sleep 3
n=0
for f in /proc/[0-9]*/fd/*; do
  case "$(readlink $f 2>/dev/null)" in *cgroup.procs*|*exec.fifo) n=$((n+1));; esac
done
echo $n > /tmp/reached
sleep 300
"""


def test_created_process_is_not_reachable_from_a_joined_pid_namespace(tmp_path, root):
    """Container A shares its pid namespace with B (linux.namespaces: pid by path, as a
    pod's sidecar). While B is `created` its process holds host fds (cgroup.procs
    files, exec.fifo): A must not read them through /proc/B/fd, nor write itself into
    B's group (out of its own budget) or open the fifo (starting B without `oci
    start`). runc's nsexec makes the process non-dumpable for this reason."""
    a = make_bundle(tmp_path / "a", ["sh", "-c", ATTACKER],
                    writable=lambda c: c["root"].update(readonly=False))
    assert oci(root, "create", "-b", str(a), "a").returncode == 0
    assert oci(root, "start", "a").returncode == 0
    a_pid = record(root, "a")["main_pid"]
    b = make_bundle(tmp_path / "b", ["sleep", "300"], ns=lambda c: c["linux"].update(
        namespaces=[n for n in c["linux"]["namespaces"] if n["type"] != "pid"]
        + [{"type": "pid", "path": f"/proc/{a_pid}/ns/pid"}]))
    assert oci(root, "create", "-b", str(b), "b").returncode == 0
    reached = Path(f"/proc/{a_pid}/root/tmp/reached")
    deadline = time.monotonic() + 20
    while not reached.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reached.read_text().strip() == "0"


# -- 6. bad values in a bundle: one clear line naming the field --------------------------------

BAD_VALUES = {
    "rlimit soft above hard": lambda c: c["process"].update(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 200, "hard": 100}]),
    "rlimit beyond 64 bits": lambda c: c["process"].update(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 2**70, "hard": 2**70}]),
    "device uid beyond 32 bits": lambda c: c["linux"].update(
        devices=[{"path": "/dev/x", "type": "c", "major": 1, "minor": 3, "uid": 2**40}]),
    "oomScoreAdj out of range": lambda c: c["process"].update(oomScoreAdj=5000),
    "NUL in env": lambda c: c["process"].update(env=["A\0B=1"]),
    "NUL in args": lambda c: c["process"].update(args=["sh\0x"]),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_value_is_one_line_naming_its_field(tmp_path, root, case):
    """Now: "container setup failed: ValueError/OverflowError: ..." from the child, or
    "Invalid argument", or (NUL in env) exit 125 and no line at all."""
    bundle = make_bundle(tmp_path / "b", ["true"], bad=BAD_VALUES[case])
    done = oci(root, "run", "-b", str(bundle), "bad")
    assert done.returncode != 0 and "config.json" in done.stdout, (done.returncode, done.stdout)
    assert not (root / "containers" / "bad").exists()
