"""The records: who may remove them, why none is trusted, and where containers' data lives.

- `cleanup` removes only what a dead owner left: a live owner's container stays,
  whether it runs, has exited or is still being created.
- Names are checked and records are checked before the host acts on them: a record a
  container planted cannot make the host kill, delete or unplug anything of the host's.
- Records (small) live in /run; writable layers and logs on disk, where cleanup still
  finds them after a reboot forgot their records.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from minicontainer import state

CLI = [sys.executable, "-m", "minicontainer"]
ROOT = Path(__file__).resolve().parent.parent


def mc(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60,
                          **options)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    return lines[0]


# An owner that stops at a stage and waits for a line on stdin before going on.
OWNER = """
import pkgutil, sys
from minicontainer import Container
stage = sys.argv[1]
if stage != "exited":
    owner_name, attribute = stage.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_name)
    real = getattr(owner, attribute)
    def pause_after(*args, **kwargs):
        result = real(*args, **kwargs)
        print("paused", flush=True)
        sys.stdin.readline()
        return result
    setattr(owner, attribute, pause_after)
container = Container(["sh", "-c", "echo done"], name="mc-kept")
container.start()
result = container.wait(timeout=30)
if stage == "exited":
    print("paused", flush=True)
    sys.stdin.readline()
    result = container.wait()
print("result", result.exit_code, result.stdout.strip(), flush=True)
container.remove()
"""


@pytest.mark.parametrize("stage", ["exited", "minicontainer.state.claim",
                                   "minicontainer.cgroups.Cgroup.create"],
                         ids=["it has exited", "its record is written",
                              "its cgroup exists"])
def test_cleanup_leaves_a_live_owners_container_alone(stage):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, stage], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "paused\n"
        cleaned = mc("cleanup")
        assert cleaned.returncode == 0 and "mc-kept" not in cleaned.stdout, "its owner lives"
        owner.stdin.write("go on\n")
        owner.stdin.flush()
        assert owner.stdout.readline() == "result 0 done\n", "the owner lost its container"
    finally:
        owner.kill()
        owner.wait()
        mc("rm", "-f", "mc-kept")
    assert "mc-kept" not in state.names()


def test_cleanup_leaves_a_live_owners_draft_alone():
    """A draft record (claimed but not yet renamed into place) of a live owner stays."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, "minicontainer.state.write"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "paused\n"       # in claim(), before the rename
        assert list(state.containers_dir().glob(".claim-mc-kept-*"))
        assert not [d for d in state.remove_stale_drafts(age=0) if "mc-kept" in d]
        owner.stdin.write("go on\n")
        owner.stdin.flush()
        for _ in range(5):                                  # each later write pauses too
            line = owner.stdout.readline()
            if line != "paused\n":
                break
            owner.stdin.write("go on\n")
            owner.stdin.flush()
        assert line == "result 0 done\n"
    finally:
        owner.kill()
        owner.wait()
        mc("rm", "-f", "mc-kept")
    assert "mc-kept" not in state.names()


# -- where container data lives ---------------------------------------------------------------

def test_writes_go_to_disk_and_cleanup_finds_layers_a_reboot_orphaned():
    record, data = state.containers_dir() / "mc-rebooted", state.data_dir() / "mc-rebooted"
    assert mc("run", "-d", "--no-cgroup", "--name", "mc-rebooted", "--", "sh", "-c",
              "echo data > /written").returncode == 0
    try:
        deadline = time.monotonic() + 10
        while not (record / "exit_status").stat().st_size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (data / "upper" / "written").read_text() == "data\n"   # on disk, not in /run
        assert sorted(p.name for p in record.iterdir()) == ["exit_status", "state.json"]
        shutil.rmtree(record)                     # a reboot: /run forgets, the disk does not
        cleaned = mc("cleanup")
        assert "mc-rebooted" not in cleaned.stdout, "too young: it may be being created"
        assert data.exists()
        os.utime(data, (time.time() - 60, time.time() - 60))
        cleaned = mc("cleanup")
        assert "data of mc-rebooted" in cleaned.stdout, cleaned.stdout + cleaned.stderr
        assert not data.exists()
    finally:
        mc("rm", "-f", "mc-rebooted")
        shutil.rmtree(data, ignore_errors=True)


