"""The seed's claim, measured: containers are easier to over-provision than VMs.

Containers share a budget and only what they use at a moment counts against it; each
VM gets its RAM up front and QEMU keeps what the guest touched.
"""
from __future__ import annotations

from minicontainer.course import measure

K, PEAK_MB = 4, 64


def test_containers_whose_limits_exceed_the_budget_all_complete():
    result = measure.overprovision_containers(k=K, budget="160M", limit="96M", peak_mb=PEAK_MB)
    assert result["sum_of_limits"] > 2 * result["budget"]
    assert result["exit_codes"] == [0] * K and not any(result["oom_killed"])
    assert PEAK_MB * measure.MiB <= result["peak_in_use"] < result["budget"]
    assert len(result["timeline"]) > 10, "a series for the notebook's plot"


def test_the_same_workloads_as_vms_hold_memory_for_each_guest():
    containers = measure.overprovision_containers(k=K, peak_mb=PEAK_MB)
    vms = measure.overprovision_vms(k=K, memory="160M", peak_mb=PEAK_MB)
    assert vms["exit_codes"] == [0] * K
    assert vms["peak_in_use"] > K * PEAK_MB * measure.MiB, "every guest keeps its own peak"
    assert vms["peak_in_use"] > 3 * containers["peak_in_use"]


def test_peaks_that_meet_on_a_shared_budget_get_containers_oom_killed_with_exit_137():
    result = measure.overlapping_peaks(k=K, budget="160M", limit="96M", peak_mb=PEAK_MB)
    killed = [code == 137 for code in result["exit_codes"]]
    assert 1 <= sum(killed) < K, "some die so that the others can finish"
    assert set(result["exit_codes"]) <= {0, 137}
    assert result["oom_killed"] == killed, "each death is the kernel's OOM kill"
    assert result["peak_in_use"] <= result["budget"]
