"""Access decisions on what an A-ASSOCIATE-RQ carries: called AE (reason 7), calling AE and host binding
(reason 3), user identity (missing, wrong, unknown, other types), and nothing refused without a [security] section."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from node.access import OfferedIdentity, check_association
from node.config import CallerRule, SecuritySettings, UserIdentitySettings

OPEN = SecuritySettings()
STRICT = SecuritySettings(
    require_called_ae_title=True,
    callers=(CallerRule("CT1", (ipaddress.ip_network("10.0.0.0/24"),)), CallerRule("ORTHANC")),
    user_identity=UserIdentitySettings(users={"ct-room-2": b"s3cret"}),
)


def reason(security: SecuritySettings, calling: str = "CT1", called: str = "AINODE", host: str = "10.0.0.7",
           identity: OfferedIdentity | None = OfferedIdentity(2, b"ct-room-2", b"s3cret")) -> int | None:
    rejection = check_association(security, "AINODE", calling, called, host, identity)
    return None if rejection is None else rejection.reason


def test_no_security_section_refuses_nothing() -> None:
    assert reason(OPEN, calling="ANYONE", called="ANYTHING", host="192.0.2.1", identity=None) is None


def test_called_and_calling_ae_titles() -> None:
    assert reason(STRICT) is None
    assert reason(STRICT, called="OTHER") == 7
    assert reason(STRICT, called="AINODE   ") is None  # AE titles are space padded on the wire
    assert reason(STRICT, calling="INTRUDER") == 3
    assert reason(STRICT, calling="ORTHANC", host="192.0.2.1") is None  # no hosts: from anywhere
    # both wrong: the called title is the one reported, as pynetdicom and dcmtk do
    assert reason(STRICT, calling="INTRUDER", called="OTHER") == 7


def test_host_binding() -> None:
    assert reason(STRICT, host="10.0.0.250") is None
    assert reason(STRICT, host="10.0.1.1") == 3
    assert reason(STRICT, host="::ffff:10.0.0.9") is None  # IPv4 peer on a dual-stack socket
    assert reason(STRICT, host="not-an-address") == 3


def test_user_identity() -> None:
    assert reason(STRICT, identity=None) == 1
    assert reason(STRICT, identity=OfferedIdentity(2, b"ct-room-2", b"wrong")) == 1
    assert reason(STRICT, identity=OfferedIdentity(2, b"nobody", b"s3cret")) == 1
    assert reason(STRICT, identity=OfferedIdentity(1, b"ct-room-2", b"")) == 1  # username alone proves nothing
    assert reason(STRICT, identity=OfferedIdentity(5, b"a.jwt.token", b"")) == 1
    optional = replace(STRICT, user_identity=UserIdentitySettings(users={"ct-room-2": b"s3cret"}, required=False))
    assert reason(optional, identity=None) is None
    assert reason(optional, identity=OfferedIdentity(2, b"ct-room-2", b"wrong")) == 1


def test_rejection_says_why_without_the_passcode() -> None:
    rejection = check_association(STRICT, "AINODE", "CT1", "AINODE", "10.0.0.7", OfferedIdentity(2, b"ct-room-2", b"guess"))
    assert rejection is not None and rejection.result == 1 and rejection.source == 1
    assert "guess" not in rejection.why and "s3cret" not in rejection.why
