"""A student's notebook is interrupted and run again: it must simply work.

In class, a cell is stopped half-way (the square button: SIGINT to the kernel), cells
are run twice, and Run All is pressed again. For every notebook:

- it runs from the top twice in a row in one kernel, and every cell that takes longer
  than 5 s shows a progress bar while it runs;
- for every cell that creates a container, a network or a VM, a fresh kernel runs the
  cells before it, interrupts that cell half-way through, then runs the whole notebook
  again from the top — every cell must succeed, and afterwards the host holds nothing
  of ours (containers, networks, QEMU, cgroups, links...).

The kernels are real ipykernels (threads and all), started from the notebooks'
directory as JupyterLab starts them.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import jupytext
import pytest
from jupyter_client.manager import start_new_kernel

from hostcheck import host_objects

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# What starts something on the host: a container, a network, a VM, the lab, a check, a
# registry.
CREATES = re.compile(r"\b(Container|run|VM|run_lab|grade|compare|create|LocalRegistry)\("
                     r"|measure\.\w+\("
                     # notebook 05's helpers (course/security_lab.py), which run containers
                     r"|\b(capabilities_inside|defence_table|with_it_off|root_inside_and_outside\w*)\(")
CELL_TIMEOUT = 240
SHOW_PROGRESS_AFTER = 5      # seconds: a longer cell shows a progress bar (tqdm)


def is_progress(msg: dict) -> bool:
    """Is this kernel message a progress bar: tqdm's widget, or its text in a stream?"""
    content = msg["content"]
    if msg["msg_type"] == "comm_open":
        return "ProgressModel" in str(content.get("data", {}).get("state", {}))
    return msg["msg_type"] == "stream" and re.search(r"\d+%\|", content["text"]) is not None


def code_cells(notebook: str) -> list[str]:
    return [c.source for c in jupytext.read(NOTEBOOKS / notebook).cells
            if c.cell_type == "code"]


def creating_cells(notebook: str) -> list[int]:
    return [i for i, source in enumerate(code_cells(notebook)) if CREATES.search(source)]


class Kernel:
    """A real ipykernel, driven cell by cell as JupyterLab drives it."""

    def __init__(self):
        self.manager, self.client = start_new_kernel(kernel_name="python3",
                                                     cwd=str(NOTEBOOKS))

    def run(self, source: str, timeout: float = CELL_TIMEOUT) -> dict:
        """Execute one cell; its reply's content (status, ename, evalue), and whether
        it showed a progress bar (`showed_progress`)."""
        shown = []
        reply = self.client.execute_interactive(
            source, timeout=timeout, output_hook=lambda msg: shown.append(is_progress(msg)))
        return {**reply["content"], "showed_progress": any(shown)}

    def run_interrupted(self, source: str, after: float) -> dict:
        """Start the cell, press the stop button after `after` seconds, wait for it."""
        msg_id = self.client.execute(source)
        time.sleep(after)
        self.manager.interrupt_kernel()
        while True:
            reply = self.client.get_shell_msg(timeout=CELL_TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        time.sleep(1)      # ipykernel aborts what arrives right after an error, as a person
        return reply["content"]   # would not: they look at the traceback first

    def run_all(self, cells: list[str]) -> list[float]:
        """Run every cell in order, each must succeed; how long each one took. A cell
        that takes longer than SHOW_PROGRESS_AFTER seconds must show a progress bar."""
        durations = []
        for number, source in enumerate(cells):
            started = time.monotonic()
            reply = self.run(source)
            assert reply["status"] == "ok", (
                f"cell {number} failed: {reply.get('ename')}: {reply.get('evalue')}\n{source}")
            durations.append(time.monotonic() - started)
            assert durations[-1] < SHOW_PROGRESS_AFTER or reply["showed_progress"], (
                f"cell {number} took {durations[-1]:.0f} s and showed no progress bar "
                f"(course.panels.progress):\n{source}")
        return durations

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel():
    k = Kernel()
    yield k
    k.close()


@pytest.fixture
def host_left_clean():
    before = host_objects()
    yield
    deadline = time.monotonic() + 10        # a killed cell's processes take a moment
    while host_objects() != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_objects() == before, "an interrupted notebook left something on the host"


# How long each cell takes, from the run-twice test, to interrupt at half-way.
_durations: dict[str, list[float]] = {}
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.py"))


@pytest.mark.parametrize("notebook", ALL)
def test_a_notebook_runs_twice_in_a_row_in_one_kernel(notebook, kernel, host_left_clean):
    cells = code_cells(notebook)
    first = kernel.run_all(cells)
    second = kernel.run_all(cells)
    _durations[notebook] = [max(a, b) for a, b in zip(first, second, strict=True)]


INTERRUPTIONS = [(notebook, cell) for notebook in ALL for cell in creating_cells(notebook)]


@pytest.mark.parametrize("notebook,cell", INTERRUPTIONS,
                         ids=[f"{n.removesuffix('.py')}-cell{c}" for n, c in INTERRUPTIONS])
def test_a_notebook_runs_again_after_a_cell_is_interrupted(notebook, cell, kernel,
                                                           host_left_clean):
    cells = code_cells(notebook)
    for source in cells[:cell]:
        assert kernel.run(source)["status"] == "ok"
    took = _durations.get(notebook, [1.0] * len(cells))[cell]
    kernel.run_interrupted(cells[cell], after=max(0.2, took / 2))
    kernel.run_all(cells)
