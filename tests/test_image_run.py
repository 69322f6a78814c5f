"""`docker run IMAGE [COMMAND]`: the image's Entrypoint, Cmd, Env, WorkingDir and User
applied by Docker's rules, the options over them (--entrypoint, -e, -w, -u), in Python
and on the command line. Every store here is a temporary one, never the machine's."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest

from minicontainer.container import Container, run
from minicontainer.errors import InvalidArgument, MinicontainerError
from minicontainer.host import cpu
from minicontainer.images.archives import digest_of, json_bytes
from minicontainer.images.manifests import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from minicontainer.images.store import Store, busybox_image

WHO = "pwd; id -u; id -g; id -G; echo $GREETING; grep CapEff /proc/self/status"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "data" / "images")


@pytest.fixture
def busybox(store):
    return busybox_image(store)


def with_config(store: Store, name: str, base, settings: dict):
    """An image of `base`'s layers whose config's runtime part is `settings`."""
    config = json_bytes({"architecture": cpu().debian, "os": "linux", "config": settings,
                         "rootfs": {"type": "layers", "diff_ids": base.config["rootfs"][
                             "diff_ids"]}})
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config),
                                      "size": len(config)},
                           "layers": base.manifest["layers"]})
    for blob in (config, manifest):
        store.ingest(digest_of(blob), len(blob), [blob])
    store.add_image(name, digest_of(manifest))
    return store.image(name)


def test_the_images_entrypoint_and_cmd_run_and_arguments_replace_the_cmd(store, busybox):
    image = with_config(store, "echoer", busybox, {"Entrypoint": ["echo", "said:"],
                                                   "Cmd": ["nothing"]})
    assert run(image=image).stdout == "said: nothing\n"
    assert run(["hello", "there"], image=image).stdout == "said: hello there\n"
    assert run(["%s|", "a", "b"], image=image, entrypoint="printf").stdout == "a|b|"


def test_user_workdir_and_env_come_from_the_image_and_the_user_holds_no_capability(
        store, busybox):
    image = with_config(store, "worker", busybox, {
        "Cmd": ["sh", "-c", WHO], "User": "nobody", "WorkingDir": "/srv/app",
        "Env": ["GREETING=hello", "PATH=/bin:/usr/bin"]})
    result = run(image=image)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n")[:6] == ["/srv/app", "65534", "65534", "65534", "hello",
                                             "CapEff:\t0000000000000000"]


def test_options_win_over_the_image(store, busybox):
    image = with_config(store, "worker2", busybox, {
        "Cmd": ["sh", "-c", WHO], "User": "nobody", "WorkingDir": "/srv/app",
        "Env": ["GREETING=hello"]})
    result = run(image=image, user="1000:1001", workdir="/tmp", env={"GREETING": "hi"})
    assert result.stdout.split("\n")[:5] == ["/tmp", "1000", "1001", "1001", "hi"]
    as_root = run(image=image, user="root")
    assert as_root.stdout.split("\n")[1:4] == ["0", "0", "0"]       # no host group left


def test_exec_runs_as_the_containers_user_in_its_directory(store, busybox):
    image = with_config(store, "sleeper", busybox, {
        "Cmd": ["sleep", "30"], "User": "nobody", "WorkingDir": "/srv"})
    with Container(image=image) as box:
        box.start()
        assert box.exec("pwd; id -u").stdout == "/srv\n65534\n"


@pytest.mark.parametrize("settings, options, message", [
    ({"Cmd": ["true"], "User": "ghost"}, {}, "not in the image's /etc/passwd"),
    ({"Cmd": ["true"]}, {"workdir": "relative"}, "not an absolute path"),
    ({}, {}, "names no command"),
    ({"Cmd": ["true"], "User": "nobody"}, {"rootless": True}, "maps only root"),
])
def test_what_cannot_run_is_refused_before_anything_is_made(store, busybox, settings, options,
                                                             message):
    image = with_config(store, "bad", busybox, settings)
    with pytest.raises(InvalidArgument, match=message):
        Container(image=image, **options)


HOSTILE_CONFIGS = [   # (the config's runtime part, a word of the one line)
    ("a string", "`config` is not a JSON object"),
    ({"Cmd": {"sh": 1}}, "Cmd is not a list of strings"),
    ({"Cmd": ["echo", 1]}, "Cmd is not a list of strings"),
    ({"Entrypoint": ["sh", "-c\0"]}, "Entrypoint is not a list of strings"),
    ({"Cmd": ["true"], "Env": [1]}, "Env is not a list of strings"),
    ({"Cmd": ["true"], "Env": "PATH=/bin"}, "Env is not a list of strings"),
    ({"Cmd": ["true"], "Env": ["A=b\0c"]}, "Env is not a list of strings"),
    ({"Cmd": ["true"], "WorkingDir": 5}, "WorkingDir is not a JSON string"),
    ({"Cmd": ["true"], "User": 1000}, "User is not a JSON string"),
    ({"Cmd": ["true"], "ExposedPorts": 80}, "ExposedPorts is not a JSON object"),
    ({"Cmd": ["true"], "User": "4294967295"}, "must be in range 0-2147483647"),
    ({"Cmd": ["true"], "User": "1:99999999999999999999"}, "must be in range 0-2147483647"),
    ({"Cmd": ["true"], "User": "\u00b2"}, "not in the image's /etc/passwd"),
    ({"Cmd": ["true"], "User": "nobody:\u00b2"}, "not in the image's /etc/group"),
]


@pytest.mark.parametrize("settings, message", HOSTILE_CONFIGS,
                         ids=[repr(s)[:40] for s, _ in HOSTILE_CONFIGS])
def test_an_image_configs_fields_of_the_wrong_type_or_range_are_one_line(
        store, busybox, settings, message):
    """The config is its author's JSON: a wrong type is refused by name, never a
    traceback, and a uid past runc's range never reaches setuid(2)."""
    image = with_config(store, "hostile", busybox, settings)
    with pytest.raises(MinicontainerError, match=message):
        Container(image=image)


