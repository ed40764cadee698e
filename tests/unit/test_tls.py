"""TLS contexts: TLS 1.2 at least, only the BCP 195 ECDHE-RSA-GCM suites for TLS 1.2, client certificates required
against the CA when verify_client, and a certificate that does not load stops the node naming the keys."""

from __future__ import annotations

import ssl
import pytest

from node.config import ConfigError, DicomTlsSettings
from node.tls import dicom_context
from pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_dicom_context_is_bcp195(pki: Pki) -> None:
    context = dicom_context(DicomTlsSettings(pki.server.cert, pki.server.key, pki.ca))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    tls12 = sorted(c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2")
    assert tls12 == ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]
    relaxed = dicom_context(DicomTlsSettings(pki.server.cert, pki.server.key, None, verify_client=False))
    assert relaxed.verify_mode == ssl.CERT_NONE


def test_key_that_does_not_match_names_the_keys(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="security.tls.cert_file / key_file"):
        dicom_context(DicomTlsSettings(pki.server.cert, pki.client.key, pki.ca))
