"""The command line: Docker's verbs, one-line errors, and cleanup after a crash."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from minicontainer import state

CLI = [sys.executable, "-m", "minicontainer"]


def mc(*args: str, user: int | None = None, **options) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run(prefix + CLI + list(args), capture_output=True, text=True, timeout=60,
                          **options)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_run_exits_with_the_commands_status_and_removes_the_container():
    result = mc("run", "--hostname", "cli-box", "--", "sh", "-c", "hostname; exit 7")
    assert (result.returncode, result.stdout) == (7, "cli-box\n")
    assert state.names() == []


def test_the_installed_command_works():
    script = Path(sys.executable).parent / "minicontainer"
    result = subprocess.run([script, "run", "--", "echo", "hi"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "hi\n")


def test_unknown_command_exits_127_with_one_line():
    result = mc("run", "--", "no-such-program")
    assert result.returncode == 127
    assert "command not found" in one_line_error(result)


@pytest.mark.parametrize("args, message", [
    (["run", "--rootfs", "/nonexistent", "--", "true"], "does not exist"),
    (["run", "--hostname", "bad host", "--", "true"], "invalid hostname"),
    (["run"], "no image given"),
    (["run", "--"], "no command given"),
    (["run", "--namespaces", "mnt,bogus", "--", "true"], "unknown namespace"),
    (["exec", "ghost", "--", "true"], "no container named"),
    (["stop", "ghost"], "no container named"),
])
def test_user_errors_are_one_clear_line(args, message):
    result = mc(*args)
    assert result.returncode != 0
    assert message in one_line_error(result)
    assert state.names() == []


def test_a_bad_option_prints_usage():
    result = mc("run", "--no-such-option", "--", "true")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_not_root_is_one_clear_line():
    result = mc("run", "--", "true", user=65534)
    assert result.returncode != 0 and "sudo" in one_line_error(result)


def test_detached_container_ps_exec_stop_rm():
    started = mc("run", "-d", "--name", "mc-cli-web", "--init", "--", "sleep", "30")
    assert started.stdout == "mc-cli-web\n"
    try:
        assert "running" in mc("ps").stdout
        assert mc("exec", "mc-cli-web", "--", "hostname").stdout == "mc-cli-web\n"
        clash = mc("run", "--name", "mc-cli-web", "--", "true")
        assert clash.returncode != 0 and "already in use" in one_line_error(clash)
        assert mc("stop", "mc-cli-web").returncode == 0
        assert "exited (143)" not in mc("ps").stdout            # docker ps: running only
        assert "exited (143)" in mc("ps", "-a").stdout
    finally:
        assert mc("rm", "-f", "mc-cli-web").returncode == 0
    assert state.names() == []


def test_rm_refuses_a_running_container_without_force():
    mc("run", "-d", "--name", "mc-cli-busy", "--", "sleep", "30")
    try:
        result = mc("rm", "mc-cli-busy")
        assert result.returncode != 0 and "stop it first" in one_line_error(result)
    finally:
        mc("rm", "-f", "mc-cli-busy")


def test_logs_of_a_detached_container():
    mc("run", "-d", "--name", "mc-cli-logs", "--", "sh", "-c", "echo to-out; echo to-err >&2")
    try:
        time.sleep(0.5)
        result = mc("logs", "mc-cli-logs")
        assert (result.stdout, result.stderr) == ("to-out\n", "to-err\n")
    finally:
        mc("rm", "-f", "mc-cli-logs")


def test_cleanup_removes_what_a_killed_owner_left():
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from minicontainer import Container
        Container(["sleep", "60"], name="mc-orphan").start()
        print("started", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "started\n"
        assert mc("cleanup").stdout == "removed 0 leftover(s)\n", "the owner is alive"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert "mc-orphan" in mc("ps", "-a").stdout
        assert mc("cleanup").stdout == "removed 1 leftover(s): mc-orphan\n"
        assert mc("cleanup").stdout == "removed 0 leftover(s)\n", "safe to run twice"
    finally:
        owner.kill()
        owner.wait()
    assert state.names() == []


def test_cleanup_leaves_detached_containers_alone_unless_all():
    mc("run", "-d", "--name", "mc-cli-keep", "--", "sleep", "30")
    try:
        assert mc("cleanup").stdout == "removed 0 leftover(s)\n"
        assert mc("cleanup", "--all").stdout == "removed 1 leftover(s): mc-cli-keep\n"
    finally:
        mc("rm", "-f", "mc-cli-keep")


def start_in_foreground(name: str, *command: str) -> subprocess.Popen:
    run = subprocess.Popen(CLI + ["run", "--name", name, "--", *command],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 5
    while "running" not in mc("ps").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return run


def test_ctrl_c_twice_stops_a_foreground_container_whose_pid_1_ignores_it():
    run = start_in_foreground("mc-cli-fg", "sleep", "30")
    run.send_signal(signal.SIGINT)           # passed on: sleep as PID 1 has no handler
    time.sleep(0.5)
    assert run.poll() is None, "one Ctrl-C is only passed on"
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=10) == 137     # sleep as PID 1 ignores SIGTERM: killed
    assert "stopping mc-cli-fg" in run.stderr.read()
    assert state.names() == []


TRAP = "trap 'echo got $0; exit 3' TERM HUP INT; echo trapping; while :; do sleep 0.1; done"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: s.name)
def test_a_signal_to_a_foreground_run_reaches_the_containers_pid_1(sig):
    """As `docker run` does (--sig-proxy): a trap in PID 1 sees it, the CLI keeps
    waiting and returns the container's exit code, and nothing is left behind."""
    run = start_in_foreground("mc-cli-trap", "sh", "-c", TRAP.replace("$0", sig.name))
    run.send_signal(sig)
    assert run.wait(timeout=10) == 3
    assert run.stdout.read() == f"trapping\ngot {sig.name}\n"
    assert state.names() == []


