"""The records: who may remove them, why none is trusted, and where containers' data lives.

- `cleanup` removes only what a dead owner left: a live owner's container stays,
  whether it runs, has exited or is still being created.
- Names are checked and records are checked before the host acts on them: a record a
  container planted cannot make the host kill, delete or unplug anything of the host's.
- Records (small) live in /run; writable layers and logs on disk, where cleanup still
  finds them after a reboot forgot their records.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from minicontainer import state

CLI = [sys.executable, "-m", "minicontainer"]


def mc(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60,
                          **options)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    return lines[0]


# An owner that stops at a stage and waits for a line on stdin before going on.
OWNER = """
import pkgutil, sys
from minicontainer import Container
stage = sys.argv[1]
if stage != "exited":
    owner_name, attribute = stage.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_name)
    real = getattr(owner, attribute)
    def pause_after(*args, **kwargs):
        result = real(*args, **kwargs)
        print("paused", flush=True)
        sys.stdin.readline()
        return result
    setattr(owner, attribute, pause_after)
container = Container(["sh", "-c", "echo done"], name="mc-kept")
container.start()
result = container.wait(timeout=30)
if stage == "exited":
    print("paused", flush=True)
    sys.stdin.readline()
    result = container.wait()
print("result", result.exit_code, result.stdout.strip(), flush=True)
container.remove()
"""


@pytest.mark.parametrize("stage", ["exited", "minicontainer.state.claim",
                                   "minicontainer.cgroups.Cgroup.create"],
                         ids=["it has exited", "its record is written",
                              "its cgroup exists"])
def test_cleanup_leaves_a_live_owners_container_alone(stage):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, stage], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "paused\n"
        cleaned = mc("cleanup")
        assert cleaned.returncode == 0 and "mc-kept" not in cleaned.stdout, "its owner lives"
        owner.stdin.write("go on\n")
        owner.stdin.flush()
        assert owner.stdout.readline() == "result 0 done\n", "the owner lost its container"
    finally:
        owner.kill()
        owner.wait()
        mc("rm", "-f", "mc-kept")
    assert "mc-kept" not in state.names()


def test_cleanup_leaves_a_live_owners_draft_alone():
    """A draft record (claimed but not yet renamed into place) of a live owner stays."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, "minicontainer.state.write"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "paused\n"       # in claim(), before the rename
        assert list(state.containers_dir().glob(".claim-mc-kept-*"))
        assert not [d for d in state.remove_stale_drafts(age=0) if "mc-kept" in d]
        owner.stdin.write("go on\n")
        owner.stdin.flush()
        for _ in range(5):                                  # each later write pauses too
            line = owner.stdout.readline()
            if line != "paused\n":
                break
            owner.stdin.write("go on\n")
            owner.stdin.flush()
        assert line == "result 0 done\n"
    finally:
        owner.kill()
        owner.wait()
        mc("rm", "-f", "mc-kept")
    assert "mc-kept" not in state.names()
