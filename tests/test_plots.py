"""Every figure says in words what it shows (alt text), counts are whole numbers, and the
HTML handout's <img> carries the words: what a screen reader reads."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.ticker import MaxNLocator

from minicontainer.course import plots

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
START_TIME = {"container": [0.011, 0.012, 0.015], "vm": [1.8, 2.1, 2.4], "vm_accel": "tcg"}
VM_PARTS = {"pss": 120 * MiB, "guest_ram_touched": 70 * MiB, "qemu_overhead": 50 * MiB,
            "tcg_cache": 20 * MiB, "qemu_itself": 30 * MiB}
SCALING = {"containers": [(1, 2 * MiB), (2, 4 * MiB), (3, 6 * MiB)],
           "vms": [(1, 120 * MiB), (2, 240 * MiB), (3, 360 * MiB)],
           "vm_parts": [(n, {k: n * v for k, v in VM_PARTS.items()}) for n in (1, 2, 3)],
           "vm_committed": [(n, n * 128 * MiB) for n in (1, 2, 3)]}
SERVERS = {"budget": 768 * MiB, "requests_each": 200, "vm_memory": 128 * MiB, "vms_that_fit": 2,
           "containers": [{"memory": 9 * MiB, "p50": 0.001, "p99": 0.004, "requests": 200}] * 5,
           "vms": [{**VM_PARTS, "committed": 128 * MiB}] * 2}
PER_INSTANCE = {"container": {"pss": 2 * MiB}, "vm": {"pss": 120 * MiB}}
OVERPROVISION = {"containers": {"k": 4, "budget": 96 * MiB, "sum_of_limits": 256 * MiB,
                                "timeline": [(0, 10 * MiB), (1, 90 * MiB), (2, 30 * MiB)]},
                 "vms": {"k": 2, "timeline": [(0, 100 * MiB), (1, 260 * MiB), (2, 260 * MiB)]},
                 "overlapping": {"k": 4, "budget": 160 * MiB, "peak_mb": 64,
                                 "exit_codes": [137, 0, 137, 0],
                                 "timeline": [(0, 10 * MiB), (1, 159 * MiB), (2, 20 * MiB)]}}
BOOT = {"total": 2.3, "qemu_start": 0.5, "kernel": 1.75, "init": 0.05}
BOOTS = {"tcg": [BOOT], "kvm": [], "kvm_usable": False, "kvm_reason": "no /dev/kvm"}
RESTORE = {"accel": "tcg", "cold": {**BOOT, "answered": 2.4}, "save": 0.4,
           "snapshot_bytes": 60 * MiB, "same_guest": True,
           "restores": [{"running": 0.1, "answered": 0.2}, {"running": 0.09, "answered": 0.15}]}
# Each figure function, with data of the shape measure.py gives it. A new figure function
# must be added here, so it cannot skip the alt-text test.
SAMPLES = {"start_time_figure": (START_TIME,), "memory_figure": (SCALING, PER_INSTANCE),
           "overprovision_figure": (OVERPROVISION,), "stack_figure": (),
           "servers_figure": (SERVERS,),
           "vm_start_figure": (BOOTS, RESTORE),
           "layer_sharing_figure": ({"image layers (once, shared)": 1_150_000,
                                     "A's upper": 8192, "B's upper": 4096},)}


def figure_functions():
    return [name for name, f in inspect.getmembers(plots, inspect.isfunction)
            if name.endswith("_figure") and f.__module__ == plots.__name__]


class Images(HTMLParser):
    """The alt attribute of every <img> in a page (None where it has none)."""

    def __init__(self):
        super().__init__()
        self.alts = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs).get("alt"))


def test_every_figure_function_is_tried_here():
    assert sorted(figure_functions()) == sorted(SAMPLES)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_figure_has_alt_text_in_its_html_form(name):
    figure = getattr(plots, name)(*SAMPLES[name])
    assert isinstance(figure, plots.DescribedFigure)
    assert len(figure.alt_text) > 40, "alt text says what the figure shows, in a sentence"
    page = Images()
    page.feed(figure._repr_html_())
    assert page.alts == [figure.alt_text.replace("&", "&amp;")] or page.alts == [figure.alt_text]


def test_alt_text_carries_the_numbers_the_figure_shows():
    figure = plots.memory_figure(SCALING, PER_INSTANCE)
    assert "3 containers cost 6 MiB" in figure.alt_text and "3 VMs cost 360 MiB" in figure.alt_text
    assert "median 0.012 s" in plots.start_time_figure(START_TIME).alt_text
    restore = plots.vm_start_figure(BOOTS, RESTORE).alt_text
    assert "boot takes 2.30 s" in restore and "answers after 0.15 s" in restore
    assert "not how fast a VM can start" in restore, "no KVM: TCG times are not evidence"


def test_the_memory_figures_title_is_its_curves_first_points():
    """The title once said one VM was 220 MiB while the curve began at 124: both now
    come from the same measurement."""
    figure = plots.memory_figure(SCALING, {"container": {"pss": 5 * MiB},
                                           "vm": {"pss": 220 * MiB}})
    title = figure.axes[0].get_title()
    assert "One container: 2.0 MiB" in title and "one VM: 120 MiB" in title
    assert "70 guest RAM, 20 TCG cache, 30 QEMU" in title
    assert "promised 384 MiB" in figure.alt_text


def test_the_unhappy_case_says_who_the_oom_killer_took():
    figure = plots.overprovision_figure(OVERPROVISION)
    assert len(figure.axes) == 2
    assert "took 2 of 4 (exit 137)" in figure.axes[1].get_title()
    assert "2 killed by the OOM killer" in figure.alt_text


def test_an_axis_that_counts_instances_has_whole_number_ticks():
    axes = plots.memory_figure(SCALING, PER_INSTANCE).axes[0]
    assert isinstance(axes.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(tick).is_integer() for tick in axes.get_xticks())


def test_the_stack_diagram_in_docs_is_the_one_the_code_draws(tmp_path):
    """docs/stack.svg is current: its description is what stack_figure() says today
    (namespaces, cgroups and seccomp's count come from the layers' own constants)."""
    plots.save_pack_figures(tmp_path)
    drawn = (tmp_path / "stack.svg").read_text()
    committed = (ROOT / "docs" / "stack.svg").read_text()
    description = drawn[drawn.index("<desc>"):drawn.index("</desc>")]
    assert description in committed, "docs/stack.svg is stale: run `make figures`"


def test_the_html_handout_carries_each_figures_alt_text(tmp_path):
    """As `make html` renders a notebook: the figure's <img> has our alt text, not
    nbconvert's "No description has been provided for this image"."""
    cell = ("import matplotlib.pyplot as plt\nfrom minicontainer.course import plots\n"
            f"plots.start_time_figure({START_TIME!r})\nplt.show()")
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": cell,
                           "outputs": [], "execution_count": None}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                            "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "figure.ipynb").write_text(json.dumps(notebook))
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to",
                           "html", str(tmp_path / "figure.ipynb")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    page = Images()
    page.feed((tmp_path / "figure.html").read_text())
    assert page.alts == [plots.start_time_figure(START_TIME).alt_text]