def in_own_mounts(script: str, tmp_path) -> subprocess.CompletedProcess:
    """Run a shell script in a mount namespace of its own: what it mounts (a filesystem
    to put the data on) the host never sees."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CLI": " ".join(CLI)})


def test_a_data_directory_overlayfs_cannot_use_is_named_in_one_line(tmp_path):
    for directory in ("lower", "upper", "work", "on-overlay"):
        (tmp_path / directory).mkdir()
    result = in_own_mounts(
        "mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work on-overlay"
        " && MINICONTAINER_DATA=$PWD/on-overlay/data $CLI run -- true", tmp_path)
    line = one_line_error(result)
    assert "overlayfs refused the writable layer in" in line and "on-overlay/data" in line
    assert "MINICONTAINER_DATA" in line
    assert not (tmp_path / "upper" / "data").exists(), "the failed container left its data"


def test_a_full_disk_is_the_containers_problem_or_one_line(tmp_path):
    (tmp_path / "small").mkdir()
    inside = in_own_mounts(                  # full while the container writes: its problem
        "mount -t tmpfs -o size=1M tmpfs small && MINICONTAINER_DATA=$PWD/small "
        "$CLI run -- dd if=/dev/zero of=/big bs=64k count=64", tmp_path)
    assert inside.returncode != 0 and "No space left on device" in inside.stderr
    assert "Traceback" not in inside.stderr
    ours = in_own_mounts(                    # no room for the container's own directory
        "mount -t tmpfs -o size=1M,nr_inodes=1 tmpfs small && "
        "MINICONTAINER_DATA=$PWD/small $CLI run -- true", tmp_path)
    line = one_line_error(ours)
    assert "no space left in" in line and "small" in line and "MINICONTAINER_DATA" in line


# -- names and records are never trusted ------------------------------------------------------

@pytest.mark.parametrize("verb", [["rm", "-f"], ["stop"], ["logs"], ["stats"],
                                  ["exec"]], ids=lambda verb: verb[0])
def test_a_name_is_never_a_path(verb):
    result = mc(*verb, "mc-x/../../../tmp", *(["--", "true"] if verb == ["exec"] else []))
    assert "invalid container name" in one_line_error(result)


@pytest.fixture
def bait(tmp_path):
    """What a planted record points the host at, all of it the test's own: a sleeping
    process in a cgroup outside ours, a spare interface, and a network of ours for the
    record to name."""
    from minicontainer import cgroups, network
    from minicontainer.process import start_time
    group = cgroups.hierarchies()["pids"][1] / f"mc-bait-{os.getpid()}"
    group.mkdir()
    sleeper = subprocess.Popen(["sleep", "600"])
    dummy = f"rbait{os.getpid() % 100000}"    # not mc-…: no cleanup of ours may take it
    net = None
    try:
        (group / "cgroup.procs").write_text(str(sleeper.pid))
        subprocess.run(["ip", "link", "add", dummy, "type", "veth", "peer", "name",
                        f"{dummy}p"], check=True)
        net = network.create(f"mc-rec{os.getpid() % 100000}")
        yield {"pid": sleeper.pid, "started": start_time(sleeper.pid), "interface": dummy,
               "cgroup": f"minicontainer/../{group.name}", "network": net}
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroups.remove_dir(group)          # waits while the kernel still counts the sleeper
        subprocess.run(["ip", "link", "del", dummy], capture_output=True)
        if net:
            network.remove(net["name"], force=True)


def crafted(name: str, bait: dict) -> dict:
    """A record that names the bait everywhere the host acts: its pids, terminal
    keeper, cgroup and interface (whose name also tags its published ports' rules)."""
    net = bait["network"]
    return {"name": name, "id": "0123456789ab", "command": ["true"], "rootfs": "/",
            "hostname": "x", "namespaces": ["mnt"], "init": False, "env": {},
            "rootless": False, "detached": True, "cgroup": bait["cgroup"],
            "limits": {"memory": None, "cpus": None, "pids": None},
            "network": {"network": net["name"], "address": net["gateway"],
                        "gateway": net["gateway"], "prefix": 24,
                        "host_end": bait["interface"]},
            "ports": [["0.0.0.0", 18130, 80]], "security": {},
            "tty": True, "console": [bait["pid"], bait["started"]], "created": time.time(),
            "owner": 1, "owner_started": None,
            "pid": bait["pid"], "main_pid": bait["pid"], "pid_started": bait["started"]}


def bait_is_unharmed(bait: dict) -> bool:
    from minicontainer.process import start_time
    return (start_time(bait["pid"]) == bait["started"]
            and os.path.exists(f"/sys/class/net/{bait['interface']}"))


def test_a_record_planted_from_inside_a_container_moves_nothing_on_the_host(bait):
    """A default container writes a record into its own root; `rm -f` is then given a
    path to it. The name check refuses the path; the record would be refused anyway."""
    from minicontainer.container import Container
    record = json.dumps(crafted("planted", bait))
    with Container(["sh", "-c", 'mkdir /planted && echo "$RECORD" > /planted/state.json'],
                   env={"RECORD": record}) as victim:
        assert victim.start().wait(timeout=30).exit_code == 0
        planted = state.data_dir() / victim.name / "upper" / "planted"
        assert (planted / "state.json").exists()
        result = mc("rm", "-f", os.path.relpath(planted, state.containers_dir()))
        assert "invalid container name" in one_line_error(result)
        assert bait_is_unharmed(bait)


@pytest.mark.parametrize("change, why", [
    ({}, "cgroup"),
    ({"cgroup": None}, "interface"),
    ({"cgroup": None, "network": None}, None),   # only the pids are left
    ({"pid": True}, "pid is a bool"),
    ({"env": {"A": 1}}, "more than strings"),
    ({"cgroup": None, "network": None, "pid": -5, "pid_started": None},
     "not positive"),
], ids=["a host cgroup", "a host interface", "a host process", "a bool for a pid",
        "a number in the environment", "a negative pid"])
def test_a_record_naming_the_hosts_things_is_refused(bait, change, why):
    directory = state.containers_dir() / "mc-crafted"
    directory.mkdir(parents=True)
    try:
        (directory / "state.json").write_text(json.dumps({**crafted("mc-crafted", bait),
                                                          **change}))
        result = mc("rm", "-f", "mc-crafted")
        if why:
            assert why in one_line_error(result) and "refused" in result.stderr
        assert bait_is_unharmed(bait), result.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)   # rm took it, if it was accepted
        state.release(directory)


