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
    assert [r.pipeline for r in s.routes] == ["chest-ct-nodule", "radiograph-lesion"]  # one default route per shipped bundle


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
        ("[ingest]\nown_results = \"keep\"\n", "ingest.own_results"),
        ("[ingest]\nresent_conflict = \"newest\"\n", "ingest.resent_conflict"),
        ("[watchdog]\njob_stuck_seconds = 0\n", "watchdog.job_stuck_seconds"),
        ("[assembly]\nreopen_debounce_seconds = -1\n", "assembly.reopen_debounce_seconds"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text))


def test_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_settings(tmp_path / "absent.toml")


def test_the_shipped_example_config_loads() -> None:
    s = load_settings(Path(__file__).resolve().parents[2] / "deploy" / "node.example.toml")
    assert s.ingest.own_results == "ignore" and s.ingest.resent_conflict == "keep-first"
    assert s.watchdog.job_stuck_seconds == 3600 and s.assembly.reopen_debounce_seconds == 2
    assert [r.pipeline for r in s.routes] == ["chest-ct-nodule", "radiograph-lesion"]
    assert all("BodyPartExamined" in r.patterns for r in s.routes)


def secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_no_security_section_keeps_todays_behaviour(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[node]\nport = 11112\n"))
    sec = s.security
    assert sec.callers == () and sec.user_identity is None and sec.tls is None and sec.http.token is None
    assert not sec.require_called_ae_title
    assert (sec.associate_timeout_seconds, sec.max_associations, sec.max_connections_per_host) == (5.0, 32, 16)


def test_full_security_section_loads(tmp_path: Path) -> None:
    for name in ("server.pem", "ca.pem", "web.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    for name in ("server.key", "web.key"):
        secret(tmp_path / name, "key")
    secret(tmp_path / "users", "# comment\nct-room-2:pass:with:colons\n")
    secret(tmp_path / "token", "0123456789abcdef0123\n")
    s = load_settings(write(tmp_path, """
[security]
associate_timeout_seconds = 3
max_connections_per_host = 4
require_called_ae_title = true
[[security.caller]]
ae_title = "CT1"
hosts = ["10.0.0.5", "10.1.0.0/16"]
[[security.caller]]
ae_title = "ORTHANC"
[security.user_identity]
users_file = "users"
[security.tls]
cert_file = "server.pem"
key_file = "server.key"
ca_file = "ca.pem"
[security.http]
token_file = "token"
cert_file = "web.pem"
key_file = "web.key"
"""))
    sec = s.security
    assert sec.associate_timeout_seconds == 3.0 and sec.max_connections_per_host == 4 and sec.require_called_ae_title
    assert [c.ae_title for c in sec.callers] == ["CT1", "ORTHANC"]
    assert [str(n) for n in sec.callers[0].hosts] == ["10.0.0.5/32", "10.1.0.0/16"] and sec.callers[1].hosts == ()
    assert sec.user_identity is not None and sec.user_identity.users == {"ct-room-2": b"pass:with:colons"}
    assert sec.tls is not None and sec.tls.required and sec.tls.verify_client and sec.tls.ca_file == tmp_path / "ca.pem"
    assert sec.http.token == "0123456789abcdef0123" and sec.http.key_file == tmp_path / "web.key"
    assert "0123456789abcdef0123" not in repr(s) and "pass:with:colons" not in repr(s)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[security]\nmax_conections = 1\n", "max_conections"),
        ("[security]\nassociate_timeout_seconds = 0\n", "security.associate_timeout_seconds"),
        ("[security]\nmax_associations = \"many\"\n", "security.max_associations"),
        ("[[security.caller]]\nhosts = [\"10.0.0.1\"]\n", "security.caller[0].ae_title"),
        ("[[security.caller]]\nae_title = \"CT1\"\nhosts = [\"ct1.hospital.org\"]\n", "security.caller[0].hosts"),
        ("[security.tls]\ncert_file = \"absent.pem\"\nkey_file = \"absent.key\"\nverify_client = false\n",
         "security.tls.cert_file.*no such file"),
        ("[security.tls]\nkey_file = \"k\"\n", "security.tls.cert_file is required"),
        ("[security.user_identity]\nrequired = true\n", "security.user_identity.users_file is required"),
        ("[security.http]\ntoken_file = \"nope\"\n", "security.http.token_file.*no such file"),
    ],
)
def test_bad_security_values_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text))


