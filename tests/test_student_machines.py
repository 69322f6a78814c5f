"""The student machines: the Vagrant VM's definition and provisioning, environment.yml."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is installed by `make test`")
def test_the_vagrantfile_is_valid(tmp_path):
    done = subprocess.run(["vagrant", "validate"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "VAGRANT_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (ROOT / ".vagrant").exists() or (ROOT / ".gitignore").read_text().count(".vagrant")


def test_the_vagrant_vm_is_provisioned_by_the_same_setup_script():
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    assert 'path: "scripts/vagrant-provision.sh"' in vagrantfile
    assert 'host_ip: "127.0.0.1"' in vagrantfile and "ubuntu-24.04" in vagrantfile
    assert "bash scripts/setup.sh" in (ROOT / "scripts/vagrant-provision.sh").read_text()


def test_the_provisioning_script_runs_here_and_writes_the_lab_service(tmp_path):
    """CI's machine is Debian: the provisioning runs for real (setup is idempotent);
    only the systemd unit goes to a scratch directory, and no service is started."""
    env = {**os.environ, "REPO": str(ROOT), "UNIT_DIR": str(tmp_path),
           "MINICONTAINER_TOKEN": "t0ken"}
    done = subprocess.run(["bash", "scripts/vagrant-provision.sh"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    unit = (tmp_path / "minicontainer-lab.service").read_text()
    assert f"ExecStart={ROOT}/.venv/bin/jupyter lab" in unit and "token=t0ken" in unit
    assert "http://127.0.0.1:8888/lab?token=t0ken" in done.stdout


def dependencies_of_pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(re.match(r"([\w-]+)(.*)", d).groups() for d in project["dependencies"])


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    conda += [d for d in pip if not d.startswith("-")]
    listed = dict(re.match(r"([\w-]+)(.*)", d).groups() for d in conda)
    python = listed.pop("python")
    listed.pop("pip")
    assert listed == dependencies_of_pyproject(), "environment.yml drifted from pyproject.toml"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == requires


def test_environment_yml_pip_part_installs():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_part = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                           "--disable-pip-version-check", *" ".join(pip_part).split()],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Would install minicontainer" in done.stdout, done.stderr
