"""The escape lab: every attack fails against a default container, and the layer it
names is the one doing the work — switched off, the attack succeeds (where that is
safe to show), or the next layer behind it stops it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hostcheck import host_objects
from minicontainer import escapes
from report import counts

ATTACKS = escapes.ATTACKS


@pytest.fixture(scope="module")
def bait():
    with escapes.target() as target:
        yield target


def tried(outcome: escapes.Outcome) -> escapes.Outcome:
    counts["escapes tried"] += 1
    counts["escapes blocked"] += not outcome.escaped
    return outcome


@pytest.mark.parametrize("attack", ATTACKS, ids=[f"{a.name} - {a.stopped_by}" for a in ATTACKS])
def test_a_default_container_stops_it(attack, bait):
    outcome = tried(escapes.attempt(attack, bait))
    assert not outcome.escaped, f"{attack.name} got through: {outcome.evidence}"


SHOWN = [a for a in ATTACKS if a.shown_with]


@pytest.mark.parametrize("attack", SHOWN, ids=[f"{a.name} - without {a.stopped_by}"
                                               for a in SHOWN])
def test_with_its_layer_off_it_works(attack, bait):
    legacy = Path("/proc/sys/dev/tty/legacy_tiocsti")
    if "TIOCSTI" in attack.name and legacy.exists() and legacy.read_text().strip() == "0":
        pytest.skip("this kernel refuses TIOCSTI to everyone (dev.tty.legacy_tiocsti = 0)")
    outcome = escapes.attempt(attack, bait, **attack.shown_with)
    assert outcome.escaped, f"{attack.stopped_by} is not what stops it: {outcome.evidence}"


BEHIND = [a for a in ATTACKS if a.behind_it]


@pytest.mark.parametrize("attack", BEHIND, ids=[f"{a.name} - then {a.behind_it[1]}"
                                                for a in BEHIND])
def test_behind_the_first_layer_the_next_stops_it(attack, bait):
    if "SYS_MODULE" in attack.behind_it[1] and not os.path.exists("/proc/modules"):
        pytest.skip("this kernel has no loadable modules: init_module answers ENOSYS "
                    "before it looks at capabilities")
    outcome = tried(escapes.attempt(attack, bait, **attack.behind_it[0]))
    assert not outcome.escaped, f"{attack.name} got through: {outcome.evidence}"
    assert "not permitted" in outcome.evidence or "denied" in outcome.evidence


def test_the_lab_table_for_the_notebook():
    rows = escapes.run_lab()
    assert [row["attack"] for row in rows] == [a.name for a in ATTACKS]
    assert all(row["blocked"] for row in rows), rows
    shown = {row["attack"]: row["with it off"] for row in rows}
    assert all(shown[a.name] == "gets through" for a in SHOWN)
    assert shown["fork bomb"].startswith("not tried")


LAB_OWNER = """
from minicontainer import escapes
with escapes.target() as bait:
    print(bait.pid, flush=True)
    import time
    time.sleep(120)
"""


def test_a_killed_labs_bait_goes_with_cleanup_and_a_living_ones_stays():
    before = host_objects()
    owner = subprocess.Popen([sys.executable, "-c", LAB_OWNER], stdout=subprocess.PIPE,
                             text=True)
    sleeper = int(owner.stdout.readline())
    try:
        devices, directories = escapes.lab_leftovers()
        assert not devices and not directories, "a living lab's bait taken for leftovers"
        assert host_objects()["loop devices"] != before["loop devices"]
    finally:
        owner.kill()                   # SIGKILL: nothing of its own tidying runs
        owner.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{sleeper}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{sleeper}"), "the bait process outlived its lab"
    subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"], check=True,
                   capture_output=True, timeout=60)
    assert host_objects() == before


def test_cleanup_leaves_anothers_directory_or_a_link_named_like_a_dead_labs(tmp_path):
    # /tmp is everyone's: a name is no proof that a dead lab of ours made it.
    dead = "mc-escape-999999-1-"                    # pid 999999 with that start time: gone
    theirs = Path(tempfile.mkdtemp(prefix=dead))
    os.chown(theirs, 65534, 65534)
    (theirs / "work").write_text("a student's")
    link = Path(tempfile.gettempdir()) / f"{dead}link"
    link.symlink_to(tmp_path)
    ours = Path(tempfile.mkdtemp(prefix=dead))
    try:
        devices, directories = escapes.lab_leftovers()
        assert ours in directories
        assert theirs not in directories and link not in directories
        subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"], check=True,
                       capture_output=True, timeout=60)
        assert (theirs / "work").read_text() == "a student's" and link.is_symlink()
        assert not ours.exists()
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
        shutil.rmtree(ours, ignore_errors=True)
        link.unlink(missing_ok=True)


def test_cleanup_detaches_no_loop_device_a_user_named_like_a_dead_labs():
    # Root attached two images in a user's directory (an admin's losetup of a student's
    # disk, a VM tool's): the user renames them into a dead lab's names. A backing file's
    # path is worked out as it is read, so a name proves nothing.
    home = Path(tempfile.mkdtemp(prefix="a-users-home-"))   # where nobody can reach it
    os.chown(home, 65534, 65534)
    theirs, roots = home / "image", home / "vm"
    theirs.write_bytes(bytes(4096))
    os.chown(theirs, 65534, 65534)
    roots.mkdir()
    (roots / "disk").write_bytes(bytes(4096))
    devices = [subprocess.run(["losetup", "--find", "--show", "--read-only", path],
                              capture_output=True, text=True, check=True).stdout.strip()
               for path in (theirs, roots / "disk")]
    try:
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh",
                        "-c", f"mkdir {home}/mc-escape-x && mv {theirs} {home}/mc-escape-x/disk"
                        f" && rm {home}/mc-escape-x/disk && mv {roots} {home}/mc-escape-1-1-x"],
                       check=True)
        found, _ = escapes.lab_leftovers()
        assert not set(devices) & set(found), "root's loop devices taken for a dead lab's"
        cleaned = subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"],
                                 capture_output=True, text=True, check=True, timeout=60)
        assert all(Path(f"/sys/block/{Path(d).name}/loop").exists() for d in devices)
        assert "loop device" not in cleaned.stdout
    finally:
        for device in devices:
            subprocess.run(["losetup", "--detach", device], capture_output=True)
        shutil.rmtree(home)


def test_cleanup_names_a_loop_device_whose_lab_disk_was_deleted_and_leaves_it():
    lab = Path(tempfile.mkdtemp(prefix="mc-escape-999999-1-"))     # a dead lab's
    (lab / "disk").write_bytes(bytes(512))
    device = subprocess.run(["losetup", "--find", "--show", "--read-only", lab / "disk"],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        (lab / "disk").unlink()              # by hand, or by a /tmp cleaner: no proof left
        cleaned = subprocess.run([sys.executable, "-m", "minicontainer", "cleanup"],
                                 capture_output=True, text=True, check=True, timeout=60)
        assert not lab.exists()              # the directory was a dead lab's: it goes
        assert Path(f"/sys/block/{Path(device).name}/loop").exists()
        assert f"losetup --detach {device}" in cleaned.stderr
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)
        shutil.rmtree(lab, ignore_errors=True)
