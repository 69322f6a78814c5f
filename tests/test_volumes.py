"""Volumes: a host directory or file bound into a container (`-v HOST:CONTAINER[:ro]`)
and a tmpfs of its own (`--tmpfs PATH[:size=…]`), with their defences: read-only
means read-only, nothing setuid or device-like works through them, an image's
symlink never places a mount on the host, and the host's / and our own state are
never handed to a container. A record naming a hostile mount is refused."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from minicontainer import state
from minicontainer.arguments import check_record
from minicontainer.container import Container, run
from minicontainer.errors import BadRecord, InvalidArgument, MinicontainerError
from minicontainer.images.store import default_root
from minicontainer.namespaces import user_namespaces_refused
from minicontainer.spec import describe, record_of
from report import counts

CLI = [sys.executable, "-m", "minicontainer"]


def sh(script: str, **options):
    """Run `script` in a default container and return its result."""
    return run(["sh", "-c", script], timeout=60, **options)


@pytest.fixture
def shared(tmp_path) -> Path:
    """A host directory to give as a volume, holding one file."""
    directory = tmp_path / "shared"
    directory.mkdir()
    (directory / "from-host").write_text("hello from the host\n")
    return directory


@pytest.fixture
def image_copy(tmp_path, rootfs) -> Path:
    """A copy of the busybox image that a test may plant things in."""
    image = tmp_path / "image"
    shutil.copytree(rootfs, image, symlinks=True)
    return image


def nothing_left(mounts_before: str) -> None:
    """No record, no data directory, no mount: (host_objects() would also see other
    sessions' containers on a shared machine; the session's guard checks it whole)."""
    for ours in (state.containers_dir(), state.data_dir()):
        assert not ours.exists() or not list(ours.iterdir())
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


# -- what a volume is -----------------------------------------------------------------------

def test_a_file_written_inside_lands_on_the_host(shared):
    result = sh("cat /data/from-host && echo written inside > /data/from-container",
                volumes=[f"{shared}:/data"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello from the host\n"
    assert (shared / "from-container").read_text() == "written inside\n"


def test_a_read_only_volume_refuses_a_write_even_from_root(shared):
    result = sh("grep ' /data ' /proc/mounts; echo x > /data/from-host || echo refused",
                volumes=[f"{shared}:/data:ro"])
    line, answer = result.stdout.splitlines()
    assert set(line.split()[3].split(",")) >= {"ro", "nosuid", "nodev"}
    assert answer == "refused" and "Read-only file system" in result.stderr
    assert (shared / "from-host").read_text() == "hello from the host\n"


def test_a_volume_is_nosuid_and_nodev_even_where_the_host_mount_is_not(shared):
    host_mount = os.statvfs(shared).f_flag
    assert not host_mount & (os.ST_NOSUID | os.ST_NODEV)      # else this proves nothing
    os.mknod(shared / "kmsg", 0o600 | stat.S_IFCHR, os.makedev(1, 11))   # the kernel's log
    # No cgroup, so no device allow-list: only nodev stands between it and the device.
    result = sh("head -c1 /data/kmsg >/dev/null && echo opened; grep ' /data ' /proc/mounts",
                volumes=[f"{shared}:/data"], cgroup=False)
    assert "opened" not in result.stdout and "Permission denied" in result.stderr
    assert {"nosuid", "nodev", "rw"} <= set(result.stdout.split()[3].split(","))


def test_a_single_file_is_bound_onto_a_file_made_for_it(shared):
    result = sh("cat /etc/greeting; ls -l /etc/greeting",
                volumes=[f"{shared / 'from-host'}:/etc/greeting:ro"])
    assert result.stdout.startswith("hello from the host\n-"), result.stderr


@pytest.mark.parametrize("host, inside, kinds", [("from-host", "/etc", "a file, /etc"),
                                                 (".", "/etc/passwd", "a directory, /etc")])
def test_a_directory_on_a_file_or_a_file_on_a_directory_is_one_line(shared, host, inside, kinds):
    with pytest.raises(MinicontainerError, match=f"the host path is {kinds}"):
        sh("true", volumes=[f"{shared / host}:{inside}"])
    counts["bad inputs tried"] += 1


def test_nested_volumes_are_mounted_outer_first_as_docker_orders_them(shared, tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "mark").write_text("inner\n")
    result = sh("cat /data/sub/mark", volumes=[f"{inner}:/data/sub", f"{shared}:/data"])
    assert result.stdout == "inner\n", result.stderr
    assert (shared / "sub").is_dir()          # its mount point, made in the outer volume


# -- an image's symlinks stay inside the image ------------------------------------------------

@pytest.mark.parametrize("link", ["/etc", "../../../../../etc"])
def test_an_images_symlink_to_a_host_path_leads_into_the_image_not_the_host(
        shared, image_copy, link):
    """The image's /data -> /etc: the volume lands on the image's /etc, never the
    host's, and what is written through it lands in the volume."""
    (image_copy / "data").symlink_to(link)
    host_etc = sorted(os.listdir("/etc"))
    result = sh("echo through the volume > /data/written; ls /etc",
                rootfs=image_copy, volumes=[f"{shared}:/data"])
    assert result.exit_code == 0, result.stderr
    assert (shared / "written").exists()                    # the volume got the write
    assert "from-host" in result.stdout.split()             # at the image's /etc
    assert sorted(os.listdir("/etc")) == host_etc           # the host's /etc did not
    assert not os.path.ismount("/etc")


