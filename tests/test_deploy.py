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


def test_each_students_server_is_a_kata_vm_running_as_root():
    single = values()["singleuser"]
    assert single["extraPodConfig"]["runtimeClassName"] == "kata"
    runtime = yaml.safe_load((DEPLOY / "runtimeclass.yaml").read_text())
    assert runtime["kind"] == "RuntimeClass" and runtime["metadata"]["name"] == "kata"
    assert "privileged_without_host_devices = true" in (DEPLOY / "runtimeclass.yaml").read_text()
    assert single["uid"] == 0
    assert values()["hub"]["config"]["KubeSpawner"]["privileged"] is True


def test_the_image_is_the_one_make_image_builds():
    single = values()["singleuser"]
    repository, tag = labimage.TAG.split(":")
    assert single["image"]["name"].endswith("/" + repository)
    assert single["image"]["tag"] == tag
    assert single["cmd"] == "jupyterhub-singleuser"
    hub = re.search(r"^jupyterhub==(\S+)$",
                    (labimage.IMAGE_DIR / "requirements.txt").read_text(), re.M).group(1)
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    assert hub in (CHART / "README.md").read_text()   # the hub version the chart runs
    assert chart["singleuser"]["cmd"] == single["cmd"]


def test_resources_cover_what_one_student_was_measured_to_use():
    single, measured = values()["singleuser"], sizing()
    state = in_bytes(single["storage"]["extraVolumes"][0]["emptyDir"]["sizeLimit"])
    # The guarantee holds the measured peak: a node full of students at their peak fits.
    assert in_bytes(single["memory"]["guarantee"]) >= measured["memory_peak_bytes"]
    assert measured["memory_peak_bytes"] >= measured["memory_at_rest_bytes"] > 0
    # The limit holds the peak of the measured course run and the tmpfs for nested state.
    assert in_bytes(single["memory"]["limit"]) >= measured["memory_peak_bytes"] + state
    assert in_bytes(single["storage"]["capacity"]) >= measured["student_files_bytes"]
