"""minicontainer checked against runc and crun on the same three bundles (`runc spec`'s
defaults, an image unpacked by umoci, one we exported), seen from inside by the same
probe (course/runtimes.py); and the bundle reader attacked with what a hostile bundle
directory can hold: each refused in one line, with nothing left behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from minicontainer import oci
from minicontainer.course import runtimes
from minicontainer.rootfs import default_rootfs
from report import counts

needs_runtimes = pytest.mark.skipif(
    bool(runtimes.missing() or not shutil.which("umoci")),
    reason="runc, crun and umoci are needed (make test-oci installs them)")

BUNDLES = ("runc spec", "umoci unpack", "export-bundle")
KNOWN = {"runc": {**oci.DIFFERENCES_FROM_RUNC, **oci.DIFFERENCES_ON_OUR_BUNDLES},
         "crun": oci.DIFFERENCES_FROM_CRUN}       # the rows where we differ, and why
def make_bundle(kind: str, directory: Path, store) -> Path:
    """One of BUNDLES in `directory`/bundle."""
    from minicontainer import bundles
    from minicontainer.images import commands
    bundle = directory / "bundle"
    if kind == "runc spec":
        bundle.mkdir()
        shutil.copytree(default_rootfs(), bundle / "rootfs", symlinks=True)
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    elif kind == "umoci unpack":
        commands.save_to_file(store, ["busybox:latest"], str(directory / "busybox.tar"), False)
        (directory / "layout").mkdir()
        subprocess.run(["tar", "-xf", str(directory / "busybox.tar"), "-C",
                        str(directory / "layout")], check=True)
        subprocess.run(["umoci", "unpack", "--image", f"{directory}/layout:latest",
                        str(bundle)], check=True, capture_output=True)
    else:
        bundles.export_bundle("busybox:latest", bundle, store)
    return bundle


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict[str, dict[str, dict[str, str]]]:
    """{bundle: {runtime: the probe's rows}} for the three bundles and three runtimes."""
    from minicontainer.images.store import Store, busybox_image
    top = tmp_path_factory.mktemp("conformance")
    store = Store(top / "images")
    busybox_image(store)
    tables = {}
    for number, kind in enumerate(BUNDLES):
        directory = top / f"b{number}"
        directory.mkdir()
        bundle = make_bundle(kind, directory, store)
        tables[kind] = {runtime: runtimes.probe(runtime, bundle, directory / runtime,
                                                f"mc-probe-{number}")
                        for runtime in runtimes.RUNTIMES}
    return tables


@needs_runtimes
@pytest.mark.parametrize("kind", BUNDLES)
def test_bundle_looks_the_same_inside_under_runc_crun_and_minicontainer(seen, kind):
    rows = seen[kind]
    print(f"\n{kind}:\n{runtimes.table(rows)}")
    assert rows["runc"]["exit code"] == rows["minicontainer"]["exit code"] == "7"
    assert rows["minicontainer"]["kill TERM: exit code"] == "42"
    assert 0 < int(rows["minicontainer"]["forks under the pids limit"]) < runtimes.PIDS_LIMIT
    assert rows["minicontainer"]["ns pid"] == "own" and rows["minicontainer"]["ns user"] == "host"
    if kind == "umoci unpack":       # it asks inheritable and ambient capabilities too
        assert rows["minicontainer"]["CapAmb"] == rows["runc"]["CapAmb"] == "0000000020000420"
    if kind == "export-bundle":      # Docker's defaults: its capabilities, its filter
        assert rows["runc"]["Seccomp"] == rows["minicontainer"]["Seccomp"] == "2"
        assert rows["runc"]["CapBnd"] == "00000000a00425fb"
    for runtime, known in KNOWN.items():
        differing = runtimes.differing(rows[runtime], rows["minicontainer"])
        unexplained = {row: values for row, values in differing.items() if row not in known}
        assert not unexplained, f"{runtime} vs minicontainer on {kind}: {unexplained}"


@needs_runtimes
def test_every_listed_difference_is_still_seen(seen):
    for runtime, known in KNOWN.items():
        seen_differing = set().union(*(
            runtimes.differing(rows[runtime], rows["minicontainer"]) for rows in seen.values()))
        assert set(known) - seen_differing == set(), f"{runtime}: listed, no longer differs"


@needs_runtimes
def test_runc_and_crun_agree_with_each_other_but_for_their_masks_and_dev_core(seen):
    for rows in seen.values():
        differing = set(runtimes.differing(rows["runc"], rows["crun"]))
        assert differing <= {"ls /dev", "mount /proc/keys", "mount /proc/timer_list",
                             "mount /proc/interrupts"}, differing


# -- attacks on the bundle reader: one line each, nothing left --------------------------------

def oci_create(root: Path, bundle: Path, *options: str, container_id: str = "attacked",
               timeout: float = 30) -> subprocess.CompletedProcess:
    """`minicontainer oci --root ROOT create --bundle BUNDLE OPTIONS ID`, its output read."""
    with tempfile.TemporaryFile("w+") as errors:
        result = subprocess.run(
            runtimes.command("minicontainer", root, "create", "--bundle", str(bundle),
                             *options, container_id),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, text=True,
            timeout=timeout)
        errors.seek(0)
        result.stderr = errors.read()
    return result


@pytest.fixture
def bundle(tmp_path) -> Path:
    """`runc spec`'s defaults on a copy of the busybox rootfs, running `true`."""
    made = make_bundle("runc spec", tmp_path, None)
    runtimes.with_probe(made, ["true"])
    return made


def refused_in_one_line(result: subprocess.CompletedProcess, words: str, root: Path) -> None:
    """The attack's outcome: exit 1, one line naming `words`, no record under `root`."""
    counts["bad inputs tried"] += 1
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("minicontainer: ")
    assert words in result.stderr, result.stderr
    assert not (root / "containers").exists() or not any((root / "containers").iterdir())


@needs_runtimes
def test_rootfs_that_is_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    shutil.rmtree(bundle / "rootfs")
    (bundle / "rootfs").symlink_to("/")
    refused_in_one_line(oci_create(tmp_path / "state", bundle), "leads out of the bundle",
                        tmp_path / "state")


@needs_runtimes
def test_config_json_that_is_a_fifo_is_refused_without_waiting(bundle, tmp_path):
    (bundle / "config.json").unlink()
    os.mkfifo(bundle / "config.json")
    refused_in_one_line(oci_create(tmp_path / "state", bundle, timeout=10),
                        "is not a regular file", tmp_path / "state")


@needs_runtimes
def test_huge_config_json_is_refused_before_it_is_read(bundle, tmp_path):
    with open(bundle / "config.json", "r+b") as config:
        config.truncate(2**40)                 # sparse: a terabyte that takes no disk
    refused_in_one_line(oci_create(tmp_path / "state", bundle), "is larger than",
                        tmp_path / "state")


@needs_runtimes
def test_config_json_that_is_a_symlink_is_refused(bundle, tmp_path):
    (bundle / "config.json").rename(tmp_path / "elsewhere.json")
    (bundle / "config.json").symlink_to(tmp_path / "elsewhere.json")
    refused_in_one_line(oci_create(tmp_path / "state", bundle), "is a symbolic link",
                        tmp_path / "state")


@needs_runtimes
@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "..", ".", ""])
def test_container_id_that_is_a_path_is_refused_by_every_operation(bundle, tmp_path, bad_id):
    root = tmp_path / "state"
    refused_in_one_line(oci_create(root, bundle, container_id=bad_id), "invalid container name",
                        root)
    for operation in ("start", "state", "kill", "delete"):
        result = subprocess.run(runtimes.command("minicontainer", root, operation, bad_id),
                                capture_output=True, text=True, timeout=30)
        refused_in_one_line(result, "invalid container name", root)
    assert not (tmp_path / "escape").exists() and not root.exists()


