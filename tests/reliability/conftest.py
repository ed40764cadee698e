"""Shared by the reliability tests: one real Orthanc (the PACS) per test module."""

from __future__ import annotations

from typing import Iterator

import pytest

from node.localpeers.orthanc import Orthanc


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc
