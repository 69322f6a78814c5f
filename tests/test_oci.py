"""minicontainer as an OCI runtime: the bundle `runc spec` writes, run by runc and by
`minicontainer oci` (create, start, state, kill, delete), seen from inside by the same
probe; the life cycle; and bad input, each refused in one line with nothing left."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from minicontainer import bundles, oci
from minicontainer.errors import MinicontainerError
from minicontainer.rootfs import default_rootfs
from report import counts

PROBE = r"""hostname | sed 's/^/hostname: /'
echo "id: $(id)"
grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status | tr -d '\t' | sed 's/:/: /'
echo "nofile: $(ulimit -n)"
echo "oom_score_adj: $(cat /proc/self/oom_score_adj)"
echo "write to /: $(touch /probe 2>&1 && echo written)"
echo "cwd: $(pwd)"
env | sort | sed 's/^/env /; s/=/: /'
awk '{for (i = 7; i <= NF; i++) if ($i == "-") { print "mount " $5 ": " $(i+1); break }}' \
    /proc/self/mountinfo | sed 's#^mount /sys/fs/cgroup/[^:]*#mount /sys/fs/cgroup/*#' | sort -u
echo "ls /dev: $(ls /dev | tr '\n' ' ')"
"""


def runc_available() -> bool:
    return shutil.which("runc") is not None


needs_runc = pytest.mark.skipif(not runc_available(), reason="runc is not installed "
                                "(scripts/setup.sh test installs it)")


@pytest.fixture
def root(tmp_path) -> Path:
    """`--root` for our runtime: the records of this test's containers only."""
    return tmp_path / "state"


@pytest.fixture
def bundle(tmp_path) -> Path:
    """`runc spec`'s defaults on a copy of the busybox rootfs, running the probe."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    shutil.copytree(default_rootfs(), directory / "rootfs", symlinks=True)
    config = spec_defaults(directory)
    config["process"].update(terminal=False, args=["sh", "-c", PROBE])
    write_config(directory, config)
    return directory


def spec_defaults(directory: Path) -> dict:
    """What `runc spec` writes (a copy of it, where runc is missing)."""
    if runc_available():
        subprocess.run(["runc", "spec", "--bundle", str(directory)], check=True)
        return json.loads((directory / "config.json").read_text())
    return json.loads((Path(__file__).parent / "data" / "runc-spec.json").read_text())


def write_config(directory: Path, config: dict) -> None:
    (directory / "config.json").write_text(json.dumps(config, indent=1))


def oci_cli(root: Path, *args: str, stdout=None) -> subprocess.CompletedProcess:
    """`minicontainer oci --root ROOT ARGS`, its output read back. `create` hands its
    stdio to the container, as runc does: a pipe would stay open as long as the
    container runs, so its stdout goes to the file `stdout` and stderr to a file."""
    with tempfile.TemporaryFile("w+") as errors:
        result = subprocess.run(
            [sys.executable, "-m", "minicontainer", "oci", "--root", str(root), *args],
            stdin=subprocess.DEVNULL, stdout=stdout or subprocess.PIPE, stderr=errors,
            text=True, timeout=60)
        errors.seek(0)
        result.stderr = errors.read()
    return result


def state_of(root: Path, container_id: str) -> dict:
    result = oci_cli(root, "state", container_id)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_status(root: Path, container_id: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while (now := state_of(root, container_id))["status"] != status:
        assert time.monotonic() < deadline, f"still {now['status']}, not {status}"
        time.sleep(0.05)
    return now


def rows(output: str) -> dict[str, str]:
    """The probe's lines as {row: value}."""
    return dict(line.partition(": ")[::2] for line in output.splitlines() if line)


def run_with_runc(bundle: Path, tmp_path: Path) -> str:
    """The probe under runc: `runc run`, in the foreground."""
    result = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle",
                             str(bundle), "probe-runc"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_with_minicontainer(bundle: Path, root: Path, tmp_path: Path) -> str:
    """The probe under our runtime, through the whole life cycle."""
    output = tmp_path / "probe-output"
    with open(output, "w") as out:
        created = oci_cli(root, "create", "--bundle", str(bundle), "probe-mc", stdout=out)
    assert created.returncode == 0, created.stderr
    assert oci_cli(root, "start", "probe-mc").returncode == 0
    wait_for_status(root, "probe-mc", "stopped")
    assert oci_cli(root, "delete", "probe-mc").returncode == 0
    return output.read_text()


@needs_runc
def test_runc_spec_bundle_looks_the_same_inside_under_runc_and_minicontainer(
        bundle, root, tmp_path):
    theirs = rows(run_with_runc(bundle, tmp_path))
    (bundle / "rootfs" / "probe").unlink(missing_ok=True)
    ours = rows(run_with_minicontainer(bundle, root, tmp_path))
    assert theirs["hostname"] == "runc" and theirs["NoNewPrivs"] == "1"
    differing = {row for row in theirs.keys() | ours.keys() if theirs.get(row) != ours.get(row)}
    table = "\n".join(f"{row:28} runc {theirs.get(row)!s:12} ours {ours.get(row)}"
                      for row in sorted(differing))
    # Every row the same, but for those oci.py lists with their reasons.
    assert differing == set(oci.DIFFERENCES_FROM_RUNC), table


