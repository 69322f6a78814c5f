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
import time
from functools import partial

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


# A notebook's stop button sends SIGINT to the kernel's whole process group, at any
# moment. The owner below starts and removes containers in a loop while the test sends
# it Ctrl-Cs at random moments; each may raise KeyboardInterrupt once per container (a
# person presses the button and looks).
STORM = """
import faulthandler, json, os, signal, sys, time, traceback
from minicontainer.container import Container
faulthandler.register(signal.SIGUSR1, all_threads=True)    # where it hangs, if it does
me, options, seconds, log = os.getpid(), json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
armed = False
def stop_button(sig, frame):
    global armed
    if os.getpid() != me:                # a copy of this process runs our Python
        with open(log, "a") as f:
            f.write(f"the caller's handler ran in the child {os.getpid()}\\n")
    if armed:
        armed = False
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, stop_button)
done = interrupted = 0
took = time.monotonic()
with Container(["true"], **options) as box:      # how long one takes, on this machine
    box.start().wait()
print("go", time.monotonic() - took, flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    box = None
    try:
        armed = True
        box = Container(["true"], **options)
        with box:
            box.start().wait()
        armed = False
        done += 1
    except KeyboardInterrupt:
        interrupted += 1
        with open(log + ".where", "a") as f:     # where each landed, should one leak
            f.write(json.dumps([box and box.name, traceback.format_exc()]) + "\\n")
    if os.getpid() != me:
        os._exit(7)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print(done, interrupted, flush=True)
"""
STORMS = {"plain": {}, "with a terminal": {"tty": True},
          "with a network and a port": {"network": "mc-br0", "ports": {18096: 80}}}


@pytest.mark.parametrize("options", STORMS.values(), ids=STORMS.keys())
def test_a_storm_of_ctrl_c_while_containers_come_and_go_leaves_nothing(options, tmp_path):
    import json
    import random
    before, log = host_objects(), tmp_path / "handlers"
    owner = subprocess.Popen([sys.executable, "-c", STORM, json.dumps(options), "6", str(log)],
                             start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    said, took = owner.stdout.readline().split()
    assert said == "go", owner.stderr.read()
    # Gaps up to 2.5 times one container's life, measured on this machine just now:
    # most Ctrl-Cs land inside a start or a removal, and some containers finish.
    chance, end = random.Random(8), time.monotonic() + 6
    while time.monotonic() < end and owner.poll() is None:
        os.killpg(owner.pid, signal.SIGINT)
        time.sleep(chance.uniform(0.002, max(0.01, 2.5 * float(took))))
    try:
        out, err = owner.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-o", "pid,ppid,pgid,stat,wchan:24,args", "-g",
                               str(owner.pid)], capture_output=True, text=True).stdout
        os.kill(owner.pid, signal.SIGUSR1)
        time.sleep(1)
        owner.kill()
        pytest.fail(f"the owner hung after the storm:\n{tree}{owner.communicate()[1][-3000:]}")
    assert owner.returncode == 0, err[-2000:]
    done, interrupted = map(int, out.split())
    assert done and interrupted, \
        f"the storm proves nothing: {done} finished, {interrupted} interrupted"
    assert not log.exists(), log.read_text()
    counts["faults injected"] += interrupted
    deadline = time.monotonic() + 5
    while host_objects() != before and time.monotonic() < deadline:
        time.sleep(0.2)
    where = [json.loads(line) for line in log.with_suffix(".where").read_text().splitlines()]
    leaked = set(host_objects()["containers"]) - set(before["containers"])
    # The one window no library closes: a Ctrl-C raised on entry to __exit__, before
    # its first line runs (Container._remove_whatever_happens). Cleanup takes those.
    on_entry = {name for name, tb in where if "in __exit__\n    def __exit__" in
                tb.split('File "')[-2]}
    assert leaked <= on_entry, f"{interrupted} Ctrl-Cs left {leaked - on_entry}; where they " \
        f"landed: {[tb for name, tb in where if name in leaked - on_entry]}"
    subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"], check=True,
                   capture_output=True, timeout=60)
    assert host_objects() == before


# A fork that fails (EAGAIN: the caller's pids budget is full) must leave the caller
# as it was: every signal deliverable (fork_without_handlers blocks them around the
# fork) and no pipe of spawn's left open.
FORK_FAILS = """
import os, signal, sys
from minicontainer import cgroups, process
from minicontainer.cgroups import Cgroup, Limits
cgroups.join(Cgroup(sys.argv[1], Limits(pids=1)).open_procs())   # alone, and room for one
fds = len(os.listdir("/proc/self/fd"))
try:
    process.spawn(["true"])
except OSError as e:
    print("the fork failed:", e.strerror)
print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), len(os.listdir("/proc/self/fd")) - fds)
"""


def test_a_fork_that_fails_leaves_signals_and_fds_as_they_were():
    from minicontainer.cgroups import Cgroup, Limits
    group = Cgroup(f"mc-forkfail-{os.getpid()}", Limits(pids=1))
    group.create()
    try:
        done = subprocess.run([sys.executable, "-c", FORK_FAILS, group.path],
                              capture_output=True, text=True, timeout=60)
    finally:
        group.remove()
    assert "the fork failed: Resource temporarily unavailable" in done.stdout, done.stderr
    assert done.stdout.splitlines()[-1] == "[] 0", "a signal left blocked, or pipes left open"


