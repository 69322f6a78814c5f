"""What an idle detached container costs the host, everything of ours included (issue 19).

For N detached `sleep` containers started by the CLI (`minicontainer run -d`), the PSS
of every process the host keeps for them (psutil's memory_full_info; PSS splits each
shared page among its users): the container's own process, and ours beside it, the
monitor (monitor.py) and a terminal's keeper; a published port is DNAT rules and a
socket the monitor holds (ports.py), no process. Three ways: no network; on a bridge
with one published port; with -t. Beside them crun (`crun run
-d`), which keeps no process per container, as the reference. Target: ours <= 1 MiB
PSS per container over the bare process.

    .venv/bin/python bench/cost.py [--count 50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from minicontainer import state
from minicontainer.rootfs import default_rootfs
from start_time import enter_private_mount_namespace, oci_bundle

CLI = [sys.executable, "-m", "minicontainer"]
TARGET = 1024 * 1024          # bytes of ours per container, over the bare process
NETWORK = "mc-cost"
MiB = 1024 * 1024


def pss(pid: int | None) -> int:
    """PSS of one process in bytes (0 if there is none, or it is gone)."""
    try:
        return psutil.Process(pid).memory_full_info().pss if pid else 0
    except psutil.NoSuchProcess:
        return 0


def tree_pss(pid: int) -> int:
    """PSS of process `pid` and its descendants."""
    try:
        root = psutil.Process(pid)
        return sum(pss(p.pid) for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def ours(names: list[str]) -> dict[str, float]:
    """Per container (MiB): its own processes ("bare"), and each of ours."""
    totals = {"bare": 0, "monitor": 0, "keeper": 0}
    for name in names:
        record = state.read(name)
        totals["bare"] += tree_pss(record["main_pid"])
        totals["monitor"] += pss(record["pid"]) if record["pid"] != record["main_pid"] else 0
        totals["keeper"] += pss((record.get("console") or [None])[0])
    return {key: value / len(names) / MiB for key, value in totals.items()}


def start_ours(count: int, options: list[str]) -> list[str]:
    """`count` detached containers, started by the CLI one after another."""
    names = []
    for i in range(count):
        name = f"mc-cost-{i}"
        extra = [o.replace("PORT", str(18100 + i)) for o in options]
        subprocess.run([*CLI, "run", "-d", "--name", name, *extra, "--", "sleep", "600"],
                       check=True, capture_output=True)
        names.append(name)
    time.sleep(1)                                # let them settle into their idle
    return names


def remove_ours(names: list[str]) -> None:
    """`rm -f` them all."""
    subprocess.run([*CLI, "rm", "-f", *names], capture_output=True)


def measure_crun(count: int, tmp: Path) -> float:
    """Per container (MiB): the PSS of crun's containers, which keep nothing else."""
    bundle = oci_bundle(tmp / "bundle", default_rootfs())
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/bin/sleep", "600"]
    (bundle / "config.json").write_text(json.dumps(config))
    root, ids = str(tmp / "crun"), [f"mc-cost-crun-{i}" for i in range(count)]
    try:
        with open(os.devnull, "r+b") as null:
            for cid in ids:
                subprocess.run(["crun", "--root", root, "run", "-d", "--bundle", str(bundle),
                                cid], check=True, stdin=null, stdout=null, stderr=null)
        time.sleep(1)
        pids = [json.loads(subprocess.run(["crun", "--root", root, "state", cid],
                                          capture_output=True, check=True).stdout)["pid"]
                for cid in ids]
        return sum(tree_pss(pid) for pid in pids) / count / MiB
    finally:
        for cid in ids:
            subprocess.run(["crun", "--root", root, "delete", "-f", cid], capture_output=True)


def main() -> None:
    """Measure each way, print a table with the target met or missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--ways", default="plain,port,tty")
    args = parser.parse_args()
    enter_private_mount_namespace()              # crun on a hybrid host (start_time.py)
    ways = {"plain": ("no network", []),
            "port": ("bridge, one port", ["--network", NETWORK, "-p", "PORT:80"]),
            "tty": ("-t (a terminal)", ["-t"])}
    print(f"{args.count} idle detached containers each way; MiB of PSS per container")
    print(f"{'':18} {'bare':>6} {'monitor':>8} {'keeper':>7} {'ours':>6}  target")
    with tempfile.TemporaryDirectory(prefix="mc-cost-") as tmp:
        crun = measure_crun(args.count, Path(tmp))
    print(f"{'crun run -d':18} {crun:6.2f} {0:8.2f} {0:7.2f} {0:6.2f}  (reference)")
    subprocess.run([*CLI, "network", "create", NETWORK], capture_output=True)
    try:
        for key in args.ways.split(","):
            way, options = ways[key]
            names = start_ours(args.count, options)
            try:
                cost = ours(names)
            finally:
                remove_ours(names)
            extra = cost["monitor"] + cost["keeper"]
            verdict = "met" if extra * MiB <= TARGET else "MISSED"
            if key == "tty":
                verdict += " (reported apart)"
            print(f"{way:18} {cost['bare']:6.2f} {cost['monitor']:8.2f} "
                  f"{cost['keeper']:7.2f} {extra:6.2f}  <= 1 MiB: {verdict}")
    finally:
        subprocess.run([*CLI, "network", "rm", NETWORK], capture_output=True)


if __name__ == "__main__":
    main()
