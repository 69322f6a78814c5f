"""Layer 3: cgroups give a container a budget the kernel enforces.

Every test here is reported with the hierarchy it ran on ([cgroup-hybrid] on this
project's CI host, [cgroup-v2] when the same file runs inside the cgroup v2 VM, see
test_cgroup_v2.py).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from minicontainer import cgroups, state
from minicontainer import namespaces as ns
from minicontainer.cgroups import Cgroup, Sampler
from minicontainer.cleanup import cleanup
from minicontainer.container import Container, run
from minicontainer.errors import InvalidArgument
from minicontainer.security import Security


@pytest.fixture(autouse=True, params=[cgroups.mode()], ids=lambda mode: f"cgroup-{mode}")
def hierarchy(request) -> str:
    return request.param


def group_dirs(container: Container) -> list[Path]:
    return sorted(set(container.cgroup.dirs.values()))


def test_the_command_starts_inside_its_budget():
    with Container(["cat", "/proc/self/cgroup"], memory="32M") as c:
        c.start()
        c.wait(10)
        lines = c.logs()[0].splitlines()
        expected = f"/minicontainer/{c.cgroup.name}"
        if c.cgroup.version["memory"] == "v2":
            assert f"0::{expected}" in lines
        else:
            for controller in ("memory", "pids", "cpu"):
                assert any(controller in line.split(":")[1].split(",") and
                           line.endswith(expected) for line in lines), (controller, lines)


def test_exec_runs_inside_the_same_budget():
    """docker exec joins the container's cgroup: what it starts counts against the limits."""
    with Container(["sleep", "30"], memory="32M") as c:
        c.start()
        inside = c.exec("cat /proc/self/cgroup").stdout
        assert f"/minicontainer/{c.cgroup.name}" in inside
        assert c.exec("dd if=/dev/zero of=/dev/null bs=64M count=1").exit_code == 137


def test_with_a_cgroup_there_is_always_a_pids_limit():
    """A fork bomb must hit a wall even when nobody thought of one; "max" lifts it."""
    for asked, written in ((None, "1024"), ("max", "max")):
        with Container(["sleep", "30"], pids_limit=asked) as c:
            c.start()
            assert (c.cgroup.dirs["pids"] / "pids.max").read_text().strip() == written


def test_a_memory_hog_is_oom_killed_and_reported_as_such():
    result = run(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], memory="32M")
    assert (result.exit_code, result.signal, result.oom_killed) == (137, "SIGKILL", True)


def test_within_its_budget_nothing_is_killed():
    result = run(["dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"], memory="64M")
    assert (result.exit_code, result.oom_killed) == (0, False)


def test_a_killed_container_is_not_mistaken_for_an_oom_kill():
    result = run("kill -9 $$", memory="64M", namespaces=["mnt"])
    assert result.exit_code == 137 and not result.oom_killed


def test_cpu_quota_of_a_fifth_of_a_cpu_holds_a_busy_loop_to_a_fifth():
    with Container(["sh", "-c", "while :; do :; done"], cpus=0.2) as c:
        c.start()
        time.sleep(2)
        used = c.stats()
    # 2 s of wall time at 0.2 CPU is 0.4 CPU-seconds; without the limit it would be ~2.
    assert 0.2 < used["cpu_seconds"] < 0.7, used
    assert used["throttled_seconds"] > 0.5, "the kernel should have held it back"


def test_cpu_shares_period_and_cpuset_are_written_in_each_hierarchys_words():
    # An OCI bundle's linux.resources.cpu (bundles.py): v1's files, or v2's cpu.weight
    # (runc's conversion of shares) and cpu.max; a cpuset group in its own v1 tree.
    limits = cgroups.Limits(cpus=0.5, cpu_period=50_000, cpu_shares=512, cpuset_cpus="0",
                            cpuset_mems="0")
    group = Cgroup(f"mc-test-{int(time.time() * 1000) % 10**9}", limits)
    group.create()
    try:
        cpu, cpuset = group.dirs["cpu"], group.dirs["cpuset"]
        files = {name: (cpuset if name.startswith("cpuset") else cpu) / name
                 for name in ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us",
                              "cpu.weight", "cpu.max", "cpuset.cpus", "cpuset.mems")}
        seen = {name: path.read_text().strip() for name, path in files.items()
                if path.exists()}
        procs = (cpuset / "cgroup.procs").read_text()
    finally:
        group.remove()
    if group.version["cpu"] == "v1":
        assert {k: seen[k] for k in ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us")} \
            == {"cpu.shares": "512", "cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "25000"}
    else:
        assert (seen["cpu.weight"], seen["cpu.max"]) == ("20", "25000 50000")
    assert (seen["cpuset.cpus"], seen["cpuset.mems"], procs) == ("0", "0", "")
    assert not cpuset.exists() and not (group.trees["cpuset"] / cgroups.PARENT).exists()