def test_cleanup_leaves_a_refused_record_alone_and_says_so(bait):
    """A refused record is not skipped in silence: cleanup names it and acts on nothing."""
    directory = state.containers_dir() / "mc-crafted"
    directory.mkdir(parents=True)
    try:
        (directory / "state.json").write_text(json.dumps(crafted("mc-crafted", bait)))
        result = mc("cleanup")
        assert "left alone" in result.stderr and "mc-crafted" in result.stderr, result.stderr
        assert "bad record" in mc("ps").stdout
        assert bait_is_unharmed(bait)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        state.release(directory)


# -- a VM's record is untrusted input too ------------------------------------------------------

def test_a_forged_vm_record_can_neither_remove_a_directory_nor_kill_a_process(tmp_path,
                                                                              monkeypatch):
    from minicontainer.cleanup import refused_records
    from minicontainer.process import start_time
    from minicontainer.vm import cleanup as vm_cleanup
    monkeypatch.setenv("MINICONTAINER_RUN", str(tmp_path / "run"))   # records of our own
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    bystander = subprocess.Popen(["sleep", "60"])
    dead = 2 ** 22 - 1                    # above any pid this kernel gives: no owner
    forged = {
        "a" * 12: {"owner": dead, "owner_started": 1, "tmp": str(victim), "qemu": None},
        "b" * 12: {"owner": dead, "owner_started": 1,
                   "tmp": f"{tempfile.gettempdir()}/mc-vm-{'b' * 12}",
                   "qemu": [bystander.pid, start_time(bystander.pid)]},
        "c" * 12: "not a record", "not-an-id": {}}
    try:
        state.vms_dir().mkdir(parents=True)
        for vm_id, record in forged.items():
            (state.vms_dir() / f"{vm_id}.json").write_text(json.dumps(record))
        (state.vms_dir() / f"{'d' * 12}.json").write_text("{not json")
        assert vm_cleanup.cleanup() == [f"vm {'b' * 12}"]        # its files: none here
        assert (victim / "precious").read_text() == "keep me"
        assert bystander.poll() is None, "cleanup killed a process a record pointed at"
        said = refused_records()
        assert sorted(said) == [f"vm {'a' * 12}", f"vm {'c' * 12}", f"vm {'d' * 12}",
                                "vm not-an-id"]
        assert "is not mc-vm-aaaaaaaaaaaa" in said[f"vm {'a' * 12}"]
    finally:
        bystander.kill()
        bystander.wait()