@needs_runtimes
def test_root_that_is_a_file_is_refused(bundle, tmp_path):
    (tmp_path / "state").write_text("not a directory")
    result = oci_create(tmp_path / "state", bundle)
    counts["bad inputs tried"] += 1
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (tmp_path / "state").read_text() == "not a directory"


@pytest.mark.parametrize("where", ["/proc/mc-attack.pid", "/sys/mc-attack.pid",
                                   "/nonexistent-mc-dir/mc.pid"])
@needs_runtimes
def test_pid_file_where_we_cannot_write_leaves_no_container(bundle, tmp_path, where):
    from minicontainer import state
    root = tmp_path / "state"
    data_before = set(os.listdir(state.data_dir())) if state.data_dir().exists() else set()
    refused_in_one_line(oci_create(root, bundle, "--pid-file", where), where, root)
    assert not Path(where).exists()
    data_after = set(os.listdir(state.data_dir())) if state.data_dir().exists() else set()
    assert data_after <= data_before                # its writable layer went too


@needs_runtimes
def test_pid_file_draft_planted_as_a_symlink_is_not_followed(bundle, tmp_path):
    # The draft is named after the creating process's pid: plant the next thousands.
    target = tmp_path / "victim"
    target.write_text("untouched")
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    for pid in range(os.getpid(), os.getpid() + 5000):
        (pid_dir / f".pid.{pid}").symlink_to(target)
    root = tmp_path / "state"
    result = oci_create(root, bundle, "--pid-file", str(pid_dir / "pid"))
    counts["bad inputs tried"] += 1
    if result.returncode == 0:                 # its pid was past the planted ones
        subprocess.run(runtimes.command("minicontainer", root, "delete", "--force",
                                        "attacked"), check=True, timeout=30)
    else:                                      # refused, as runc (O_EXCL), and removed
        assert result.stderr.count("\n") == 1 and "File exists" in result.stderr
        assert not (root / "containers").exists() or not any((root / "containers").iterdir())
    assert target.read_text() == "untouched"


