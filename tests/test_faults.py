"""Fault injection: whatever stage starting a container (or a VM) reaches, the host
ends exactly as it was.

- An exception at each stage, with no `cleanup` afterwards: the error path alone
  must remove everything.
- SIGKILL of the owning process right after each stage (nothing of ours runs after
  that), then `minicontainer cleanup`: the records alone must lead it to everything.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from hostcheck import host_objects
from report import counts
from minicontainer.container import Container

STAGES = [
    ("writing the state record", "minicontainer.state.write"),
    ("creating the overlay directories", "minicontainer.rootfs.Overlay.create"),
    ("leasing an address", "minicontainer.network.attach"),
    ("adding the new network's rules", "minicontainer.network.add_rules"),  # bridge made
    ("creating the cgroup", "minicontainer.cgroups.Cgroup.create"),
    ("reserving a published port", "minicontainer.ports.reserve"),
    ("plugging in the veth", "minicontainer.network.Attachment.connect"),
    ("adding the published port's rules", "minicontainer.ports.add_rules"),
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
    counts["faults injected"] += 1
    assert host_objects() == before, f"after a fault while {stage}"
    socket.create_server(("0.0.0.0", 18099)).close()   # and the published port is free


def test_a_failing_step_in_the_child_leaves_nothing_behind(monkeypatch):
    before = host_objects()
    monkeypatch.setattr("minicontainer.namespaces.bring_up_loopback", fail)
    with pytest.raises(Exception, match="fault injected"):
        Container("sleep 30", network="mc-br0", memory="64M").start()
    assert host_objects() == before


# The owner wraps one step so that it kills itself (SIGKILL) just before or after it.
KILL_AT = """
import os, pkgutil, signal, sys
owner_name, attribute = sys.argv[1].rsplit(".", 1)
owner = pkgutil.resolve_name(owner_name)
real = getattr(owner, attribute)
calls = 0
def die_there(*args, **kwargs):
    global calls
    calls += 1
    if sys.argv[3] == "after" or calls < int(sys.argv[4]):
        result = real(*args, **kwargs)
        if calls < int(sys.argv[4]):
            return result
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, attribute, die_there)
if sys.argv[2] == "vm":
    from minicontainer.vm import VM
    VM(accel="tcg").boot()
else:
    from minicontainer.container import Container
    Container("sleep 30", network="mc-br0", ports={18099: 80}, memory="64M").start()
print("the stage never ran")
"""

KILLS = [  # (the stage reached, the step to die at, container or VM, before or after it,
           #  [at which of its calls])
    ("the record is written", "minicontainer.state.claim", "container", "after"),
    ("the overlay directories exist", "minicontainer.rootfs.Overlay.create", "container",
     "after"),
    ("the bridge exists", "minicontainer.network.add_rules", "container", "before"),
    ("the firewall rules are in", "minicontainer.network.add_rules", "container", "after"),
    ("an address is leased", "minicontainer.network.attach", "container", "after"),
    ("the cgroup exists", "minicontainer.cgroups.Cgroup.create", "container", "after"),
    ("the veth is plugged in", "minicontainer.network.Attachment.connect", "container",
     "after"),
    ("the container runs (overlay mounted)", "minicontainer.process.spawn", "container",
     "after"),
    ("the published port's rules are in", "minicontainer.ports.add_rules", "container",
     "after"),
    ("one of the published port's two rules is in", "minicontainer.ports.run_firewall",
     "container", "after"),
    ("QEMU runs, its pid not yet written", "minicontainer.state.write_vm", "vm", "before", 2),
    ("QEMU runs", "minicontainer.vm.machine.VM.start", "vm", "after"),
]
KILLS = [(*kill, 1) if len(kill) == 4 else kill for kill in KILLS]   # at its first call


@pytest.mark.parametrize("stage, target, kind, when, nth", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_after_each_stage_then_cleanup_leaves_nothing(stage, target, kind, when, nth):
    before = host_objects()
    owner = subprocess.run([sys.executable, "-c", KILL_AT, target, kind, when, str(nth)],
                           capture_output=True, text=True, timeout=120)
    assert owner.returncode == -9, f"the owner was not killed after {stage}: {owner.stderr}"
    counts["faults injected"] += 1
    assert host_objects() != before, "the stage left nothing to clean: the test proves nothing"
    cleanup = subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"],
                             capture_output=True, text=True, timeout=60)
    assert cleanup.returncode == 0, cleanup.stderr
    assert host_objects() == before, f"cleanup missed something after a kill once {stage}"


STARTED = ('from minicontainer import Container\n'
           'c = Container(["sleep", "60"], network="mc-br0", ports={18097: 80}, memory="64M")\n'
           'c.start()\n'
           'print("started", c.pid, flush=True)\n')


def test_kill_9_of_a_notebook_kernel_then_cleanup_leaves_nothing():
    from jupyter_client.manager import start_new_kernel
    before = host_objects()
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reply = client.execute_interactive(STARTED, timeout=60)
        assert reply["content"]["status"] == "ok"
        assert host_objects() != before
        os.kill(manager.provisioner.pid, signal.SIGKILL)   # as a crashed kernel
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    counts["faults injected"] += 1
    subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"], check=True,
                   capture_output=True, timeout=60)
    assert host_objects() == before


def test_a_power_cut_of_the_whole_process_tree_then_cleanup_leaves_nothing():
    """Every process of the owner's tree (it, the container, its monitor)
    is frozen, then killed at once: nobody gets to tidy up."""
    import psutil
    before = host_objects()
    owner = subprocess.Popen([sys.executable, "-c", STARTED + "import time; time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().startswith("started")
    tree = [psutil.Process(owner.pid), *psutil.Process(owner.pid).children(recursive=True)]
    assert len(tree) >= 3                       # owner, monitor, container
    for process in tree:
        process.suspend()
    for process in tree:
        process.kill()
    owner.wait()
    psutil.wait_procs(tree, timeout=10)
    counts["faults injected"] += 1
    subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"], check=True,
                   capture_output=True, timeout=60)
    assert host_objects() == before
