"""Container: the layers composed, started, exec'd into, stopped and removed."""
from __future__ import annotations

import io
import os
import sys
import time
from functools import partial

import psutil
import pytest

from minicontainer import state
from minicontainer.container import Container, run
from minicontainer.errors import (CommandNotFound, InvalidArgument, NameInUse, Timeout)
from minicontainer.namespaces import ns_ids
from minicontainer.errors import RootfsError


def test_run_reports_exit_code_and_output():
    result = run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.signal is None and 0 < result.duration < 5


def _print_both(text: str) -> None:
    print(text, end="")                  # no newline: only the exit's flush sends it
    print(text, file=sys.stderr)


def test_a_python_functions_print_is_the_containers_output(monkeypatch):
    """A Jupyter kernel's sys.stdout is a socket to the notebook, not fd 1: print() in a
    function run as the container's program must still reach the container's stdout
    (the escape lab's Python attacks lost their evidence in notebooks, and hung)."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())    # not fd 1, as in a kernel
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    result = run(partial(_print_both, "said"))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "said", "said\n")


def test_a_killed_command_reports_its_signal():
    result = run("kill -9 $$", namespaces=["mnt"])
    assert result.exit_code == 137 and result.signal == "SIGKILL"


def test_unknown_command_raises_command_not_found():
    with pytest.raises(CommandNotFound) as error:
        run(["no-such-program"])
    assert error.value.exit_code == 127 and "no-such-program" in str(error.value)
    assert state.names() == []


def test_writes_go_to_the_containers_own_layer(rootfs):
    assert run("echo changed > /etc/hostname && cat /etc/hostname").stdout == "changed\n"
    assert (rootfs / "etc/hostname").read_text() == "minicontainer\n"
    assert run("cat /etc/hostname").stdout == "minicontainer\n"


def test_a_removed_container_leaves_no_state():
    with Container(["sleep", "30"], name="mc-test-state") as c:
        c.start()
        assert state.names() == ["mc-test-state"]
    assert state.names() == []


def test_two_containers_cannot_share_a_name():
    with Container(["sleep", "30"], name="mc-test-twin") as first:
        first.start()
        with pytest.raises(NameInUse):
            Container(["true"], name="mc-test-twin").start()
        assert first.running


@pytest.mark.parametrize("options, message", [
    ({"command": []}, "non-empty"),
    ({"command": ["true"], "name": "bad name!"}, "invalid container name"),
    ({"command": ["true"], "hostname": "-bad"}, "invalid hostname"),
    ({"command": ["true"], "namespaces": ["time-travel"]}, "unknown namespace"),
])
def test_bad_arguments_are_refused_before_anything_is_created(options, message):
    with pytest.raises(InvalidArgument, match=message):
        Container(**options)
    assert state.names() == []


def test_a_missing_or_empty_rootfs_is_refused(tmp_path):
    with pytest.raises(RootfsError, match="does not exist"):
        Container(["true"], rootfs=tmp_path / "nowhere")
    with pytest.raises(RootfsError, match="no /bin/sh"):
        Container(["true"], rootfs=tmp_path)


def test_wait_times_out_and_the_container_is_still_removed():
    with pytest.raises(Timeout):
        run(["sleep", "30"], timeout=0.2)
    assert state.names() == []


def test_exec_lands_in_the_same_namespaces():
    with Container(["sleep", "30"], hostname="box") as c:
        c.start()
        links = c.exec("for kind in mnt pid uts ipc net; do readlink /proc/self/ns/$kind; done"
                       ).stdout.split()
        ids = ns_ids(c.pid)
        assert links == [f"{k}:[{ids[k]}]" for k in ("mnt", "pid", "uts", "ipc", "net")]
        assert c.exec("hostname").stdout.strip() == "box"
        assert "sleep 30" in c.exec("ps -o pid,args").stdout


def test_exec_sees_the_containers_files():
    with Container("echo hello > /tmp/note; exec sleep 30") as c:
        c.start()
        deadline = time.monotonic() + 5
        while c.exec("cat /tmp/note").stdout != "hello\n":
            assert time.monotonic() < deadline
        assert c.exec("cat /tmp/note").exit_code == 0


def test_pid_1_ignores_sigterm_so_stop_falls_back_to_sigkill():
    with Container(["sleep", "30"]) as c:
        c.start()
        result = c.stop(timeout=0.5)
    assert result.exit_code == 137 and result.signal == "SIGKILL"
    assert result.duration >= 0.5


def test_sigterm_stops_a_container_with_init():
    with Container(["sleep", "30"], init=True) as c:
        c.start()
        started = time.monotonic()
        result = c.stop(timeout=10)
    assert result.exit_code == 143 and time.monotonic() - started < 5


def zombies_after_an_orphan_exits(init: bool) -> list[str]:
    """Leave an orphan that exits while PID 1 is `sleep`; list the zombies left."""
    with Container("sh -c 'sleep 0.1 &'; exec sleep 30", init=init) as c:
        c.start()
        time.sleep(1)
        tree = psutil.Process(c.pid).children(recursive=True)
        return [p.pid for p in tree if p.status() == psutil.STATUS_ZOMBIE]


def test_without_init_orphans_become_zombies():
    assert len(zombies_after_an_orphan_exits(init=False)) == 1


def test_init_reaps_zombies():
    assert zombies_after_an_orphan_exits(init=True) == []


def test_killing_the_waiter_kills_the_container():
    c = Container(["sleep", "30"]).start()
    try:
        container_pid = c.pid
        os.kill(c._child.pid, 9)
        c.wait(5)
        deadline = time.monotonic() + 5
        while psutil.pid_exists(container_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(container_pid), "PR_SET_PDEATHSIG should end it too"
    finally:
        c.remove(force=True)


FILL_SHM = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=65 2>&1; df -k /dev/shm | tail -1"


def test_dev_shm_is_bounded_to_64_mib_as_in_docker():
    """/dev/shm is memory: 65 MiB do not fit in Docker's default 64 MiB."""
    result = run(FILL_SHM)
    assert "No space left on device" in result.stdout
    assert result.stdout.split()[-5] == str(64 * 1024)              # df: 1K-blocks


def test_shm_size_raises_the_bound_in_dockers_spelling():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "minicontainer", "run", "--shm-size", "128m",
                           "--", "sh", "-c", FILL_SHM], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "65+0 records out" in done.stdout, done.stdout
    assert done.stdout.split()[-5] == str(128 * 1024)
    with pytest.raises(InvalidArgument, match="shm size"):
        Container("true", shm_size="64Q")
