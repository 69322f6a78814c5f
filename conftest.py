"""For the whole suite (tests/ and the notebooks run by nbmake).

The notebooks' exercise cells grade the complete solutions/ here, so that CI checks
the course runs end to end; students' own runs grade exercises/.
"""
import os
from pathlib import Path

os.environ.setdefault("MINICONTAINER_EXERCISES", str(Path(__file__).parent / "solutions"))

_course_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.nodeid.endswith(".ipynb"):
        _course_seconds[report.nodeid.split("::")[0]] = report.duration


def pytest_terminal_summary(terminalreporter):
    if _course_seconds:
        total = sum(_course_seconds.values())
        terminalreporter.write_line(
            f"the course: {len(_course_seconds)} notebooks executed in {total:.0f} s "
            f"(target: under 300 s)")