def test_crun_wrapper_refuses_to_run_in_the_callers_mount_namespace():
    result = subprocess.run([sys.executable, "-m", "minicontainer.course.runtimes", "crun",
                             "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "mount namespace of our own" in result.stderr
    assert Path("/sys/fs/cgroup/unified").is_mount() or runtimes.cgroup_mode() != "hybrid"


@needs_runtimes
def test_delete_force_of_an_unknown_container_is_no_error_as_runcs(tmp_path):
    # Podman deletes with --force after a failed create, whatever is left.
    for runtime in ("runc", "minicontainer"):
        forced = subprocess.run(runtimes.command(runtime, tmp_path / runtime, "delete",
                                                 "--force", "ghost"),
                                capture_output=True, text=True, timeout=30)
        assert forced.returncode == 0, (runtime, forced.stderr)
    plain = subprocess.run(runtimes.command("minicontainer", tmp_path / "mc", "delete", "ghost"),
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "no container" in plain.stderr


def test_validation_counts_see_what_prove_would_hide():
    """bench/oci_validation.py's reading of the runtime-tools suite's TAP."""
    import importlib.util
    path = Path(__file__).parent.parent / "bench" / "oci_validation.py"
    loaded = importlib.util.spec_from_file_location("oci_validation", path)
    validation = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(validation)
    counted = validation.per_file({
        # a hook test that failed: an error, an empty plan, exit 0
        "prestart.t": "TAP version 13\nfailed to create\n1..0\n# exit status 0\n",
        # a *_fail test: the runtime refused the config, as it must
        "process_rlimits_fail.t": "failed to create the container\n# exit status 0\n",
        # a second plan, where prove stops counting
        "linux_cgroups_cpus.t": "1..0\nok 1 - a\nok 2 - b # SKIP no file\nok 3\n"
                                "1..3\n# exit status 0\n",
        "start.t": "ok 1\nnot ok 2 - it did not start\n1..2\n# exit status 0\n",
        "kill.t": "ok 1\n# exit status 1\n"})
    assert counted == {"prestart.t": (0, 0, 0, False), "process_rlimits_fail.t": (0, 0, 0, True),
                       "linux_cgroups_cpus.t": (2, 0, 1, True), "start.t": (1, 1, 0, False),
                       "kill.t": (1, 0, 0, False)}
