"""The JupyterHub deployment, checked offline: the values file against Zero to
JupyterHub's own schema, and against the image `make image` builds and what it measured."""
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from minicontainer.course import labimage

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "jupyterhub"
CHART = DEPLOY / "chart-4.4.0"
UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3,
         "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def merged(defaults: dict, ours: dict) -> dict:
    """Helm's merge of a values file over the chart's defaults (maps merge, rest replaces)."""
    out = dict(defaults)
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def chart_values(ours: dict) -> dict:
    return merged(yaml.safe_load((CHART / "values.yaml").read_text()), ours)


def schema() -> dict:
    return yaml.safe_load((CHART / "values.schema.yaml").read_text())


def sizing() -> dict:
    return json.loads((DEPLOY / "sizing.json").read_text())


def in_bytes(quantity: str | int) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([KMG]i?)?", str(quantity)).groups()
    return int(float(number) * UNITS[unit or ""])


def test_values_pass_the_charts_own_schema():
    jsonschema.validate(chart_values(values()), schema())


def test_the_schema_check_catches_a_misspelt_key():
    wrong = values()
    wrong["singleuser"]["runtimeClass"] = "kata"          # not a key of the chart's
    with pytest.raises(jsonschema.ValidationError, match="runtimeClass"):
        jsonschema.validate(chart_values(wrong), schema())


# The RuntimeClasses kata-deploy creates, each named as the containerd handler it
# registers (kata-containers tools/packaging/kata-deploy, helm-chart templates/
# runtimeclasses.yaml: "kata-<shim>"), for the shims that need no TEE or GPU.
KATA_DEPLOY_CLASSES = {"kata-qemu", "kata-clh", "kata-fc", "kata-dragonball",
                       "kata-stratovirt", "kata-qemu-runtime-rs", "kata-clh-runtime-rs"}


def test_each_students_server_is_a_kata_vm_running_as_root():
    single = values()["singleuser"]
    chosen = single["extraPodConfig"]["runtimeClassName"]
    assert chosen in KATA_DEPLOY_CLASSES
    # Ours, for a Kata installed without kata-deploy: the same name, and the handler
    # containerd must know by that name (kata-deploy's: handler == name).
    runtime = yaml.safe_load((DEPLOY / "runtimeclass.yaml").read_text())
    assert runtime["kind"] == "RuntimeClass"
    assert runtime["metadata"]["name"] == runtime["handler"] == chosen
    assert single["uid"] == 0
    assert values()["hub"]["config"]["KubeSpawner"]["privileged"] is True
    # Not checked here: privileged_without_host_devices is the node's containerd
    # setting (kata-deploy writes it); docs/classroom-at-scale.md says how to look.


def test_the_student_works_in_their_volume_which_grade_reads():
    single, spawner = values()["singleuser"], values()["hub"]["config"]["KubeSpawner"]
    home = single["storage"]["homeMountPath"]
    # jupyterhub-singleuser serves notebook_dir, and starts in working_dir; the image's
    # WorkingDir is the course's own copy, which goes with the pod.
    assert spawner["notebook_dir"] == spawner["working_dir"] == home
    assert labimage.COURSE != home
    copy = single["lifecycleHooks"]["postStart"]["exec"]["command"][-1].split()
    assert copy[:2] == ["cp", "-rn"] and copy[-1].rstrip("/") == home
    assert set(copy[2:-1]) == {f"{labimage.COURSE}/notebooks", f"{labimage.COURSE}/exercises"}
    assert single["extraEnv"]["MINICONTAINER_EXERCISES"] == f"{home}/exercises"


def test_the_image_is_the_one_make_image_builds():
    single = values()["singleuser"]
    repository, tag = labimage.TAG.split(":")
    assert single["image"]["name"].endswith("/" + repository)
    assert single["image"]["tag"] == tag
    assert single["cmd"] == "jupyterhub-singleuser"
    hub = re.search(r"^jupyterhub==(\S+)$",
                    (labimage.IMAGE_DIR / "requirements.txt").read_text(), re.M).group(1)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == hub        # the JupyterHub the chart's hub runs
    assert yaml.safe_load((CHART / "values.yaml").read_text())["singleuser"]["cmd"] == single["cmd"]


def test_resources_cover_what_one_student_was_measured_to_use():
    single, measured = values()["singleuser"], sizing()
    state = in_bytes(single["storage"]["extraVolumes"][0]["emptyDir"]["sizeLimit"])
    # The guarantee holds the measured peak: a node full of students at their peak fits.
    assert in_bytes(single["memory"]["guarantee"]) >= measured["memory_peak_bytes"]
    assert measured["memory_peak_bytes"] >= measured["memory_at_rest_bytes"] > 0
    # The limit holds the peak of the measured course run and the tmpfs for nested state.
    assert in_bytes(single["memory"]["limit"]) >= measured["memory_peak_bytes"] + state
    assert in_bytes(single["storage"]["capacity"]) >= measured["student_files_bytes"]
