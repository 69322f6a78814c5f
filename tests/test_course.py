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
