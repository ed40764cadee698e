"""TLS contexts for the node's two listeners: DICOM (BCP 195 profile, optional client certificates) and HTTP.

Only builds ``ssl.SSLContext`` objects from ``[security.tls]`` and ``[security.http]``; where handshakes happen
(never on an accept loop) is the servers' business.
"""

from __future__ import annotations

import ssl

from node.config import ConfigError, DicomTlsSettings, HttpSecuritySettings, Settings

# TLS 1.2: the ECDHE suites of the four BCP 195 (RFC 7525 section 4.2) recommends, which DICOM's BCP 195 profiles
# adopt (PS3.15 B.9): forward secret key exchange, RSA authentication, AES-GCM; OpenSSL's spelling. The two DHE
# suites of that list are left out: they need DH parameters the node does not ship, and RFC 9325 prefers ECDHE.
# TLS 1.3 is allowed as well; all of its suites are AEAD ones, and Python cannot narrow them further.
BCP195_CIPHERS = ":".join((
    "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
))


def _server_context(cert_file: str, key_file: str, section: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{section}.cert_file / key_file: cannot load the certificate and key ({exc}); both must be PEM, the key "
            "unencrypted and matching the certificate, which must be an RSA one for the BCP 195 cipher suites"
        ) from exc
    return context


def dicom_context(tls: DicomTlsSettings) -> ssl.SSLContext:
    """The DICOM listener's context: TLS 1.2+, BCP 195 suites, client certificates checked against ``ca_file``."""
    context = _server_context(str(tls.cert_file), str(tls.key_file), "security.tls")
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"security.tls.ca_file = {str(tls.ca_file)!r}: not a PEM CA certificate file ({exc})") from exc
    # Without verify_client a presented certificate is still checked when a CA is given (CERT_OPTIONAL).
    context.verify_mode = (
        ssl.CERT_REQUIRED if tls.verify_client else ssl.CERT_OPTIONAL if tls.ca_file is not None else ssl.CERT_NONE
    )
    return context


def http_context(http: HttpSecuritySettings) -> ssl.SSLContext | None:
    """The status server's context when ``[security.http]`` names a certificate, else None (plain HTTP)."""
    if http.cert_file is None or http.key_file is None:
        return None
    return _server_context(str(http.cert_file), str(http.key_file), "security.http")


def check_tls(settings: Settings) -> None:
    """Build both contexts once at start, so a bad certificate stops the node with the key named."""
    if settings.security.tls is not None:
        dicom_context(settings.security.tls)
    http_context(settings.security.http)
