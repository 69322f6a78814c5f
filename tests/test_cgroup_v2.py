"""cgroup v2, for real: the cgroup tests again, inside a VM whose kernel has only v2.

This host mounts the v1 controllers (hybrid), so v2 cannot be tested on it directly.
The project's own VM boots the distribution's kernel with cgroup_no_v1=all and runs
tests/test_cgroups.py in the host's files (read-only, over 9p); every test there is
reported with [cgroup-v2]. `make test-cgroup-v2` runs just this.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minicontainer import cgroups
from minicontainer.vm.machine import run_on_host_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_the_cgroup_tests_pass_on_a_cgroup_v2_kernel():
    if cgroups.mode() == "v2":
        pytest.skip("this host is cgroup v2 itself: test_cgroups.py ran on v2 already")
    # The guest sees the host's / read-only: writable layers go to its own tmpfs /run.
    command = (f"export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp "
               "MINICONTAINER_DATA=/run/minicontainer-data PYTEST_DISABLE_PLUGIN_AUTOLOAD=1; "
               f"cd {ROOT} && {sys.executable} -m pytest "
               "-o addopts= -p pytest_timeout --timeout=120 -p no:cacheprovider --color=no -q -rA "
               "tests/test_cgroups.py 2>&1")
    code, console = run_on_host_files(command, kernel_args="cgroup_no_v1=all", timeout=600,
                                      keep=(str(ROOT), sys.prefix))
    print(console)
    assert code == 0, console[-4000:]
    passed = [line for line in console.splitlines() if line.startswith("PASSED")]
    assert passed and all("[cgroup-v2" in line for line in passed), console[-4000:]
