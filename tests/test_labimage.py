"""The course as an image (`make image`): it runs where a cluster would run it.

The fast test (the course layer is the same bytes each time) runs in `make test`. The
others need the built image, minutes and a bridge: `make test-image` runs them (it sets
MINICONTAINER_TEST_IMAGE=1), against the image `make image` put in the store.
"""
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from minicontainer.course import labimage, labstart
from minicontainer.course.imagelab import free_port

MC = [str(Path(__file__).resolve().parents[1] / ".venv/bin/python"), "-m", "minicontainer"]
needs_image = pytest.mark.skipif(os.environ.get("MINICONTAINER_TEST_IMAGE") != "1",
                                 reason="the lab image's tests run in `make test-image`")
ANSWER_SECONDS = 120


def checkout(tmp_path: Path) -> Path:
    """A copy of what the course layer is made of, to change without touching the repo."""
    copy = tmp_path / "checkout"
    for name in labimage.COURSE_FILES:
        source = labimage.REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def test_the_course_layer_is_the_same_bytes_when_built_twice(tmp_path):
    source = checkout(tmp_path)
    first = labimage.course_layer(tmp_path / "one", source)
    os.utime(source / "notebooks" / "00_welcome.py", None)   # newer: clamped to the epoch
    second = labimage.course_layer(tmp_path / "two", source)
    assert first.digest == second.digest
    with tarfile.open(first.tarball) as layer:
        names = layer.getnames()
        assert "opt/minicontainer/notebooks/00_welcome.ipynb" in names
        assert max(member.mtime for member in layer.getmembers()) <= labimage.EPOCH
        assert not [name for name in names if "__pycache__" in name]