def test_an_images_symlink_climbing_out_or_to_nowhere_never_touches_the_host(
        shared, image_copy, tmp_path):
    nowhere = tmp_path / "made-by-nobody"
    (image_copy / "data").symlink_to("../../../../../../../../" + str(nowhere))
    with pytest.raises(MinicontainerError, match="cannot make 'data'"):
        sh("true", rootfs=image_copy, volumes=[f"{shared}:/data"])
    assert not nowhere.exists()


@pytest.mark.parametrize("link", ["/proc/sys/kernel", "/sys/fs", "/dev", "/", "../.."])
def test_an_images_symlink_to_the_kernels_paths_or_its_root_is_refused(
        shared, image_copy, link):
    (image_copy / "data").symlink_to(link)
    with pytest.raises(MinicontainerError, match="not a place for a volume"):
        sh("true", rootfs=image_copy, volumes=[f"{shared}:/data"])
    counts["bad inputs tried"] += 1


@pytest.mark.parametrize("kernel_path", ["proc", "sys", "dev"])
def test_an_images_proc_sys_or_dev_as_a_symlink_to_the_host_is_refused_as_runc_refuses_it(
        shared, image_copy, kernel_path):
    """The kernel's filesystems are mounted before pivot_root, where the image's
    `proc -> /host/dir` would lead to the host's /host/dir: a volume of it would show
    the container a second procfs that no mask covers (CVE-2019-19921 in runc)."""
    shutil.rmtree(image_copy / kernel_path)
    (image_copy / kernel_path).symlink_to(shared)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    with pytest.raises(MinicontainerError, match=f"image's /{kernel_path} is a symlink"):
        sh("ls /volume", rootfs=image_copy, volumes=[f"{shared}:/volume"])
    assert sorted(os.listdir(shared)) == ["from-host"]
    nothing_left(mounts_before)
    counts["bad inputs tried"] += 1


def test_an_images_tmp_symlink_is_followed_inside_the_image_and_missing_proc_is_made(
        image_copy):
    shutil.rmtree(image_copy / "tmp")
    (image_copy / "tmp").symlink_to("var/tmp")
    shutil.rmtree(image_copy / "proc")
    result = sh("grep -c ' /var/tmp tmpfs ' /proc/mounts; ls -ld /proc/self", rootfs=image_copy)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("1\n")


# -- what is refused before anything exists ---------------------------------------------------

REFUSED = [   # (volume, with the test's paths filled in, a word of the one line)
    ("/:/host", "host's /"),
    ("{data}:/x", "own state"),
    ("{run}:/x", "own state"),
    ("{images}:/x", "own state"),
    ("{holds_state}:/x", "own state"),
    ("{link_to_data}:/x", "own state"),
    ("{shared}:/proc/x", "not a place"),
    ("{shared}:/sys", "not a place"),
    ("{shared}:/dev/sda", "not a place"),
    ("{shared}:/", "not a place"),
    ("{shared}:/x/../proc", "not a place"),
    ("{shared}:relative", "absolute"),
    ("relative:/x", "named volumes"),
    ("{shared}/missing:/x", "does not exist"),
    ("{shared}:/x:z", "'z' is not supported"),
    ("{shared}:/x:ro,shared", "'shared' is not supported"),
    ("{shared}", "HOST:CONTAINER"),
]