# A Ctrl-C right after flock() returns, in a process that then idles (a kernel between
# cells): the lock must be let go at once, or every other process waits for it.
LOCK_THEN_CTRL_C = """
import fcntl, signal, time
from minicontainer import state
real = fcntl.flock
def flock_then_ctrl_c(fd, operation):
    real(fd, operation)
    fcntl.flock = real
    signal.raise_signal(signal.SIGINT)
fcntl.flock = flock_then_ctrl_c
try:
    with state.locked():
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
time.sleep(60)
"""


def test_a_ctrl_c_just_after_the_lock_is_taken_does_not_keep_it():
    idle = subprocess.Popen([sys.executable, "-c", LOCK_THEN_CTRL_C], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert idle.stdout.readline() == "interrupted\n"
        other = subprocess.run([sys.executable, "-c", "from minicontainer import state\n"
                                "with state.locked(): print('taken')"],
                               capture_output=True, text=True, timeout=20)
        assert other.stdout == "taken\n", "another process waits for a lock an idle one keeps"
    finally:
        idle.kill()
        idle.wait()


def test_a_ctrl_c_held_in_a_block_that_fails_is_still_raised():
    from minicontainer import process
    with pytest.raises(KeyboardInterrupt):
        try:
            with process.interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)       # the stop button, inside
                raise OSError("the step fails after the Ctrl-C")
        except OSError:
            pass                                           # handled: the cell goes on


def test_a_ctrl_c_as_the_command_starts_leaves_nothing(monkeypatch):
    # The narrowest window of a storm, hit each time: the command runs, and the Ctrl-C
    # lands before start() has its handle (spawn's last lines). Removal must still
    # find the command: it is adopted before the Ctrl-C is raised.
    import psutil
    from minicontainer import process
    before = host_objects()
    opened = process.open_pidfd

    def then_ctrl_c(*args, **kwargs):
        fd = opened(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return fd
    monkeypatch.setattr(process, "open_pidfd", then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        Container("sleep 3131", cgroup=False).start()   # no cgroup to kill it with
    counts["faults injected"] += 1
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["sleep", "3131"]], "a command nobody holds runs on"
    assert host_objects() == before


def ctrl_c_as_spawn_returns(monkeypatch, presses: int = 1) -> None:
    """Press Ctrl-C `presses` times as the command has started, before spawn returns
    (open_pidfd runs inside its held block)."""
    from minicontainer import process
    opened = process.open_pidfd

    def then_ctrl_c(*args, **kwargs):
        fd = opened(*args, **kwargs)
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
        return fd
    monkeypatch.setattr(process, "open_pidfd", then_ctrl_c)


def running(argv: list[str]) -> list:
    """The live (not zombie) processes running exactly `argv`."""
    import psutil
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == argv and p.info["status"] != psutil.STATUS_ZOMBIE]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_ctrl_c_as_a_bare_spawn_or_an_exec_returns_ends_the_command(monkeypatch):
    # Callers that pass no `adopt` (exec, the console keeper, capture...): nobody can hold
    # the command, so the Ctrl-C ends it, and spawn's fds go with it.
    from minicontainer import process
    with Container("sleep 300", cgroup=False) as container:
        container.start()
        for start, argv in ((process.spawn, ["sleep", "4141"]),
                            (container.exec_start, ["sleep", "4242"])):
            before = open_fds()
            ctrl_c_as_spawn_returns(monkeypatch)
            with pytest.raises(KeyboardInterrupt):
                start(argv)
            monkeypatch.undo()
            counts["faults injected"] += 1
            assert not running(argv), f"{argv} runs on, held by nobody"
            assert open_fds() == before


@pytest.mark.parametrize("options", [{"cgroup": False}, {"tty": True}], ids=["plain", "tty"])
def test_two_quick_ctrl_c_as_the_command_starts_raise_once_and_leave_nothing(monkeypatch,
                                                                           options):
    before, fds = host_objects(), open_fds()
    ctrl_c_as_spawn_returns(monkeypatch, presses=2)
    with pytest.raises(KeyboardInterrupt):
        Container("sleep 4343", **options).start()
    monkeypatch.undo()
    counts["faults injected"] += 1
    assert not running(["sleep", "4343"]) and open_fds() == fds
    assert host_objects() == before


def test_a_second_ctrl_c_while_spawn_kills_its_child_leaves_no_zombie():
    # The first Ctrl-C lands while the child is in its steps; the second as spawn has
    # killed it, before it is reaped (spawn holds the second until the child is reaped).
    import threading
    import psutil
    from minicontainer import process
    real_kill, presses = os.kill, []

    def kill_then_ctrl_c(pid, sig):
        real_kill(pid, sig)
        if pid != os.getpid() and not presses:
            presses.append(pid)
            real_kill(os.getpid(), signal.SIGINT)
    children = {c.pid for c in psutil.Process().children()}
    threading.Timer(0.5, real_kill, (os.getpid(), signal.SIGINT)).start()
    os.kill = kill_then_ctrl_c
    try:
        with pytest.raises(KeyboardInterrupt):
            process.spawn(["true"], [partial(time.sleep, 30)])
    finally:
        os.kill = real_kill
    counts["faults injected"] += 1
    assert presses, "the second Ctrl-C was not pressed"
    zombies = [c for c in psutil.Process().children()
               if c.pid not in children and c.status() == psutil.STATUS_ZOMBIE]
    for zombie in zombies:
        os.waitpid(zombie.pid, 0)
    assert not zombies, "nobody reaps the child spawn killed"
