"""Rootless: an ordinary user (here uid 65534) runs a container through a user
namespace — root inside, that user outside, on an image the user owns — and is told
plainly what it cannot have (limits, a bridged network)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hostcheck import host_objects
from minicontainer.namespaces import user_namespaces_refused
from report import counts

USER = 65534
CLI = [sys.executable, "-m", "minicontainer"]


@pytest.fixture(scope="module")
def home():
    """A home directory for the user, where their image is built."""
    directory = Path(tempfile.mkdtemp(prefix="mc-rootless-"))
    os.chown(directory, USER, USER)
    yield directory
    shutil.rmtree(directory)


def as_user(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", *CLI, *args],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


def test_an_ordinary_user_runs_a_container_as_root_inside_and_themselves_outside(home):
    if user_namespaces_refused():
        pytest.skip(f"this kernel refuses unprivileged user namespaces: "
                    f"{user_namespaces_refused()}")
    before = host_objects()
    result = as_user(home, "run", "--rootless", "--hostname", "mine", "--", "sh", "-c",
                     "id -u; cat /proc/self/uid_map; hostname; echo $$; "
                     "grep Seccomp: /proc/self/status; touch /etc/written && echo wrote")
    counts["containers run"] += 1
    assert result.returncode == 0, result.stderr
    uid, mapping, hostname, pid, seccomp, wrote = result.stdout.splitlines()
    assert uid == "0" and mapping.split() == ["0", str(USER), "1"]
    assert (hostname, pid, seccomp.split()[1], wrote) == ("mine", "1", "2", "wrote")
    image = next((home / ".cache/minicontainer/rootfs").iterdir())
    assert image.stat().st_uid == USER                     # the user's own image
    assert host_objects() == before


def test_on_the_host_its_processes_belong_to_the_user(home):
    if user_namespaces_refused():
        pytest.skip("this kernel refuses unprivileged user namespaces")
    assert as_user(home, "run", "-d", "--rootless", "--name", "mc-mine", "--",
                   "sleep", "30").returncode == 0
    try:
        listing = as_user(home, "ps").stdout
        pid = int(next(line for line in listing.splitlines() if "mc-mine" in line).split()[2])
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(USER)}
    finally:
        removed = as_user(home, "rm", "-f", "mc-mine")
    assert removed.returncode == 0, removed.stderr
    assert not list(Path("/tmp").glob(f"minicontainer-{USER}"))


@pytest.mark.parametrize("args, words", [
    (["run", "--", "true"], "--rootless"),
    (["run", "--rootless", "-m", "64M", "--", "true"], "no cgroup"),
    (["run", "--rootless", "--pids-limit", "10", "--", "true"], "no cgroup"),
    (["run", "--rootless", "--network", "mc-br0", "--", "true"], "bridge network"),
], ids=["without --rootless", "memory limit", "pids limit", "bridge network"])
def test_what_rootless_cannot_do_is_said_plainly(home, args, words):
    before = host_objects()
    result = as_user(home, *args)
    counts["bad inputs tried"] += 1
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and words in lines[0], result.stderr
    assert host_objects() == before


def test_doctor_tells_a_user_what_rootless_gives_and_lacks(home):
    report = as_user(home, "doctor").stdout
    line = next(line for line in report.splitlines() if "rootless" in line)
    assert ("no cgroup limits" in line) or ("sysctl" in report)


def test_a_users_cleanup_touches_only_their_own(home):
    """With a root container running, the user's cleanup finds nothing of theirs."""
    from minicontainer.container import Container
    with Container(["sleep", "30"]) as roots:
        roots.start()
        result = as_user(home, "cleanup")
        assert (result.returncode, result.stdout) == (0, "removed 0 leftover(s)\n"), \
            result.stderr
        assert roots.running