def test_cleanup_leaves_a_group_no_record_names_and_says_so_unless_all():
    # Its records may be elsewhere (another MINICONTAINER_RUN, or `oci --root`), its
    # owner alive, with processes inside or none yet: not ours to judge. `--all` takes it.
    from minicontainer.cgroups import PARENT, Cgroup
    from minicontainer.cleanup import cleanup, left_alone, remove_objects, unrecorded
    busy, idle = Cgroup(f"{PARENT}/mc-0123456789ab"), Cgroup(f"{PARENT}/mc-0123456789ac")
    busy.create()
    idle.create()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for fd in busy.open_procs():
            os.write(fd, str(sleeper.pid).encode())
            os.close(fd)
        removed = cleanup()
        assert "mc-0123456789ab" not in removed and "mc-0123456789ac" not in removed
        assert sleeper.poll() is None and all(d.is_dir() for d in idle.dirs.values())
        assert {f"{PARENT}/mc-0123456789ab (cgroup)",
                f"{PARENT}/mc-0123456789ac (cgroup)"} <= set(left_alone())
        # What --all removes, but of the host's only ours: other sessions may be at work.
        ours = [(path, kind) for path, kind in unrecorded((state.containers_dir().parent,))
                if path.endswith(("/mc-0123456789ab", "/mc-0123456789ac"))]
        assert sorted(remove_objects(ours)) == ["mc-0123456789ab", "mc-0123456789ac"]
        assert sleeper.wait(5) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.remove()
        idle.remove()


SECOND_ROOT_BRIDGE = f"mc-lab{os.getpid() % 100000}"
SECOND_ROOT_ID = f"{os.getpid() % 100000:05d}abcdef0"


