"""The opencontainers/runtime-tools validation suite against runc and minicontainer,
side by side: 58 test programs, each making bundles, driving the runtime through
create/start/state/kill/delete and checking from inside (its `runtimetest`).

    .venv/bin/python bench/oci_validation.py --suite /var/cache/minicontainer/runtime-tools

The suite is not packaged by Debian (golang-github-opencontainers-runtime-tools-dev
holds its Go library only: no validation/, no runtimetest), so third_party/runtime-tools
carries those programs from github.com/opencontainers/runtime-tools at
260e151b8552afa2678ef6d41820ea0f31cd8be1, and `scripts/setup.sh oci` (make test-oci)
builds them offline with Debian's Go and Go packages into the cache directory (its
README says what was taken). --suite also takes a checkout of that commit built from its
own vendor/: `GOFLAGS=-mod=vendor GOPROXY=off make runtimetest validation-executables`.
tests/test_oci_validation.py runs the same and checks the verdicts.

Each test program runs in a private mount namespace (a test with rootfs propagation
"shared" would otherwise leak mounts into the host's table); its TAP, without the JSON
diagnostic blocks prove cannot parse, is saved in results/oci-validation-RUNTIME/ and
counted twice: by `prove` (its summary line) and line by line (prove stops reading a
file at a second plan). minicontainer is given as scripts/minicontainer-runc (RUNTIME
must be one path). It prints a Markdown table: ok / not ok / skipped per test file.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
RUNTIMES = {"runc": "runc", "minicontainer": str(HERE / "scripts" / "minicontainer-runc")}
RUNTIMES |= {name: os.environ[f"RUNTIME_{name.upper()}"] for name in RUNTIMES
             if f"RUNTIME_{name.upper()}" in os.environ}      # another build of one
YAMLISH = re.compile(r"^ *---$.*?^ *\.\.\.$\n?", re.M | re.S)


def run_suite(suite: Path, runtime: str, saved: Path, state: Path,
              only: set[str] | None = None) -> dict[str, str]:
    """Every validation/*/*.t (or `only` those file names) with RUNTIME=`runtime`, each
    in a private mount namespace: {test file: its TAP, without the JSON blocks prove
    cannot parse}, saved in `saved` (.tap; .log keeps the blocks, the errors' details)."""
    env = {**os.environ, "RUNTIME": RUNTIMES[runtime], "MINICONTAINER_RUN": str(state / "run"),
           "MINICONTAINER_DATA": str(state / "data")}
    outputs = {}
    for test in sorted(suite.glob("validation/*/*.t")):
        if only is not None and test.name not in only:
            continue
        try:
            result = subprocess.run(["unshare", "--mount", "--propagation", "private",
                                     str(test)], cwd=suite, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", timeout=600)
            text = f"{result.stdout}# exit status {result.returncode}\n"
        except subprocess.TimeoutExpired:
            text = "not ok - the test program ran for more than 600 s\n"
        outputs[test.name] = YAMLISH.sub("", text)
        saved.mkdir(parents=True, exist_ok=True)
        (saved / test.name.replace(".t", ".tap")).write_text(outputs[test.name])
        (saved / test.name.replace(".t", ".log")).write_text(text)
    return outputs


def per_file(outputs: dict[str, str]) -> dict[str, tuple[int, int, int, bool]]:
    """{test file: (ok, not ok, skipped, clean?)}, every TAP line counted (prove would stop
    at a second plan, as linux_cgroups_cpus prints). A file is clean when its program
    exits 0 with no `not ok` and at least one `ok`: the hook tests print `1..0` and
    exit 0 when they failed. A *_fail test checks that the runtime refuses a config:
    it passes by exiting 0, silently (it exits 1 when the runtime ran the config)."""
    counts = {}
    for name, text in outputs.items():
        lines = text.splitlines()
        failed = sum(line.startswith("not ok") for line in lines)
        skipped = sum(line.startswith("ok ") and "# skip" in line.lower() for line in lines)
        ok = sum(line.startswith("ok ") for line in lines) - skipped
        exited = "# exit status 0" in lines
        clean = exited and not failed and (ok > 0 or Path(name).stem.endswith("_fail"))
        counts[name] = (ok, failed, skipped, clean)
    return counts


def prove_summary(saved: Path) -> str:
    """prove's own verdict on the saved TAP (as the notes' baseline was counted)."""
    files = sorted(str(p) for p in saved.glob("*.tap"))
    result = subprocess.run(["prove", "--exec", "cat", *files], capture_output=True,
                            text=True)
    return summary(result.stdout)


def summary(prove_output: str) -> str:
    """prove's own last lines: Files=…, Tests=…, and Result."""
    lines = prove_output.splitlines()
    return " ".join(line.split("wallclock")[0] if line.startswith("Files=") else line
                    for line in lines if line.startswith(("Files=", "Result:")))


def table(results: dict[str, dict[str, tuple[int, int, int, bool]]]) -> str:
    """A Markdown table: one row per test file, ok/not ok/skipped per runtime, and
    whether it is clean (per_file)."""
    names = sorted(set().union(*results.values()))
    head = "| test file | " + " | ".join(f"{r} ok/not ok/skip" for r in results) + " |"
    rows = [head, "|---|" + "---|" * len(results)]
    for name in names:
        cells = []
        for runtime in results:
            ok, failed, skipped, clean = results[runtime].get(name, (0, 0, 0, False))
            clean = "clean" if clean else "**not clean**"
            cells.append(f"{ok}/{failed}/{skipped} {clean}")
        rows.append(f"| {Path(name).stem} | " + " | ".join(cells) + " |")
    totals = [tuple(sum(v[i] for v in r.values()) for i in range(3)) for r in results.values()]
    clean = [sum(1 for v in r.values() if v[3]) for r in results.values()]
    rows.append("| **total (clean files)** | " + " | ".join(
        f"{t[0]}/{t[1]}/{t[2]} ({c} clean)" for t, c in zip(totals, clean, strict=True)) + " |")
    return "\n".join(rows)


def main() -> int:
    """Run the suite under each runtime asked, save the outputs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True,
                        help="a built runtime-tools checkout (see above)")
    parser.add_argument("--runtimes", default="runc,minicontainer")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (args.suite / "runtimetest").exists():
        sys.exit(f"{args.suite} has no runtimetest: build the suite first (see --help)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mc-validation-state-") as state:
        for runtime in args.runtimes.split(","):
            saved = args.results / f"oci-validation-{runtime}"
            outputs = run_suite(args.suite.resolve(), runtime, saved, Path(state))
            print(f"{runtime}: {prove_summary(saved)}", file=sys.stderr)
            results[runtime] = per_file(outputs)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
