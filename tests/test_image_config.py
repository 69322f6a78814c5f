"""An image's config applied as `docker run` applies it (images/config.py): pure rules,
and the image's /etc/passwd read as untrusted input."""
from __future__ import annotations

import os

import pytest

from minicontainer.errors import InvalidArgument
from minicontainer.images.config import layer_reader, run_config

CONFIG = {"config": {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port", "80"],
                     "Env": ["PATH=/usr/bin:/bin", "MODE=prod", "BROKEN"],
                     "WorkingDir": "/srv", "User": "web",
                     "ExposedPorts": {"80/tcp": {}, "443/tcp": {}}}}
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:\n"


def files(path: str) -> bytes | None:
    return {"/etc/passwd": PASSWD, "/etc/group": GROUP}.get(path)


def test_the_image_alone():
    run = run_config(CONFIG, files)
    assert run.argv == ("/entry", "serve", "--port", "80")
    assert run.env == {"PATH": "/usr/bin:/bin", "MODE": "prod"}
    assert (run.workdir, run.uid, run.gid) == ("/srv", 1000, 1001)
    assert run.exposed_ports == ("443/tcp", "80/tcp")


@pytest.mark.parametrize("options, argv", [
    ({"command": ["debug"]}, ("/entry", "debug")),                # ARGS replace Cmd
    ({"entrypoint": "/bin/sh"}, ("/bin/sh",)),                      # --entrypoint drops Cmd
    ({"entrypoint": "/bin/sh", "command": ["-c", "id"]}, ("/bin/sh", "-c", "id")),
    ({"entrypoint": "", "command": ["ls"]}, ("ls",)),               # --entrypoint ""
])
def test_docker_run_s_rules_for_the_command(options, argv):
    assert run_config(CONFIG, files, **options).argv == argv


def test_options_override_the_image():
    run = run_config(CONFIG, files, env={"MODE": "dev"}, workdir="/tmp", user="0:50")
    assert (run.env["MODE"], run.workdir, run.uid, run.gid) == ("dev", "/tmp", 0, 50)
    assert run_config(CONFIG, files, user="web:staff").gid == 50
    assert run_config(CONFIG, files, user="4242").uid == 4242     # not in passwd: fine


@pytest.mark.parametrize("config, options, message", [
    ({"config": {}}, {}, "names no command"),
    (CONFIG, {"user": "nobody"}, "not in the image's /etc/passwd"),
    (CONFIG, {"user": "web:wheel"}, "not in the image's /etc/group"),
    (CONFIG, {"workdir": "srv"}, "not an absolute path"),
])
def test_what_cannot_be_run_is_one_clear_error(config, options, message):
    with pytest.raises(InvalidArgument, match=message):
        run_config(config, files, **options)


def layer(root, entries: dict[str, bytes | str]):
    """A layer directory: bytes are files, "->X" a symlink to X, "whiteout" a 0:0 node."""
    for path, content in entries.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if content == "whiteout":
            os.mknod(target, 0o600 | 0o020000, 0)
        elif isinstance(content, str):
            target.symlink_to(content.removeprefix("->"))
        else:
            target.write_bytes(content)
    return root


def test_the_top_layer_wins_and_a_whiteout_hides_what_is_below(tmp_path):
    bottom = layer(tmp_path / "0", {"etc/passwd": b"old", "etc/group": b"g"})
    top = layer(tmp_path / "1", {"etc/passwd": b"new", "etc/group": "whiteout"})
    read = layer_reader([top, bottom])
    assert (read("/etc/passwd"), read("/etc/group")) == (b"new", None)


def test_a_symlink_out_of_the_image_is_never_followed(tmp_path):
    host_file = tmp_path / "host-passwd"
    host_file.write_bytes(b"host:x:0:0::/:/bin/sh\n")
    evil = layer(tmp_path / "evil", {"etc/passwd": f"->{host_file}"})
    via_dir = layer(tmp_path / "dir", {"etc": f"->{tmp_path}"})
    assert layer_reader([evil])("/etc/passwd") is None
    assert layer_reader([via_dir])("/etc/host-passwd") is None
    assert layer_reader([evil])("/../host-passwd") is None
    with pytest.raises(InvalidArgument):
        run_config(CONFIG, layer_reader([evil]), user="host")