def test_secrets_readable_by_everyone_are_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod o-r"):
        load_settings(write(tmp_path, '[security.http]\ntoken_file = "token"\n'))


@pytest.mark.parametrize(
    ("tls", "names"),
    [
        ("", "security.tls.ca_file is required while verify_client"),
        ('ca_file = "ca.pem"\nport = 2762\n', "security.tls.port = 2762: with required = true"),
        ('ca_file = "ca.pem"\nrequired = false\n', "security.tls.port is required"),
    ],
)
def test_tls_modes_are_consistent(tmp_path: Path, tls: str, names: str) -> None:
    (tmp_path / "s.pem").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    secret(tmp_path / "s.key", "x")
    with pytest.raises(ConfigError, match=names):
        load_settings(write(tmp_path, f'[node]\nport = 11112\n[security.tls]\ncert_file = "s.pem"\nkey_file = "s.key"\n{tls}'))


def test_users_file_format_and_token_length(tmp_path: Path) -> None:
    secret(tmp_path / "users", "just-a-name\n")
    with pytest.raises(ConfigError, match="line 1: write 'username:passcode'"):
        load_settings(write(tmp_path, '[security.user_identity]\nusers_file = "users"\n'))
    secret(tmp_path / "token", "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(write(tmp_path, '[security.http]\ntoken_file = "token"\n'))


PACS = '[pacs]\nae_title = "ORTHANC"\nhost = "10.0.0.5"\nport = 4242\n'


def test_pacs_is_the_default_destination_and_destinations_add_to_it(tmp_path: Path) -> None:
    token = tmp_path / "stow.token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)
    s = load_settings(write(tmp_path, PACS + """
[outbox]
max_attempts = 5
[[destination]]
name = "archive"
type = "stow-rs"
url = "https://archive.example.org/dicom-web/"
kinds = ["sr", "sc"]
token_file = "stow.token"
max_attempts = 12
[[destination]]
name = "viewer-cache"
type = "dimse"
ae_title = "CACHE"
host = "10.0.0.9"
port = 104
kinds = ["gsps"]
"""))
    by_name = {d.name: d for d in s.destinations}
    assert list(by_name) == ["pacs", "archive", "viewer-cache"]
    assert by_name["pacs"].kinds == {"sr", "sc", "gsps", "ko"} and by_name["pacs"].retry.max_attempts == 5
    archive = by_name["archive"]
    assert (archive.type, archive.url, archive.kinds) == ("stow-rs", "https://archive.example.org/dicom-web",
                                                          {"sr", "sc"})
    assert archive.retry.max_attempts == 12 and archive.token == "0123456789abcdef0123"
    assert "0123456789abcdef" not in repr(archive), "the token never shows in a repr (logs)"
    assert by_name["viewer-cache"].describe() == "CACHE@10.0.0.9:104"


def test_pacs_with_no_kinds_is_only_asked_for_counts(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, PACS + "kinds = []\n"))
    assert s.pacs is not None and s.destinations == ()


