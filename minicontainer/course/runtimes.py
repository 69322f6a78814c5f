"""Three OCI runtimes on one bundle: runc, crun and ours, seen from inside by one probe.

A bundle (bundles.py) is the same input for every OCI runtime, so it is how our
runtime (oci.py) is checked against the real ones: run it under runc, crun and
`minicontainer oci`, let a small shell script inside print what the container sees
(its namespaces, hostname, user, capabilities, NoNewPrivs, seccomp mode, mounts and
masked paths, rlimits, how many processes it may start under a pids limit, blocked
signals, exit code, and how it takes a signal sent by the runtime's `kill`), and
compare the tables row by row. Every row that differs must be a difference we know
and explain (oci.DIFFERENCES_FROM_RUNC, oci.DIFFERENCES_FROM_CRUN).

crun refuses to start on a hybrid cgroup host (v1 controllers beside a cgroup2
mount at /sys/fs/cgroup/unified). It is run here as `python -m
minicontainer.course.runtimes crun ...`: in a private mount namespace of its own
(unshare), where that mount is detached (hide_unified_cgroup); the host's mounts
are never touched. bench/start_time.py uses the same function.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..cgroups import mode as cgroup_mode

RUNTIMES = ("runc", "crun", "minicontainer")
NAMESPACE_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
HOST_NAMESPACES = ".host-namespaces"     # written into the rootfs: the probe compares
EXIT_CODE = 7                            # the probe's, to see it passed through
PIDS_LIMIT = 16                          # linux.resources.pids.limit, for every bundle

# What the container sees, one "row: value" a line. It runs busybox's applets only.
PROBE = r"""hostname | sed 's/^/hostname: /'
echo "id: $(id)"
while read kind inode; do
  [ "$(readlink /proc/self/ns/$kind)" = "$kind:[$inode]" ] && echo "ns $kind: host" ||
    echo "ns $kind: own"
done < /.host-namespaces
grep -E '^(Cap|NoNewPrivs|Seccomp|SigBlk|SigIgn)' /proc/self/status | tr -d '\t' |
  sed 's/:/: /'
echo "nofile: $(ulimit -Sn) $(ulimit -Hn)"
echo "nproc: $(ulimit -Su) $(ulimit -Hu)"
echo "oom_score_adj: $(cat /proc/self/oom_score_adj)"
echo "forks under the pids limit: $( (for i in $(seq 40); do sleep 1 & echo $i; done) 2>/dev/null |
  tail -1)"
echo "write to /: $(touch /probe 2>&1 && echo written)"
rm -f /probe
echo "cwd: $(pwd)"
env | sort | sed 's/^/env /; s/=/: /'
awk '{for (i = 7; i <= NF; i++) if ($i == "-") { print "mount " $5 ": " $(i+1); break }}' \
    /proc/self/mountinfo | sed 's#^mount /sys/fs/cgroup/[^:]*#mount /sys/fs/cgroup/*#' | sort -u
echo "read /proc/kcore: $(head -c1 /proc/kcore 2>/dev/null | wc -c)"
echo "ls /dev: $(ls /dev | tr '\n' ' ')"
exit 7
"""
# A first process that takes SIGTERM (a shell as pid 1 ignores it unless it traps it).
TRAP = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"


def hide_unified_cgroup() -> None:
    """Detach /sys/fs/cgroup/unified in *this* mount namespace, on a hybrid host, for
    crun. The caller must be in a private mount namespace of its own (unshare -m)."""
    if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
        raise RuntimeError("not in a mount namespace of our own (our parent shares ours): "
                           "run under `unshare -m`")
    unified = Path("/sys/fs/cgroup/unified")
    if cgroup_mode() == "hybrid" and unified.is_mount():
        subprocess.run(["umount", str(unified)], check=True)


def command(runtime: str, state_root: Path, *args: str) -> list[str]:
    """The argv of `RUNTIME --root STATE_ROOT ARGS` for runc, crun (in its own mount
    namespace, above) or minicontainer."""
    if runtime == "runc":
        return ["runc", "--root", str(state_root), *args]
    if runtime == "crun":
        return ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                __name__, "crun", "--root", str(state_root), *args]
    if runtime == "minicontainer":
        return [sys.executable, "-m", "minicontainer", "oci", "--root", str(state_root), *args]
    raise ValueError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")


def missing() -> list[str]:
    """The runtimes (and tools) this comparison needs that are not installed."""
    return [tool for tool in ("runc", "crun", "unshare") if shutil.which(tool) is None]


def with_probe(bundle: Path, args: list[str]) -> None:
    """Make `bundle` run `args` with no terminal and at most PIDS_LIMIT processes,
    and write the host's namespaces into its rootfs for the probe to compare with."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"].update(terminal=False, args=args)
    resources = config.setdefault("linux", {}).setdefault("resources", {})
    resources["pids"] = {"limit": PIDS_LIMIT}
    config_path.write_text(json.dumps(config, indent=1))
    rootfs = bundle / config["root"]["path"]
    (rootfs / HOST_NAMESPACES).write_text("".join(
        f"{kind} {os.stat(f'/proc/self/ns/{kind}').st_ino}\n" for kind in NAMESPACE_KINDS))


