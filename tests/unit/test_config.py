"""Config: valid files load into Settings; every bad value is refused with the key and the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_full_config_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
[node]
ae_title = "AINODE"
port = 11112
data_dir = "state"
http_port = 8081
[pacs]
ae_title = "ORTHANC"
host = "10.0.0.5"
port = 4242
[fhir]
base_url = "http://fhir.local/fhir/R4"
patient_identifier_system = "urn:oid:1.2.3"
[assembly]
quiet_seconds = 2
[[route]]
pipeline = "radiograph-lesion"
Modality = "^(CR|DX)$"
BodyPartExamined = "(?i)femur|tibia"
"""))
    assert s.node.data_dir == tmp_path / "state"
    assert s.pacs is not None and (s.pacs.ae_title, s.pacs.port) == ("ORTHANC", 4242)
    assert s.fhir is not None and s.fhir.patient_identifier_system == "urn:oid:1.2.3"
    assert s.assembly.quiet_seconds == 2.0
    assert s.routes[0].patterns["BodyPartExamined"] == "(?i)femur|tibia"


def test_defaults_route_radiographs(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[node]\nport = 11112\n"))
    assert s.pacs is None and s.fhir is None
    assert s.assembly.quiet_seconds == 10.0
    assert (s.budgets.fhir_seconds, s.budgets.pipeline_seconds, s.budgets.delivery_seconds) == (30.0, 600.0, 120.0)
    assert (s.ingest.check_pixels, s.ingest.min_free_mb, s.ingest.min_free_percent) == ("header", 1024.0, 0.0)


def test_budgets_and_resources_load(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
[budgets]
fhir_seconds = 4
pipeline_seconds = 90.5
delivery_seconds = 30
stall_seconds = 60
[ingest]
check_pixels = "decode"
min_free_mb = 0
min_free_percent = 5
"""))
    assert (s.budgets.fhir_seconds, s.budgets.pipeline_seconds, s.budgets.stall_seconds) == (4.0, 90.5, 60.0)
    assert (s.ingest.check_pixels, s.ingest.min_free_mb, s.ingest.min_free_percent) == ("decode", 0.0, 5.0)
    assert [r.pipeline for r in s.routes] == ["radiograph-lesion"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nport = \"x\"\n", "node.port"),
        ("[node]\nae_title = \"THIS TITLE IS TOO LONG\"\n", "node.ae_title"),
        ("[pacs]\nhost = \"h\"\nport = 4242\n", "pacs.ae_title"),
        ("[node]\nprot = 1\n", "prot"),
        ("[[route]]\npipeline = \"x\"\nModality = \"(\"\n", "route[0].Modality"),
        ("[assembly]\nquiet_seconds = \"soon\"\n", "assembly.quiet_seconds"),
        ("[budgets]\nfhir_seconds = 0\n", "budgets.fhir_seconds"),
        ("[budgets]\npipline_seconds = 5\n", "pipline_seconds"),
        ("[ingest]\ncheck_pixels = \"full\"\n", "ingest.check_pixels"),
        ("[ingest]\nmin_free_percent = 100\n", "ingest.min_free_percent"),
        ("[ingest]\nmin_free_mb = -1\n", "ingest.min_free_mb"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text))


def test_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_settings(tmp_path / "absent.toml")
