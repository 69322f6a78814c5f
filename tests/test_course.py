"""Regressions from students' runs of the course: each test is a crash someone saw."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import jupytext

from minicontainer import network
from minicontainer.cleanup import cleanup

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KINDS = ["mnt", "pid", "uts", "ipc", "net"]


def test_every_combination_of_02s_namespace_boxes_shows_a_table():
    """Unticking `mnt` once crashed the widget: the probe printed 4 values, not 5."""
    cell = next(c for c in jupytext.read(NOTEBOOKS / "02_namespaces.py").cells
                if c.cell_type == "code")
    notebook: dict = {}
    exec(cell.source, notebook)                      # the cell as the student runs it
    for n in range(len(KINDS) + 1):
        for kinds in itertools.combinations(KINDS, n):
            seen = notebook["what_it_sees"](set(kinds))
            assert set(seen) == {"hostname", "its own pid", "processes it sees",
                                 "mounts it sees", "network links"}
            assert (seen["its own pid"] == "1") == ("pid" in kinds), (kinds, seen)
            assert (seen["hostname"] == "inside") == ("uts" in kinds), (kinds, seen)
            if "mnt" not in kinds:
                assert "no /proc" in seen["processes it sees"], (kinds, seen)


def test_a_network_made_from_python_goes_with_its_dead_owner_and_a_cli_one_stays():
    """04 could not run twice: its network outlived a killed kernel, and cleanup kept it."""
    made = subprocess.run([sys.executable, "-c", "from minicontainer import network; "
                           "network.create('mc-ownerless')"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    kept = subprocess.run([sys.executable, "-m", "minicontainer", "network", "create",
                           "mc-kept"], capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    try:
        assert {"mc-ownerless", "mc-kept"} <= set(network.names())
        removed = cleanup()
        assert "mc-ownerless" in removed and "mc-ownerless" not in network.names()
        assert "mc-kept" in network.names()
    finally:
        for name in {"mc-ownerless", "mc-kept"} & set(network.names()):
            network.remove(name)


def test_the_closing_table_says_not_measured_for_what_a_run_did_not_measure():
    """08's last table reads measurements by name: with none, every row says so."""
    from minicontainer.course import claims
    rows = claims.closing_table({})
    assert len(rows) == len(claims.CLAIMS)
    assert all(row["today"] == claims.NOT_MEASURED and row["held"] == "—" for row in rows)


def test_the_closing_table_reads_todays_numbers_and_judges_each_claim():
    """The numbers come from the run's variables, and the verdict follows them."""
    from minicontainer.course import claims
    host = {"release": "6.1.0-host", "boot_id": "b-host"}
    kernel = {"host": host, "container": dict(host), "vm": {"release": "6.1.0-host",
                                                           "boot_id": "b-vm"}}
    restore = {"accel": "tcg", "cold": {"answered": 2.5},
               "restores": [{"running": 0.1, "answered": 0.3}] * 3}
    rows = {row["claim"]: row for row in claims.closing_table(
        {"results": {"kernel": kernel}, "restore": restore})}
    same_os = rows["containers run the host's OS"]
    assert "6.1.0-host" in same_os["today"] and same_os["held"] == "yes"
    assert "answers after 0.30 s" in rows["fast minimal VMs are possible"]["today"]
    assert rows["30–50 servers on one platform"]["today"] == claims.NOT_MEASURED
    kernel["container"] = {"release": "5.10-other", "boot_id": "b-other"}
    rows = {row["claim"]: row for row in claims.closing_table({"results": {"kernel": kernel}})}
    assert rows["containers run the host's OS"]["held"] == "no"


def test_the_closing_table_tells_the_kernels_layers_from_the_runtimes_own_conduct():
    """An escape stopped by what the runtime closes or hands on (a session, pipes, fds,
    non-dumpable) is not stopped by the kernel: a runtime bug passes it."""
    from minicontainer import escapes
    from minicontainer.course import claims
    lab = [{"attack": a.name, "blocked": True, "stopped by": a.stopped_by,
            "by the runtime": a.by_the_runtime, "with it off": "gets through"}
           for a in escapes.ATTACKS]
    by_runtime = [a.stopped_by for a in escapes.ATTACKS if a.by_the_runtime]
    assert len(by_runtime) == 4 and not any(
        word in stopper for stopper in by_runtime
        for word in ("namespace", "seccomp", "capabilities", "cgroup"))
    row = next(row for row in claims.closing_table({"lab": lab})
               if row["claim"] == "breaking out means kernel-level access")
    assert f"{len(lab) - 4} by a feature of the host's kernel" in row["today"]
    assert "4 by the runtime's own conduct" in row["today"]
    assert row["held"].startswith("partly") and "got through" not in row["held"]
