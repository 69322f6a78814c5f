"""Start-to-exit of `/bin/true` in a fresh container: minicontainer against unshare,
crun and runc, in one run, on the same busybox image, with the same namespaces
(pid, mount, uts, ipc; no network). Reports medians, p95 and ratios. minicontainer
is timed without a cgroup (layers 1-2, like `unshare`), then with one (memory, cpus
and pids limits: the cost of the cgroup step), then with a network attached (a net
namespace, a veth pair into an existing bridge, an address and a route), by the API
and by the CLI. It prints issue 18's table with its targets met or missed, and saves
a profile of the CLI's `run` (import times, cProfile) in results/run-profile.txt.

    make bench          # or: .venv/bin/python bench/start_time.py --runs 200

On a hybrid cgroup host (v1 controllers beside a cgroup2 mount) crun refuses to
start while /sys/fs/cgroup/unified is in sight, so the benchmark re-runs itself in a
private mount namespace where that mount is detached. The host's mounts are untouched.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import minicontainer
from minicontainer import network, run
from minicontainer.course.measure import memory_per_instance
from minicontainer.course.runtimes import hide_unified_cgroup
from minicontainer.rootfs import default_rootfs
from minicontainer.vm import VM
from minicontainer.vm.initramfs import pack_initramfs
from minicontainer.vm.kernel import find_kernel

NAMESPACES = {"mnt", "pid", "uts", "ipc"}
CLI = str(Path(sys.executable).parent / "minicontainer")


def enter_private_mount_namespace() -> None:
    """Re-exec under `unshare --mount` once; then hide an empty cgroup2 mount from crun."""
    if os.environ.get("MC_BENCH_PRIVATE") != "1":
        os.environ["MC_BENCH_PRIVATE"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                              sys.executable, *sys.argv])
    hide_unified_cgroup()


def oci_bundle(directory: Path, rootfs: Path) -> Path:
    """An OCI bundle (config.json + a copy of the image) equivalent to our container."""
    shutil.copytree(rootfs, directory / "rootfs", symlinks=True)
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    config = json.loads((directory / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["linux"]["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def time_command(argv: list[str]) -> float:
    """Seconds from spawn to exit of an external command (posix_spawn: vfork-fast)."""
    with open(os.devnull, "wb") as null:
        started = time.perf_counter()
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, null.fileno(), 1)])
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed (status {status}): {' '.join(argv)}")
    return elapsed


def time_api(**options) -> float:
    started = time.perf_counter()
    namespaces = NAMESPACES | ({"net"} if "network" in options else set())
    result = run(["/bin/true"], namespaces=namespaces, cgroup="memory" in options, **options)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0
    return elapsed


def contenders(rootfs: Path, bundle: Path, state: Path) -> dict:
    counter = iter(range(10**9))
    return {
        "minicontainer (Python API)": time_api,
        "  + cgroup (create/join/rm)": lambda: time_api(memory="64M", cpus=1, pids_limit=64),
        "minicontainer (CLI)": lambda: time_command(
            [CLI, "run", "--no-cgroup", "--namespaces", ",".join(sorted(NAMESPACES)), "--",
             "/bin/true"]),
        "unshare + chroot": lambda: time_command(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "chroot", str(rootfs),
             "/bin/true"]),
        "crun": lambda: time_command(["crun", "--root", str(state / "crun"), "run", "--bundle",
                                      str(bundle), f"mc-bench-{next(counter)}"]),
        "runc": lambda: time_command(["runc", "--root", str(state / "runc"), "run", "--bundle",
                                      str(bundle), f"mc-bench-{next(counter)}"]),
    }


HAND_MADE_INIT = b"""#!/bin/sh
mount -t proc proc /proc
echo ready
reboot -f
"""


def hand_made_qemu(machine: list[str], kernel: Path, initrd: Path) -> list[str]:
    """The best QEMU command line we could write by hand for the same job."""
    return ["qemu-system-x86_64", *machine, "-accel", VM().accel, "-m", "128M", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet reboot=t"]


def time_vm() -> float:
    started = time.perf_counter()
    with VM() as vm:
        assert vm.run("true")[0] == 0
    return time.perf_counter() - started


def measure_vms(runs: int, tmp: Path) -> dict[str, list[float]]:
    """The project's VM boot beside hand-made QEMU command lines, interleaved."""
    kernel = find_kernel()
    initrd = tmp / "initramfs.gz"
    initrd.write_bytes(pack_initramfs(default_rootfs(), {"init": HAND_MADE_INIT}))
    timers = {"minicontainer VM (boot, run true)": time_vm}
    if os.uname().machine == "x86_64":
        for name, machine in (("hand-made qemu, microvm", ["-M", "microvm,acpi=off"]),
                              ("hand-made qemu, q35", ["-M", "q35"])):
            argv = hand_made_qemu(machine, kernel.vmlinux, initrd)
            timers[name] = lambda argv=argv: time_command(argv)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for timer in timers.values():
        timer()
    for _ in range(runs):
        for name, timer in random.sample(list(timers.items()), len(timers)):
            samples[name].append(timer() * 1000)
    return samples


