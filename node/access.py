"""Who may associate: the called AE title, the calling AE title (optionally bound to hosts) and the user identity.

Pure decisions on what an A-ASSOCIATE-RQ carries; ``node.dicom_server`` applies them on EVT_REQUESTED. pynetdicom's
own ``require_calling_aet`` is not used: it cannot bind an AE title to hosts.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from node.config import SecuritySettings

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason/diagnostic
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PRESENTATION = 0x01, 0x03
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07
REASON_LOCAL_LIMIT_EXCEEDED = 0x02  # with SOURCE_PRESENTATION

USER_IDENTITY_USERNAME_AND_PASSCODE = 2


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int
    why: str  # for the log: names AE titles and hosts, never a passcode


@dataclass(frozen=True)
class OfferedIdentity:
    """The User Identity Negotiation sub-item of a request (PS3.7 D.3.3.7)."""

    identity_type: int
    primary: bytes
    secondary: bytes


def _host_allowed(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


def check_association(
    security: SecuritySettings, own_ae_title: str, calling_ae: str, called_ae: str, host: str,
    identity: OfferedIdentity | None,
) -> Rejection | None:
    """None when the request may proceed, else the A-ASSOCIATE-RJ to send and why."""
    calling, called = calling_ae.strip(), called_ae.strip()
    if security.require_called_ae_title and called != own_ae_title.strip():
        return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED,
                         f"called AE title {called!r} is not this node's ({own_ae_title!r})")
    if security.callers:
        rules = [r for r in security.callers if r.ae_title.strip() == calling]
        if not rules:
            return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED,
                             f"calling AE title {calling!r} is not in [[security.caller]]")
        if not any(_host_allowed(host, r.hosts) for r in rules):
            return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED,
                             f"calling AE title {calling!r} is not allowed from {host}")
    users = security.user_identity
    if users is not None:
        if identity is None:
            if users.required:
                return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                                 f"no user identity offered by {calling!r} from {host} (required)")
        elif identity.identity_type != USER_IDENTITY_USERNAME_AND_PASSCODE:
            return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                             f"user identity type {identity.identity_type} from {host}: only username and passcode "
                             "(type 2) is accepted")
        else:
            expected = users.users.get(identity.primary.decode("utf-8", "replace"))
            matches = hmac.compare_digest(expected or b"", identity.secondary)  # constant time for equal lengths
            if expected is None or not matches:
                return Rejection(REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON,
                                 f"user identity from {calling!r} at {host} not recognised")
    return None
