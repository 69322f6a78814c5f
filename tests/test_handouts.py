"""The HTML handout (`make html`) is complete offline: where a notebook has a widget,
its result is in the page as text or a picture, not in an empty box that needs
JavaScript from the internet to fill."""
from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each notebook with a widget, and what its first result says.
WIDGET_RESULTS = {"02_namespaces": "processes it sees", "03_cgroups": "limit 32 MiB",
                  "05_security": "these defences", "07_the_vm": "guest RAM touched"}


class Page(HTMLParser):
    """The page's visible text and its pictures."""

    def __init__(self):
        super().__init__()
        self.text, self.images, self._hidden = [], 0, 0

    def handle_starttag(self, tag, attrs):
        self.images += tag == "img"
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._hidden:
            self.text.append(data)


@pytest.mark.parametrize("notebook", WIDGET_RESULTS)
def test_a_widgets_result_is_in_the_html_handout(notebook, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "html",
         "--output-dir", str(tmp_path), str(ROOT / "notebooks" / f"{notebook}.ipynb")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MINICONTAINER_EXERCISES": str(ROOT / "solutions")})
    assert done.returncode == 0, done.stderr[-3000:]
    page = Page()
    page.feed((tmp_path / f"{notebook}.html").read_text())
    assert WIDGET_RESULTS[notebook] in "".join(page.text), "the widget's result is missing"
    if notebook == "03_cgroups":
        assert page.images >= 2, "the CPU-quota plot and the others are pictures in the page"