def test_a_killed_cli_leaves_an_orphan_that_ps_shows_and_cleanup_removes():
    run = start_in_foreground("mc-cli-orphan", "sleep", "30")
    run.kill()
    run.wait()
    line = next(row for row in mc("ps", "-a").stdout.splitlines() if "mc-cli-orphan" in row)
    assert "orphaned" in line
    assert "mc-cli-orphan" in mc("cleanup").stdout
    assert state.names() == []


@pytest.mark.parametrize("how", ["run", "run -d", "exec"])
def test_a_shells_open_fd_does_not_reach_the_container(how):
    """`exec 7</` in the shell that runs us: fd 7 is the host's / (runc's CVE-2016-9962)."""
    cli = " ".join(CLI)
    probe = "ls /proc/self/fd/7/ 2>&1 || echo closed"
    script = {"run": f"{cli} run -- sh -c '{probe}'",
              "run -d": f"{cli} run -d --name mc-cli-fd -- sh -c '{probe}' >/dev/null; "
                        f"sleep 1; {cli} logs mc-cli-fd; {cli} rm -f mc-cli-fd >/dev/null",
              "exec": f"{cli} run -d --name mc-cli-fd -- sleep 30 >/dev/null; "
                      f"{cli} exec mc-cli-fd -- sh -c '{probe}'; {cli} rm -f mc-cli-fd >/dev/null"}
    result = subprocess.run(["bash", "-c", f"exec 7</; {script[how]}"], capture_output=True,
                            text=True, timeout=60)
    assert "closed" in result.stdout and "etc" not in result.stdout, result.stdout
    assert state.names() == []


def test_doctor_passes_its_required_checks_here():
    result = mc("doctor")
    assert result.returncode == 0, result.stdout
    assert "[ok  ] mnt namespace" in result.stdout and "ready." in result.stdout


def test_doctor_says_kvm_is_unusable_when_the_cpu_cannot_virtualize():
    flags = Path("/proc/cpuinfo").read_text()
    line = next(row for row in mc("doctor").stdout.splitlines() if "KVM" in row)
    if os.path.exists("/dev/kvm") and " vmx" not in flags and " svm" not in flags:
        assert line.startswith("[warn]") and "no vmx/svm" in line


def test_doctor_fails_for_a_normal_user_and_says_what_to_do():
    result = mc("doctor", user=65534)
    assert result.returncode == 1 and "fix: run with sudo" in result.stdout