# glibc's own signals, 32 and 33 (NPTL's cancel and setxid): no program may use them, and
# whether they arrive ignored depends on who started the runtime (GNU make's recipes
# run with both ignored, a terminal's shell with neither); runc's Go runtime resets 33
# and keeps 32, we keep both as inherited. The comparison leaves them out.
GLIBC_SIGNALS = (1 << 31) | (1 << 32)


def rows(output: str) -> dict[str, str]:
    """The probe's lines as {row: value}; SigIgn and SigBlk without GLIBC_SIGNALS."""
    seen = dict(line.partition(": ")[::2] for line in output.splitlines() if line)
    for row in ("SigIgn", "SigBlk"):
        if row in seen:
            seen[row] = f"{int(seen[row], 16) & ~GLIBC_SIGNALS:016x}"
    return seen


def probe(runtime: str, bundle: Path, state_root: Path, container_id: str) -> dict[str, str]:
    """Run the probe (PROBE) in `bundle` under `runtime`, in the foreground (`run`):
    its rows, with the exit code and what a `kill TERM` does (signalled())."""
    with_probe(bundle, ["sh", "-c", PROBE])
    result = subprocess.run(command(runtime, state_root, "run", "--bundle", str(bundle),
                                    container_id),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=120)
    if result.returncode != EXIT_CODE:
        raise RuntimeError(f"{runtime} run: exit code {result.returncode}: {result.stderr}")
    seen = rows(result.stdout)
    seen["exit code"] = str(result.returncode)
    seen["kill TERM: exit code"] = str(signalled(runtime, bundle, state_root,
                                                 f"{container_id}-kill"))
    return seen


def signalled(runtime: str, bundle: Path, state_root: Path, container_id: str) -> int:
    """The exit code of a first process that traps SIGTERM (TRAP), sent by the
    runtime's own `kill` while `run` waits for it."""
    with_probe(bundle, ["sh", "-c", TRAP])
    with subprocess.Popen(command(runtime, state_root, "run", "--bundle", str(bundle),
                                  container_id),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as running:
        try:
            ready = running.stdout.readline()
            if ready != "ready\n":
                raise RuntimeError(f"{runtime}: the container did not start: "
                                   f"{running.stderr.read()}")
            subprocess.run(command(runtime, state_root, "kill", container_id, "TERM"),
                           check=True, capture_output=True, timeout=60)
            return running.wait(timeout=60)
        finally:
            if running.poll() is None:
                running.kill()
                running.wait()


def differing(theirs: dict[str, str], ours: dict[str, str]) -> dict[str, tuple]:
    """The rows whose values differ: {row: (theirs, ours)}."""
    return {row: (theirs.get(row), ours.get(row)) for row in sorted(theirs.keys() | ours.keys())
            if theirs.get(row) != ours.get(row)}


def table(seen: dict[str, dict[str, str]]) -> str:
    """The runtimes' rows side by side, a `*` before each row where they differ."""
    names = sorted(set().union(*(r.keys() for r in seen.values())))
    width = max(map(len, names), default=0)
    lines = [f"  {'':{width}}  " + "  ".join(f"{name:24}" for name in seen)]
    for row in names:
        values = [runtime.get(row, "-") for runtime in seen.values()]
        mark = "*" if len(set(values)) > 1 else " "
        lines.append(f"{mark} {row:{width}}  " + "  ".join(f"{v[:24]:24}" for v in values))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m minicontainer.course.runtimes crun ARGS`: crun where the host lets it."""
    if argv[:1] != ["crun"]:
        print("usage: python -m minicontainer.course.runtimes crun [ARGS...] "
              "(inside `unshare --mount --propagation private`)", file=sys.stderr)
        return 2
    hide_unified_cgroup()
    os.execvp("crun", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
