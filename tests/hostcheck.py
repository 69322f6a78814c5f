"""Everything the project could leave on the host, by kind: the tests compare it before
and after (conftest.py for the whole session, test_faults.py around each fault)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from minicontainer import state


def host_objects() -> dict[str, list[str]]:
    """Everything named like the project's on this host, by kind."""
    cgroups = [str(p) for depth in ("*", "*/*", "*/*/*", "*/*/*/*")
               for p in Path("/sys/fs/cgroup").glob(depth)
               if p.is_dir() and p.name.startswith(("mc-", "minicontainer"))]
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
              if "minicontainer" in line or "/mc-" in line]
    # A zombie is gone but for its exit status, which init collects when it gets to it.
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and not _zombie(p)]
    qemu = [p.name for p in alive if _comm(p).startswith("qemu-system")]
    keepers = [p.name for p in alive if b"minicontainer.console" in _cmdline(p)]
    helpers = [p.name for p in alive if b"minicontainer.network_helper" in _cmdline(p)]
    registries = [p.name for p in alive if _comm(p) == "docker-registry"]
    return {
        "links": sorted(n for n in os.listdir("/sys/class/net") if n.startswith("mc-")),
        "netns": [n for n in netns if n.startswith("mc-")],
        "cgroups": sorted(cgroups),
        "mounts": mounts,
        "containers": state.names(),
        "state directory": [str(d) for d in [state.containers_dir().parent] if d.exists()],
        "data directory": [str(d) for d in [state.data_dir().parent] if d.exists()],
        "container data": sorted(p.name for p in _entries(state.data_dir())),
        "qemu processes": qemu,
        "terminal keepers": keepers,
        "network helpers": helpers,
        "registry servers": registries,
        "firewall rules": firewall_rules(),
        "binfmt handlers": sorted(p.name for p in Path("/proc/sys/fs/binfmt_misc").glob("mc-*")),
        "binfmt_misc mounted": [line for line in Path("/proc/self/mounts").read_text().splitlines()
                                if " binfmt_misc " in line],
        "ip_forward": [Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()],
        "temporary files": sorted(str(p) for pattern in ("mc-*", "minicontainer-*")
                                  for p in Path(tempfile.gettempdir()).glob(pattern)),
        "loop devices": sorted(f"{b.parent.parent.name} {b.read_text().strip()}"
                               for b in Path("/sys/block").glob("loop*/loop/backing_file")
                               if "/mc-" in b.read_text()),
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


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


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


def _zombie(proc: Path) -> bool:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True       # gone already
