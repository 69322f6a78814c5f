"""Shared fixtures: a real kernel, as root, and two guards around every test.

- The caller is never changed: after each test, this process (the test runner,
  standing in for a Jupyter kernel) has the same namespaces, root, cwd, hostname and
  mount table as before.
- The host is never harmed: at the end of the session, nothing the project could
  create (links, netns, cgroups, mounts, container state, qemu) is left over.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

import report
from hostcheck import host_objects
from minicontainer import network_helper
from minicontainer.container import Container
from minicontainer.namespaces import ns_ids
from minicontainer.rootfs import default_rootfs

if os.geteuid() != 0:
    pytest.exit("the tests use real namespaces and mounts and must run as root: sudo make test",
                returncode=2)


@pytest.fixture(scope="session", autouse=True)
def host_is_left_as_found():
    before = host_objects()
    yield
    # The CLI's network helper exits on its own once idle (network_helper.py): wait for
    # that, no longer; one that stays is a leak.
    deadline = time.monotonic() + network_helper.IDLE_SECONDS + 5
    while host_objects()["network helpers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = host_objects()
    report.leaked = sum(len(set(after[kind]) ^ set(before[kind])) for kind in after)
    assert after == before, f"the tests left objects on the host: {after}"


@pytest.fixture(autouse=True)
def no_network_helper_from_an_earlier_test():
    """The CLI's network helper idles a few seconds after its last request (see
    network_helper.py): each test starts without one, so that its own look at the host
    before and after sees only what it did itself."""
    network_helper.stop()


@pytest.fixture(scope="session", autouse=True)
def count_containers():
    """Count every container this process starts, for the report."""
    real = Container.start

    def start(self, *args, **kwargs):
        report.counts["containers run"] += 1
        return real(self, *args, **kwargs)
    Container.start = start
    yield
    Container.start = real


def pytest_terminal_summary(terminalreporter):
    c = report.counts
    terminalreporter.write_line(
        f"minicontainer: {c['containers run']} containers run (in the test process), "
        f"{c['faults injected']} faults injected, {c['bad inputs tried']} bad inputs tried, "
        f"{c['escapes tried']} escapes tried and {c['escapes blocked']} blocked, "
        f"{'?' if report.leaked is None else report.leaked} objects leaked")


def caller_view() -> dict:
    return {"namespaces": ns_ids("self"), "root": os.stat("/").st_ino, "cwd": os.getcwd(),
            "hostname": socket.gethostname(),
            "mounts": Path("/proc/self/mountinfo").read_text()}


@pytest.fixture(autouse=True)
def caller_is_unchanged():
    before = caller_view()
    yield
    assert caller_view() == before, "a test changed the calling process itself"


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory):
    """JupyterLab as CI starts it: root, a token ("test"), 127.0.0.1, a free port;
    stopped after. It serves a copy of the notebooks: JupyterLab saves what it runs."""
    root = Path(__file__).resolve().parent.parent
    copies = tmp_path_factory.mktemp("notebooks")
    for notebook in (root / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, copies)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(root / ".venv/bin/jupyter"), "lab", "--allow-root", "--no-browser",
         "--ip=127.0.0.1", f"--port={port}", "--IdentityProvider.token=test",
         f"--notebook-dir={copies}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("runtime")),
             "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("workspaces")),
             "JUPYTERLAB_SETTINGS_DIR": str(tmp_path_factory.mktemp("settings"))})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def rootfs() -> Path:
    return default_rootfs()


@pytest.fixture
def host_secret(tmp_path):
    """A file on the host that no container should be able to read."""
    secret = tmp_path / "host-secret"
    token = f"host-only-{os.urandom(6).hex()}"
    secret.write_text(token)
    return secret, token


@pytest.fixture
def image_with_a_device_node(tmp_path, rootfs) -> Path:
    """A copy of the busybox image holding /kmsg, a node for the host's kernel log (char
    1:11), as an image from anywhere may. Reading it is harmless; it proves the host."""
    image = tmp_path / "image"
    shutil.copytree(rootfs, image, symlinks=True)
    os.mknod(image / "kmsg", 0o600 | stat.S_IFCHR, os.makedev(1, 11))
    return image
