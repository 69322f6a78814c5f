"""Layer 5 on a real kernel: what the container's root holds, part by part."""
from __future__ import annotations

import re

import pytest

from minicontainer.container import Container, run
from minicontainer.security import DEFAULT_CAPABILITIES, Security

STATUS = "grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs|Seccomp):' /proc/self/status"


def status_of(output: str) -> dict[str, int]:
    return {k: int(v, 16) for k, v in re.findall(r"^(\w+):\s+(\w+)$", output, re.M)}


def default_bits() -> int:
    from minicontainer.security import CAPABILITIES
    return sum(1 << CAPABILITIES[name] for name in DEFAULT_CAPABILITIES)


def test_a_default_container_is_confined_as_docker_confines():
    status = status_of(run(STATUS).stdout)
    assert status["CapEff"] == status["CapBnd"] == default_bits()   # 0xa80425f3: Docker's − MKNOD
    assert status["CapInh"] == 0
    assert status["NoNewPrivs"] == 1
    assert status["Seccomp"] == 2                                    # a filter is loaded


def test_exec_gets_the_same_confinement():
    with Container("sleep 30") as c:
        c.start()
        status = status_of(c.exec(STATUS).stdout)
    assert status["CapEff"] == default_bits() and status["Seccomp"] == 2
    assert status["NoNewPrivs"] == 1


@pytest.mark.parametrize("part, field, confined", [
    ("capabilities", "CapEff", default_bits()), ("no_new_privs", "NoNewPrivs", 1),
    ("seccomp", "Seccomp", 2)])
def test_each_part_switches_off_alone(part, field, confined):
    status = status_of(run(STATUS, security=Security(**{part: False})).stdout)
    assert status[field] != confined
    others = {"CapEff": default_bits(), "NoNewPrivs": 1, "Seccomp": 2}
    del others[field]
    assert {k: status[k] for k in others} == others


def test_seccomp_refuses_what_the_capabilities_would_allow():
    """With every capability kept, the filter alone still says no (EPERM) to mount."""
    result = run("mount -t tmpfs none /mnt && echo mounted",
                 security=Security(capabilities=False))
    assert "mounted" not in result.stdout and "permission denied" in result.stderr


def test_system_paths_are_hidden_and_read_only():
    check = ("cat /proc/keys | wc -c; grep -E ' /proc/(sys|keys|acpi) ' /proc/self/mounts")
    on = run(check).stdout
    assert on.splitlines()[0].strip() == "0"
    assert re.search(r" /proc/sys proc ro,", on)
    off = run(check, security=Security(system_paths=False)).stdout
    assert int(off.splitlines()[0]) > 0 and "/proc/sys" not in off



@pytest.mark.parametrize("options, field, value", [
    (["--security-opt", "seccomp=unconfined"], "Seccomp", 0),
    (["--security-opt", "no-new-privileges=false"], "NoNewPrivs", 0),
    (["--cap-add", "ALL"], "CapEff", None),
    (["--privileged"], "Seccomp", 0),
], ids=["seccomp=unconfined", "no-new-privileges=false", "cap-add ALL", "privileged"])
def test_the_cli_switches_each_part_with_dockers_words(options, field, value):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "minicontainer", "run", *options, "--",
                           "sh", "-c", STATUS], capture_output=True, text=True, timeout=60)
    status = status_of(done.stdout)
    if value is None:
        assert status[field] > default_bits()     # more than Docker's set
    else:
        assert status[field] == value