def test_a_second_state_roots_idle_objects_survive_cleanup_and_go_with_all(tmp_path):
    """Another session (its own MINICONTAINER_RUN) has an idle bridge with its rules,
    and a veth, a published port's rule and an empty group of a container it is still
    creating: `cleanup` here cannot see its records, so it leaves them all, and says
    so; `cleanup --all` removes them."""
    from minicontainer.cgroups import PARENT, Cgroup
    from minicontainer.cleanup import remove_objects, unrecorded
    bridge, veth = SECOND_ROOT_BRIDGE, f"mc-{SECOND_ROOT_ID}"
    other = {**os.environ, "MINICONTAINER_RUN": str(tmp_path / "run"),
             "MINICONTAINER_DATA": str(tmp_path / "data")}
    group = Cgroup(f"{PARENT}/{veth}")
    port_rule = ["OUTPUT", "-p", "tcp", "--dport", "18119", "-j", "DNAT", "--to-destination",
                 "10.213.99.2:80", "-m", "comment", "--comment", veth]
    assert mc("network", "create", bridge, env=other).returncode == 0
    try:
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name",
                        f"x{SECOND_ROOT_ID}"], check=True)
        subprocess.run(["iptables", "-t", "nat", "-A", *port_rule], check=True)
        group.create()
        theirs = objects_named(bridge, veth)
        assert theirs["links"] == sorted([bridge, veth]) and theirs["rules"] and theirs["cgroups"]

        result = mc("cleanup")
        assert result.returncode == 0, result.stderr
        assert objects_named(bridge, veth) == theirs, "cleanup took another root's objects"
        said = [line for line in result.stderr.splitlines() if "no record of ours" in line]
        assert len(said) == 1 and "--all" in said[0], result.stderr
        for name in (f"{bridge} (bridge)", f"{veth} (veth)", f"{veth} (rules)",
                     f"{bridge} (rules)", f"{PARENT}/{veth} (cgroup)"):
            assert name in said[0]

        # What `cleanup --all` removes (remove_unrecorded), but of the host's only
        # these: other sessions may be at work on this machine.
        everything = unrecorded((state.containers_dir().parent,))
        theirs_listed = [(n, k) for n, k in everything if bridge in n or veth in n]
        assert len(theirs_listed) == 5, everything
        remove_objects(theirs_listed)
        assert objects_named(bridge, veth) == {"links": [], "rules": [], "cgroups": []}
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-D", *port_rule], capture_output=True)
        group.remove()
        assert mc("network", "rm", bridge, env=other).returncode == 0   # its record too
    assert objects_named(bridge, veth) == {"links": [], "rules": [], "cgroups": []}


def objects_named(*names: str) -> dict[str, list[str]]:
    """The links, iptables rules and cgroups on the host that carry one of `names`."""
    from hostcheck import host_objects
    found = host_objects()
    return {kind: sorted(o for o in found[key] if any(n in o for n in names))
            for kind, key in (("links", "links"), ("rules", "firewall rules"),
                              ("cgroups", "cgroups"))}


BUDGET_OWNER = """
import sys, time
from minicontainer import state
from minicontainer.cgroups import Cgroup
group = Cgroup(sys.argv[1])
state.write_group(group.path)          # as course/measure.py makes a shared budget
group.create()
print("made", flush=True)
time.sleep(60)
"""


def test_a_budget_group_is_recorded_so_cleanup_removes_it_once_its_owner_died():
    """A group made outside a container (a budget several share) has a record of its
    own: kept while its owner lives, removed once it was killed."""
    from minicontainer.cgroups import PARENT
    from minicontainer.cleanup import cleanup, left_alone
    name = f"mc-budget-{os.getpid() % 100000}"
    owner = subprocess.Popen([sys.executable, "-c", BUDGET_OWNER, name], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout.readline() == "made\n"
        assert name not in cleanup() and f"{PARENT}/{name} (cgroup)" not in left_alone()
        owner.kill()
        owner.wait()
        assert name in cleanup()
        assert not any(p.name == name for p in Path("/sys/fs/cgroup").glob(f"*/{PARENT}/*"))
        assert not state.groups_dir().exists()
    finally:
        owner.kill()
        owner.wait()


def test_the_state_lock_taken_by_many_threads_at_once_never_mistakes_a_going_root(
        tmp_path, monkeypatch):
    # The last holder removes the state root on its way out, while others make it
    # again: a root that is gone between two looks was once refused as "not a directory"
    # (50 containers removed at once hit it).
    import threading
    monkeypatch.setenv("MINICONTAINER_RUN", str(tmp_path / "run"))
    errors = []

    def take_and_leave():
        try:
            for _ in range(400):
                with state.locked():
                    pass
        except OSError as e:
            errors.append(e)
    threads = [threading.Thread(target=take_and_leave) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert not (tmp_path / "run").exists()
