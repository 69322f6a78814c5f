"""The exercises' checks pass on solutions/ and fail on the untouched exercises/:
a check that cannot fail would be a defect."""
from __future__ import annotations

from pathlib import Path

import pytest

from minicontainer.course import checks, grade

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("number", sorted(grade.FILES))
def test_every_check_passes_on_the_solution(number):
    path = ROOT / "solutions" / f"{grade.FILES[number]}.py"
    results = [grade.run_check(number, c.__name__, path) for c in checks.CHECKS[number]]
    assert all(r["ok"] for r in results), [grade.describe(r) for r in results if not r["ok"]]


@pytest.mark.parametrize("number", sorted(grade.FILES))
def test_every_check_fails_on_the_untouched_exercise_with_its_hint(number):
    path = ROOT / "exercises" / f"{grade.FILES[number]}.py"
    results = [grade.run_check(number, c.__name__, path) for c in checks.CHECKS[number]]
    assert not any(r["ok"] for r in results)
    assert all("NotImplementedError" in r["got"] and r["hint"] for r in results)


def test_a_wrong_answer_says_what_was_expected_and_what_came(tmp_path):
    wrong = tmp_path / "ex03_cgroups.py"
    wrong.write_text("def memory_bytes(text):\n    return int(text.rstrip('Mm')) * 1000\n\n"
                     "def cpu_max(cpus, period=100_000):\n    return f'{cpus} {period}'\n")
    result = grade.run_check("03", "memory_sizes_are_read_as_docker_does", wrong)
    assert not result["ok"] and result["expected"] == 64 * 2**20 and result["got"] == 64000
    assert "1024" in result["hint"]


def test_code_that_hangs_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(grade, "TIMEOUT", 3)
    hanging = tmp_path / "ex04_networking.py"
    hanging.write_text("def free_address(subnet, taken):\n    while True:\n        pass\n")
    result = grade.run_check("04", "addresses_come_in_order", hanging)
    assert not result["ok"] and "after 3 s" in result["got"]


def test_grade_prints_each_check_and_a_total(capsys):
    assert grade.grade("01", ROOT / "solutions")
    out = capsys.readouterr().out
    assert "passed  chroot makes the image the root" in out and "3 of 3 checks passed" in out
