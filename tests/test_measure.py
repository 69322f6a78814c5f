"""The comparison, measured: each of the seed's claims as a number."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from minicontainer import binfmt
from minicontainer.course import measure

MiB = measure.MiB


def test_a_container_costs_what_its_process_costs_and_a_vm_far_more():
    memory = measure.memory_per_instance()
    assert memory["container"]["pss"] <= memory["bare_process"]["pss"] + 0.5 * MiB
    vm = memory["vm"]
    assert vm["pss"] > 64 * MiB and vm["guest_ram_touched"] + vm["qemu_overhead"] == vm["pss"]
    assert memory["runtime_waiter"]["uss"] < 8 * MiB, "our waiter process stays small"
    assert vm["guest_ram_touched"] <= memory["vm_memory"], "no more RAM than -m gave it"
    assert vm["tcg_cache"] + vm["qemu_itself"] == vm["qemu_overhead"]
    assert (vm["tcg_cache"] > MiB) == (measure.VM().accel == "tcg"), "TCG's cache, found"


def test_a_container_starts_orders_of_magnitude_faster_than_a_vm_boots():
    times = measure.start_times(containers=5, vms=2)
    assert statistics.median(times["container"]) * 20 < statistics.median(times["vm"])
    assert all(phase["kernel"] > 0 for phase in times["vm_boot_phases"])


def test_fifty_containers_cost_less_host_memory_than_two_vms():
    scale = measure.scaling(max_containers=50, max_vms=2)
    assert [n for n, _ in scale["containers"]] == list(range(1, 51))
    assert scale["containers"][-1][1] < scale["vms"][-1][1]
    assert [n for n, _ in scale["vm_committed"]] == [1, 2]
    assert all(parts["pss"] == used for (_, parts), (_, used) in zip(scale["vm_parts"],
                                                                     scale["vms"], strict=True))


def test_the_container_shares_the_hosts_kernel_and_the_vm_has_its_own():
    kernel = measure.kernel_identity()
    assert kernel["container"] == kernel["host"]
    assert kernel["vm"]["boot_id"] != kernel["host"]["boot_id"]


def test_a_foreign_binary_fails_in_a_container_until_qemu_user_is_registered():
    demo = binfmt.foreign_binary_demo()
    if binfmt.existing_handler(demo["foreign"]) is None:
        assert "Exec format error" in demo["without"]
    assert demo["with_qemu_user"] == demo["foreign"]


def test_the_attack_surface_counts_come_from_this_machine():
    surface = measure.attack_surface()
    assert surface["container"]["host_syscalls"] > 250
    assert 5 < surface["vm"]["emulated_devices"] < 100
    assert "isa-serial" in surface["vm"]["device_types"]


def test_compare_quick_writes_plots_and_raw_numbers(tmp_path):
    done = subprocess.run([sys.executable, "-m", "minicontainer", "compare", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("start_time.png", "memory.png", "overprovision.png", "servers.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "compare.json").read_text())
    assert {"start_time", "memory", "scaling", "overprovision", "kernel", "architecture",
            "attack_surface"} <= set(results)
    assert "start to exit (median)" in done.stdout
    assert Path(tmp_path / "compare.json").stat().st_size > 1000
    served = json.loads((tmp_path / "servers.json").read_text())
    assert len(served["containers"]) == 5 and len(served["vms"]) == 1
    assert all(c["requests"] == 200 and c["p50"] <= c["p99"] for c in served["containers"])
