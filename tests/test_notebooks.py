"""The notebooks as committed: each .ipynb matches its jupytext .py, and has no outputs.
(Executing them is nbmake's job: `make test` runs every notebook.)"""
from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py"))


def test_there_is_a_notebook_per_layer_and_the_comparison():
    assert [p.stem for p in NOTEBOOKS] == ["00_welcome", "01_chroot", "02_namespaces",
                                            "03_cgroups", "04_networking", "05_security",
                                            "06_images", "07_the_vm", "08_containers_vs_vms"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_ipynb_matches_its_py_pair(script):
    paired = jupytext.read(script.with_suffix(".ipynb"))
    source = jupytext.read(script)
    assert [(c.cell_type, c.source) for c in paired.cells] == [
        (c.cell_type, c.source) for c in source.cells], \
        f"run `jupytext --sync {script}` after editing either file"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(script):
    notebook = jupytext.read(script.with_suffix(".ipynb"))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, \
                f"clear the outputs of {script.with_suffix('.ipynb').name} before committing"
