"""Where containers are written down, so that another process can find them.

`minicontainer ps` in a terminal must see the container a notebook started, and
`minicontainer cleanup` must find what a crashed process left behind. So each
container gets a record, /run/minicontainer/containers/NAME/state.json (what was
started and by which processes), written *before* anything else is created for the
container and removed last.

The directory is made under a temporary name with its first record inside, then
renamed into place: rename(2) is atomic and refuses a target that is not empty, so
two containers never claim the same name, and a crash leaves a whole record or none.
/run is a small tmpfs on most systems: a reboot forgets every record, as it should.

What a container writes (its writable layer, its logs) can be gigabytes, so it lives
on disk, in /var/lib/minicontainer/containers/NAME (as Docker keeps /var/lib/docker),
made just after the record and removed just before it. After a reboot these outlive
their records: a data directory without a record is an orphan that cleanup removes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .arguments import check_name, check_record
from .host import cache_dir
from .errors import ContainerNotFound, MinicontainerError, NameInUse
from .monitor import exit_status
from .process import exit_code, start_time


def containers_dir() -> Path:
    """/run/minicontainer/containers for root; a user's own place for a rootless user."""
    if "MINICONTAINER_RUN" in os.environ:
        base = Path(os.environ["MINICONTAINER_RUN"])
    elif os.geteuid() == 0:
        base = Path("/run/minicontainer")
    elif "XDG_RUNTIME_DIR" in os.environ:
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "minicontainer"
    else:
        base = Path(f"/tmp/minicontainer-{os.geteuid()}")
    return base / "containers"


def data_dir() -> Path:
    """/var/lib/minicontainer/containers for root; the user's own data directory (as
    XDG says, ~/.local/share) for a rootless user; MINICONTAINER_DATA if set."""
    if "MINICONTAINER_DATA" in os.environ:
        base = Path(os.environ["MINICONTAINER_DATA"])
    elif os.geteuid() == 0:
        base = Path("/var/lib/minicontainer")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "minicontainer"
    return base / "containers"


def roots() -> tuple[Path, ...]:
    """Where all our state lives (records; layers, images, logs; the cached busybox tree
    every container stands on): no volume may reach it. Root's usual places count even
    when the environment moved ours elsewhere."""
    usual = (Path("/run/minicontainer"), Path("/var/lib/minicontainer")) if (
        os.geteuid() == 0) else ()
    return (containers_dir().parent, data_dir().parent, cache_dir(), *usual)


def record_roots() -> tuple[Path, ...]:
    """The state directories whose records `cleanup` reads: ours, and root's usual one
    (/run/minicontainer) when the environment moved ours elsewhere (tests, a second
    session). Another MINICONTAINER_RUN elsewhere is out of sight: what only it names
    is not ours to judge."""
    ours = containers_dir().parent
    usual = Path("/run/minicontainer")
    return (ours,) if ours == usual or os.geteuid() != 0 else (ours, usual)


def records_everywhere(kind: str, roots: tuple[Path, ...]) -> list[tuple[Path, object]]:
    """Every record of `kind` ("containers", "vms", "networks", "groups") under `roots`: its path,
    and what JSON read in it, unchecked (None if not JSON). Only to learn what must *not*
    be removed: a planted one can make cleanup spare an object, never remove one."""
    pattern = {"containers": "containers/*/state.json"}.get(kind, f"{kind}/*.json")
    found: list[tuple[Path, object]] = []
    for root in roots:
        for path in root.glob(pattern):
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):      # gone meanwhile, or half-planted
                found.append((path, None))
    return found


def claim(name: str, record: dict) -> Path:
    """Create the container's directory holding `record`, or fail if the name is taken."""
    directory = containers_dir() / name
    text = json.dumps(record, indent=1)
    while True:
        # Named before it is made: a Ctrl-C raised anywhere below still finds it.
        draft = containers_dir() / f".claim-{name}-{secrets.token_hex(4)}"
        try:
            containers_dir().mkdir(parents=True, exist_ok=True)
            draft.mkdir(mode=0o700)
        except (FileNotFoundError, FileExistsError):  # the last container removed it meanwhile
            refuse_a_file_at(containers_dir())
            continue
        except BaseException:
            release(draft)
            raise
        try:
            write(draft, record)
            os.rename(draft, directory)
            return directory
        except BaseException as e:
            if _holds(directory, text):   # renamed, then a Ctrl-C was raised: it is ours
                release(directory)
                raise
            release(draft)
            if getattr(e, "errno", None) not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise NameInUse(f"the name {name!r} is already in use: choose another, or remove "
                            f"that container with `minicontainer rm -f {name}`") from None