def test_a_string_entrypoint_is_one_word_as_docker_reads_it(store, busybox):
    image = with_config(store, "stringy", busybox, {"Entrypoint": "echo", "Cmd": "one word"})
    assert run(image=image).stdout == "one word\n"


def test_entrypoint_needs_an_image():
    with pytest.raises(InvalidArgument, match="needs an image"):
        Container(["true"], entrypoint="sh")


def test_a_file_where_the_working_directory_should_be_fails_the_start_in_one_line(
        store, busybox):
    image = with_config(store, "filewd", busybox, {"Cmd": ["true"], "WorkingDir": "/etc/passwd"})
    with pytest.raises(OSError, match="/etc/passwd: the working directory is not a directory"):
        run(image=image)


# -- the command line -----------------------------------------------------------------------

def cli(tmp_path, *words: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MINICONTAINER_DATA": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "minicontainer", *words], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60)


def test_run_image_command_in_dockers_form_with_e_w_u(tmp_path, busybox):
    done = cli(tmp_path, "run", "-e", "X=1", "-e", "HOME", "-w", "/work", "-u", "1000",
               "busybox", "sh", "-c", "echo $X $HOME; pwd; id -u")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"1 {os.environ['HOME']}\n/work\n1000\n"


def test_run_image_alone_runs_its_cmd_and_dash_dash_keeps_the_default_directory(
        tmp_path, busybox):
    assert cli(tmp_path, "run", "busybox").returncode == 0          # its Cmd: sh, stdin empty
    done = cli(tmp_path, "run", "--entrypoint", "echo", "busybox", "from", "entrypoint")
    assert done.stdout == "from entrypoint\n"
    assert cli(tmp_path, "run", "--", "echo", "default").stdout == "default\n"


def test_an_image_the_store_lacks_is_one_line_with_pull_never(tmp_path, busybox):
    done = cli(tmp_path, "run", "--pull", "never", "nosuchimage", "true")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "minicontainer: no such image: nosuchimage: pull or load it first (see `minicontainer "
        "images`)"]


def test_an_image_the_store_refuses_is_said_as_it_is_not_pulled_over(tmp_path, store, busybox):
    """Only a missing image is pulled (Docker's --pull missing): a hostile layer's
    refusal must not turn into "Unable to find image" and a registry's error."""
    entry = tarfile.TarInfo("/etc/cron.d/job")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as archive:
        archive.addfile(entry, io.BytesIO(b""))
    blob = layer.getvalue()
    store.ingest(digest_of(blob), len(blob), [blob])
    config = json_bytes({"architecture": cpu().debian, "os": "linux", "config": {"Cmd": ["true"]},
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(blob)]}})
    manifest = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(blob),
                                       "size": len(blob)}]})
    for document in (config, manifest):
        store.ingest(digest_of(document), len(document), [document])
    store.add_image("escaper", digest_of(manifest))
    done = cli(tmp_path, "run", "escaper")
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        "minicontainer: layer entry '/etc/cron.d/job' is an absolute path: refused"]


def test_run_by_image_id_as_docker_does(tmp_path, busybox):
    short = busybox.digest[7:19]
    assert cli(tmp_path, "run", short, "echo", "by id").stdout == "by id\n"


def test_run_busybox_works_offline_in_a_store_that_lacks_it(tmp_path):
    done = cli(tmp_path, "run", "--pull", "never", "busybox", "echo", "made here")
    assert done.returncode == 0 and done.stdout == "made here\n", done.stderr
    assert "Unable to find image" not in done.stderr


def test_docker_habits_rm_and_ps_a(tmp_path, busybox):
    assert cli(tmp_path, "run", "--rm", "busybox", "echo", "gone after").stdout == "gone after\n"
    assert cli(tmp_path, "ps", "-a").stdout.count("\n") == 1        # the header alone