def test_a_fork_bomb_is_stopped_by_the_pids_limit_and_the_host_is_fine():
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    with Container(["sh", "-c", bomb], pids_limit=32) as c:
        c.start()
        time.sleep(2)
        assert c.stats()["pids"] <= 32
        assert subprocess.run(["true"]).returncode == 0, "the host can still start processes"
        dirs = group_dirs(c)
    assert not any(d.exists() for d in dirs)


def test_teardown_kills_every_process_and_removes_the_group():
    with Container("sleep 60 & sleep 60 & exec sleep 60", pids_limit=10) as c:
        c.start()
        deadline = time.monotonic() + 5
        while len(c.cgroup.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids, dirs = c.cgroup.pids(), group_dirs(c)
        assert len(pids) == 3
    assert not any(d.exists() for d in dirs)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_the_sampler_records_a_live_series_for_plots():
    with Container(["sh", "-c", "while :; do :; done"], cpus=0.5) as c:
        c.start()
        with Sampler(c.cgroup, interval=0.1) as sampler:
            time.sleep(1)
    samples = sampler.samples
    assert len(samples) >= 5
    assert samples[-1]["cpu_seconds"] > samples[0]["cpu_seconds"]
    assert {"time", "memory", "cpu_seconds", "pids", "oom_kills"} <= set(samples[0])


@pytest.mark.parametrize("limits", [{"memory": "64Q"}, {"memory": "-5"}, {"memory": "1k"},
                                    {"cpus": 0}, {"cpus": "-1"}, {"cpus": "lots"},
                                    {"pids_limit": 0}, {"pids_limit": "-5"}])
def test_nonsense_limits_are_refused_before_anything_is_created(limits):
    before = cgroups.leftover_groups()
    with pytest.raises(InvalidArgument):
        Container(["true"], **limits)
    assert state.names() == [] and cgroups.leftover_groups() == before


def test_cleanup_leaves_a_group_no_record_names_unless_all():
    """A group without a record may be another state root's, its owner alive: cleanup
    leaves it (and lists it); `cleanup --all` removes it."""
    stray = Cgroup("mc-crashed0000")
    stray.create()
    try:
        assert stray.dirs["memory"].exists()
        assert cleanup() == []
        assert stray.dirs["memory"].exists()
        assert "mc-crashed0000" in cleanup(everything=True)
        assert not stray.dirs["memory"].exists()
    finally:
        stray.remove()


# Read the image's node for the host's kernel log. All capabilities are kept (root
# needs CAP_SYSLOG to read it where dmesg_restrict=1), and there is no mount namespace,
# so no nodev either: the cgroup's device allow-list is the only thing in the way.
READ_NODE = "head -c 40 /kmsg | wc -c"
CHROOT_ONLY = {"namespaces": ns.DEFAULT - {"mnt"}}


def test_the_cgroup_lets_a_container_open_only_the_devices_on_its_allow_list(
        image_with_a_device_node):
    on = run(READ_NODE, rootfs=image_with_a_device_node, **CHROOT_ONLY,
             security=Security(capabilities=False))
    assert "Operation not permitted" in on.stderr and on.stdout.strip() == "0", on
    off = run(READ_NODE, rootfs=image_with_a_device_node, **CHROOT_ONLY,
              security=Security(capabilities=False, devices=False))
    assert off.stdout.strip() == "40", off                    # the host's kernel log
    allowed = run("head -c 8 /dev/urandom | wc -c; echo x > /dev/null && echo written")
    assert allowed.stdout.split() == ["8", "written"], allowed


def test_exec_is_held_to_the_same_allow_list(image_with_a_device_node):
    with Container("sleep 30", rootfs=image_with_a_device_node, **CHROOT_ONLY,
                   security=Security(capabilities=False)) as c:
        c.start()
        result = c.exec(READ_NODE)
    assert "Operation not permitted" in result.stderr and result.stdout.strip() == "0"