def refuse_a_file_at(directory: Path) -> None:
    """NotADirectoryError if `directory` is something else (a state root given as a
    file): a loop that retries while a directory comes and goes must not wait for it."""
    try:
        mode = directory.stat().st_mode      # once: between two looks it may have gone
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))


def _holds(directory: Path, text: str) -> bool:
    """Does the record in `directory` read exactly `text` (ours: it names our pid and
    the time we started)?"""
    try:
        return (directory / "state.json").read_text() == text
    except OSError:
        return False


def remove_stale_drafts(age: float = 10) -> list[str]:
    """Drafts a crash left between their mkdir and rename: older than `age` seconds, and
    their owner dead (a draft without a record yet is judged by its age alone)."""
    if not containers_dir().is_dir():
        return []
    stale = [p for p in containers_dir().glob(".claim-*")
             if time.time() - p.stat().st_mtime > age and not _draft_owner_alive(p)]
    for draft in stale:
        release(draft)
    return [p.name for p in stale]


def _draft_owner_alive(draft: Path) -> bool:
    try:
        return owner_alive(json.loads((draft / "state.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):   # not written yet, or gone
        return False


def write(directory: Path, record: dict) -> None:
    """Replace state.json atomically: readers see the old record or the new, never half."""
    write_json(directory / "state.json", record)


def write_json(path: Path, record: dict) -> None:
    """Write next to `path`, then rename(2) over it: the swap is atomic."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(json.dumps(record, indent=1))
    partial.rename(path)


def read(name: str) -> dict:
    """The record of container `name`, checked before anyone acts on it: a name is never
    a path (`rm ../x` reads nothing outside our directory), a record never trusted."""
    return check_record(name, read_unchecked(name), roots())


def read_unchecked(name: str) -> dict:
    """The record as it is on disk: only to learn what must *not* be removed (a record
    refused by read() still marks its cgroup as in use)."""
    check_name(name)
    try:
        return json.loads((containers_dir() / name / "state.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        raise ContainerNotFound(f"no container named {name!r} (see `minicontainer ps`)") from None


def names() -> list[str]:
    """The containers there are records of."""
    if not containers_dir().is_dir():
        return []
    return sorted(p.name for p in containers_dir().iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def release(directory: Path) -> None:
    """Remove the container's record, and the directory above it once it is empty:
    the host is left as it was."""
    shutil.rmtree(directory, ignore_errors=True)
    with locked():
        try:
            directory.parent.rmdir()
        except OSError:             # not empty: other containers live there
            pass


def make_data(name: str) -> Path:
    """The container's data directory, once its record is claimed (so the name is
    ours: one a reboot orphaned under the same name is removed first)."""
    directory = data_dir() / name
    with locked():
        shutil.rmtree(directory, ignore_errors=True)
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)     # setuid files in its layer: for root's eyes only
        except FileExistsError:
            raise NameInUse(f"{directory} is left from an earlier container named {name!r}: "
                            "remove it with `minicontainer cleanup`") from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise MinicontainerError(f"no space left in {data_dir()} for the container's "
                                     "writable layer and logs: free some, or set "
                                     "MINICONTAINER_DATA to a directory with room") from None
    return directory


def release_data(directory: Path, lock: bool = True) -> None:
    """Remove a data directory, and the ones above it once they are empty."""
    shutil.rmtree(directory, ignore_errors=True)
    with locked() if lock else contextlib.nullcontext():
        for parent in (directory.parent, directory.parent.parent):
            try:
                parent.rmdir()
            except OSError:             # not empty: other containers live there
                break


def orphaned_data(age: float = 10) -> list[Path]:
    """Data directories without a record (their records went with a reboot), older
    than `age` seconds. Call it holding locked(), as make_data() does: a container
    claims its record before its data, so no record then means none is coming."""
    if not data_dir().is_dir():
        return []
    return [p for p in data_dir().iterdir() if not (containers_dir() / p.name).exists()
            and time.time() - p.lstat().st_mtime > age]


def vms_dir() -> Path:
    """Where VMs' records live, beside the containers'."""
    return containers_dir().parent / "vms"


def write_vm(vm_id: str, record: dict) -> None:
    """A VM's record (its owner, QEMU's pid, its temporary files), written atomically
    like a container's: before QEMU exists, and again once it runs."""
    with locked():
        vms_dir().mkdir(exist_ok=True)
        write_json(vms_dir() / f"{vm_id}.json", record)


def vm_records() -> dict[str, object]:
    """Every VM's record, by its id, as JSON read it (None if it is not JSON): check it
    before acting on it (vm.cleanup.refused)."""
    if not vms_dir().is_dir():
        return {}
    records = {}
    for path in vms_dir().glob("*.json"):
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            records[path.stem] = None
    return records


def release_vm(vm_id: str) -> None:
    """Delete a VM's record (and the directory, once it is the last)."""
    with locked():
        forget_record(vms_dir() / f"{vm_id}.json")


def forget_record(record: Path) -> None:
    """Delete one record file, and its directory once it is the last there (hold
    locked())."""
    record.unlink(missing_ok=True)
    try:
        record.parent.rmdir()
    except OSError:                 # not empty: others are recorded there
        pass


def groups_dir() -> Path:
    """Where the records of cgroups made outside a container (a budget several
    containers share, course/measure.py) live, beside the containers'."""
    return containers_dir().parent / "groups"


def write_group(path: str) -> None:
    """Record the group at `path` (minicontainer/mc-…) and this process as its owner,
    before the group exists: after a crash, cleanup removes it once we are gone."""
    with locked():
        groups_dir().mkdir(exist_ok=True)
        write_json(groups_dir() / f"{Path(path).name}.json",
                   {"cgroup": path, "owner": os.getpid(),
                    "owner_started": start_time(os.getpid())})


def release_group(path: str) -> None:
    """Delete a group's record, once the group is gone (and the directory, once empty)."""
    with locked():
        forget_record(groups_dir() / f"{Path(path).name}.json")


def owner_alive(record: dict) -> bool:
    """Is the process that made this record still the one running under its pid?"""
    return start_time(record["owner"]) == record["owner_started"]


@contextmanager
def locked() -> Iterator[Path]:
    """Hold an exclusive lock on /run/minicontainer while changing shared records.

    flock(2) on the directory itself: nothing extra to leave behind. If the
    directory was removed while we waited for the lock, make it again and retry; and
    it is removed on the way out once empty, so the host is left as it was.
    """
    base = containers_dir().parent
    # A Ctrl-C is raised after a call returns (never at `break`, `try` or `finally`):
    # from the flock to the close, every call is inside a try whose clean-up closes the
    # fd. One left open holding the lock would stop every other process, for good.
    while True:
        try:
            base.mkdir(parents=True, exist_ok=True)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, FileExistsError):   # the last user removed it meanwhile
            refuse_a_file_at(base)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:       # still there: the lock is good
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield base
    finally:
        try:
            os.rmdir(base)                  # with the lock held: nobody is inside
        except OSError:                     # not empty: in use
            pass
        finally:
            os.close(fd)


def describe(name: str) -> dict:
    """A container's record, plus `status`: "running", "exited (CODE)" or "dead", and
    `orphaned`: its owner is gone though it was not started detached."""
    record = read(name)
    status = exit_status(containers_dir() / name)
    if record.get("pid") and start_time(record["pid"]) == record["pid_started"]:
        record["status"] = "running"
    elif status is not None:
        record["status"] = f"exited ({exit_code(status)})"
    else:
        record["status"] = "dead"
    record["orphaned"] = not record["detached"] and not owner_alive(record)
    return record
