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
import subprocess
import time
from pathlib import Path

import pytest

from minicontainer import state
from minicontainer.namespaces import ns_ids
from minicontainer.rootfs import default_rootfs

if os.geteuid() != 0:
    pytest.exit("the tests use real namespaces and mounts and must run as root: sudo make test",
                returncode=2)


def host_objects() -> dict[str, list[str]]:
    """Everything named like the project's on this host, by kind."""
    cgroups = [str(p) for depth in ("*", "*/*", "*/*/*", "*/*/*/*")
               for p in Path("/sys/fs/cgroup").glob(depth)
               if p.is_dir() and p.name.startswith(("mc-", "minicontainer"))]
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
              if "minicontainer" in line or "/mc-" in line]
    qemu = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
            and _comm(p).startswith("qemu-system")]
    proxies = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"minicontainer.proxy" in _cmdline(p)]
    return {
        "links": sorted(n for n in os.listdir("/sys/class/net") if n.startswith("mc-")),
        "netns": [n for n in netns if n.startswith("mc-")],
        "cgroups": sorted(cgroups),
        "mounts": mounts,
        "containers": state.names(),
        "state directory": [str(d) for d in [state.containers_dir().parent] if d.exists()],
        "qemu processes": qemu,
        "port proxies": proxies,
        "firewall rules": firewall_rules(),
        "binfmt handlers": sorted(p.name for p in Path("/proc/sys/fs/binfmt_misc").glob("mc-*")),
        "binfmt_misc mounted": [line for line in Path("/proc/self/mounts").read_text().splitlines()
                                if " binfmt_misc " in line],
        "ip_forward": [Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()],
    }


def firewall_rules() -> list[str]:
    rules = []
    if shutil.which("iptables-save"):
        dump = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        rules += [line for line in dump.splitlines() if "mc-" in line]
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        rules += [line for line in tables.splitlines() if "mc-" in line]
    return rules


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture(scope="session", autouse=True)
def host_is_left_as_found():
    before = host_objects()
    yield
    after = host_objects()
    assert after == before, f"the tests left objects on the host: {after}"


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
             "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("workspaces"))})
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
