"""The ``stow-rs`` destination: DICOMweb STOW-RS through dicomweb-client, one multipart POST per attempt.

The response's Referenced SOP Sequence (stored) and Failed SOP Sequence (not stored, with a reason) give one outcome
per file; a 409 (some failed) carries the same body. dicomweb-client's own retries are off: the outbox retries, with
its backoff and dead letter, like for every destination.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from node.config import DestinationSettings
from node.delivery import DeliveryError, SendOutcome

# PS3.18 Table I.2-3 / PS3.4 B.2.3: warnings still mean stored
_FAILURE_TEXT = {0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
                 0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0111: "duplicate instance"}


def _response_dataset(response: requests.Response) -> Dataset | None:
    if not response.content:
        return None
    kind = response.headers.get("Content-Type", "").split(";")[0].strip()
    if kind in ("application/dicom+json", "application/json"):
        return Dataset.from_json(json.loads(response.content))
    return None  # XML or nothing: per-instance detail unknown


class StowRsDestination:
    def __init__(self, settings: DestinationSettings, calling_ae: str) -> None:
        self.settings = settings
        self.calling_ae = calling_ae  # not used by HTTP; kept for the plugin signature

    def _client(self, timeout: float, responses: list[requests.Response]) -> DICOMwebClient:
        headers = {"Accept": "application/dicom+json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"

        def keep(response: requests.Response, *args: object, **kwargs: object) -> requests.Response:
            # The raw response, parsed here: the client drops bodies whose Content-Type carries parameters.
            responses.append(response)
            return response

        client = DICOMwebClient(url=self.settings.url, headers=headers, timeout=(min(10.0, timeout), timeout),
                                callback=keep)
        client.set_http_retry_params(retry=False)
        return client

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        datasets = {path: dcmread(path) for path in paths}
        responses: list[requests.Response] = []
        try:
            self._client(budget_seconds, responses).store_instances(list(datasets.values()))
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:  # 409: the body says which failed
                code = exc.response.status_code if exc.response is not None else "?"
                raise DeliveryError(f"STOW-RS to {self.settings.url}: HTTP {code}") from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS to {self.settings.url}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return self._outcomes(datasets, _response_dataset(responses[-1]) if responses else None)

    def _outcomes(self, datasets: Mapping[Path, Dataset], response: Dataset | None) -> list[SendOutcome]:
        stored = {str(i.ReferencedSOPInstanceUID) for i in (response or Dataset()).get("ReferencedSOPSequence", [])}
        failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110))
                  for i in (response or Dataset()).get("FailedSOPSequence", [])}
        outcomes = []
        for path, ds in datasets.items():
            uid = str(ds.SOPInstanceUID)
            if uid in stored:
                outcomes.append(SendOutcome(path, True, "stored (STOW-RS)"))
            elif uid in failed:
                code = failed[uid]
                unsupported = code == 0x0122
                detail = f"STOW-RS failure 0x{code:04X} ({_FAILURE_TEXT.get(code, 'failed')})"
                if unsupported:
                    detail += f": destination {self.settings.name!r} does not take this SOP class; leave this kind " \
                              "of object out of its kinds"
                outcomes.append(SendOutcome(path, False, detail, permanent=unsupported))
            else:
                outcomes.append(SendOutcome(path, False, "STOW-RS response does not mention the instance"))
        return outcomes