def test_created_container_waits_for_start_then_runs_then_stops(bundle, root, tmp_path):
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", "echo started > /dev/shm/mark; sleep 60"]
    config["annotations"] = {"course": "oci"}
    write_config(bundle, config)
    pid_file = tmp_path / "pid"
    created = oci_cli(root, "create", "--bundle", str(bundle), "--pid-file", str(pid_file),
                      "life", stdout=subprocess.DEVNULL)
    assert created.returncode == 0, created.stderr
    now = state_of(root, "life")
    assert now["status"] == "created" and now["pid"] == int(pid_file.read_text())
    assert (now["ociVersion"], now["bundle"], now["annotations"]) == (
        config["ociVersion"], str(bundle), {"course": "oci"})
    assert not Path(f"/proc/{now['pid']}/root/dev/shm/mark").exists()   # not run yet
    assert oci_cli(root, "start", "life").returncode == 0
    assert state_of(root, "life")["status"] == "running"
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{now['pid']}/root/dev/shm/mark").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert oci_cli(root, "kill", "life", "KILL").returncode == 0
    assert wait_for_status(root, "life", "stopped")["pid"] == 0
    assert oci_cli(root, "delete", "life").returncode == 0
    assert not (root / "containers" / "life").exists()
    assert not Path(f"/proc/{now['pid']}").exists()


def test_created_container_can_be_deleted_before_it_starts(bundle, root):
    assert oci_cli(root, "create", "--bundle", str(bundle), "never",
                   stdout=subprocess.DEVNULL).returncode == 0
    pid = state_of(root, "never")["pid"]
    assert oci_cli(root, "delete", "never").returncode == 0
    assert not Path(f"/proc/{pid}").exists() and not (root / "containers").exists()


def test_run_is_create_start_wait_delete_with_the_commands_exit_code(bundle, root):
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", "echo hello; exit 3"]
    write_config(bundle, config)
    result = oci_cli(root, "run", "--bundle", str(bundle), "once")
    assert (result.returncode, result.stdout) == (3, "hello\n")
    assert not (root / "containers").exists()


# -- bad input: one line, and nothing left ------------------------------------------------

def changed(config: dict, path: str, value: object) -> dict:
    """`config` with the field at dotted `path` set to `value`."""
    *parents, last = path.split(".")
    target = config
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return config