def test_the_image_installs_pyprojects_dependencies_each_pinned_by_the_lock():
    import tomllib
    from packaging.requirements import Requirement
    project = tomllib.loads((labimage.REPO / "pyproject.toml").read_text())["project"]
    listed = (labimage.IMAGE_DIR / "requirements.txt").read_text().split()
    locked = {Requirement(line).name.lower(): line for line in
              (labimage.IMAGE_DIR / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    for dependency in project["dependencies"]:
        assert dependency in listed
        assert Requirement(dependency).name.lower() in locked
    assert locked["jupyterhub"] == "jupyterhub==5.5.0"


def test_a_notebook_change_rebuilds_the_course_layer_only(tmp_path):
    source = checkout(tmp_path)
    keys = labimage.stage_keys()
    before = labimage.course_layer(tmp_path / "one", source).digest
    with open(source / "notebooks" / "00_welcome.py", "a") as notebook:
        notebook.write("\n# changed\n")
    assert labimage.stage_keys() == keys           # base, python, kernel: reused
    assert labimage.course_layer(tmp_path / "two", source).digest != before


def test_the_lab_mounts_only_the_hierarchies_our_runtime_gives_it_a_group_in():
    hybrid = ("9:name=systemd:/x\n7:blkio:/\n6:freezer:/\n5:devices:/x\n4:cpu,cpuacct:/x\n"
              "3:memory:/x\n2:pids:/x\n1:cpuset:/\n0::/x\n")
    assert labstart.hierarchies_to_mount(hybrid) == [
        ("devices", "cgroup", "devices"), ("cpu,cpuacct", "cgroup", "cpu,cpuacct"),
        ("memory", "cgroup", "memory"), ("pids", "cgroup", "pids")]
    assert labstart.hierarchies_to_mount("0::/\n") == [("", "cgroup2", "")]


def test_no_hierarchy_the_lab_mounts_offers_the_hosts_release_agent():
    """The lab as `minicontainer run` starts it (--privileged, a cgroup namespace) mounts
    what labstart chooses: each mount's root must be the lab's own group, never a
    hierarchy's real root, where `release_agent` names a program the host runs as root
    (the CVE-2022-0492 technique; freezer's root was offered before)."""
    chosen = labstart.hierarchies_to_mount(Path("/proc/self/cgroup").read_text())
    script = "".join(
        f"mkdir -p /tmp/cg/{n} && mount -t {fstype} -o nosuid,nodev,noexec"
        f"{',' + options if options else ''} cgroup /tmp/cg/{n} && "
        f"echo {directory or 'unified'}: $(ls /tmp/cg/{n} | tr '\\n' ' ');"
        for n, (directory, fstype, options) in enumerate(chosen))
    done = subprocess.run([*MC, "run", "--rm", "--privileged", "--namespaces",
                           "mnt,pid,uts,ipc,net,cgroup", "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    roots = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert len(roots) == len(chosen) >= 1
    for tree, files in roots.items():
        assert "cgroup.procs" in files.split(), (tree, files)
        assert "release_agent" not in files.split(), f"{tree}: the host's root is mounted"


def wait_for_jupyter(url: str, through: list[str] | None = None) -> dict:
    """JupyterLab's /api (its version, no token needed), fetched directly or with a
    command prefix (nsenter into the container's network namespace)."""
    deadline = time.monotonic() + ANSWER_SECONDS
    while True:
        try:
            if through:
                done = subprocess.run([*through, "python3", "-c",
                                       f"import urllib.request; print(urllib.request.urlopen("
                                       f"'{url}', timeout=5).read().decode())"],
                                      capture_output=True, text=True, timeout=20)
                if done.returncode == 0:
                    return json.loads(done.stdout)
            else:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return json.loads(response.read())
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"JupyterLab did not answer at {url}")
        time.sleep(2)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The image as an OCI image layout, written by `minicontainer save --format oci`."""
    work = tmp_path_factory.mktemp("lab")
    archive = work / "lab.tar"
    subprocess.run([*MC, "save", "--format", "oci", "-o", archive, labimage.TAG], check=True)
    directory = work / "layout"
    directory.mkdir()
    subprocess.run(["tar", "-xf", archive, "-C", directory], check=True)
    archive.unlink()
    return directory


def bounding_capabilities() -> list[str]:
    """The capabilities this process may hand on (a sandbox may lack some, e.g. SYS_RESOURCE)."""
    from minicontainer.security import CAPABILITIES
    bits = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapBnd:")), 16)
    return [f"CAP_{name}" for number, name in enumerate(CAPABILITIES) if bits >> number & 1]


def as_privileged_pod(config: dict, state: Path) -> dict:
    """umoci's config.json changed as containerd changes a privileged container's (every
    capability, no masked or read-only paths, /sys and cgroups read-write, every device),
    plus what the course needs: a cgroup namespace and a volume for nested overlay state."""
    capabilities = bounding_capabilities()
    config["process"]["capabilities"] = {kind: capabilities for kind in
                                         ("bounding", "effective", "permitted")}
    config["process"]["noNewPrivileges"] = False
    for mount in config["mounts"]:
        if mount["destination"] in ("/sys", "/sys/fs/cgroup"):
            mount["options"] = [option for option in mount["options"] if option != "ro"]
    config["mounts"].append({"destination": "/var/lib/minicontainer", "type": "bind",
                             "source": str(state), "options": ["rbind", "rw"]})
    linux = config["linux"]
    linux["namespaces"].append({"type": "cgroup"})
    linux["maskedPaths"], linux["readonlyPaths"] = [], []
    linux.pop("seccomp", None)
    linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    return config


@needs_image
def test_the_lab_answers_under_runc_from_an_umoci_bundle_and_nests_when_privileged(
        layout, tmp_path):
    bundle, runc_state, state = tmp_path / "bundle", tmp_path / "runc", tmp_path / "state"
    state.mkdir()
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", bundle], check=True,
                   capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False        # as containerd starts a pod's container
    (bundle / "config.json").write_text(json.dumps(as_privileged_pod(config, state)))
    name = f"mc-lab-{os.getpid()}"
    runc = ["runc", "--root", str(runc_state)]
    with open(tmp_path / "lab.log", "wb") as log:   # the lab's output: runc hands it on
        subprocess.run([*runc, "run", "--detach", "--bundle", bundle, name], check=True,
                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60)
    try:
        pid = json.loads(subprocess.run([*runc, "state", name], capture_output=True,
                                        check=True).stdout)["pid"]
        # Its own network namespace, as a pod's: asked from inside it, nothing published.
        api = wait_for_jupyter(f"http://127.0.0.1:{labimage.PORT}/api",
                               ["nsenter", "-t", str(pid), "-n"])
        assert "version" in api
        nested = subprocess.run([*runc, "exec", name, "minicontainer", "run", "--", "echo",
                                 "nested"], capture_output=True, text=True, timeout=120)
        assert nested.stdout.strip() == "nested", nested.stderr
    finally:
        subprocess.run([*runc, "delete", "--force", name], capture_output=True, timeout=120)
        shutil.rmtree(bundle, ignore_errors=True)


def memory_of(name: str) -> dict[str, int]:
    """The container's memory cgroup now and at its peak (v1 here, v2 where mounted so)."""
    from minicontainer import state
    from minicontainer.cgroups import hierarchies
    version, root = hierarchies()["memory"]
    group = root / state.read(name)["cgroup"]
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    if version == "v1":
        return {"usage": int((group / "memory.usage_in_bytes").read_text()),
                "peak": int((group / "memory.max_usage_in_bytes").read_text()),
                "anon": int(stat["total_rss"]), "file": int(stat["total_cache"])}
    peak = group / "memory.peak"
    return {"usage": int((group / "memory.current").read_text()),
            "peak": int(peak.read_text()) if peak.exists() else 0,
            "anon": int(stat["anon"]), "file": int(stat["file"])}


@needs_image
def test_the_lab_answers_on_a_published_port_and_runs_notebooks_00_to_02_inside(tmp_path):
    port, name = free_port(), f"mc-lab-{os.getpid()}"
    state = tmp_path / "nested-state"            # the nested containers' overlays: a disk
    state.mkdir()
    subprocess.run([*MC, "run", "-d", "--name", name, *labimage.PRIVILEGES, "-v",
                    f"{state}:/var/lib/minicontainer", "-p", f"127.0.0.1:{port}:{labimage.PORT}",
                    labimage.TAG], check=True, capture_output=True, timeout=300)
    try:
        api = wait_for_jupyter(f"http://127.0.0.1:{port}/api")
        assert "version" in api
        hub = subprocess.run([*MC, "exec", name, "jupyterhub-singleuser", "--version"],
                             capture_output=True, text=True, timeout=60)
        assert hub.stdout.strip() == "5.5.0"          # what KubeSpawner will start
        time.sleep(10)
        at_rest = memory_of(name)
        started = time.monotonic()
        # 30 s here: a cell stuck for minutes is a failure with its notebook's traceback
        # (nbconvert's per-cell timeout), not a CI run that ends at its time limit.
        try:
            run = subprocess.run(
                [*MC, "exec", name, "sh", "-c", "cd notebooks && jupyter nbconvert --to "
                 "notebook --execute --ExecutePreprocessor.timeout=240 --output-dir /tmp/ran "
                 "00_welcome.ipynb 01_chroot.ipynb 02_namespaces.ipynb"],
                capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as stuck:
            said = stuck.stderr.decode() if isinstance(stuck.stderr, bytes) else stuck.stderr
            try:
                inside = subprocess.run([*MC, "exec", name, "ps", "-ef"], capture_output=True,
                                        text=True, timeout=60).stdout
            except subprocess.TimeoutExpired:
                inside = "(the lab did not answer ps in 60 s)"
            pytest.fail(f"notebooks 00-02 still running after {stuck.timeout} s; "
                        f"nbconvert said: {(said or '')[-3000:]}\nin the lab:\n{inside}")
        seconds = time.monotonic() - started
        after = memory_of(name)
        disk = subprocess.run(["du", "-sb", state], capture_output=True, text=True,
                              timeout=60).stdout
        print(f"\nlab memory at rest {at_rest}, after notebooks 00-02 {after}, "
              f"{seconds:.0f} s, nested state {disk.split()[0]} bytes")
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        subprocess.run([*MC, "rm", "-f", name], capture_output=True, timeout=120)


def layer_names(layout: Path) -> dict[str, set[str]]:
    """Each layer's digest and the paths in it, from an OCI image layout."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    names = {}
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tar:
            names[layer["digest"]] = {name.removeprefix("./") for name in tar.getnames()}
    return names


@needs_image
def test_no_layer_carries_the_build_hosts_name_or_dns_server(layout):
    # mmdebstrap copies both in from the build host; the runtime brings its own.
    for digest, names in layer_names(layout).items():
        assert not names & {"etc/hostname", "etc/resolv.conf"}, digest


@needs_image
def test_the_saved_image_is_pushed_by_skopeo_and_pulled_back_with_the_same_digest(
        layout, tmp_path):
    from minicontainer.course.imagelab import LocalRegistry, skopeo
    from minicontainer.images.registry import pull
    from minicontainer.images.store import Store
    built = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    with LocalRegistry() as lab:
        # --preserve-digests: skopeo would gzip our uncompressed layers on the way (a new
        # manifest digest); a registry stores them as they are.
        skopeo(["copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout}:latest",
                f"docker://{lab.address}/course/lab:1"], tmp_path)
        pulled = pull(f"{lab.address}/course/lab:1", Store(tmp_path / "store"))
    assert pulled == built
