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


# -- what a wrong answer is told (issue 17, section 4) ------------------------------------

def wrong_answer(tmp_path, number: str, source: str) -> Path:
    """A student's exercise file with this content, where grade() would read it."""
    path = tmp_path / f"{grade.FILES[number]}.py"
    path.write_text(source)
    return path


def test_each_todo_hint_is_kept_for_a_wrong_answer_word_for_word():
    """checks.TODO_HINTS repeats the exercise files' TODO texts: they must stay equal."""
    import ast
    found = {}
    for path in (ROOT / "exercises").glob("ex*.py"):
        for function in ast.parse(path.read_text()).body:
            for node in ast.walk(function):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                        and getattr(node.exc.func, "id", "") == "NotImplementedError":
                    found[function.name] = ast.literal_eval(node.exc.args[0])
    assert found == checks.TODO_HINTS


def test_memory_in_powers_of_1000_is_told_it_is_si_and_keeps_the_todo_hint(tmp_path):
    decimal = wrong_answer(tmp_path, "03", "def memory_bytes(text):\n"
                           "    text = text.strip().lower()\n"
                           "    units = {'k': 1000, 'm': 1000**2, 'g': 1000**3}\n"
                           "    return int(text[:-1]) * units[text[-1]] if text[-1] in units"
                           " else int(text)\n")
    result = grade.run_check("03", "memory_sizes_are_read_as_docker_does", decimal)
    assert (result["expected"], result["got"]) == (64 * 2**20, 64_000_000)
    assert "SI" in result["hint"] and "1024s" in result["hint"]
    shown = grade.describe(result)
    assert "the TODO's hint for memory_bytes: split the digits from the unit" in shown


def test_64mb_is_64_mebibytes_as_docker_reads_it(tmp_path):
    no_b = wrong_answer(tmp_path, "03", "def memory_bytes(text):\n"
                        "    text = text.strip().lower()\n"
                        "    units = {'k': 1024, 'm': 1024**2, 'g': 1024**3}\n"
                        "    if text[-1] in units:\n"
                        "        return int(text[:-1]) * units[text[-1]]\n"
                        "    return int(text.rstrip('b'))\n")
    result = grade.run_check("03", "memory_sizes_are_read_as_docker_does", no_b)
    assert result["what"] == "memory_bytes('64MB')" and result["expected"] == 64 * 2**20
    assert "64MB is 64M" in result["hint"]


def test_a_truncated_cpu_quota_is_caught_and_explained(tmp_path):
    truncating = wrong_answer(tmp_path, "03", "def cpu_max(cpus, period=100_000):\n"
                              "    return f'{int(cpus * period)} {period}'\n")
    result = grade.run_check("03", "cpu_max_is_quota_and_period", truncating)
    assert (result["expected"], result["got"]) == ("29000 100000", "28999 100000")
    assert "truncates" in result["hint"] and "round()" in result["hint"]
    floating = wrong_answer(tmp_path, "03", "def cpu_max(cpus, period=100_000):\n"
                            "    return f'{cpus * period} {period}'\n")
    result = grade.run_check("03", "cpu_max_is_quota_and_period", floating)
    assert result["got"] == "50000.0 100000" and "whole microseconds" in result["hint"]


PIVOT = ("import os\nfrom minicontainer import syscalls\n\n"
         "def pivot_into(new_root):\n{body}\n")


def test_a_pivot_into_that_does_nothing_is_told_the_host_root_is_still_in_use(tmp_path):
    nothing = wrong_answer(tmp_path, "02", PIVOT.format(body="    pass"))
    result = grade.run_check("02", "pivot_into_hides_the_host", nothing)
    assert not result["ok"] and result["got"] != ["overlay"]
    assert "still runs on the host's root" in result["hint"]
    assert "overlay /" not in result["hint"]          # the old, misleading hint
    assert "/proc" in result["printed"]               # the container's mount table, shown


def test_a_pivot_into_without_umount_is_told_to_detach_the_old_root(tmp_path):
    no_umount = wrong_answer(tmp_path, "02", PIVOT.format(
        body="    os.chdir(new_root)\n    syscalls.pivot_root('.', '.')\n    os.chdir('/')"))
    result = grade.run_check("02", "pivot_into_hides_the_host", no_umount)
    assert not result["ok"] and "overlay" in result["got"] and len(result["got"]) > 1
    assert "umount('.', detach=True)" in result["hint"]


def test_an_escape_that_raises_shows_the_containers_stderr(tmp_path):
    naive = wrong_answer(tmp_path, "01", "import os\n\ndef escape_chroot(host_file):\n"
                         "    os.write(1, open(host_file, 'rb').read())\n")
    result = grade.run_check("01", "a_root_process_climbs_out_of_a_chroot", naive)
    assert not result["ok"] and result["got"] == ""
    assert "stderr:" in result["printed"] and "FileNotFoundError" in result["printed"]
    assert "chroot again into a subdirectory" in grade.describe(result)   # the TODO's hint


def test_an_attack_that_fails_shows_what_it_printed_on_both_sides(tmp_path):
    wrong_pid = wrong_answer(tmp_path, "05", "def see_a_host_process():\n"
                             "    return 'cat /proc/1/cmdline; grep -q mc-escape-targ[e]t "
                             "/proc/1/cmdline'\n")     # [e]: not to find itself in pid 1
    result = grade.run_check("05", "your_attack_is_stopped_by_the_pid_namespace_alone",
                             wrong_pid)
    assert not result["ok"] and result["got"] == "(True, False)"
    inside, without = result["printed"].splitlines()
    assert inside.startswith("in a default container:")
    assert without.startswith("without a pid namespace:") and len(without) > 30  # host's pid 1


def test_grade_help_lists_every_exercise_and_its_checks():
    import subprocess
    import sys
    shown = subprocess.run([sys.executable, "-m", "minicontainer.course.grade", "--help"],
                           capture_output=True, text=True, check=True).stdout
    for number, stem in grade.FILES.items():
        assert f"{number}  exercises/{stem}.py" in shown
        for check in checks.CHECKS[number]:
            assert check.__name__.replace("_", " ") in shown
