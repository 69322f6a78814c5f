"""The one-command setup: refuses clearly what cannot work, and is idempotent."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from minicontainer.container import Container
from minicontainer.errors import NotLinuxError

ROOT = Path(__file__).resolve().parent.parent


def test_setup_as_a_normal_user_says_sudo_and_installs_nothing():
    stamp = ROOT / ".venv" / ".installed"
    before = stamp.stat().st_mtime_ns
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "setup: run as root: sudo make setup\n"
    assert stamp.stat().st_mtime_ns == before


def test_setup_again_changes_nothing():
    stamp = ROOT / ".venv" / ".installed"
    before = stamp.stat().st_mtime_ns
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stdout and stamp.stat().st_mtime_ns == before


def test_a_non_linux_host_is_pointed_to_vagrant(monkeypatch):
    # No other kernel is at hand: only our decision is tested, with uname's answer changed.
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(sysname="Darwin"))
    with pytest.raises(NotLinuxError, match="vagrant up"):
        Container(["true"])


def test_jupyterlab_starts_and_serves_the_notebooks(jupyterlab):
    import json
    import time
    import urllib.request
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{jupyterlab}/api/contents?token=test") as reply:
                listing = json.load(reply)
            break
        except OSError:
            assert time.monotonic() < deadline, "JupyterLab did not answer in 60 s"
            time.sleep(0.5)
    assert any(item["name"] == "00_welcome.ipynb" for item in listing["content"])


def test_the_code_reads_cleanly():
    """Lint (ruff): the code is part of the course, students read it."""
    result = subprocess.run([str(ROOT / ".venv/bin/ruff"), "check", "minicontainer", "tests",
                             "bench"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
