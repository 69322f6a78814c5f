"""The notebooks as reveal.js slides that work without a network (`make slides`).

`jupyter nbconvert --to slides` turns a notebook into one HTML page for reveal.js, but
its template loads reveal.js, require.js, jQuery and MathJax from CDNs: in a lab room
without internet the page stays blank. Here the slides load one thing, a pinned copy of
the npm package `reveal.js`, unpacked into the cache by `scripts/setup.sh slides` and
copied beside the slides (so build/slides/ can be copied to a USB stick as it is), through
our template `reveal_offline/offline.html.j2`. The notebooks carry no slide marks of
their own: every markdown cell that opens with a `#` or `##` heading starts a slide.

    python -m minicontainer.course.slides --output-dir build/slides notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nbconvert.preprocessors import Preprocessor

from ..errors import MinicontainerError
from ..host import cache_dir

REVEAL_VERSION = "5.2.1"     # 6.x moved plugin/ under dist/, where nbconvert does not look
TEMPLATE = Path(__file__).parent / "reveal_offline" / "offline.html.j2"
SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


class SlideBreaks(Preprocessor):
    """Start a slide at each markdown cell that opens with a `#` or `##` heading."""

    def preprocess_cell(self, cell, resources, index):
        """Mark one cell: a new slide, or the rest of the current one."""
        if "slide_type" not in cell.metadata.get("slideshow", {}):
            heading = cell.cell_type == "markdown" and cell.source.lstrip().startswith(
                ("# ", "## "))
            cell.metadata["slideshow"] = {"slide_type": "slide" if heading else "-"}
        return cell, resources


def reveal_package() -> Path:
    """The unpacked npm package reveal.js, or a MinicontainerError saying how to get it."""
    package = cache_dir() / f"reveal.js-{REVEAL_VERSION}" / "package"
    if not (package / "dist" / "reveal.js").is_file():
        raise MinicontainerError(f"reveal.js {REVEAL_VERSION} is not in {package.parent}: "
                                 "run `sudo make slides` (it fetches it from the npm registry)")
    return package


def nbconvert_command(notebooks: list[Path], output_dir: Path) -> list[str]:
    """The `jupyter nbconvert --to slides` command that `make slides` runs."""
    return [sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "slides",
            f"--template-file={TEMPLATE}",
            "--SlidesExporter.reveal_url_prefix=reveal.js",
            "--SlidesExporter.preprocessors=minicontainer.course.slides.SlideBreaks",
            f"--output-dir={output_dir}", *map(str, notebooks)]


def build_slides(notebooks: list[Path], output_dir: Path) -> list[Path]:
    """Execute the notebooks into offline slides in output_dir; return the pages written."""
    package = reveal_package()
    local_copy = output_dir / "reveal.js"
    shutil.rmtree(local_copy, ignore_errors=True)
    for part in ("dist", "plugin"):          # what the page loads; not the demo or sources
        shutil.copytree(package / part, local_copy / part)
    # The exercise cells grade the solutions, as `make html` does, so the slides show
    # a passing check rather than a student's empty TODO.
    environment = {**os.environ, "MINICONTAINER_EXERCISES": str(SOLUTIONS)}
    if subprocess.run(nbconvert_command(notebooks, output_dir), env=environment).returncode:
        raise MinicontainerError("nbconvert could not build the slides: its message is above")
    return [output_dir / f"{notebook.stem}.slides.html" for notebook in notebooks]


def main(argv: list[str] | None = None) -> int:
    """`python -m minicontainer.course.slides`: build the slides, print where they are."""
    parser = argparse.ArgumentParser(prog="python -m minicontainer.course.slides",
                                     description="the notebooks as offline reveal.js slides")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--output-dir", type=Path, default=Path("build/slides"))
    options = parser.parse_args(argv)
    try:
        pages = build_slides(options.notebooks, options.output_dir)
    except MinicontainerError as error:
        print(f"minicontainer: {error}", file=sys.stderr)
        return 1
    print(f"slides: {len(pages)} decks in {options.output_dir}/ (open index in a browser: "
          f"{pages[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