def measure(runs: int) -> dict[str, list[float]]:
    rootfs = default_rootfs()
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        bundle = oci_bundle(Path(tmp) / "bundle", rootfs)
        timers = contenders(rootfs, bundle, Path(tmp))
        samples: dict[str, list[float]] = {name: [] for name in timers}
        for timer in timers.values():          # warm up caches, pages, binaries
            for _ in range(5):
                timer()
        for i in range(runs):                  # interleaved, so drift hits everyone alike
            order = list(timers.items())
            random.shuffle(order)
            for name, timer in order:
                samples[name].append(timer() * 1000)
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{runs} rounds", file=sys.stderr)
        # Last, because it loads pyroute2, and a larger process forks more slowly: so the
        # step is measured against the API without a network again, interleaved.
        network.create("mc-bench")
        try:
            networked = {
                "  + network (veth, address)": lambda: time_api(network="mc-bench"),
                "  (API again, same phase)": time_api,
                "minicontainer (CLI) --network": lambda: time_command(
                    [CLI, "run", "--no-cgroup", "--network", "mc-bench", "--", "/bin/true"]),
                "  (crun again, same phase)": timers["crun"]}
            for timer in networked.values():
                timer()
            phase = {name: [] for name in networked}
            for _ in range(max(runs // 4, 10)):
                for name, timer in random.sample(list(networked.items()), len(networked)):
                    phase[name].append(timer() * 1000)
        finally:
            network.remove("mc-bench")
        print("  VMs...", file=sys.stderr)
        samples.update(measure_vms(max(runs // 10, 5), Path(tmp)))
    samples.update(phase)
    return samples


def report(samples: dict[str, list[float]]) -> dict:
    median = {name: statistics.median(v) for name, v in samples.items()}
    p95 = {name: statistics.quantiles(v, n=20)[18] for name, v in samples.items()}
    crun, unshare = median["crun"], median["unshare + chroot"]
    print(f"\nstart-to-exit of /bin/true, {len(samples['crun'])} runs each (network: "
          f"{len(samples['  + network (veth, address)'])}, VMs: "
          f"{len(samples['minicontainer VM (boot, run true)'])}, after the others), in ms")
    print(f"{'':28} {'median':>7} {'p95':>7} {'x crun':>7} {'x unshare':>9}")
    for name in samples:
        print(f"{name:28} {median[name]:7.2f} {p95[name]:7.2f} {median[name] / crun:7.2f} "
              f"{median[name] / unshare:9.2f}")
    api, cli = median["minicontainer (Python API)"], median["minicontainer (CLI)"]
    cgroup = median["  + cgroup (create/join/rm)"]
    crun_again = median["  (crun again, same phase)"]
    cli_net = median["minicontainer (CLI) --network"]
    step = median["  + network (veth, address)"] - median["  (API again, same phase)"]
    vm = median["minicontainer VM (boot, run true)"]
    hand_made = min(m for name, m in median.items() if name.startswith("hand-made"))
    targets = {   # issue 18's; the ratios from one run, side by side
        f"API <= 1.0 x crun ({api / crun:.2f}x)": api <= crun,
        f"API <= 2.5 x unshare ({api / unshare:.2f}x)": api <= 2.5 * unshare,
        f"API with a cgroup <= 1.5 x crun ({cgroup / crun:.2f}x)": cgroup <= 1.5 * crun,
        f"CLI run -- /bin/true <= 3 x crun ({cli / crun:.2f}x)": cli <= 3 * crun,
        f"CLI with --network <= 5 x crun ({cli_net / crun_again:.2f}x, same phase)":
            cli_net <= 5 * crun_again,
        f"network step <= 15 ms ({step:.1f} ms: API with minus without, same phase)":
            step <= 15,
        f"VM boot <= 1.1 x the best hand-made QEMU line ({vm / hand_made:.2f}x)":
            vm <= 1.1 * hand_made,
    }
    memory = memory_per_instance()
    overhead = (memory["container"]["pss"] - memory["bare_process"]["pss"]) / 2**20
    print(f"\nmemory: `sleep` in a container {memory['container']['pss'] / 2**20:.2f} MiB PSS, "
          f"bare {memory['bare_process']['pss'] / 2**20:.2f} MiB (+{overhead:.2f}); our waiter "
          f"process {memory['runtime_waiter']['uss'] / 2**20:.1f} MiB USS; an idle VM "
          f"{memory['vm']['pss'] / 2**20:.0f} MiB PSS")
    targets["container memory <= bare process + 0.5 MiB PSS"] = overhead <= 0.5
    print()
    for target, ok in targets.items():
        print(f"  [{'met' if ok else 'MISSED'}] {target}")
    return {"median_ms": median, "p95_ms": p95, "targets": targets}


def save_profile(path: Path) -> None:
    """Where the CLI's `run -- /bin/true` spends its time: its imports (-X importtime,
    the 25 slowest, cumulative) and a cProfile summary (the 40 costliest, cumulative)."""
    argv = ["run", "--no-cgroup", "--", "/bin/true"]
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "minicontainer", *argv],
                             capture_output=True, text=True, check=True).stderr.splitlines()
    timed = [line for line in imports if line.startswith("import time:") and "|" in line
             and line.split("|")[1].strip().isdigit()]
    slowest = sorted(timed, key=lambda line: -int(line.split("|")[1]))[:25]
    profile = subprocess.run(
        [sys.executable, "-c", "import cProfile, sys; sys.argv = ['minicontainer', *sys.argv[1:]]; "
         "from minicontainer.cli import main; cProfile.run('main()', sort='cumtime')", *argv],
        capture_output=True, text=True, check=True).stdout.splitlines()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([f"minicontainer {' '.join(argv)}: imports (us: self | cumulative)",
                               *slowest, "", "cProfile:", *profile[:50]]) + "\n")
    print(f"profile of the CLI's run saved in {path}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--profile", default="results/run-profile.txt",
                        help="where to save the CLI run's profile")
    args = parser.parse_args()
    # Bytecode as an installed package has it: without it (PYTHONDONTWRITEBYTECODE set,
    # or a fresh checkout) every CLI run would compile the package again.
    compileall.compile_dir(Path(minicontainer.__file__).parent, quiet=1)
    for tool in ("unshare", "crun", "runc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench` (it installs crun and runc)")
    enter_private_mount_namespace()
    save_profile(Path(args.profile))
    summary = report(measure(args.runs))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
