"""`make slides` works in a room without internet: the slides load reveal.js (and every
other script or style) from the local copy beside them, never from a URL."""
from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


class Loads(HTMLParser):
    """What a page loads (script src, stylesheet href), its CSS, and its slides."""

    def __init__(self):
        super().__init__()
        self.files, self.slides, self.styles, self._in_style = [], 0, [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.files.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.files.append(attrs["href"])
        self.slides += tag == "section"
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def make_slides(output_dir, *notebooks, **environment):
    """What `make slides` runs after setup, for the notebooks given."""
    return subprocess.run(
        [sys.executable, "-m", "minicontainer.course.slides", "--output-dir", str(output_dir),
         *[str(ROOT / "notebooks" / f"{name}.ipynb") for name in notebooks]],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **environment})


def test_slides_load_only_local_files(tmp_path):
    done = make_slides(tmp_path, "01_chroot")
    assert done.returncode == 0, done.stderr[-3000:]
    page = Loads()
    page.feed((tmp_path / "01_chroot.slides.html").read_text())
    assert any(f.endswith("reveal.js/dist/reveal.js") for f in page.files), page.files
    for loaded in page.files:
        assert not urlparse(loaded).scheme and not loaded.startswith("//"), loaded
        assert (tmp_path / loaded).is_file(), f"{loaded} is not beside the slides"
    assert not any("@import" in css and "//" in css for css in page.styles)
    assert page.slides >= 4, "each heading starts a slide, not one long page"


def test_without_the_local_reveal_js_one_line_says_how_to_get_it(tmp_path):
    done = make_slides(tmp_path / "out", "01_chroot", MINICONTAINER_CACHE=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.startswith("minicontainer: reveal.js ")
    assert "make slides" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
