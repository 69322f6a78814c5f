"""Grading the exercises: every check in a child process of its own, with a time-out.

    grade("02")                               # in a notebook
    python -m minicontainer.course.grade 02   # in a terminal (or: make check EX=02)

A student's code runs as root against the real kernel, so it never runs in the
notebook's own process: each check starts a fresh Python that imports the student's
file and runs one check (checks.py), and is killed if it takes too long. A broken
exercise can fail or hang; it cannot take the notebook or the host down with it.
Exercises are read from exercises/ (MINICONTAINER_EXERCISES points elsewhere, e.g.
solutions/, as CI does).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from ..cleanup import cleanup
from ..errors import StepFailed

FILES = {"01": "ex01_chroot", "02": "ex02_namespaces", "03": "ex03_cgroups",
         "04": "ex04_networking", "05": "ex05_security", "06": "ex06_images",
         "07": "ex07_initramfs"}
TIMEOUT = 180


def exercises_dir() -> Path:
    """Where the exercise files are read: $MINICONTAINER_EXERCISES, else exercises/."""
    default = Path(__file__).resolve().parents[2] / "exercises"   # beside minicontainer/
    return Path(os.environ.get("MINICONTAINER_EXERCISES", default))


def grade(number: str, directory: str | Path | None = None, quiet: bool = False) -> bool:
    """Run every check of exercise `number`; print each as passed or failed, with what
    was expected, what happened and a hint. True when all pass."""
    from .checks import CHECKS
    number = f"{int(number):02d}"
    path = Path(directory or exercises_dir()) / f"{FILES[number]}.py"
    results = [run_check(number, check.__name__, path) for check in CHECKS[number]]
    if not quiet:
        print(f"exercise {number} ({path}):")
        for result in results:
            print(describe(result))
        passed = sum(r["ok"] for r in results)
        print(f"{passed} of {len(results)} checks passed" + ("." if passed < len(results)
                                                             else ": well done."))
    return all(r["ok"] for r in results)


def run_check(number: str, name: str, path: Path) -> dict:
    """One check, in a child Python, killed after TIMEOUT seconds."""
    argv = [sys.executable, "-m", "minicontainer.course.grade", "--one", number, name, str(path)]
    try:
        # Its temporary files go in a directory of ours, removed even if it is killed.
        with tempfile.TemporaryDirectory(prefix="mc-grade-") as tmp:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                                  env={**os.environ, "TMPDIR": tmp})
    except subprocess.TimeoutExpired:
        cleanup()        # the killed check cannot remove what it made: its owner is dead
        return {"name": name, "ok": False, "what": "the check", "expected": "an answer",
                "got": f"nothing after {TIMEOUT} s", "hint": "does your code loop forever?"}
    except BaseException:
        # A Ctrl-C (a notebook's interrupt reaches the check too, and subprocess.run
        # kills it, perhaps in the middle of its own tidying up): what it made goes now.
        cleanup()
        raise
    if done.returncode != 0:
        cleanup()
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"name": name, "ok": False, "what": "the check", "expected": "a result",
                "got": f"the check process died (exit {done.returncode})",
                "hint": done.stderr.strip()[-300:]}


def describe(result: dict) -> str:
    """One check's result as the lines grade() prints: passed, or FAILED with what was
    expected and what came, a hint, what the container printed and the TODO's hint."""
    title = result["name"].replace("_", " ")
    if result["ok"]:
        return f"  passed  {title}"
    lines = [f"  FAILED  {title}",
             f"{result['what']}: expected {result['expected']!r}, got {result['got']!r}",
             f"hint: {result['hint']}"]
    if result.get("printed"):
        printed = result["printed"][-PRINTED:]     # the end of a traceback says the most
        lines.append("printed: " + printed.replace("\n", "\n" + " " * 19))
    for function, hint in result.get("todo_hints", {}).items():
        if hint != result["hint"]:
            lines.append(f"the TODO's hint for {function}: {hint}")
    return "\n          ".join(lines)


PRINTED = 600      # characters of a container's output shown under a failed check


def functions_checked(check) -> list[str]:
    """The student's functions a check calls (`student.NAME` in its source), in order."""
    return list(dict.fromkeys(re.findall(r"student\.(\w+)", inspect.getsource(check))))


def run_one_check(number: str, name: str, path: str) -> dict:
    """In the child: load the student's file, run one check, report as a dict."""
    from . import checks
    used = functions_checked(getattr(checks, name))
    result = {"name": name, "ok": False, "todo_hints": {
        function: checks.TODO_HINTS[function] for function in used
        if function in checks.TODO_HINTS}}
    try:
        spec = importlib.util.spec_from_file_location(f"student_{number}", path)
        student = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(student)
        getattr(checks, name)(student)
        result["ok"] = True
    except checks.Mismatch as m:
        result.update(what=m.what, expected=_short(m.expected), got=_short(m.got), hint=m.hint,
                      printed=m.printed)
    except Exception as e:
        todo = (str(e) if isinstance(e, NotImplementedError) else  # raised in a child's step:
                e.detail if isinstance(e, StepFailed) and e.kind == "NotImplementedError"
                else None)
        if todo is not None:
            result.update(what="your function", expected="an implementation",
                          got="NotImplementedError (a TODO is left)", hint=todo)
            return result
        if isinstance(e, StepFailed):     # it raised in the container's child: no traceback
            where = "in the container, as one of its setup steps"
        else:
            frames = traceback.extract_tb(e.__traceback__)
            mine = [f for f in frames if Path(f.filename) == Path(path)] or frames
            where = f"at {Path(mine[-1].filename).name}:{mine[-1].lineno}"
        result.update(what="your code", expected="no error",
                      got=f"{type(e).__name__}: {e}", hint=f"raised {where}")
    return result


def _short(value: object) -> object:
    text = repr(value)
    return value if len(text) < 200 and isinstance(value, str | int | bool | list | None) \
        else text[:200]


def exercise_list() -> str:
    """Every exercise, its file and notebook, and the checks it must pass: --help's end."""
    from .checks import CHECKS
    lines = ["exercises (the file you fill in, then its checks):"]
    for number, stem in FILES.items():
        lines.append(f"  {number}  exercises/{stem}.py  (notebook {number})")
        lines += [f"        - {check.__name__.replace('_', ' ')}" for check in CHECKS[number]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line: grade one exercise; exit 0 when all pass, 1 if not (2: bad usage)."""
    parser = argparse.ArgumentParser(prog="python -m minicontainer.course.grade",
                                     description="check an exercise", epilog=exercise_list(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("number", nargs="?", help="the exercise: " + ", ".join(
        f"{number} ({name.split('_', 1)[1]})" for number, name in FILES.items()))
    parser.add_argument("--solutions", action="store_true", help="grade solutions/ instead")
    parser.add_argument("--one", nargs=3, metavar=("NUMBER", "CHECK", "FILE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one_check(*args.one), default=repr))
        return 0
    if args.number not in FILES and f"{args.number}".zfill(2) not in FILES:
        parser.error(f"choose an exercise from {', '.join(FILES)}")
    directory = exercises_dir().parent / "solutions" if args.solutions else None
    return 0 if grade(args.number, directory) else 1


if __name__ == "__main__":
    sys.exit(main())
