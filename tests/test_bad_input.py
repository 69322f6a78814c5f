"""Bad input, table by table: every user-facing entry point (the CLI, `Container`,
`VM`) answers with one clear line and a non-zero exit, and the host is unchanged."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hostcheck import host_objects
from minicontainer.container import Container
from minicontainer.errors import MinicontainerError
from minicontainer.vm import VM
from minicontainer.vm.qemu import accelerator
from report import counts

CLI = [sys.executable, "-m", "minicontainer"]


@pytest.fixture(scope="module")
def not_a_rootfs(tmp_path_factory) -> dict[str, str]:
    """A file, and a directory without /bin/sh, to pass as --rootfs."""
    base = tmp_path_factory.mktemp("bad-rootfs")
    (base / "file").write_text("not a directory")
    (base / "empty" / "bin").mkdir(parents=True)
    return {"file": str(base / "file"), "no-shell": str(base / "empty")}


@pytest.fixture(scope="module")
def busy_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


CLI_CASES = [
    # (what, argv with {placeholders}, a word the message must contain)
    ("missing rootfs", ["run", "--rootfs", "/nonexistent", "--", "true"], "does not exist"),
    # Input at the edges (issue 12, item 10): a trailing newline is never a name or number.
    ("name with a newline", ["run", "--name", "abc\n", "--", "true"], "invalid container name"),
    ("hostname with a newline", ["run", "--hostname", "ab\n", "--", "true"], "invalid hostname"),
    ("memory with a newline", ["run", "-m", "64M\n", "--", "true"], "invalid memory"),
    ("cpus with a newline", ["run", "--cpus", "0.5\n", "--", "true"], "invalid cpus"),
    ("pids with a newline", ["run", "--pids-limit", "10\n", "--", "true"], "invalid pids"),
    ("absurd memory", ["run", "-m", "99999G", "--", "true"], "more than this machine"),
    ("absurd shm size", ["run", "--shm-size", "1T", "--", "true"], "more than this machine"),
    ("half a port spec", ["run", "--network", "mc-br0", "-p", "8080:", "--", "true"],
     "invalid port"),
    ("fds to preserve, not a number", ["run", "--preserve-fds", "x", "--", "true"],
     "invalid preserve_fds"),
    ("exec into a path", ["exec", "../../etc", "--", "true"], "invalid container name"),
    ("rootfs is a file", ["run", "--rootfs", "{file}", "--", "true"], "not a directory"),
    ("rootfs without /bin/sh", ["run", "--rootfs", "{no-shell}", "--", "true"], "/bin/sh"),
    ("no image", ["run"], "no image given"),
    ("no command", ["run", "--"], "no command given"),
    ("--rm with -d", ["run", "--rm", "-d", "busybox", "true"], "--rm with -d"),
    ("save into no directory", ["save", "-o", "/nonexistent/dir/x.tar", "busybox"],
     "/nonexistent/dir is not a directory"),
    ("save onto a directory", ["save", "-o", "/tmp", "busybox"], "it is a directory"),
    ("empty command", ["run", "--", ""], "command"),
    ("unknown command", ["run", "--", "no-such-program"], "not found"),
    ("bad hostname", ["run", "--hostname", "bad host", "--", "true"], "invalid hostname"),
    ("bad name", ["run", "--name", "../etc", "--", "true"], "invalid container name"),
    ("unknown namespace", ["run", "--namespaces", "mnt,bogus", "--", "true"], "namespace"),
    ("negative memory", ["run", "--memory=-64M", "--", "true"], "memory"),
    ("unit-less memory", ["run", "-m", "64", "--", "true"], "unit"),
    ("tiny memory", ["run", "-m", "1k", "--", "true"], "too small"),
    ("negative cpus", ["run", "--cpus", "-1", "--", "true"], "cpus"),
    ("too many cpus", ["run", "--cpus", "999", "--", "true"], "cpus"),
    ("word as cpus", ["run", "--cpus", "lots", "--", "true"], "cpus"),
    ("negative pids", ["run", "--pids-limit=-5", "--", "true"], "pids"),
    ("limits without cgroup", ["run", "--no-cgroup", "-m", "64M", "--", "true"], "cgroup"),
    ("port out of range", ["run", "--network", "mc-br0", "-p", "70000:80", "--", "true"],
     "port"),
    ("port zero", ["run", "--network", "mc-br0", "-p", "0:80", "--", "true"], "port"),
    ("port without network", ["run", "-p", "8080:80", "--", "true"], "network"),
    ("port in use", ["run", "--network", "mc-br0", "-p", "127.0.0.1:{port}:80", "--", "true"],
     "in use"),
    ("network without net namespace", ["run", "--network", "mc-br0", "--namespaces", "mnt",
                                       "--", "true"], "net namespace"),
    ("bad network name", ["network", "create", "eth0"], "invalid network name"),
    ("subnet clash", ["network", "create", "--subnet", "127.0.0.0/24", "mc-clash"],
     "overlaps"),
    ("nonsense subnet", ["network", "create", "--subnet", "10.1.2.3/99", "mc-clash"],
     "invalid subnet"),
    ("unknown security option", ["run", "--security-opt", "apparmor=x", "--", "true"],
     "security option"),
    ("no such container", ["exec", "ghost", "--", "true"], "no container named"),
    ("stop a ghost", ["stop", "ghost"], "no container named"),
    ("remove a ghost", ["rm", "ghost"], "no container named"),
    # The image commands (each refused before the image store is read).
    ("rmi of a name docker refuses", ["rmi", "Busybox"], "invalid image reference"),
    ("tag to a name with a space", ["tag", "busybox", "bad name"], "invalid image reference"),
    ("tag to a digest", ["tag", "busybox", "app@sha256:" + "a" * 64], "not name@digest"),
    ("inspect an empty name", ["image", "inspect", ""], "invalid image reference"),
    ("load a missing file", ["load", "-i", "/nonexistent.tar"], "not a directory or a tar"),
    ("import without a name", ["import", "/nonexistent.tar"], "name the image"),
    ("import a missing file", ["import", "/nonexistent.tar", "mc-app"], "No such file"),
    ("import under a bad name", ["import", "/nonexistent.tar", "App"], "invalid image reference"),
]


@pytest.mark.parametrize("what, argv, word", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_cli_refuses_with_one_line(what, argv, word, not_a_rootfs, busy_port):
    argv = [a.format(port=busy_port, **not_a_rootfs) for a in argv]
    before = host_objects()
    result = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=60)
    counts["bad inputs tried"] += 1
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("minicontainer: ") and word in lines[0], lines[0]
    assert host_objects() == before


def test_a_name_in_use_is_refused_and_the_first_container_is_untouched():
    with Container(["sleep", "30"], name="mc-taken") as first:
        first.start()
        before = host_objects()
        result = subprocess.run(CLI + ["run", "--name", "mc-taken", "--", "true"],
                                capture_output=True, text=True, timeout=60)
        counts["bad inputs tried"] += 1
        assert result.returncode != 0 and "already in use" in result.stderr
        assert host_objects() == before and first.running


def test_not_root_is_refused_before_anything_happens():
    before = host_objects()
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *CLI, "run", "--", "true"], capture_output=True, text=True,
                            timeout=60, cwd="/")
    counts["bad inputs tried"] += 1
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "root" in result.stderr and "sudo" in result.stderr
    assert host_objects() == before


API_CASES = [
    ("empty list", lambda: Container([]), "non-empty"),
    ("blank string", lambda: Container("  "), "non-empty"),
    ("not strings", lambda: Container(["echo", 3]), "non-empty"),
    ("bad hostname", lambda: Container("true", hostname="-x"), "invalid hostname"),
    ("memory as word", lambda: Container("true", memory="lots"), "invalid memory"),
    ("negative memory", lambda: Container("true", memory=-1), "invalid memory"),
    ("zero pids", lambda: Container("true", pids_limit=0), "pids"),
    ("ports as nonsense", lambda: Container("true", network="mc-br0", ports=["a:b"]), "port"),
    ("unknown namespace", lambda: Container("true", namespaces=["time"]), "namespace"),
    ("VM memory too small", lambda: VM(memory="8M"), "too small"),
    ("VM memory unit-less", lambda: VM(memory="128"), "unit"),
    ("VM cpus", lambda: VM(cpus=0), "cpus"),
    ("VM accelerator", lambda: VM(accel="hyperv"), "accel"),
    ("VM machine", lambda: VM(machine="pdp11"), "machine"),
]


@pytest.mark.parametrize("what, make, word", API_CASES, ids=[c[0] for c in API_CASES])
def test_the_api_refuses_with_one_clear_message(what, make, word):
    before = host_objects()
    with pytest.raises(MinicontainerError) as error:
        make()
    counts["bad inputs tried"] += 1
    assert word in str(error.value) and "\n" not in str(error.value)
    assert host_objects() == before


def test_a_missing_kernel_is_named(monkeypatch):
    monkeypatch.setenv("MINICONTAINER_KERNEL", "/nonexistent/vmlinuz")
    with pytest.raises(MinicontainerError, match="MINICONTAINER_KERNEL"):
        VM()
    counts["bad inputs tried"] += 1


def test_asking_for_kvm_where_there_is_none_says_so():
    if accelerator()[0] == "kvm":
        pytest.skip("KVM works on this machine")
    before = host_objects()
    with pytest.raises(MinicontainerError, match="KVM is not usable here"):
        VM(accel="kvm")
    counts["bad inputs tried"] += 1
    assert host_objects() == before


def test_a_non_linux_host_is_pointed_to_vagrant(monkeypatch):
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Darwin", *real[1:])))
    with pytest.raises(MinicontainerError, match="Vagrant"):
        Container("true")
    counts["bad inputs tried"] += 1


def test_the_setup_script_refuses_a_non_root_user_before_installing():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "bash", str(root / "scripts/setup.sh")], capture_output=True,
                            text=True, timeout=60, cwd="/")
    counts["bad inputs tried"] += 1
    assert result.returncode != 0 and "root" in result.stderr


@pytest.mark.parametrize("file_at", ["", "containers"], ids=["state root", "its containers"])
def test_a_state_root_that_is_a_file_is_refused_at_once(file_at, tmp_path):
    """A file where a directory should be: one line, not a retry loop forever."""
    root = tmp_path / "run"
    if file_at:
        root.mkdir()
    (root / file_at if file_at else root).write_text("not a directory")
    from minicontainer.rootfs import default_rootfs
    done = subprocess.run([sys.executable, "-m", "minicontainer", "run", "--rootfs",
                           str(default_rootfs()), "true"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "MINICONTAINER_RUN": str(root)})
    counts["bad inputs tried"] += 1
    assert done.returncode == 125 and done.stderr.count("\n") == 1, done.stderr
    assert "not a directory" in done.stderr
