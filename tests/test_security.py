"""Layer 5 on a real kernel: what the container's root holds, part by part."""
from __future__ import annotations

import errno
import os
import re
import socket
from functools import partial

import pytest

from minicontainer import security
from minicontainer.container import Container, run
from minicontainer.course import security_lab
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


# -- parity with Docker's default seccomp profile ------------------------------------------

OPS = {"SCMP_CMP_LT": lambda a, v, _: a < v, "SCMP_CMP_LE": lambda a, v, _: a <= v,
       "SCMP_CMP_EQ": lambda a, v, _: a == v, "SCMP_CMP_NE": lambda a, v, _: a != v,
       "SCMP_CMP_GE": lambda a, v, _: a >= v, "SCMP_CMP_GT": lambda a, v, _: a > v,
       "SCMP_CMP_MASKED_EQ": lambda a, v, two: a & v == two}
# The pinned profile, and its reading for our capabilities, are the course's too
# (notebook 05 counts what it denies): minicontainer/course/data/README.md.
dockers_rules_for_us = security_lab.dockers_rules
kernel_calls = security_lab.kernel_calls


def test_we_deny_every_call_dockers_default_profile_denies():
    rules = dockers_rules_for_us()
    allowed = {name for rule in rules if not rule.get("args") for name in rule["names"]}
    conditional = {name for rule in rules if rule.get("args") for name in rule["names"]}
    refused = set(security.DENIED_SYSCALLS) | set(security.NOT_IMPLEMENTED) | set(
        security.ALLOWED_ON_PURPOSE)
    denied_by_docker = kernel_calls() - allowed - conditional
    assert len(denied_by_docker) > 40, denied_by_docker           # the profile was read
    assert sorted(denied_by_docker - refused) == []
    # Calls Docker allows for some arguments: we refuse them whole, or match it exactly.
    assert sorted(conditional - allowed - refused - {"socket", "clone"}) == []


def test_we_deny_every_socket_family_docker_denies():
    rules = [r for r in dockers_rules_for_us() if r["names"] == ["socket"] and r.get("args")]
    assert rules, "the profile restricts socket(2) by family"

    def docker_allows(family: int) -> bool:
        return any(all(OPS[a["op"]](family, a["value"], a.get("valueTwo", 0))
                       for a in rule["args"]) for rule in rules)
    denied = {family for family in range(64) if not docker_allows(family)}
    ours = set(security.DENIED_SOCKET_FAMILIES.values())
    on_purpose = {security.SOCKET_FAMILY_NUMBERS[name] for name in security.ALLOWED_ON_PURPOSE
                  if name in security.SOCKET_FAMILY_NUMBERS}
    assert denied and sorted(denied - ours - on_purpose) == []


def test_clone_may_make_processes_but_not_namespaces_as_in_docker():
    rule, = [r for r in dockers_rules_for_us() if r["names"] == ["clone"]]
    mask, = [a["value"] for a in rule["args"] if a["op"] == "SCMP_CMP_MASKED_EQ"]
    assert mask == sum(security.NEW_NAMESPACE_FLAGS)


def _answers(calls: list[tuple]) -> None:
    """Inside the container: make each raw system call and print what the kernel said."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for number, *args in calls:
        done = libc.syscall(number, *args)
        answer = "ok" if done >= 0 else errno.errorcode[ctypes.get_errno()]
        os.write(1, f"{number} {answer}\n".encode())   # fd 1: pytest swaps sys.stdout


def test_a_denied_call_really_answers_eperm_inside_a_container():
    """The filter is real BPF in the kernel: two calls Docker denies, made for real."""
    import pyseccomp
    get_mempolicy = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "get_mempolicy")
    socket_call = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "socket")
    calls = [(get_mempolicy, 0, 0, 0, 0, 0),                     # harmless: reads a policy
             (socket_call, security.DENIED_SOCKET_FAMILIES["AF_VSOCK"], socket.SOCK_STREAM, 0)]
    out = run(partial(_answers, calls)).stdout.split()
    assert out == [str(get_mempolicy), "EPERM", str(socket_call), "EPERM"], out
    off = run(partial(_answers, calls), security=Security(seccomp=False)).stdout.split()
    assert "EPERM" not in off, off                               # the filter, nothing else


# -- device nodes an image brings ------------------------------------------------------------

READ_NODE = "head -c 40 /kmsg | wc -c"   # the image's node for the host's kernel log


def test_the_image_is_mounted_nodev_so_its_device_nodes_do_not_open(image_with_a_device_node):
    """No cgroup (so no allow-list), every capability: nodev alone refuses the open."""
    options = {"rootfs": image_with_a_device_node, "cgroup": False}
    on = run(READ_NODE, security=Security(capabilities=False), **options)
    assert "Permission denied" in on.stderr and on.stdout.strip() == "0", on
    off = run(READ_NODE, security=Security(capabilities=False, devices=False), **options)
    assert off.stdout.strip() == "40", off


def test_with_neither_nodev_nor_an_allow_list_an_image_with_nodes_is_refused(
        image_with_a_device_node):
    from minicontainer import namespaces as ns
    from minicontainer.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="device node"):
        run(READ_NODE, rootfs=image_with_a_device_node, cgroup=False,
            namespaces=ns.DEFAULT - {"mnt"})
