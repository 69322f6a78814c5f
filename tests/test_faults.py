"""Fault injection, error path: an exception at each stage of starting a container
must leave the host exactly as it was, with no `cleanup` run afterwards.

(The SIGKILL half of the fault story — kill the owner after each stage, then
`minicontainer cleanup` — is covered for a running container in test_cli.py and
test_network.py; per-stage kills are future work.)
"""
from __future__ import annotations

import pytest

from hostcheck import host_objects
from minicontainer.container import Container

STAGES = [
    ("writing the state record", "minicontainer.state.write"),
    ("creating the overlay directories", "minicontainer.rootfs.Overlay.create"),
    ("leasing an address", "minicontainer.network.attach"),
    ("creating the cgroup", "minicontainer.cgroups.Cgroup.create"),
    ("binding a published port", "minicontainer.proxy.bind"),
    ("plugging in the veth", "minicontainer.network.Attachment.connect"),
    ("starting the port proxy", "minicontainer.proxy.start"),
]


class Injected(RuntimeError):
    pass


def fail(*args, **kwargs):
    raise Injected("fault injected")


@pytest.mark.parametrize("stage, target", STAGES, ids=[s for s, _ in STAGES])
def test_an_exception_at_each_stage_leaves_nothing_behind(stage, target, monkeypatch):
    before = host_objects()
    monkeypatch.setattr(target, fail)
    container = Container("sleep 30", network="mc-br0", ports={18099: 80}, memory="64M",
                          cpus=0.5, pids_limit=20)
    with pytest.raises(Injected):
        container.start()
    assert host_objects() == before, f"after a fault while {stage}"


def test_a_failing_step_in_the_child_leaves_nothing_behind(monkeypatch):
    before = host_objects()
    monkeypatch.setattr("minicontainer.namespaces.bring_up_loopback", fail)
    with pytest.raises(Exception, match="fault injected"):
        Container("sleep 30", network="mc-br0", memory="64M").start()
    assert host_objects() == before