@pytest.mark.parametrize("table, words", [
    ('name = "x"\ntype = "ftp"', ['destination \'x\'.type = \'ftp\'', '"dimse"', '"stow-rs"']),
    ('name = "pacs"\ntype = "dimse"\nae_title = "A"\nhost = "h"\nport = 1', ["used twice", "kinds = []"]),
    ('name = "Bad Name"\ntype = "dimse"', ["destination[0].name", "lower-case"]),
    ('name = "a"\ntype = "stow-rs"\nurl = "ftp://x"', ["destination 'a'.url", "http://"]),
    ('name = "a"\ntype = "stow-rs"', ["destination 'a'.url is required"]),
    ('name = "a"\ntype = "dimse"\nae_title = "A"\nhost = "h"\nport = 1\nkinds = ["pdf"]', ["destination 'a'.kinds",
                                                                                          "'gsps'"]),
    ('name = "a"\ntype = "dimse"\nae_title = "A"\nhost = "h"\nport = 1\nurl = "http://x"', ["unknown key(s) url"]),
    ('name = "a"\ntype = "dimse"\nae_title = "A"\nhost = "h"\nport = 1\nmax_attempts = 0', ["max_attempts must be"]),
])
def test_bad_destinations_name_the_key_and_the_fix(tmp_path: Path, table: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, PACS + "[[destination]]\n" + table + "\n"))
    for word in words:
        assert word in str(err.value)


def test_worklist_destinations_fhir_and_hl7(tmp_path: Path) -> None:
    token = tmp_path / "ehr.token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)
    s = load_settings(write(tmp_path, PACS + """
[[destination]]
name = "ehr"
type = "fhir"
url = "https://ehr.example.org/fhir/R4/"
token_file = "ehr.token"
patient_identifier_system = "urn:oid:1.2.36.146.595.217.0.1"
[[destination]]
name = "ris"
type = "hl7-mllp"
host = "ris.example.org"
port = 2575
sending_facility = "AI-NODE"
receiving_application = "RIS"
receiving_facility = "RADIOLOGY"
kinds = ["sr"]
"""))
    by_name = {d.name: d for d in s.destinations}
    ehr, ris = by_name["ehr"], by_name["ris"]
    assert (ehr.type, ehr.url, ehr.kinds, ehr.token) == ("fhir", "https://ehr.example.org/fhir/R4", {"sr"},
                                                         "0123456789abcdef0123")
    assert ehr.patient_identifier_system == "urn:oid:1.2.36.146.595.217.0.1"
    assert (ris.type, ris.host, ris.port, ris.kinds) == ("hl7-mllp", "ris.example.org", 2575, {"sr"})
    assert (ris.sending_facility, ris.receiving_application, ris.receiving_facility) == ("AI-NODE", "RIS", "RADIOLOGY")
    assert ris.describe() == "mllp://ris.example.org:2575" and ehr.describe() == ehr.url


@pytest.mark.parametrize("table, words", [
    ('name = "ehr"\ntype = "fhir"', ["destination 'ehr'.url is required"]),
    ('name = "ehr"\ntype = "fhir"\nurl = "ehr.example.org"', ["destination 'ehr'.url", "http://", "FHIR base URL"]),
    ('name = "ehr"\ntype = "fhir"\nurl = "http://e/fhir"\nkinds = ["sr", "sc"]', ["destination 'ehr'.kinds",
                                                                                  'kinds = ["sr"]']),
    ('name = "ehr"\ntype = "fhir"\nurl = "http://e/fhir"\nhost = "h"', ["unknown key(s) host"]),
    ('name = "ris"\ntype = "hl7-mllp"\nhost = "h"', ["destination 'ris'.port is required"]),
    ('name = "ris"\ntype = "hl7-mllp"\nport = 2575', ["destination 'ris'.host is required"]),
    ('name = "ris"\ntype = "hl7-mllp"\nhost = "h"\nport = 2575\nreceiving_facility = "A|B"',
     ["destination 'ris'.receiving_facility", "take no |"]),
    ('name = "ris"\ntype = "hl7-mllp"\nhost = "h"\nport = 2575\nurl = "http://x"', ["unknown key(s) url"]),
    ('name = "ris"\ntype = "hl7"', ['"fhir"', '"hl7-mllp"']),
])
def test_bad_worklist_destinations_name_the_key_and_the_fix(tmp_path: Path, table: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, PACS + "[[destination]]\n" + table + "\n"))
    for word in words:
        assert word in str(err.value)
