"""The monitor: a detached container keeps a few pages of C on the host, not a Python.

- What stays behind for `run -d` is mc-monitor (monitor.c): small, non-dumpable,
  holding no directory and nothing but the container's exit_status file.
- It records how the container ended (exit code, signal) and ends the same way.
- Killed, it takes the container with it, and `cleanup` finds what is left.
- Without the binary, the Python waiter still does the job.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from minicontainer import monitor, state
from minicontainer.container import Container

CLI = [sys.executable, "-m", "minicontainer"]
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(monitor.program_path() is None,
                                reason="mc-monitor not built: run `make setup`")


def mc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60)


def wait_until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_detached_container_leaves_a_small_c_monitor_not_a_python():
    assert mc("run", "-d", "--name", "mc-t-monitor", "--", "sleep", "30").returncode == 0
    try:
        record = state.read("mc-t-monitor")
        keeper = psutil.Process(record["pid"])
        assert Path(os.readlink(f"/proc/{keeper.pid}/exe")).name == "mc-monitor"
        assert psutil.Process(record["main_pid"]).ppid() == keeper.pid
        memory = keeper.memory_full_info()
        assert memory.pss < 1 * MiB, f"{memory.pss / MiB:.2f} MiB PSS (Python's was ~10)"
        stats = Container.load("mc-t-monitor").stats()
        assert 0 < stats["monitor_pss"] < 1 * MiB and stats["host_pss"] == stats["monitor_pss"]
    finally:
        mc("rm", "-f", "mc-t-monitor")


def test_the_monitor_holds_only_its_exit_status_file_and_no_directory():
    with Container(["sleep", "30"]) as c:
        c.start()
        fds = Path(f"/proc/{c._child.pid}/fd")
        held = {int(fd.name): os.stat(fd) for fd in fds.iterdir()}
        assert not any(stat.S_ISDIR(info.st_mode) for info in held.values()), \
            "a directory fd would be a way back into the host (Hardening item 1)"
        beyond_stdio = [os.readlink(fds / str(fd)) for fd in held if fd > 2]
        assert beyond_stdio == [str(c.directory / "exit_status")]


def test_the_monitor_is_not_dumpable_so_its_uid_cannot_reach_its_fds():
    """Run as nobody: a dumpable process's /proc/PID/fd would belong to nobody."""
    program = str(monitor.program_path())
    launcher = os.fork()
    if launcher == 0:                       # nobody, with a child to wait for
        try:
            os.setgid(65534)
            os.setuid(65534)
            child = os.fork()
            if child == 0:
                os.execv("/bin/sleep", ["sleep", "5"])
            os.execv(program, ["mc-monitor", str(child), "-1"])
        finally:
            os._exit(127)
    try:
        assert wait_until(lambda: Path(f"/proc/{launcher}/exe").exists() and
                          os.readlink(f"/proc/{launcher}/exe").endswith("mc-monitor"))
        assert psutil.Process(launcher).uids().real == 65534
        # exec made it dumpable, its first line undoes that: on a busy machine we may look
        # in between, so we wait for that line (without it, the fds stay nobody's).
        assert wait_until(lambda: os.stat(f"/proc/{launcher}/fd").st_uid == 0, 5), \
            "PR_SET_DUMPABLE 0 not in force"
    finally:
        os.kill(launcher, signal.SIGKILL)
        os.waitpid(launcher, 0)


def test_the_monitor_records_the_exit_code_and_ends_the_same_way():
    with Container(["sh", "-c", "exit 7"]) as c:
        c.start()
        status = c._child.wait(10)
        assert os.waitstatus_to_exitcode(status) == 7
        assert monitor.exit_status(c.directory) == status
    with Container(["sleep", "30"]) as c:
        c.start()
        c.kill(signal.SIGKILL)
        status = c._child.wait(10)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert c.result(0).exit_code == 137


def test_ps_shows_a_detached_containers_exit_code_from_the_monitor():
    assert mc("run", "-d", "--name", "mc-t-exited", "--", "sh", "-c", "exit 3").returncode == 0
    try:
        assert wait_until(lambda: "exited (3)" in mc("ps", "-a").stdout)
    finally:
        mc("rm", "-f", "mc-t-exited")


def test_a_container_whose_monitor_is_killed_dies_and_cleanup_removes_it():
    assert mc("run", "-d", "--name", "mc-t-orphan", "--", "sleep", "30").returncode == 0
    record = state.read("mc-t-orphan")
    os.kill(record["pid"], signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(record["main_pid"])), "PDEATHSIG"
    assert "mc-t-orphan" in mc("cleanup").stdout
    assert "mc-t-orphan" not in state.names()


def test_without_the_binary_the_python_waiter_still_records_the_exit(monkeypatch):
    monkeypatch.setattr(monitor, "program_path", lambda: None)
    with Container(["sh", "-c", "sleep 0.5; exit 5"]) as c:
        c.start()
        assert "python" in Path(os.readlink(f"/proc/{c._child.pid}/exe")).name
        assert c.wait(10).exit_code == 5


def test_doctor_says_whether_the_monitor_is_built():
    assert "container monitor (C)" in mc("doctor").stdout