@pytest.mark.parametrize("volume, why", REFUSED, ids=[v for v, _ in REFUSED])
def test_a_bad_volume_is_refused_with_one_line_and_nothing_left_behind(
        volume, why, shared, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(state.data_dir())
    paths = {"data": state.data_dir(), "run": state.containers_dir(), "images": default_root(),
             "holds_state": state.data_dir().parent.parent, "link_to_data": link,
             "shared": shared}
    before = Path("/proc/self/mountinfo").read_text()
    with pytest.raises(InvalidArgument, match=why) as refused:
        Container("true", volumes=[volume.format(**paths)])
    assert "\n" not in str(refused.value)
    counts["bad inputs tried"] += 1
    nothing_left(before)
    assert not (shared / "missing").exists()


@pytest.mark.parametrize("tmpfs, why", [
    ("/t:uid=0", "'uid=0' is not supported"), ("/t:suid", "'suid' is not supported"),
    ("/t:size=12", "no unit"), ("/t:mode=999", "'mode=999'"), ("/proc:size=1m", "not a place"),
    ("t", "absolute")])
def test_a_bad_tmpfs_is_refused_by_name(tmpfs, why):
    with pytest.raises(InvalidArgument, match=why):
        describe("true", tmpfs=[tmpfs])
    counts["bad inputs tried"] += 1


def test_volumes_need_a_mount_namespace_and_one_place_each(shared):
    with pytest.raises(InvalidArgument, match="mount namespace"):
        describe("true", namespaces=["pid", "uts"], volumes=[f"{shared}:/x"])
    with pytest.raises(InvalidArgument, match="duplicate mount point: /x"):
        describe("true", volumes=[f"{shared}:/x"], tmpfs=["/x/"])


# -- tmpfs ------------------------------------------------------------------------------------

def test_a_tmpfs_has_its_size_and_nothing_of_it_stays_after(shared):
    with Container(["sh", "-c", "df -k /scratch | tail -1; grep ' /scratch ' /proc/mounts; "
                    "echo in memory > /scratch/note; cp /bin/busybox /scratch/; "
                    "/scratch/busybox true || echo noexec"],
                   tmpfs=["/scratch:size=8m"]) as container:
        result = container.start().wait(timeout=60)
        upper = container.data / "upper"
        assert (upper / "scratch").is_dir()                # its mount point, in the image
        assert not (upper / "scratch" / "note").exists()   # its contents, only in memory
    df, mounted, noexec = result.stdout.splitlines()
    assert df.split()[1] == str(8 * 1024)
    assert {"nosuid", "nodev", "noexec"} <= set(mounted.split()[3].split(","))
    assert noexec == "noexec"


def test_a_tmpfs_can_be_exec_and_takes_its_mode(shared):
    result = sh("stat -c %a /scratch; cp /bin/busybox /scratch/ && /scratch/busybox echo ran",
                tmpfs=["/scratch:exec,mode=700"])
    assert result.stdout.split() == ["700", "ran"], result.stderr


# -- the CLI and the record ----------------------------------------------------------------------

def test_the_cli_takes_dockers_v_and_tmpfs(shared):
    result = subprocess.run(CLI + ["run", "-v", f"{shared}:/data:ro", "--volume",
                                   f"{shared}:/rw", "--tmpfs", "/run:size=1m", "--", "sh", "-c",
                                   "cat /data/from-host; touch /rw/ok; df -k /run | tail -1"],
                            capture_output=True, text=True, timeout=60)
    counts["containers run"] += 1
    assert result.returncode == 0, result.stderr
    greeting, df = result.stdout.splitlines()
    assert greeting == "hello from the host" and df.split()[1] == "1024"
    assert (shared / "ok").exists()


def test_the_cli_refuses_a_bad_volume_in_one_line(shared):
    result = subprocess.run(CLI + ["run", "-v", "/:/host", "--", "true"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 125 and result.stdout == ""
    assert result.stderr.startswith("minicontainer: ") and result.stderr.count("\n") == 1


def record_with(shared: Path, **mount) -> dict:
    """A record as a container with one volume writes it, its mount changed by `mount`."""
    spec = describe("true", volumes=[f"{shared}:/data"], tmpfs=["/t:size=1m"])
    record = {**record_of(spec), "network": None, "detached": False,
              "console": None, "created": 1.0, "owner": 1, "owner_started": None, "pid": None,
              "main_pid": None, "pid_started": None}
    record["mounts"][0].update(mount)
    return record


def test_a_record_with_its_mounts_reads_back(shared):
    record = record_with(shared)
    read_back = check_record(record["name"], json.loads(json.dumps(record)), state.roots())
    assert read_back["mounts"] == [
        {"target": "/data", "source": str(shared), "read_only": False, "noexec": False,
         "size": None, "mode": None, "flags": 0, "propagation": 0},
        {"target": "/t", "source": None, "read_only": False, "noexec": True,
         "size": 1024**2, "mode": None, "flags": 0, "propagation": 0}]


@pytest.mark.parametrize("hostile", [
    {"source": "/"}, {"source": "{data}"}, {"source": "{images}/blobs"}, {"source": "etc"},
    {"source": "/etc/../var/lib"}, {"target": "/proc/sys"}, {"target": "/"},
    {"target": "/a/../dev"}, {"target": "data"}, {"read_only": "yes"}, {"size": 4096},
    {"mode": 0o7777 + 1}, {"options": "suid"}, {"flags": 0x2}, {"propagation": 0x40001}],
    ids=lambda hostile: ",".join(f"{k}={v}" for k, v in hostile.items()))
def test_a_record_with_a_hostile_mount_is_refused(shared, hostile):
    paths = {"data": state.data_dir(), "images": default_root()}
    mount = {key: value.format(**paths) if isinstance(value, str) else value
             for key, value in hostile.items()}
    record = record_with(shared, **mount)
    with pytest.raises(BadRecord, match="refused"):
        check_record(record["name"], record, state.roots())


# -- rootless ----------------------------------------------------------------------------------

USER = 65534


def test_a_rootless_container_binds_a_volume_with_the_users_own_rights():
    """In a user namespace the user's files are root's inside, everyone else's are
    nobody's (65534, unmapped), and the host's permissions still decide."""
    if user_namespaces_refused():
        pytest.skip(f"no unprivileged user namespaces here: {user_namespaces_refused()}")
    home = Path(tempfile.mkdtemp(prefix="mc-rootless-volume-"))
    mine, theirs = home / "mine", home / "theirs"
    try:
        mine.mkdir()
        theirs.mkdir(mode=0o755)
        (theirs / "from-host").write_text("root's\n")      # root's, mode 0644
        os.chown(home, USER, USER)
        os.chown(mine, USER, USER)
        result = subprocess.run(
            ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", *CLI, "run",
             "--rootless", "-v", f"{mine}:/mine", "-v", f"{theirs}:/theirs", "--", "sh", "-c",
             "echo hi > /mine/note && stat -c %u /mine/note /theirs/from-host; "
             "echo x > /theirs/from-host || echo refused"],
            capture_output=True, text=True, timeout=60, cwd="/",
            env={"HOME": str(home), "PATH": "/usr/bin:/bin",
                 **{key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}})
        counts["containers run"] += 1
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["0", "65534", "refused"]
        assert (mine / "note").stat().st_uid == USER
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("alias_of", ["data", "above"])
def test_our_state_shown_at_another_path_by_a_bind_mount_is_still_refused(alias_of, tmp_path):
    # A path check alone sees /tmp/…/alias, not /var/lib/minicontainer: the inodes say
    # it. (A bind of a directory *inside* our state is not caught: see check_source.)
    state.data_dir().mkdir(parents=True, exist_ok=True)
    source = state.data_dir().parent if alias_of == "data" else state.data_dir().parent.parent
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(alias)], check=True)
    try:
        with pytest.raises(InvalidArgument, match="own state"):
            Container("true", volumes=[f"{alias}:/x"])
    finally:
        subprocess.run(["umount", str(alias)], check=True)