BAD_CONFIGS = {   # what we write into config.json → what the one line must say
    "not JSON": (None, "is not valid JSON"),
    "unknown ociVersion": (("ociVersion", "2.0.0"), "ociVersion '2.0.0'"),
    "missing rootfs": (("root.path", "no-such-dir"), "root.path"),
    "a seccomp action nobody answers": (("linux.seccomp", {"defaultAction": "SCMP_ACT_NOTIFY"}),
                                        "linux.seccomp.defaultAction"),
    "a seccomp comparison without an op": (
        ("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1}]}]}),
        "linux.seccomp.syscalls[0].args[0]"),
    "a seccomp flag": (("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                                          "flags": ["SECCOMP_FILTER_FLAG_LOG"]}),
                       "linux.seccomp.flags"),
    "a bind mount with suid": (("mounts", [{"destination": "/data", "type": "bind",
                                            "source": "/etc", "options": ["rbind", "suid"]}]),
                               "mounts[0]"),
    "a bind mount of nothing": (("mounts", [{"destination": "/data", "type": "bind",
                                             "source": "no-such-dir"}]), "does not exist"),
    "a proc mount elsewhere": (("mounts", [{"destination": "/other", "type": "proc",
                                            "source": "proc"}]), "mounts[0]"),
    "a tmpfs option we ignore no more": (("mounts", [{"destination": "/scratch", "type": "tmpfs",
                                                      "options": ["huge=always"]}]),
                                         "mounts[0]"),
    "joining a namespace of the wrong kind": (
        ("linux.namespaces", [{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/pid"}]),
        "linux.namespaces[1].path"),
    "joining something else": (("linux.namespaces", [{"type": "mount"},
                                                     {"type": "ipc", "path": "/etc/passwd"}]),
                               "linux.namespaces[1].path"),
    "a read-only root without a mount namespace": (
        ("linux", {"namespaces": [{"type": "pid"}, {"type": "uts"}]}),
        "root.readonly needs a new mount namespace"),
    "a user namespace without id maps": (
        ("linux.namespaces", [{"type": "mount"}, {"type": "user"}]),
        "a user namespace needs linux.uidMappings"),
    "id maps without a user namespace": (
        ("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
        "linux.uidMappings needs a new user namespace"),
    "joining a user namespace": (
        ("linux.namespaces", [{"type": "mount"}, {"type": "user", "path": "/proc/1/ns/user"}]),
        "linux.namespaces[1].path"),
    "a host sysctl": (("linux.sysctl", {"kernel.panic": "10"}), "linux.sysctl.kernel.panic"),
    "a net sysctl without a network namespace": (
        ("linux", {"namespaces": [{"type": "mount"}, {"type": "uts"}],
                   "sysctl": {"net.ipv4.ip_forward": "1"}}),
        "linux.sysctl.net.ipv4.ip_forward"),
    "a sysctl climbing out of /proc/sys": (("linux.sysctl", {"net/../../../etc/x": "1"}),
                                           "linux.sysctl"),
    "hooks": (("hooks", {"prestart": [{"path": "/bin/true"}]}), "hooks"),
    "an unknown field": (("process.frobnicate", True), "process.frobnicate"),
    "a relative masked path": (("linux.maskedPaths", ["etc"]), "linux.maskedPaths"),
    "a device node over ours": (("linux.devices", [{"path": "/dev/null", "type": "b",
                                                    "major": 8, "minor": 0}]),
                                "linux.devices[0].path"),
    "a device node outside /dev": (("linux.devices", [{"path": "/etc/sda", "type": "b",
                                                       "major": 8, "minor": 0}]),
                                   "linux.devices[0].path"),
    "every device allowed": (("linux.resources.devices", [{"allow": True, "access": "rwm"}]),
                             "linux.resources.devices"),
    "a device denied after one allowed": (
        ("linux.resources.devices", [{"allow": False, "access": "rwm"},
                                     {"allow": True, "type": "c", "major": 1, "minor": 1,
                                      "access": "r"},
                                     {"allow": False, "type": "c", "major": 1, "minor": 1,
                                      "access": "r"}]),
        "linux.resources.devices[2].allow"),
    "inheritable capabilities beyond the bounding set": (
        ("process.capabilities.inheritable", ["CAP_SYS_ADMIN"]),
        "process.capabilities.inheritable"),
    "additional groups that are not ids": (("process.user.additionalGids", ["wheel"]),
                                           "process.user.additionalGids"),
    "a terminal without a console socket": (("process.terminal", True), "--console-socket"),
    "a command not in the image": (("process.args", ["no-such-program"]), "no-such-program"),
    "cpu shares beyond the kernel's range": (("linux.resources.cpu", {"shares": 1}),
                                             "linux.resources.cpu: invalid cpu shares 1"),
    "a cpuset that is not a list of CPUs": (("linux.resources.cpu", {"cpus": "0;1"}),
                                            "linux.resources.cpu: invalid cpuset cpus"),
    "a realtime budget": (("linux.resources.cpu", {"realtimeRuntime": 950000}),
                          "linux.resources.cpu.realtimeRuntime"),
    "a cgroupsPath that climbs out of the tree": (("linux.cgroupsPath", "/a/../../etc"),
                                                  "linux.cgroupsPath"),
    "a cgroupsPath naming one of our own groups": (("linux.cgroupsPath", "mc-0123456789ab"),
                                                   "linux.cgroupsPath"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_refused_in_one_line_and_leaves_nothing(case, bundle, root):
    change, message = BAD_CONFIGS[case]
    if change is None:
        (bundle / "config.json").write_text("{ not json")
    else:
        write_config(bundle, changed(json.loads((bundle / "config.json").read_text()), *change))
    result = oci_cli(root, "create", "--bundle", str(bundle), "bad")
    counts["bad inputs tried"] += 1
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("minicontainer: ")
    assert message in result.stderr, result.stderr
    assert not (root / "containers").exists()


def test_missing_bundle_is_refused(root, tmp_path):
    result = oci_cli(root, "create", "--bundle", str(tmp_path / "nothing"), "bad")
    assert result.returncode == 1 and "has no config.json" in result.stderr


def test_operations_on_unknown_or_wrong_state_containers_are_refused(bundle, root):
    for args in (["start", "ghost"], ["state", "ghost"], ["kill", "ghost"], ["delete", "ghost"],
                 ["kill", "ghost", "NOSUCHSIGNAL"]):
        result = oci_cli(root, *args)
        counts["bad inputs tried"] += 1
        assert result.returncode == 1 and result.stderr.count("\n") == 1, args
    config = json.loads((bundle / "config.json").read_text())
    write_config(bundle, changed(config, "process.args", ["sleep", "60"]))
    assert oci_cli(root, "create", "--bundle", str(bundle), "busy",
                   stdout=subprocess.DEVNULL).returncode == 0
    try:
        duplicate = oci_cli(root, "create", "--bundle", str(bundle), "busy")
        assert duplicate.returncode == 1 and "exists already" in duplicate.stderr
        assert oci_cli(root, "start", "busy").returncode == 0
        again = oci_cli(root, "start", "busy")
        assert again.returncode == 1 and "is running" in again.stderr
        running = oci_cli(root, "delete", "busy")
        assert running.returncode == 1 and "is running" in running.stderr
        assert state_of(root, "busy")["status"] == "running"      # no effect on it
    finally:
        assert oci_cli(root, "delete", "--force", "busy").returncode == 0
    stopped = oci_cli(root, "kill", "busy")
    assert stopped.returncode == 1 and "no container" in stopped.stderr
    assert not (root / "containers").exists()


def test_errors_go_to_the_log_in_runcs_json_format(root, tmp_path):
    log = tmp_path / "log.json"
    oci_cli(root, "--log", str(log), "--log-format", "json", "state", "ghost")
    entry = json.loads(log.read_text())
    assert entry["level"] == "error" and "ghost" in entry["msg"]


# -- the fields a runtime must honour: each the same under runc and under us ----------------

def probe_both(bundle: Path, root: Path, tmp_path: Path, config: dict,
               script: str) -> tuple[dict | None, dict]:
    """`script` run in `config` under runc (None where it is missing) and under us."""
    config["process"]["args"] = ["sh", "-c", script]
    write_config(bundle, config)
    theirs = rows(run_with_runc(bundle, tmp_path)) if runc_available() else None
    return theirs, rows(run_with_minicontainer(bundle, root, tmp_path))


def config_of(bundle: Path) -> dict:
    return json.loads((bundle / "config.json").read_text())


def test_additional_gids_and_umask_are_the_commands(bundle, root, tmp_path):
    config = changed(config_of(bundle), "process.user.additionalGids", [10, 5, 1234])
    config["process"]["user"]["umask"] = 0o027
    theirs, ours = probe_both(bundle, root, tmp_path, config, (
        "echo groups: $(id -G); echo kernel: $(grep ^Groups: /proc/self/status | cut -f2); "
        "echo umask: $(umask)"))
    # The kernel keeps the list sorted (setgroups(2) sorts it): no order shows inside.
    assert ours == {"groups": "0 5 10 1234", "kernel": "5 10 1234", "umask": "0027"}, ours
    assert theirs in (None, ours)


def test_masked_and_read_only_paths_are_the_bundles_lists(bundle, root, tmp_path):
    config = config_of(bundle)
    config["linux"].update(maskedPaths=["/etc/passwd", "/etc/network", "/no/such/path"],
                           readonlyPaths=["/home", "/proc/sys"])
    theirs, ours = probe_both(bundle, root, tmp_path, config, (
        "echo passwd: $(wc -c < /etc/passwd); echo network: $(ls -A /etc/network | wc -l); "
        "echo home: $(touch /home/x 2>/dev/null && echo written || echo refused); "
        "echo interrupts: $(wc -c < /proc/interrupts | grep -qx 0 && echo hidden || echo shown)"))
    assert ours == {"passwd": "0", "network": "0", "home": "refused", "interrupts": "shown"}, ours
    assert theirs in (None, ours)


def test_sysctls_land_in_the_containers_own_namespaces(bundle, root, tmp_path):
    host = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    config = changed(config_of(bundle), "linux.sysctl", {
        "net.ipv4.ip_unprivileged_port_start": "99", "kernel/shmmni": "321",
        "kernel.domainname": "course.test"})
    theirs, ours = probe_both(bundle, root, tmp_path, config, (
        "echo port: $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); "
        "echo shmmni: $(cat /proc/sys/kernel/shmmni); "
        "echo domain: $(cat /proc/sys/kernel/domainname)"))
    assert ours == {"port": "99", "shmmni": "321", "domain": "course.test"}
    assert theirs in (None, ours)
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host


SECCOMP_PROBE = """echo mkdir: $(mkdir /dev/shm/made 2>&1 | sed 's/.*: //')
touch /dev/shm/f; chmod 777 /dev/shm/f 2>/dev/null; echo chmod 777: $?
chmod 755 /dev/shm/f 2>/dev/null; echo chmod 755: $?
sync; echo sync: $?
grep ^Seccomp: /proc/self/status | tr -d '\\t' | sed 's/:/: /'"""


def test_seccomp_profile_from_the_bundle_is_compiled_and_enforced(bundle, root, tmp_path):
    mode_777 = [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [
                   {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 13},
                   {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "args": mode_777},
                   {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
                    "args": [{**mode_777[0], "index": 2}]},
                   {"names": ["sync"], "action": "SCMP_ACT_KILL"}]}
    config = changed(config_of(bundle), "linux.seccomp", profile)
    theirs, ours = probe_both(bundle, root, tmp_path, config, SECCOMP_PROBE)
    assert ours == {"mkdir": "Permission denied", "chmod 777": "1", "chmod 755": "0", "sync": "159",
                    "Seccomp": "2"}, ours     # 159: killed by SIGSYS (128 + 31)
    assert theirs in (None, ours)


def test_bind_and_tmpfs_mounts_go_where_the_bundle_says(bundle, root, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    config = changed(config_of(bundle), "mounts", config_of(bundle)["mounts"] + [
        {"destination": "/srv/data", "type": "bind", "source": str(shared),
         "options": ["rbind", "ro", "nosuid", "nodev"]},
        {"destination": "/srv/rw", "type": "none", "source": str(shared),
         "options": ["bind", "noexec"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "size=1m", "mode=700"]}])
    theirs, ours = probe_both(bundle, root, tmp_path, config, (
        "echo read: $(cat /srv/data/hello); "
        "echo ro: $(touch /srv/data/x 2>/dev/null && echo written || echo refused); "
        "cp /bin/busybox /srv/rw/bb; echo noexec: $(/srv/rw/bb true 2>/dev/null && echo ran "
        "|| echo refused); rm /srv/rw/bb; "
        "echo scratch: $(stat -c %a /scratch) $(df -k /scratch | awk 'NR==2 {print $2}')"))
    assert ours == {"read": "from the host", "ro": "refused", "noexec": "refused",
                    "scratch": "700 1024"}, ours
    assert theirs in (None, ours)
    assert sorted(os.listdir(shared)) == ["hello"]


MOUNT_OPTIONS_PROBE = ("awk '$5 == \"/scratch\" || $5 == \"/srv/data\" {sub(/:[0-9]+$/, \"\", $7); "
                       "print $5 \": \" $6 \" \" $7}' /proc/self/mountinfo")


def test_atime_and_propagation_options_are_the_mounts_flags_as_under_runc(
        bundle, root, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    config = changed(config_of(bundle), "mounts", config_of(bundle)["mounts"] + [
        {"destination": "/srv/data", "type": "bind", "source": str(shared),
         "options": ["rbind", "nosuid", "nodev", "nodiratime", "unbindable"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "noatime", "shared", "size=1k"]}])
    theirs, ours = probe_both(bundle, root, tmp_path, config, MOUNT_OPTIONS_PROBE)
    assert ours == {"/scratch": "rw,nosuid,nodev,noatime shared",
                    "/srv/data": "rw,nosuid,nodev,nodiratime,relatime unbindable"}, ours
    assert theirs in (None, ours)


SHARING_PROBE = ("mkdir /seen /made; mount --rbind / /seen; mount -t tmpfs mc-leak-test /made; "
                 "echo exposed: $(grep -c ' /seen/made ' /proc/self/mountinfo); "
                 "echo root: $(awk '$5 == \"/\" {sub(/:[0-9]+$/, \"\", $7); print $7}' "
                 "/proc/self/mountinfo)")


def test_a_shared_root_shares_the_containers_mounts_but_never_with_the_host(
        bundle, root, tmp_path):
    config = changed(config_of(bundle), "linux.rootfsPropagation", "shared")
    config["root"]["readonly"] = False
    for kind in ("bounding", "effective", "permitted"):
        config["process"]["capabilities"][kind].append("CAP_SYS_ADMIN")
    config["process"]["args"] = ["sh", "-c", SHARING_PROBE]
    write_config(bundle, config)
    # Not compared with runc 1.1.5, which leaves / private (exposed 0): it sets the
    # flag before it binds the root; runc 1.2 on sets it after pivot_root, as we do.
    ours = rows(run_with_minicontainer(bundle, root, tmp_path))
    assert ours == {"exposed": "1", "root": "shared"}, ours   # a mount under / shows at /seen
    assert "mc-leak-test" not in Path("/proc/self/mountinfo").read_text()
    assert "mc-leak-test" not in Path("/proc/1/mountinfo").read_text()


def test_inheritable_and_ambient_capabilities_reach_the_command(bundle, root, tmp_path):
    config = config_of(bundle)
    caps = config["process"]["capabilities"]
    caps["inheritable"] = caps["ambient"] = caps["bounding"][:2]      # as runtime-tools sets
    theirs, ours = probe_both(bundle, root, tmp_path, config,
                              "grep ^Cap /proc/self/status | tr -d '\\t' | sed 's/:/: /'")
    assert ours["CapInh"] == ours["CapAmb"] != "0000000000000000", ours
    assert theirs in (None, ours)


def test_another_user_keeps_the_bundles_capabilities_as_under_runc(bundle, root, tmp_path):
    config = config_of(bundle)
    config["process"]["user"] = {"uid": 1000, "gid": 1000}
    caps = config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted", "ambient"):
        caps[kind] = sorted(set(caps[kind]) | {"CAP_SETUID", "CAP_SETGID"})
    caps["inheritable"] = ["CAP_KILL"]
    theirs, ours = probe_both(bundle, root, tmp_path, config,
                              "id; grep ^Cap /proc/self/status | tr -d '\\t' | sed 's/:/: /'")
    # A user other than root keeps, across execve, the ambient capabilities only: those
    # also inheritable (KILL, 1 << 5); without PR_SET_KEEPCAPS it would have none.
    assert {ours[row] for row in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {
        "0000000000000020"}, ours
    assert ours["CapBnd"] == "00000000200004e0", ours   # KILL SETGID SETUID NET_BIND AUDIT_WRITE
    assert theirs in (None, ours)


DEVICE_PROBE = ("echo node: $(stat -c '%t,%T %a %u:%g' /dev/test/null2); "
                "echo null2: $( (echo x > /dev/test/null2) 2>&1 | sed 's/.*: //' | grep . "
                "|| echo opened); "
                "echo fifo: $(stat -c %F /dev/fifo1); "
                "echo fuse: $( (exec 3<>/dev/fuse) 2>&1 | sed 's/.*: //' | grep . || echo opened)")


@pytest.mark.parametrize("allowed", [False, True])
def test_device_nodes_are_made_and_open_only_if_allowed(allowed, bundle, root, tmp_path):
    config = config_of(bundle)
    config["linux"]["devices"] = [
        {"path": "/dev/test/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
         "uid": 1, "gid": 2},
        {"path": "/dev/fifo1", "type": "p"},
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    if allowed:
        config["linux"]["resources"]["devices"].append(
            {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"})
    theirs, ours = probe_both(bundle, root, tmp_path, config, DEVICE_PROBE)
    # Root without CAP_DAC_OVERRIDE (runc spec's three capabilities) is not uid 1.
    assert ours == {"node": "1,3 640 1:2", "null2": "Permission denied", "fifo": "fifo",
                    "fuse": "opened" if allowed else "Operation not permitted"}, ours
    assert theirs in (None, ours)


@pytest.fixture
def holder():
    """A host process, PID 1 of its own pid namespace, in network and ipc namespaces
    of its own, to be joined: `unshare`'s child, `sleep`."""
    process = subprocess.Popen(["unshare", "--net", "--ipc", "--pid", "--fork",
                                "--kill-child", "sleep", "60"])
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 5
    while not children.read_text().split() or Path(
            f"/proc/{children.read_text().split()[0]}/cmdline").read_bytes() != b"sleep\x0060\x00":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield int(children.read_text().split()[0])
    process.kill()
    process.wait()


def test_namespaces_given_by_path_are_joined_not_made(bundle, root, tmp_path, holder):
    config = config_of(bundle)
    for entry in config["linux"]["namespaces"]:
        if entry["type"] in ("network", "ipc", "pid"):
            entry["path"] = f"/proc/{holder}/ns/{ns_name(entry['type'])}"
    theirs, ours = probe_both(bundle, root, tmp_path, config, (
        "for kind in net ipc pid uts; do echo $kind: $(stat -L -c %i /proc/self/ns/$kind); "
        "done; echo pid 1: $(cat /proc/1/comm)"))
    joined = {kind: str(os.stat(f"/proc/{holder}/ns/{kind}").st_ino)
              for kind in ("net", "ipc", "pid")}
    assert {kind: ours[kind] for kind in joined} == joined
    assert ours["pid 1"] == "sleep"                   # its /proc is the joined namespace's
    assert ours["uts"] != str(os.stat(f"/proc/{holder}/ns/uts").st_ino)   # made new
    assert theirs is None or {kind: theirs[kind] for kind in joined} == joined


def bundle_without_mounts(bundle: Path, namespaces: list[dict], script: str) -> None:
    """The bundle's config without what needs a mount namespace of its own (the
    hostname, the masked and read-only paths, a read-only root), in `namespaces`."""
    config = config_of(bundle)
    config.pop("hostname")
    config["root"]["readonly"] = False
    config["linux"].update(namespaces=namespaces, maskedPaths=[], readonlyPaths=[])
    config["process"]["args"] = ["sh", "-c", script]
    write_config(bundle, config)


def test_the_commands_writes_land_in_the_bundles_root_as_under_runc(bundle, root, tmp_path):
    config = changed(config_of(bundle), "root.readonly", False)
    theirs, ours = probe_both(bundle, root, tmp_path, config, "echo made > /written; "
                              "echo root: $(stat -f -c %T /)")
    assert (bundle / "rootfs" / "written").read_text() == "made\n"   # no overlay of ours
    assert theirs is None or theirs == ours


def test_without_a_mount_namespace_the_root_is_entered_with_chroot(bundle, root):
    bundle_without_mounts(bundle, [{"type": "pid"}], "echo made > /written; ls /proc")
    assert oci_cli(root, "create", "--bundle", str(bundle), "chrooted",
                   stdout=subprocess.DEVNULL).returncode == 0
    pid = state_of(root, "chrooted")["pid"]
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    assert os.readlink(f"/proc/{pid}/root") == str(bundle / "rootfs")
    assert oci_cli(root, "start", "chrooted").returncode == 0
    wait_for_status(root, "chrooted", "stopped")
    assert oci_cli(root, "delete", "chrooted").returncode == 0
    assert (bundle / "rootfs" / "written").read_text() == "made\n"
    assert not any((bundle / "rootfs" / "proc").iterdir())   # nothing mounted on the host


def test_a_mount_namespace_joined_by_path_is_used_and_left_unchanged(bundle, root, tmp_path):
    holder = subprocess.Popen(["unshare", "--mount", "sleep", "60"])
    try:
        while os.stat(f"/proc/{holder.pid}/ns/mnt").st_ino == os.stat(
                "/proc/self/ns/mnt").st_ino:            # unshare has not exec'd yet
            time.sleep(0.01)
        table = Path(f"/proc/{holder.pid}/mountinfo").read_text()
        bundle_without_mounts(bundle, [{"type": "pid"}, {
            "type": "mount", "path": f"/proc/{holder.pid}/ns/mnt"}], "echo made > /written")
        assert oci_cli(root, "create", "--bundle", str(bundle), "joined",
                       stdout=subprocess.DEVNULL).returncode == 0
        pid = state_of(root, "joined")["pid"]
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(
            f"/proc/{holder.pid}/ns/mnt").st_ino
        assert oci_cli(root, "start", "joined").returncode == 0
        wait_for_status(root, "joined", "stopped")
        assert oci_cli(root, "delete", "joined").returncode == 0
        assert (bundle / "rootfs" / "written").read_text() == "made\n"
        assert Path(f"/proc/{holder.pid}/mountinfo").read_text() == table
    finally:
        holder.kill()
        holder.wait()


def ns_name(kind: str) -> str:
    return {"network": "net"}.get(kind, kind)


# -- bundles of our own ----------------------------------------------------------------------

@needs_runc
def test_exported_image_bundle_runs_under_runc_as_under_minicontainer(root, tmp_path):
    from minicontainer.images.store import Store, busybox_image
    store = Store(tmp_path / "images")
    busybox_image(store)
    bundle = bundles.export_bundle("busybox:latest", tmp_path / "exported", store)
    config = json.loads((bundle / "config.json").read_text())
    assert config["linux"]["seccomp"] == bundles.seccomp_profile()
    write_config(bundle, changed(config, "process.args", ["sh", "-c", PROBE]))
    theirs = rows(run_with_runc(bundle, tmp_path))
    (bundle / "rootfs" / "probe").unlink(missing_ok=True)
    ours = rows(run_with_minicontainer(bundle, root, tmp_path))
    assert theirs["Seccomp"] == "2" and theirs["CapBnd"] == "00000000a00425fb"   # Docker's
    differing = {row for row in theirs.keys() | ours.keys() if theirs.get(row) != ours.get(row)}
    assert differing <= set(oci.DIFFERENCES_FROM_RUNC) | set(oci.DIFFERENCES_ON_OUR_BUNDLES), \
        differing


def test_exported_container_keeps_its_changes_and_deletions(rootfs, tmp_path):
    from minicontainer.container import Container
    with Container("rm /etc/passwd; echo changed > /etc/motd", rootfs=rootfs) as container:
        container.start()
        assert container.wait(30).exit_code == 0
        bundle = bundles.export_bundle(container.name, tmp_path / "exported")
    assert (bundle / "rootfs" / "etc" / "motd").read_text() == "changed\n"
    assert not (bundle / "rootfs" / "etc" / "passwd").exists()   # the whiteout honoured
    assert (rootfs / "etc" / "passwd").exists()                   # the image untouched
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"][:2] == ["/bin/sh", "-c"]


def test_export_refuses_a_directory_that_is_not_empty(tmp_path):
    from minicontainer.images.store import Store, busybox_image
    store = Store(tmp_path / "images")
    busybox_image(store)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine").write_text("keep me")
    with pytest.raises(MinicontainerError, match="not empty"):
        bundles.export_bundle("busybox:latest", tmp_path / "full", store)
    assert (tmp_path / "full" / "mine").read_text() == "keep me"


def test_terminal_master_goes_to_the_console_socket(bundle, root, tmp_path):
    import socket
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=True, args=["sh", "-c", "tty; stty size"])
    write_config(bundle, config)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "console.sock"))
    listener.listen(1)
    with listener:
        created = oci_cli(root, "create", "--bundle", str(bundle), "--console-socket",
                          str(tmp_path / "console.sock"), "withtty")
        assert created.returncode == 0, created.stderr
        connection, _ = listener.accept()
        with connection:
            _, fds, _, _ = socket.recv_fds(connection, 64, 1)
    master = fds[0]
    try:
        assert oci_cli(root, "start", "withtty").returncode == 0
        output = b""
        while b"\n" not in output.partition(b"/dev/pts/0")[2]:
            output += os.read(master, 1024)
        assert output.startswith(b"/dev/pts/0")          # its own devpts, its first pty
    finally:
        os.close(master)
        wait_for_status(root, "withtty", "stopped")
        assert oci_cli(root, "delete", "withtty").returncode == 0


def pids_tree() -> Path:
    from minicontainer import cgroups
    return cgroups.hierarchies()["pids"][1]


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_cgroups_path_is_where_the_group_is_made_and_delete_removes_it(form, bundle, root):
    # runtime-tools' linux_cgroups_pids and _relative_pids, delete_resources: runc takes
    # "/X" from each tree's root, "X" below its own cgroup (ours: our parent group).
    name = f"ocifix-test-{os.getpid()}"
    path = f"/{name}" if form == "absolute" else f"{name}/inner"
    where = pids_tree() / (name if form == "absolute" else f"minicontainer/{name}/inner")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["cgroupsPath"] = path
    config["linux"].setdefault("resources", {})["pids"] = {"limit": 123}
    config["process"]["args"] = ["sleep", "60"]
    write_config(bundle, config)
    created = oci_cli(root, "create", "--bundle", str(bundle), "grouped",
                      stdout=subprocess.DEVNULL)
    assert created.returncode == 0, created.stderr
    try:
        pid = state_of(root, "grouped")["pid"]
        assert (where / "pids.max").read_text().strip() == "123"
        assert str(pid) in (where / "cgroup.procs").read_text().split()
        assert oci_cli(root, "kill", "grouped", "KILL").returncode == 0
        wait_for_status(root, "grouped", "stopped")
    finally:
        deleted = oci_cli(root, "delete", "--force", "grouped")
    assert deleted.returncode == 0, deleted.stderr
    assert not where.exists()
    assert not (pids_tree() / "minicontainer" / name).exists()   # what it made between


def test_cgroups_path_that_exists_is_refused_and_left_alone(bundle, root):
    # runc would join it; we refuse, so that delete never kills what it did not start.
    held = pids_tree() / f"ocifix-held-{os.getpid()}"
    held.mkdir()
    try:
        config = json.loads((bundle / "config.json").read_text())
        config["linux"]["cgroupsPath"] = f"/{held.name}"
        write_config(bundle, config)
        result = oci_cli(root, "create", "--bundle", str(bundle), "held")
        assert result.returncode != 0 and "exists already" in result.stderr, result.stderr
        assert held.is_dir() and not (root / "containers" / "held").exists()
        from minicontainer import cgroups
        assert not any((tree / held.name).exists() for version, tree in
                       cgroups.hierarchies().values() if tree != held.parent)
    finally:
        held.rmdir()


def cpu_settings(pid: int) -> dict[str, str]:
    """The cpu and cpuset files of the groups process `pid` is in (v1, or v2's)."""
    from minicontainer import cgroups
    where = cgroups.hierarchies()
    groups = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            groups[controller] = path.lstrip("/")
    names = {"v1": ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"),
             "v2": ("cpu.weight", "cpu.max")}[where["cpu"][0]] + ("cpuset.cpus", "cpuset.mems")
    settings = {}
    for name in names:
        controller = name.split(".")[0]
        version, tree = where[controller]
        group = groups[controller if version == "v1" else ""]
        settings[name] = (tree / group / name).read_text().strip()
    return settings


def test_cpu_shares_period_and_cpuset_are_the_groups_as_under_runc(bundle, root, tmp_path):
    from minicontainer import cgroups
    config = changed(config_of(bundle), "linux.resources.cpu", {
        "shares": 512, "period": 50000, "quota": 25000, "cpus": "0", "mems": "0"})
    config["process"]["args"] = ["sleep", "60"]
    write_config(bundle, config)
    assert oci_cli(root, "create", "--bundle", str(bundle), "cpus",
                   stdout=subprocess.DEVNULL).returncode == 0
    try:
        ours = cpu_settings(state_of(root, "cpus")["pid"])
    finally:
        assert oci_cli(root, "delete", "--force", "cpus").returncode == 0
    expected = {"cpuset.cpus": "0", "cpuset.mems": "0", **(
        {"cpu.shares": "512", "cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "25000"}
        if cgroups.hierarchies()["cpu"][0] == "v1" else
        {"cpu.weight": str(cgroups.shares_to_weight(512)), "cpu.max": "25000 50000"})}
    assert ours == expected
    if runc_available():
        runc = ["runc", "--root", str(tmp_path / "runc")]
        subprocess.run(runc + ["create", "--bundle", str(bundle), "cpus-runc"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=60)
        try:
            state = json.loads(subprocess.run(runc + ["state", "cpus-runc"], check=True,
                                              capture_output=True, text=True).stdout)
            assert cpu_settings(state["pid"]) == expected
        finally:
            subprocess.run(runc + ["delete", "--force", "cpus-runc"], check=True)


@pytest.fixture
def reachable_bundle(bundle):
    """The bundle copied where any user may reach it (pytest's directories are root's
    alone, 0700): a user namespace's root is another user on the host."""
    directory = Path(tempfile.mkdtemp(prefix="oci-userns-"))
    directory.chmod(0o755)
    shutil.copytree(bundle, directory / "bundle", symlinks=True)
    yield directory / "bundle"
    shutil.rmtree(directory)


def test_a_user_namespace_maps_the_bundles_ids_written_by_the_parent(
        reachable_bundle, root, tmp_path):
    config = config_of(reachable_bundle)
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    config["process"]["user"] = {"uid": 0, "gid": 0, "additionalGids": [10]}
    theirs, ours = probe_both(reachable_bundle, root, tmp_path, config, (
        "echo uid_map: $(cat /proc/self/uid_map); echo gid_map: $(cat /proc/self/gid_map); "
        "echo ids: $(id -u) $(id -g) $(id -G); "
        "echo rootfs owner: $(stat -c %u:%g /bin/busybox)"))
    assert ours == {"uid_map": "0 100000 65536", "gid_map": "0 200000 65536",
                    "ids": "0 0 0 10", "rootfs owner": "65534:65534"}, ours
    assert theirs in (None, ours)
    # Another user of the namespace (it maps many: ours, for `run`, maps root alone).
    config["process"]["user"] = {"uid": 1000, "gid": 1000}
    for kind in ("bounding", "effective", "permitted"):
        config["process"]["capabilities"][kind] += ["CAP_SETUID", "CAP_SETGID"]
    theirs, ours = probe_both(reachable_bundle, root, tmp_path, config,
                              "echo ids: $(id -u) $(id -g) $(id -G)")
    assert ours == {"ids": "1000 1000 1000"} and theirs in (None, ours), (ours, theirs)
    config["process"]["args"] = ["sleep", "60"]
    write_config(reachable_bundle, config)
    assert oci_cli(root, "create", "--bundle", str(reachable_bundle), "mapped",
                   stdout=subprocess.DEVNULL).returncode == 0
    try:
        status = Path(f"/proc/{state_of(root, 'mapped')['pid']}/status").read_text()
    finally:
        assert oci_cli(root, "delete", "--force", "mapped").returncode == 0
    assert "Uid:\t101000\t101000\t101000\t101000" in status   # uid 1000 on the host: 101000
    assert "Gid:\t201000\t201000\t201000\t201000" in status
